#!/usr/bin/env python3
"""The cost of each depth loss (diff_gaussian_rasterization_depth.depth_losses), forward +
backward, on synthetic maps, side by side with another revision's losses.

    python benchmarks/depth_losses.py [--size 640x480] [--batch 1] [--reps 15]
    python benchmarks/depth_losses.py --against ba0d661   # against stop 71's losses (read counts back)
    python benchmarks/depth_losses.py --device cuda       # on a GPU

The maps: a smooth inverse depth x in [0.2, 1.2] (depth = 1 / x), a weight with about a quarter
of the pixels at or below 0.5 (left out), and a prior 2 x + 0.3 plus noise. Each loss is timed
as its value and the gradient to the depth map, the losses taking turns within each repetition
(so that the machine's load hits them alike); reported: the median per loss in ms, and with
--against the same call of that revision's module (loaded from git, `git show REV:...`) and
the ratio this / that. A loss or argument the other revision lacks is left out of its column.
The load average is printed before and after.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

import diff_gaussian_rasterization_depth  # noqa: E402
from diff_gaussian_rasterization_depth import depth_losses  # noqa: E402

# name -> (function name, keyword arguments): the sparse-view example's settings.
LOSSES = {
    "pearson": ("pearson_depth_loss", {}),
    "patch": ("patch_pearson_depth_loss", {"patch_size": 24, "offset": (5, 11)}),
    "ranking": ("ranking_depth_loss", {"radius": 8}),
    "ssi": ("scale_shift_invariant_depth_loss", {}),
    "ssi_patch": ("scale_shift_invariant_depth_loss", {"patch_size": 24, "offset": (5, 11)}),
}


def module_at(revision: str) -> types.ModuleType:
    """depth_losses.py as it was at `revision`, loaded as a module of the package (its relative
    imports resolve against the package as it is now)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:diff_gaussian_rasterization_depth/"
         "depth_losses.py"], check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("diff_gaussian_rasterization_depth._depth_losses_against")
    module.__package__ = diff_gaussian_rasterization_depth.__name__
    exec(compile(source, f"{revision}:depth_losses.py", "exec"), module.__dict__)
    return module


def maps(width: int, height: int, batch: int, device: str):
    """(depth, weight, prior), each (batch, height, width) (or (height, width) for one)."""
    g = torch.Generator().manual_seed(0)
    u = torch.linspace(0, 1, width)[None, :]
    v = torch.linspace(0, 1, height)[:, None]
    x = 0.7 + 0.4 * torch.sin(6 * u + 3 * v) * torch.cos(4 * v)
    x = x.expand(batch, height, width) + 0.05 * torch.rand(batch, height, width, generator=g)
    weight = 0.35 + torch.rand(batch, height, width, generator=g)
    prior = 2 * x + 0.3 + 0.05 * torch.randn(batch, height, width, generator=g)
    out = (1 / x, weight, prior)
    if batch == 1:
        out = tuple(t[0] for t in out)
    return tuple(t.to(device) for t in out)


def calls(module, depth, weight, prior, sync):
    """name -> a call of the loss and its backward; a loss the module cannot run is left out."""
    out = {}
    for name, (fn_name, kwargs) in LOSSES.items():
        fn = getattr(module, fn_name, None)
        if fn is None:
            continue
        kw = dict(kwargs)
        if name == "ranking":
            kw["generator"] = torch.Generator().manual_seed(1)

        def call(fn=fn, kw=kw):
            if "generator" in kw:
                kw["generator"].manual_seed(1)
            d = depth.detach().requires_grad_(True)
            fn(d, weight, prior, **kw).backward()
            sync()

        try:
            call()
        except TypeError:  # an argument this revision does not take
            continue
        out[name] = call
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--against", help="a git revision whose depth_losses to time beside")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    depth, weight, prior = maps(width, height, args.batch, args.device)
    sides = {"this": calls(depth_losses, depth, weight, prior, sync)}
    if args.against:
        sides["against"] = calls(module_at(args.against), depth, weight, prior, sync)
    load_before = os.getloadavg()
    times = {side: {name: [] for name in c} for side, c in sides.items()}
    for _ in range(args.reps):
        for name in LOSSES:
            for side, c in sides.items():
                if name in c:
                    start = time.perf_counter()
                    c[name]()
                    times[side][name].append(1e3 * (time.perf_counter() - start))
    load_after = os.getloadavg()
    rows = []
    print(f"depth losses, forward + backward, {args.batch} x {width}x{height}, {args.device}, "
          f"{torch.get_num_threads()} threads, medians of {args.reps}")
    header = "loss        this (ms)" + ("   against (ms)   ratio" if args.against else "")
    print(header)
    for name in LOSSES:
        if name not in times["this"]:
            continue
        row = {"loss": name, "this_ms": statistics.median(times["this"][name])}
        line = f"{name:10s} {row['this_ms']:10.2f}"
        if args.against:
            other = times["against"].get(name)
            row["against_ms"] = statistics.median(other) if other else None
            row["ratio"] = row["this_ms"] / row["against_ms"] if other else None
            line += (f" {row['against_ms']:14.2f} {row['ratio']:7.2f}" if other
                     else f" {'-':>14s} {'-':>7s}")
        rows.append(row)
        print(line)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": [width, height], "batch": args.batch, "device": args.device,
            "against": args.against, "reps": args.reps, "rows": rows,
            "load_average_before": load_before[0], "load_average_after": load_after[0]},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
