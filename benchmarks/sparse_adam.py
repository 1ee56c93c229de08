"""SparseGaussianAdam.step against dense torch.optim.Adam.step on 3DGS-shaped parameters.

1M Gaussians x 59 floats by default (xyz 3, f_dc 3, f_rest 45, opacity 1, scaling 3,
rotation 4: one parameter group each, as 3DGS), with a fresh random visibility mask per step.
On the CPU unless --device cuda. Prints the median time per step and `uptime` (load matters).

    python benchmarks/sparse_adam.py [--gaussians 1000000] [--visible 1.0 0.5 0.1] [--reps 5]
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a source checkout built in place; an install wins when present
    sys.path.append(str(REPO))

import torch  # noqa: E402

from diff_gaussian_rasterization_depth import SparseGaussianAdam  # noqa: E402

SHAPES = {"xyz": (3,), "f_dc": (1, 3), "f_rest": (15, 3), "opacity": (1,), "scaling": (3,),
          "rotation": (4,)}


def make_groups(n, device, gen):
    groups = []
    for name, shape in SHAPES.items():
        p = torch.randn((n,) + shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn((n,) + shape, generator=gen).to(device)
        groups.append({"params": [p], "lr": 1e-3, "name": name})
    return groups


def timed(step, reps, device):
    times = []
    for _ in range(reps + 1):          # the first call allocates the moments: not counted
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaussians", type=int, default=1_000_000)
    ap.add_argument("--visible", type=float, nargs="+", default=[1.0, 0.5, 0.1])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    n, dev = args.gaussians, args.device
    gen = torch.Generator().manual_seed(0)
    print(f"{n} Gaussians x {sum(torch.Size(s).numel() for s in SHAPES.values())} floats on "
          f"{dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")

    rows = []
    for label, kwargs in (("torch.optim.Adam (default)", {}),
                          ("torch.optim.Adam (foreach)", {"foreach": True}),
                          ("torch.optim.Adam (fused)", {"fused": True})):
        opt = None                     # frees the previous optimizer's memory first
        try:
            opt = torch.optim.Adam(make_groups(n, dev, gen), lr=0.0, eps=1e-15, **kwargs)
            rows.append((label, timed(opt.step, args.reps, dev)))
        except (RuntimeError, ValueError) as e:   # fused is not available everywhere
            rows.append((label + f": unavailable ({str(e).splitlines()[0][:60]})", None))
    opt = None
    sparse = SparseGaussianAdam(make_groups(n, dev, gen), lr=0.0, eps=1e-15)
    for fraction in args.visible:
        masks = [(torch.rand(n, generator=gen) < fraction).to(dev) for _ in range(args.reps + 1)]
        it = iter(masks)
        rows.append((f"SparseGaussianAdam, {fraction:.0%} visible",
                     timed(lambda: sparse.step(next(it), n), args.reps, dev)))
    dense = rows[0][1]
    for label, t in rows:
        if t is None:
            print(f"  {label}")
        else:
            print(f"  {label:<40s} {t * 1e3:9.1f} ms   {dense / t:5.2f}x dense default")
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
