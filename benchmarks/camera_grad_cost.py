#!/usr/bin/env python3
"""What camera gradients add to the backward: garden 112k at 648x420 (issue 11's cost figure).

    python benchmarks/camera_grad_cost.py [--device cpu|cuda] [--reps 15] [--sh]

Each repetition renders once with the camera tensors plain and once with them requiring grad
(in alternating order, so that load changes hit both alike), and times loss.backward() alone;
the loss is the benchmark's (random upstream gradients on colour, depth and weight). Prints the
median of each, their ratio, the median of the per-repetition ratios and the machine load
(`os.getloadavg`).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

from benchmarks.scenes import garden_scene  # noqa: E402
from diff_gaussian_rasterization_depth import GaussianRasterizer  # noqa: E402


def backward_seconds(scene, settings, upstream, device, clock=time.perf_counter) -> float:
    color, _, depth, weight = GaussianRasterizer(settings)(**scene.rasterizer_inputs())
    loss = ((color * upstream[0]).sum() + (depth * upstream[1]).sum()
            + (weight * upstream[2]).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--sh", action="store_true", help="degree-3 SH instead of colours")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the process's CPU time instead of wall time: on a loaded "
                             "machine, with OMP_NUM_THREADS=1, the steadier measure of work")
    args = parser.parse_args()
    device = torch.device(args.device)
    clock = time.process_time if args.cpu_time else time.perf_counter
    scene = garden_scene("112k", scale=args.scale, sh=args.sh, device=device,
                         requires_grad=True)
    plain = scene.raster_settings()
    H, W = plain.image_height, plain.image_width
    gen = torch.Generator().manual_seed(0)
    upstream = [torch.randn(s, generator=gen).to(device) for s in ((3, H, W), (H, W), (H, W))]

    def with_camera():
        return plain._replace(**{f: getattr(plain, f).detach().clone().requires_grad_()
                                 for f in ("viewmatrix", "projmatrix", "campos")})

    for _ in range(2):   # warm-up
        backward_seconds(scene, plain, upstream, device)
        backward_seconds(scene, with_camera(), upstream, device)
    times = {"without": [], "with": []}
    load_before = os.getloadavg()
    for r in range(args.reps):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for mode in order:
            settings = plain if mode == "without" else with_camera()
            times[mode].append(backward_seconds(scene, settings, upstream, device, clock))
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"garden 112k, {W}x{H}, {device.type}, {'SH degree 3' if args.sh else 'colours'}, "
          f"{args.reps} interleaved repetitions, {'CPU' if args.cpu_time else 'wall'} time, "
          f"{torch.get_num_threads()} threads; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    for k in ("without", "with"):
        print(f"  backward {k:7s} camera gradients: median {1000 * med[k]:8.2f} ms "
              f"(min {1000 * min(times[k]):.2f}, max {1000 * max(times[k]):.2f})")
    # The two runs of a repetition are adjacent in time: their ratio is the least disturbed by
    # other load on the machine.
    pairs = statistics.median(w / wo for w, wo in zip(times["with"], times["without"]))
    print(f"  ratio of the medians with / without: {med['with'] / med['without']:.4f}; median "
          f"of the per-repetition ratios: {pairs:.4f}")


if __name__ == "__main__":
    main()
