"""What the 2024 upstream's inverse depth costs, and the alternative not taken.

Times, on the demo scene, forward and forward+backward of:
- `plain`: the package's call (colour, radii, depth, weight), loss on colour;
- `upstream`: `diff_gaussian_rasterization_depth.upstream` (colour, radii, invdepth), the
  render's depth channel blending 1/z (`inverse_depth=True`), invdepth = depth * weight; loss
  on colour and invdepth;
- `feature`: the way before it, 1/z blended as a one-channel feature of the same render
  (`features=`); same loss;
- `two renders`: the plain call plus a second render of colours (1/z, 1/z, 1/z) over black,
  whose first channel is the same invdepth; same loss;
- `joined SH`: `upstream` given one shs = cat([dc, shs]) instead of the two leaves, the copy
  (and the split of its gradient) the package made on every call before it read dc and shs where
  they lie.

    python benchmarks/upstream_invdepth.py [--gaussians 20000] [--size 320 240] [--reps 5]
                                           [--sh-degree 1]
"""
import argparse
import statistics
import subprocess
import time

import torch

from diff_gaussian_rasterization_depth import GaussianRasterizer, upstream
from diff_gaussian_rasterization_depth.scenes import demo_cameras, demo_scene


def inverse_z(means, settings):
    view = settings.viewmatrix.reshape(4, 4)
    z = means @ view[:3, 2] + view[3, 2]
    return torch.where(z > 0.2, 1 / z.clamp_min(0.2), torch.zeros_like(z))


def plain(g, settings, backward):
    color, _, _, _ = GaussianRasterizer(settings)(**g)
    return [color]


def upstream_call(g, settings, backward):
    color, _, invdepth = upstream.GaussianRasterizer(settings)(**g)
    return [color, invdepth]


def joined_sh(g, settings, backward):
    g = dict(g)
    g["shs"] = torch.cat([g.pop("dc"), g["shs"]], dim=1)
    return upstream_call(g, settings, backward)


def feature_channel(g, settings, backward):
    color, _, _, _, invdepth = GaussianRasterizer(settings)(
        **g, features=inverse_z(g["means3D"], settings)[:, None])
    return [color, invdepth]


def two_renders(g, settings, backward):
    color, _, _, _ = GaussianRasterizer(settings)(**g)
    inv = inverse_z(g["means3D"], settings)[:, None].expand(-1, 3)
    black = settings._replace(bg=torch.zeros_like(settings.bg))
    geometry = {k: g[k] for k in ("means3D", "means2D", "opacities", "scales", "rotations")}
    inv_color, _, _, _ = GaussianRasterizer(black)(**geometry, colors_precomp=inv)
    return [color, inv_color[:1]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=20000)
    ap.add_argument("--size", type=int, nargs=2, default=[320, 240])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sh-degree", type=int, default=1, choices=range(1, 4))
    args = ap.parse_args()
    scene = demo_scene(args.gaussians, sh_degree=args.sh_degree)
    camera = demo_cameras(1, *args.size)[0]
    settings = camera.raster_settings(sh_degree=args.sh_degree)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"{len(scene)} Gaussians, SH degree {args.sh_degree}, "
          f"{args.size[0]}x{args.size[1]}, CPU, "
          f"{torch.get_num_threads()} threads; median of {args.reps} (ms)")
    for name, fn in (("plain", plain), ("upstream", upstream_call), ("feature", feature_channel),
                     ("two renders", two_renders), ("joined SH", joined_sh)):
        for backward in (False, True):
            times = []
            for _ in range(args.reps + 1):
                leaves = dict(means3D=scene.means, means2D=torch.zeros_like(scene.means),
                              opacities=scene.opacities, dc=scene.sh[:, :1],
                              shs=scene.sh[:, 1:], scales=scene.scales,
                              rotations=scene.rotations)
                leaves = {k: v.clone().requires_grad_(backward) for k, v in leaves.items()}
                start = time.perf_counter()
                with torch.set_grad_enabled(backward):
                    outs = fn(leaves, settings, backward)
                    if backward:
                        sum(o.sum() for o in outs).backward()
                times.append(time.perf_counter() - start)
            print(f"  {name:<12s} {'fwd+bwd' if backward else 'fwd':<8s} "
                  f"{statistics.median(times[1:]) * 1e3:8.1f}")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
