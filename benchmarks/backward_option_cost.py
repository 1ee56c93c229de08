#!/usr/bin/env python3
"""What an option of the backward adds to it: garden 112k at 648x420.

    python benchmarks/backward_option_cost.py
        [--option camera|absolute|offsets|fisheye|distortion|pinhole_distortion|
                  deterministic]
        [--coefficients K1 K2 P1 P2 [K3 ...]] [--device cpu|cuda] [--reps 15]
        [--sh]

--option camera (issue 11's cost figure): the camera tensors requiring grad; --option absolute:
means2D given as (P, 4), so that the backward also sums AbsGS's absolute gradient; --option
offsets: Mip-Splatting's --ray_jitter, uniform subpixel_offset in [-0.5, 0.5) (drawn once),
which moves the forward's sample points too, so that forward and backward are timed together;
--option fisheye: the same camera as an equidistant fisheye (fisheye=True) whose image edge
lies at the pinhole's angle (tanfovx = atan(tanfovx)), forward and backward timed together;
--option distortion: that fisheye with OpenCV's distortion (fisheye_distortion, a real lens's
order of coefficients) against it without, forward and backward timed together;
--option pinhole_distortion: the pinhole camera with OpenCV's distortion (pinhole_distortion,
by default a wide-angle lens's (k1, k2, p1, p2, k3), else --coefficients) against it without,
forward and backward timed together. A barrel lens widens the view (more Gaussians on the
image); coefficients of 1e-6 draw what the pinhole draws, through the lens path;
--option deterministic: the backward under torch.use_deterministic_algorithms(True) (on CUDA
the ordered backward: pair sums and a gather, no float atomics; the CPU's sums are ordered
always, so there the two should time alike).
Each repetition renders once without the option and once with it (in alternating order, so
that load changes hit both alike), and times loss.backward() alone (with the offsets, the
forward and loss.backward());
the loss is the benchmark's (random upstream gradients on colour, depth and weight). Prints the
median of each, their ratio, the median of the per-repetition ratios and the machine load
(`os.getloadavg`).
"""
import argparse
import math
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


def backward_seconds(scene, settings, upstream, device, clock=time.perf_counter,
                     absolute=False, with_forward=False) -> float:
    inputs = scene.rasterizer_inputs()
    if absolute:
        inputs["means2D"] = torch.zeros((scene.gaussians.means.shape[0], 4), device=device,
                                        requires_grad=True)
    if with_forward:
        if device.type == "cuda":
            torch.cuda.synchronize()
        forward_start = clock()
    color, _, depth, weight = GaussianRasterizer(settings)(**inputs)
    loss = ((color * upstream[0]).sum() + (depth * upstream[1]).sum()
            + (weight * upstream[2]).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - (forward_start if with_forward else start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--option", choices=("camera", "absolute", "offsets", "fisheye",
                                             "distortion", "pinhole_distortion",
                                             "deterministic"),
                        default="camera")
    parser.add_argument("--coefficients", type=float, nargs="+",
                        default=[-0.25, 0.08, 0.001, -0.0008, -0.01],
                        help="--option pinhole_distortion's (k1, k2, p1, p2[, k3[, k4-k6]])")
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

    jitter = (torch.rand((H, W, 2), generator=gen) - 0.5).to(device)
    offsets = args.option == "offsets"
    both_passes = args.option in ("offsets", "fisheye", "distortion", "pinhole_distortion")
    fisheye = plain._replace(fisheye=True, tanfovx=math.atan(plain.tanfovx),
                             tanfovy=math.atan(plain.tanfovy))
    distorted = fisheye._replace(fisheye_distortion=(0.05, -0.02, 0.004, -0.0005))
    if args.option == "distortion":
        plain = fisheye

    def run(mode, clock=time.perf_counter):
        settings, absolute = plain, False
        if mode == "with" and args.option == "camera":
            settings = plain._replace(**{f: getattr(plain, f).detach().clone().requires_grad_()
                                         for f in ("viewmatrix", "projmatrix", "campos")})
        elif mode == "with" and offsets:
            settings = plain._replace(subpixel_offset=jitter)
        elif mode == "with" and args.option == "fisheye":
            settings = fisheye
        elif mode == "with" and args.option == "distortion":
            settings = distorted
        elif mode == "with" and args.option == "pinhole_distortion":
            settings = plain._replace(pinhole_distortion=tuple(args.coefficients))
        elif mode == "with" and args.option == "absolute":
            absolute = True
        ordered = mode == "with" and args.option == "deterministic"
        torch.use_deterministic_algorithms(ordered)
        try:
            return backward_seconds(scene, settings, upstream, device, clock, absolute,
                                    both_passes)
        finally:
            torch.use_deterministic_algorithms(False)

    for _ in range(2):   # warm-up
        run("without")
        run("with")
    times = {"without": [], "with": []}
    load_before = os.getloadavg()
    for r in range(args.reps):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for mode in order:
            times[mode].append(run(mode, clock))
    load_after = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"garden 112k, {W}x{H}, {device.type}, {'SH degree 3' if args.sh else 'colours'}, "
          f"{args.reps} interleaved repetitions, {'CPU' if args.cpu_time else 'wall'} time, "
          f"{torch.get_num_threads()} threads; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    what = {"camera": "camera gradients", "absolute": "the absolute gradient",
            "offsets": "sample offsets", "fisheye": "the fisheye",
            "distortion": "the fisheye's distortion",
            "pinhole_distortion": "the pinhole's distortion",
            "deterministic": "deterministic algorithms"}[args.option]
    timed = "forward + backward" if both_passes else "backward"
    for k in ("without", "with"):
        print(f"  {timed} {k:7s} {what}: median {1000 * med[k]:8.2f} ms "
              f"(min {1000 * min(times[k]):.2f}, max {1000 * max(times[k]):.2f})")
    # The two runs of a repetition are adjacent in time: their ratio is the least disturbed by
    # other load on the machine.
    pairs = statistics.median(w / wo for w, wo in zip(times["with"], times["without"]))
    print(f"  ratio of the medians with / without: {med['with'] / med['without']:.4f}; median "
          f"of the per-repetition ratios: {pairs:.4f}")


if __name__ == "__main__":
    main()
