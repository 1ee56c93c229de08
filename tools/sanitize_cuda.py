"""Forward + backward of a few small scenes on CUDA, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python tools/sanitize_cuda.py
    compute-sanitizer --tool racecheck --error-exitcode 1 python tools/sanitize_cuda.py

Image sizes that are not multiples of 16, an empty scene, a scene with Gaussians behind the
camera and far outside, antialiasing, precomputed colours and covariances. Exits non-zero if an
output is not finite.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import scenes  # noqa: E402  (tests/scenes.py)
from diff_gaussian_rasterization_depth import GaussianRasterizer  # noqa: E402

CASES = [
    dict(P=48, height=29, width=37, sh_degree=3),
    dict(P=64, height=33, width=17, sh_degree=1, antialiasing=True),
    dict(P=200, height=40, width=100, precomp_colors=True, precomp_cov=True),
    dict(P=300, height=64, width=64, sh_degree=2, dc=True),
    dict(P=0, height=20, width=20, sh_degree=0),
    dict(P=30, height=16, width=48, sh_degree=1, all_culled=True),
    dict(P=16, height=1, width=1, sh_degree=0),
]


def main():
    if not torch.cuda.is_available():
        sys.exit("sanitize_cuda: no CUDA device")
    for i, case in enumerate(CASES):
        scene = scenes.make_scene(100 + i, **case)
        leaves = {k: (None if v is None else v.cuda().requires_grad_())
                  for k, v in scene.inputs.items()}
        s = scene.settings
        settings = s._replace(bg=s.bg.cuda(), viewmatrix=s.viewmatrix.cuda(),
                              projmatrix=s.projmatrix.cuda(), campos=s.campos.cuda())
        color, radii, depth, weight = GaussianRasterizer(settings)(**leaves)
        loss = color.square().sum() + depth.sum() + (weight * torch.rand_like(weight)).sum()
        loss.backward()
        torch.cuda.synchronize()
        for name, t in (("color", color), ("depth", depth), ("weight", weight)):
            if not torch.isfinite(t).all():
                sys.exit(f"sanitize_cuda: case {i}: non-finite {name}")
        print(f"case {i} ok: {case}")


if __name__ == "__main__":
    main()
