"""gsplat's own densification (`gsplat.strategy.DefaultStrategy`) training with the package's
`diff_gaussian_rasterization_depth.gsplat.rasterization`, on the CPU: the check that what
gsplat's trainers read from the meta (means2d's gradient in pixels, radii, the packed ids) is
what they expect, end to end.

gsplat is not a dependency of the package: give this script gsplat's Python sources (its 1.5.3
wheel is pure Python; its CUDA is compiled only when a CUDA function is called, and
DefaultStrategy calls none):

    pip download gsplat==1.5.3 --no-deps -d /tmp/gsplat-wheel
    python -m zipfile -e /tmp/gsplat-wheel/gsplat-1.5.3-py3-none-any.whl /tmp/gsplat-src
    PYTHONPATH=/tmp/gsplat-src python tools/check_gsplat_strategy.py

The scene is the sparse-view example's analytic one (examples/sparse_view_depth.py), seen by 21
training and 3 held-out cameras; the model starts from 2,000 random Gaussians and trains as
gsplat's simple_trainer does (its learning rates, 0.8 L1 + 0.2 D-SSIM, SH degree raised every
250 steps), densified by DefaultStrategy from step 100, every 100 steps. Run once unpacked and
once packed (the two must give the same model: packing changes only the meta's layout), and
once with absgrad (AbsGS's criterion, with gsplat's threshold for it). Prints the Gaussian
counts and the held-out PSNR; exits 1 where densification did not grow the model, the PSNR did
not rise, or packed and unpacked differ.
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from diff_gaussian_rasterization_depth import fused_ssim
from diff_gaussian_rasterization_depth.gsplat import rasterization

try:
    from gsplat.strategy import DefaultStrategy
except ImportError as error:  # pragma: no cover - the script's one prerequisite
    sys.exit(f"check_gsplat_strategy: gsplat's sources are not importable ({error}); see the "
             "docstring for how to get them")

_spec = importlib.util.spec_from_file_location(
    "sparse_view_depth", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                      "examples", "sparse_view_depth.py"))
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


def gsplat_camera(camera):
    """gsplat's (viewmat (4, 4), K (3, 3)) of a package camera: the same OpenCV
    world-to-camera matrix, the principal point at the image centre (gsplat's pixel centres sit
    at half pixels, the package's at whole ones: the same rays)."""
    viewmat = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
    K = torch.tensor([[camera.fx, 0.0, camera.width / 2], [0.0, camera.fy, camera.height / 2],
                      [0.0, 0.0, 1.0]], dtype=torch.float32)
    return viewmat, K


def initial_splats(init: sv.GaussianModel, sh_degree: int) -> torch.nn.ParameterDict:
    """simple_trainer's parameters: log scales, opacity logits (N,), sh0 (N, 1, 3), shN."""
    n = init.means.shape[0]
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(init.means.detach().clone()),
        "scales": torch.nn.Parameter(init.log_scales.detach().clone()),
        "quats": torch.nn.Parameter(init.quats.detach().clone()),
        "opacities": torch.nn.Parameter(init.opacity_logits.detach()[:, 0].clone()),
        "sh0": torch.nn.Parameter(init.sh_dc.detach().clone()),
        "shN": torch.nn.Parameter(torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3)),
    })


def render(splats, camera, sh_degree, **options):
    viewmat, K = gsplat_camera(camera)
    colors = torch.cat([splats["sh0"], splats["shN"]], dim=1)
    image, alpha, info = rasterization(
        splats["means"], splats["quats"], torch.exp(splats["scales"]),
        torch.sigmoid(splats["opacities"]), colors, viewmat[None], K[None], camera.width,
        camera.height, sh_degree=sh_degree, **options)
    return image[0].permute(2, 0, 1), alpha, info


def train(init, views, args, packed: bool, absgrad: bool):
    torch.manual_seed(0)
    splats = initial_splats(init, args.sh_degree)
    centres = np.stack([v.camera.center for v in views])
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) * 1.1
    # simple_trainer's learning rates (batch size 1).
    lrs = {"means": 1.6e-4 * scene_scale, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
           "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    optimizers = {name: torch.optim.Adam([{"params": splats[name], "lr": lr, "name": name}],
                                         eps=1e-15) for name, lr in lrs.items()}
    strategy = DefaultStrategy(refine_start_iter=100, refine_stop_iter=int(args.steps * 0.7),
                               refine_every=100, reset_every=10 ** 9, absgrad=absgrad,
                               grow_grad2d=0.0008 if absgrad else 0.0002, verbose=False)
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    order = np.random.default_rng(0).integers(0, len(views), size=args.steps)
    counts = []
    for step in range(args.steps):
        view = views[order[step]]
        degree = min(step // 250, args.sh_degree)
        image, _, info = render(splats, view.camera, degree, packed=packed, absgrad=absgrad)
        strategy.step_pre_backward(splats, optimizers, state, step, info)
        loss = 0.8 * F.l1_loss(image, view.color) + 0.2 * (1 - fused_ssim(image[None],
                                                                          view.color[None]))
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        strategy.step_post_backward(splats, optimizers, state, step, info, packed=packed)
        if step % 100 == 0 or step == args.steps - 1:
            counts.append((step, splats["means"].shape[0]))
    return splats, counts


@torch.no_grad()
def held_out_psnr(splats, views, sh_degree):
    return float(np.mean([sv.psnr(render(splats, v.camera, sh_degree, packed=False)[0], v.color)
                          for v in views]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--gaussians", type=int, default=2000)
    p.add_argument("--sh-degree", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cams = sv.make_cameras(args.width, args.height, 24)
    train_ids, test_ids = sv.split_views(24, 21, 8)
    scene = sv.default_scene()
    views = sv.make_views(scene, cams, train_ids, "cpu")
    test = sv.make_views(scene, cams, test_ids, "cpu")
    init = sv.random_init([v.camera for v in views], args.gaussians,
                          torch.Generator().manual_seed(0))
    start = held_out_psnr(initial_splats(init, args.sh_degree), test, 0)
    print(f"gsplat {__import__('gsplat').__version__}, DefaultStrategy; {len(views)} training "
          f"views at {args.width}x{args.height}, {len(test)} held out; {args.steps} steps")
    print(f"initial: {args.gaussians} Gaussians, held-out PSNR {start:.2f} dB")
    ok = True
    results = {}
    for name, packed, absgrad in (("unpacked", False, False), ("packed", True, False),
                                  ("absgrad", False, True)):
        t0 = time.perf_counter()
        splats, counts = train(init, views, args, packed, absgrad)
        seconds = time.perf_counter() - t0
        psnr = held_out_psnr(splats, test, args.sh_degree)
        results[name] = splats
        trail = ", ".join(f"{n}" for _, n in counts[::2])
        print(f"{name:9s}: {splats['means'].shape[0]} Gaussians (every 200 steps: {trail}), "
              f"held-out PSNR {psnr:.2f} dB, {seconds:.0f} s")
        grew = max(n for _, n in counts) > args.gaussians
        ok &= grew and psnr > start + 5
    same = all(torch.equal(results["unpacked"][k], results["packed"][k])
               for k in results["unpacked"].keys())
    print(f"packed and unpacked give the same model: {same}")
    ok &= same
    print("check_gsplat_strategy:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
