"""The fused SSIM against PyTorch's (3DGS's utils/loss_utils.py formula: five grouped
F.conv2d with the 11 x 11 window, as reference.ssim_map_reference writes it): the D-SSIM term of
a training step on (3, H, W) images, forward alone and forward + backward (the render's
gradient), interleaved rounds, medians; on CUDA also the peak memory of a forward + backward.
With --step SCENE, also a whole 3DGS training step on a garden frame (the render, 3DGS's
photometric loss 0.8 L1 + 0.2 (1 - SSIM), the backward to the Gaussians) with each SSIM.

    PYTHONPATH=. python benchmarks/ssim_bench.py [--device cpu] [--sizes 648x420,1296x840]
                                                  [--repeat 9] [--step 112k [--scale 1]]
                                                  [--json FILE]
"""
import argparse
import json
import os
import statistics
import time

import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scenes  # noqa: E402  (benchmarks/scenes.py)
from diff_gaussian_rasterization_depth import GaussianRasterizer, fused_ssim  # noqa: E402
from diff_gaussian_rasterization_depth.reference import ssim_map_reference  # noqa: E402

IMPLS = {"fused": fused_ssim, "torch": lambda a, b: ssim_map_reference(a, b).mean()}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(impl, render, photo, backward):
    """One D-SSIM term: 1 - SSIM, and its gradient on the render where `backward`."""
    if not backward:
        with torch.no_grad():
            return IMPLS[impl](render, photo)
    loss = 1 - IMPLS[impl](render, photo)
    loss.backward()
    render.grad = None
    return loss


def peak_mib(impl, render, photo, device):
    """The memory a forward + backward adds at its peak (CUDA), in MiB."""
    if not device.startswith("cuda"):
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(impl, render, photo, True)
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def training_steps(scene_name, scale, device, repeat):
    """Medians of a garden frame's training step (render, photometric loss, backward) with each
    SSIM, interleaved; the photo is the frame rendered with its colours perturbed."""
    scene = scenes.garden_scene(scene_name, scale=scale, device=device, requires_grad=True)
    g = scene.gaussians
    rasterizer = GaussianRasterizer(scene.raster_settings())

    def render(colors):
        return rasterizer(g.means, None, g.opacities, shs=g.sh, colors_precomp=colors,
                          scales=g.scales, rotations=g.rotations)[0]

    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        photo = render((g.colors + 0.2 * torch.randn(g.colors.shape, generator=gen).to(device))
                       .clamp(0, 1))

    def step(impl):
        image = render(g.colors)
        loss = 0.8 * (image - photo).abs().mean() + 0.2 * (1 - IMPLS[impl](image, photo))
        loss.backward()
        for t in (g.means, g.opacities, g.colors, g.scales, g.rotations):
            t.grad = None
        sync(device)

    times = {impl: [] for impl in IMPLS}
    for impl in times:
        step(impl)
    for _ in range(repeat):
        for impl in times:
            t0 = time.perf_counter()
            step(impl)
            times[impl].append(time.perf_counter() - t0)
    ms = {impl: 1000 * statistics.median(t) for impl, t in times.items()}
    camera = scene.camera
    row = dict(scene=scene_name, width=camera.width, height=camera.height, device=device,
               threads=torch.get_num_threads(), load_average=os.getloadavg()[0],
               step_fused_ms=ms["fused"], step_torch_ms=ms["torch"],
               step_ratio=ms["torch"] / ms["fused"])
    print(f"training step, garden {scene_name} {camera.width}x{camera.height} on {device} "
          f"({row['threads']} threads, load average {row['load_average']:.2f}): with the fused "
          f"SSIM {ms['fused']:.1f} ms, with PyTorch's {ms['torch']:.1f} ms "
          f"(x{row['step_ratio']:.2f})", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="648x420,1296x840", help="WxH,WxH,...")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--step", default=None, metavar="SCENE",
                    help="also time a training step on this garden scene (112k, 1m, 2.8m)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="the step's resolution: 648x420 times this")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    results = []
    if args.step:
        results.append(training_steps(args.step, args.scale, args.device, args.repeat))
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        gen = torch.Generator().manual_seed(0)
        photo = torch.rand(3, height, width, generator=gen)
        render = (photo + 0.1 * torch.randn(3, height, width, generator=gen)).clamp(0, 1)
        photo, render = photo.to(args.device), render.to(args.device).requires_grad_()
        times = {(impl, bwd): [] for impl in IMPLS for bwd in (False, True)}
        for key in times:  # warm-up (and CUDA's lazy loading)
            step(*key[:1], render, photo, key[1])
        for _ in range(args.repeat):
            for key in times:
                sync(args.device)
                t0 = time.perf_counter()
                step(key[0], render, photo, key[1])
                sync(args.device)
                times[key].append(time.perf_counter() - t0)
        ms = {f"{impl}_{'fwd_bwd' if bwd else 'fwd'}_ms": 1000 * statistics.median(t)
              for (impl, bwd), t in times.items()}
        row = dict(width=width, height=height, device=args.device,
                   threads=torch.get_num_threads(), load_average=os.getloadavg()[0], **ms,
                   fwd_ratio=ms["torch_fwd_ms"] / ms["fused_fwd_ms"],
                   fwd_bwd_ratio=ms["torch_fwd_bwd_ms"] / ms["fused_fwd_bwd_ms"],
                   fused_peak_mib=peak_mib("fused", render, photo, args.device),
                   torch_peak_mib=peak_mib("torch", render, photo, args.device))
        results.append(row)
        peak = ("" if row["fused_peak_mib"] is None else
                f"; peak {row['fused_peak_mib']:.1f} / {row['torch_peak_mib']:.1f} MiB")
        print(f"SSIM {width}x{height} on {args.device} ({row['threads']} threads, load average "
              f"{row['load_average']:.2f}): fused fwd {ms['fused_fwd_ms']:.2f} ms, fwd+bwd "
              f"{ms['fused_fwd_bwd_ms']:.2f} ms; PyTorch {ms['torch_fwd_ms']:.2f} / "
              f"{ms['torch_fwd_bwd_ms']:.2f} ms; PyTorch / fused x{row['fwd_ratio']:.2f} / "
              f"x{row['fwd_bwd_ratio']:.2f}{peak}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
