"""What the opacity field (`points3D=`) costs: a garden frame's forward alone against the forward
with the field at GOF's points (each Gaussian's centre and the 8 corners of its 3-sigma box,
9 a Gaussian, as GOF's get_tetra_points), interleaved, medians of the repetitions.

    PYTHONPATH=. python benchmarks/opacity_field.py [--scene 112k] [--scale 1] [--device cpu]
                                                     [--repeat 5] [--points-per-gaussian 9]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes  # noqa: E402  (benchmarks/scenes.py)
from diff_gaussian_rasterization_depth import GaussianRasterizer  # noqa: E402
from diff_gaussian_rasterization_depth.reference import _rotation_matrix  # noqa: E402


def gof_points(g, per_gaussian):
    """GOF's tetrahedra points: each centre, then the corners of its box of 3 sigma (the
    rotated scales), the first per_gaussian of the nine a Gaussian."""
    corners = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)],
                           dtype=g.means.dtype, device=g.means.device)
    rotation = _rotation_matrix(torch.nn.functional.normalize(g.rotations, dim=1))
    offsets = torch.einsum("pij,cj->pci", rotation, corners * 1.0) * (3 * g.scales[:, None, :])
    points = torch.cat([g.means[:, None, :], g.means[:, None, :] + offsets], 1)
    return points[:, :per_gaussian].reshape(-1, 3).contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--points-per-gaussian", type=int, default=9, choices=range(1, 10))
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    scene = scenes.garden_scene(args.scene, scale=args.scale, device=args.device)
    g, camera = scene.gaussians, scene.camera
    rasterizer = GaussianRasterizer(scene.raster_settings())
    points = gof_points(g, args.points_per_gaussian)

    def call(with_points):
        with torch.no_grad():
            out = rasterizer(g.means, None, g.opacities, shs=g.sh, colors_precomp=g.colors,
                             scales=g.scales, rotations=g.rotations,
                             points3D=points if with_points else None)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    field = call(True)[-1]
    call(False)
    times = {False: [], True: []}
    for _ in range(args.repeat):
        for with_points in (False, True):
            t0 = time.perf_counter()
            call(with_points)
            times[with_points].append(time.perf_counter() - t0)
    plain, with_field = (1000 * statistics.median(times[k]) for k in (False, True))
    seen = field < 1
    result = dict(scene=args.scene, width=camera.width, height=camera.height,
                  device=args.device, threads=torch.get_num_threads(),
                  load_average=os.getloadavg()[0], gaussians=int(g.means.shape[0]),
                  points=int(points.shape[0]), points_seen=int(seen.sum()),
                  forward_ms=plain, forward_with_field_ms=with_field,
                  field_ms=with_field - plain, ratio=with_field / plain,
                  ns_per_seen_point=1e6 * (with_field - plain) / max(int(seen.sum()), 1))
    print(f"garden {args.scene} {camera.width}x{camera.height} on {args.device} "
          f"({torch.get_num_threads()} threads, load average {result['load_average']:.2f}): "
          f"{result['points']:,} points ({result['points_seen']:,} seen): forward "
          f"{plain:.1f} ms, with the field {with_field:.1f} ms (x{result['ratio']:.2f}; "
          f"{result['ns_per_seen_point']:.0f} ns a seen point)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
