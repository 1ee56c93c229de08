#!/usr/bin/env python3
"""CPU cost of the optional outputs (issue 12) on the garden 112k frame at 648x420.

    python benchmarks/features_cpu.py [--reps 5] [--channels 3 32] [--json PATH]
    python benchmarks/features_cpu.py --plain-only --reps 3     # the plain call alone
    python benchmarks/features_cpu.py --lanes-off                # also on the per-pixel loop
    python benchmarks/features_cpu.py --channels --surface       # the surface recipe's cost
    python benchmarks/features_cpu.py --channels --walks         # touch count, statistics
    python benchmarks/features_cpu.py --channels --intersection  # RaDe-GS's depth planes
    python benchmarks/features_cpu.py --channels --rade-gs       # RaDe-GS's own call and term
    python benchmarks/features_cpu.py --channels --pgsr          # PGSR's own call and term

Variants, timed round-robin (one repetition of each in turn, so that the machine's load hits
them alike): the plain call; `features=F` with C channels for each --channels; and
`median_depth=True`; with --surface, doc/surface.md's recipe (the normals, plane offsets and
distortion moments as 6 channels, the plane depth, its normals, the distortion and their
losses, all of it); with --walks, the outputs made by walks of the tile lists of their own
after the render: `touch_count=True` and `contributions=True` (the statistics). Each is timed as forward without autograd and as forward + backward with
random upstream gradients on every map it returns. Reported: medians over --reps after one
warm-up round, wall-clock and (in brackets) the process's CPU time, and each variant's ratio to
the plain call from the same run. --plain-only times the plain call alone, for comparing two
builds (run it alternately with each on PYTHONPATH). --lanes-off adds every variant run on the
per-pixel loop (the float path's eight lanes switched off), in the same round-robin, to show
what the lanes are worth for each. The load is printed: the load average, and the cores other
processes used during the run.
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

from benchmarks.bench import (intersection_recipe, pgsr_recipe, rade_gs_recipe,  # noqa: E402
                              surface_recipe)
from benchmarks.cpu_bench import LoadMeter  # noqa: E402
from benchmarks.scenes import garden_scene  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_variants(scene, channels, plain_only, lanes_off, surface=False, walks=False,
                  intersection=False, rade_gs=False, pgsr=False):
    """name -> (the call's extra arguments, whether the float path runs on the lanes)."""
    P = len(scene.gaussians)
    gen = torch.Generator().manual_seed(0)
    calls = {"plain": {}}
    if not plain_only:
        for C in channels:
            calls[f"C={C}"] = {"features": torch.rand(P, C, generator=gen).requires_grad_()}
        calls["median"] = {"median_depth": True}
        if surface:
            calls["surface"] = {"surface": True}
        if intersection:
            calls["rade"] = {"intersection": True}
        if rade_gs:
            calls["rade_gs"] = {"rade_gs": True}
        if pgsr:
            calls["pgsr"] = {"pgsr": True}
        if walks:
            calls["touch count"] = {"touch_count": True}
            calls["contributions"] = {"contributions": True}
    variants = {name: (extra, True) for name, extra in calls.items()}
    if lanes_off:
        variants.update({f"{name} per-pixel": (extra, False) for name, extra in calls.items()})
    return variants


def timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    from diff_gaussian_rasterization_depth import GaussianRasterizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--channels", type=int, nargs="*", default=[3, 32])
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--data", default=None)
    ap.add_argument("--plain-only", action="store_true")
    ap.add_argument("--lanes-off", action="store_true")
    ap.add_argument("--surface", action="store_true")
    ap.add_argument("--walks", action="store_true")
    ap.add_argument("--intersection", action="store_true")
    ap.add_argument("--rade-gs", action="store_true")
    ap.add_argument("--pgsr", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import diff_gaussian_rasterization_depth as package
    print(f"package {Path(package.__file__).parent}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {_load()}", flush=True)
    scene = garden_scene(args.scene, scale=args.scale, requires_grad=True, data=args.data)
    settings = scene.raster_settings()
    rasterizer = GaussianRasterizer(settings)
    H, W = scene.camera.height, scene.camera.width
    variants = make_variants(scene, args.channels, args.plain_only, args.lanes_off,
                             args.surface, args.walks, args.intersection, args.rade_gs,
                             args.pgsr)
    ext = package._backend._ext()
    gen = torch.Generator().manual_seed(1)
    up = [torch.randn(3, H, W, generator=gen), None, torch.randn(H, W, generator=gen),
          torch.randn(H, W, generator=gen)] + [torch.randn(max(args.channels + [1]), H, W,
                                                           generator=gen)]

    def forward(extra):
        if extra.get("surface"):
            return surface_recipe(rasterizer, settings, scene.rasterizer_inputs())
        if extra.get("intersection"):
            return intersection_recipe(rasterizer, settings, scene.rasterizer_inputs())
        if extra.get("rade_gs"):
            return rade_gs_recipe(rasterizer, settings, scene.rasterizer_inputs())
        if extra.get("pgsr"):
            return pgsr_recipe(rasterizer, settings, scene.rasterizer_inputs())
        return rasterizer(**scene.rasterizer_inputs(), **extra)

    def step(extra):
        scene.gaussians.zero_grad()
        out = forward(extra)
        loss = sum((out[k] * up[k]).sum() for k in (0, 2, 3))
        if any(extra.get(k) for k in ("surface", "intersection", "rade_gs", "pgsr")):
            loss = loss + out[4]
        if "features" in extra:
            loss = loss + (out[4] * up[4][:out[4].shape[0]]).sum()
        if extra.get("median_depth"):
            loss = loss + (out[-1] * up[2]).sum()
        loss.backward()

    times = {name: {"fwd": [], "fwd_bwd": [], "fwd_cpu": [], "fwd_bwd_cpu": []}
             for name in variants}
    meter = LoadMeter().start()
    for rep in range(args.reps + 1):            # round 0 is the warm-up
        for name, (extra, lanes) in variants.items():
            ext.set_cpu_tuning(lanes=lanes, power_bound=True)
            try:
                with torch.no_grad():
                    wall, cpu = timed(lambda: forward(extra))
                wall2, cpu2 = timed(lambda: step(extra))
            finally:
                ext.set_cpu_tuning(lanes=True, power_bound=True)
            if rep > 0:
                t = times[name]
                t["fwd"].append(wall)
                t["fwd_cpu"].append(cpu)
                t["fwd_bwd"].append(wall2)
                t["fwd_bwd_cpu"].append(cpu2)
    load = meter.stop()
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    plain = med["plain"]
    print(f"garden {args.scene} ({len(scene.gaussians)} Gaussians) at {W}x{H}, colors_precomp; "
          f"median of {args.reps}")
    for name, m in med.items():
        print(f"  {name:17s} forward {m['fwd']:.3f} s [{m['fwd_cpu']:.3f} CPU-s] x"
              f"{m['fwd'] / plain['fwd']:.2f}   forward+backward {m['fwd_bwd']:.3f} s "
              f"[{m['fwd_bwd_cpu']:.3f} CPU-s] x{m['fwd_bwd'] / plain['fwd_bwd']:.2f}")
    print(f"load average afterwards {_load()}; other processes used "
          f"{load['others_cores_used']:.2f} of {load['cores']} cores during the run")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, "all": times, "load": load,
                                               "load_after": _load()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
