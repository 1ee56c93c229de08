#!/usr/bin/env python3
"""Meshing a garden scene through the sparse TSDF: memory against a dense grid, and time.

    python benchmarks/mesh_bench.py                         # 112k, 3 cameras, 256 and 512
    python benchmarks/mesh_bench.py --resolutions 1024 --device cuda --json out.json

What the `mesh` command does, on the garden frames (benchmarks/scenes.py; 3 cameras at
648x420 times --scale): render each camera's median depth and colour, fuse the pixels of
weight > 0.5 into a `SparseTSDFVolume` whose voxel is 2 r / resolution (r: 3DGS's extent of the
camera centres, 2DGS's rule), then extract the mesh. Reported per resolution: the blocks and
grid points the volume holds and their memory (tsdf, weight, colour: 20 bytes a point in
float32) against a dense grid over the blocks' bounding box (what TSDFVolume would hold to
cover the same surface), their ratio, the seconds of rendering, fusion and extraction, and the
mesh's size, with the machine's load. (The benchmark scene's Gaussians have random sizes and
opacities, so the mesh is no picture of the garden; the work is a real frame's.)
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

from benchmarks.scenes import garden_scene  # noqa: E402

BYTES_PER_POINT = 4 * (1 + 1 + 3)        # tsdf, weight, colour in float32


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mesh_scene(frames, resolution, device):
    """One run of render, fuse, extract; returns its figures."""
    from diff_gaussian_rasterization_depth import GaussianRasterizer
    from diff_gaussian_rasterization_depth.cli import fuse_render, scene_radius
    from diff_gaussian_rasterization_depth.mesh import SparseTSDFVolume
    max_depth = 2 * scene_radius([f.camera for f in frames])
    volume = SparseTSDFVolume(max_depth / resolution, device=device)
    render_s = fuse_s = 0.0
    for frame in frames:
        settings, inputs = frame.raster_settings(), frame.rasterizer_inputs()
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            color, _, _, weight, median = GaussianRasterizer(settings)(**inputs,
                                                                       median_depth=True)
        _sync(device)
        t1 = time.perf_counter()
        fuse_render(volume, settings, color, weight, median, max_depth=max_depth)
        _sync(device)
        render_s, fuse_s = render_s + t1 - t0, fuse_s + time.perf_counter() - t1
    t0 = time.perf_counter()
    mesh = volume.extract_mesh()
    _sync(device)
    extract_s = time.perf_counter() - t0
    points = volume.num_blocks * volume.block_size ** 3
    box = (volume.block_coords.max(0).values - volume.block_coords.min(0).values + 1)
    dense_points = int(box.prod()) * volume.block_size ** 3
    return dict(resolution=resolution, voxel=volume.voxel_size, blocks=volume.num_blocks,
                points=points, sparse_mib=points * BYTES_PER_POINT / 2 ** 20,
                dense_mib=dense_points * BYTES_PER_POINT / 2 ** 20,
                dense_over_sparse=dense_points / points, render_s=render_s, fuse_s=fuse_s,
                extract_s=extract_s, vertices=mesh.vertices.shape[0],
                faces=mesh.faces.shape[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    frames = [garden_scene(args.scene, camera=i, scale=args.scale, device=device,
                           data=args.data) for i in range(3)]
    load = os.getloadavg()
    print(f"garden {args.scene}, 3 cameras at {frames[0].camera.width}x"
          f"{frames[0].camera.height}, {args.device} ({torch.get_num_threads()} threads), "
          f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("| resolution | voxel | blocks | grid points | sparse MiB | dense MiB (bounding box) "
          "| dense / sparse | render s | fuse s | extract s | faces |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for resolution in args.resolutions:
        r = mesh_scene(frames, resolution, device)
        rows.append(r)
        print(f"| {resolution} | {r['voxel']:.4g} | {r['blocks']} | {r['points'] / 1e6:.1f}M | "
              f"{r['sparse_mib']:.0f} | {r['dense_mib']:.0f} | {r['dense_over_sparse']:.1f} | "
              f"{r['render_s']:.2f} | {r['fuse_s']:.2f} | {r['extract_s']:.2f} | "
              f"{r['faces']} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(scene=args.scene, scale=args.scale, device=args.device,
                           threads=torch.get_num_threads(), load_average=list(load),
                           torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
