#!/usr/bin/env python3
"""CPU timings: the compiled CPU backend on the garden scene, and against the PyTorch reference.

    python benchmarks/cpu_vs_reference.py [--reps 3] [--json PATH]

1. The CPU backend on the 112k garden scene at 648x420 (camera 0, colors_precomp): forward
   without autograd, and forward + backward with the benchmark's loss on colour, depth and
   weight. The project's requirement: forward + backward under 10 s.
2. The pure-PyTorch reference (`reference.rasterize_reference`, dense P x H x W) against the CPU
   backend on a scene small enough for it (2k Gaussians drawn from the crop, 162x105): the same
   two timings for both, their ratio, and how far their outputs and gradients are apart.

Times are medians over --reps runs after one warm-up: wall-clock (time.perf_counter) and, in
brackets, the process's CPU time summed over its threads (time.process_time), which other
processes on a busy machine disturb less.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

from benchmarks.scenes import Scene, garden_scene  # noqa: E402


def _loss(color, depth, weight, up):
    return (color * up[0]).sum() + (depth * up[1]).sum() + (weight * up[2]).sum()


def _upstream(scene: Scene):
    H, W = scene.camera.height, scene.camera.width
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(3, H, W, generator=gen), torch.randn(H, W, generator=gen),
            torch.randn(H, W, generator=gen))


def _rasterize(kind: str, scene: Scene, settings):
    inputs = scene.rasterizer_inputs()
    if kind == "reference":
        from diff_gaussian_rasterization_depth.reference import rasterize_reference
        color, radii, depth, weight = rasterize_reference(**inputs, raster_settings=settings)
    else:
        from diff_gaussian_rasterization_depth import GaussianRasterizer
        color, radii, depth, weight = GaussianRasterizer(settings)(**inputs)
    return (color, radii, depth, weight), inputs


def time_one(kind: str, scene: Scene, reps: int) -> dict:
    """Median forward (no grad) and forward + backward times in seconds, plus the last run's
    outputs and gradients."""
    settings = scene.raster_settings()
    up = _upstream(scene)
    fwd, step, fwd_cpu, step_cpu = [], [], [], []
    for r in range(reps + 1):              # the first run of each is a warm-up
        with torch.no_grad():
            c0, t0 = time.process_time(), time.perf_counter()
            _rasterize(kind, scene, settings)
            c1, t1 = time.process_time(), time.perf_counter()
        scene.gaussians.zero_grad()
        c2, t2 = time.process_time(), time.perf_counter()
        (color, radii, depth, weight), inputs = _rasterize(kind, scene, settings)
        _loss(color, depth, weight, up).backward()
        c3, t3 = time.process_time(), time.perf_counter()
        if r > 0:
            fwd.append(t1 - t0)
            step.append(t3 - t2)
            fwd_cpu.append(c1 - c0)
            step_cpu.append(c3 - c2)
    grads = {k: v.grad.detach().clone() for k, v in inputs.items()
             if v is not None and v.grad is not None}
    outputs = {"color": color.detach(), "depth": depth.detach(), "weight": weight.detach(),
               "radii": radii}
    scene.gaussians.zero_grad()
    return {"fwd_s": statistics.median(fwd), "fwd_bwd_s": statistics.median(step),
            "fwd_cpu_s": statistics.median(fwd_cpu), "fwd_bwd_cpu_s": statistics.median(step_cpu),
            "fwd_all_s": fwd, "fwd_bwd_all_s": step, "outputs": outputs, "grads": grads}


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = float(b.abs().max())
    return float((a.float() - b.float()).abs().max()) / scale if scale > 0 else 0.0


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--small-scene", default="2k")
    ap.add_argument("--small-scale", type=float, default=0.25)
    ap.add_argument("--camera", type=int, default=0)
    ap.add_argument("--data", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--skip-large", action="store_true", help="only the reference comparison")
    args = ap.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {_load()}; median of {args.reps} after 1 warm-up", flush=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": args.reps,
              "load_average_before": _load()}
    code = 0

    if not args.skip_large:
        scene = garden_scene(args.scene, camera=args.camera, scale=args.scale,
                             requires_grad=True, data=args.data)
        cam = scene.camera
        t = time_one("cpu", scene, args.reps)
        visible = int((t["outputs"]["radii"] > 0).sum())
        ok = t["fwd_bwd_s"] < 10.0
        code |= 0 if ok else 1
        print(f"\n[1] garden {args.scene} ({len(scene.gaussians)} Gaussians, {visible} visible) at "
              f"{cam.width}x{cam.height}, camera {args.camera}, colors_precomp")
        print(f"    CPU backend  forward {t['fwd_s']:.3f} s [{t['fwd_cpu_s']:.3f} CPU-s]   "
              f"forward+backward {t['fwd_bwd_s']:.3f} s [{t['fwd_bwd_cpu_s']:.3f} CPU-s]   "
              f"(requirement < 10 s: {'met' if ok else 'NOT met'})")
        report["large"] = {"scene": args.scene, "n": len(scene.gaussians), "visible": visible,
                           "width": cam.width, "height": cam.height,
                           "fwd_s": t["fwd_s"], "fwd_bwd_s": t["fwd_bwd_s"],
                           "fwd_cpu_s": t["fwd_cpu_s"], "fwd_bwd_cpu_s": t["fwd_bwd_cpu_s"],
                           "fwd_all_s": t["fwd_all_s"], "fwd_bwd_all_s": t["fwd_bwd_all_s"],
                           "requirement_met": ok}
        del scene, t

    small = garden_scene(args.small_scene, camera=args.camera, scale=args.small_scale,
                         requires_grad=True, data=args.data)
    cam = small.camera
    ours = time_one("cpu", small, args.reps)
    ref = time_one("reference", small, args.reps)
    visible = int((ours["outputs"]["radii"] > 0).sum())
    diffs = {f"out_{k}": _max_rel_diff(ours["outputs"][k], ref["outputs"][k])
             for k in ("color", "depth", "weight")}
    diffs.update({f"grad_{k}": _max_rel_diff(ours["grads"][k], ref["grads"][k])
                  for k in ours["grads"] if k in ref["grads"]})
    print(f"\n[2] garden {args.small_scene} ({len(small.gaussians)} Gaussians, {visible} visible) "
          f"at {cam.width}x{cam.height}, camera {args.camera}, colors_precomp")
    for label, t in (("reference  ", ref), ("CPU backend", ours)):
        print(f"    {label}  forward {t['fwd_s']:.4f} s [{t['fwd_cpu_s']:.4f} CPU-s]   "
              f"forward+backward {t['fwd_bwd_s']:.4f} s [{t['fwd_bwd_cpu_s']:.4f} CPU-s]")
    print(f"    reference / CPU backend: forward x{ref['fwd_s'] / ours['fwd_s']:.1f}, "
          f"forward+backward x{ref['fwd_bwd_s'] / ours['fwd_bwd_s']:.1f}")
    print("    max |CPU - reference| / max |reference|: "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    report["small"] = {"scene": args.small_scene, "n": len(small.gaussians), "visible": visible,
                       "width": cam.width, "height": cam.height,
                       "reference": {k: ref[k] for k in
                                     ("fwd_s", "fwd_bwd_s", "fwd_cpu_s", "fwd_bwd_cpu_s")},
                       "cpu": {k: ours[k] for k in
                               ("fwd_s", "fwd_bwd_s", "fwd_cpu_s", "fwd_bwd_cpu_s")},
                       "ratio_fwd": ref["fwd_s"] / ours["fwd_s"],
                       "ratio_fwd_bwd": ref["fwd_bwd_s"] / ours["fwd_bwd_s"],
                       "max_rel_diff": diffs}
    print(f"\nload average afterwards {_load()} (other processes on the machine skew the times)")
    report["load_average_after"] = _load()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
