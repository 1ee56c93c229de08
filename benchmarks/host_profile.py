#!/usr/bin/env python3
"""Where a training step's time goes besides the kernels: one garden frame's forward, loss and
backward under torch's profiler (host and device).

    python benchmarks/host_profile.py [--device cuda] [--scene 112k] [--scale 1] [--steps 20]
                                      [--json F]

The issue's 112k target (forward + backward under 0.5 ms at 648x420) is mostly not kernel time
on an H200 (doc/performance.md, "CUDA": kernels about 0.6 ms of the 1.3 ms step). This prints,
per step: the wall time (synchronized), the device's busy time (the kernels' and copies' own
time), the kernel launches, the host's time blocked in synchronizing calls (the pair count's
read-back), and the host operators that cost the most, so that the step's account can be made
from one run. On a CPU (the dry run) the device columns are 0.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.scenes import garden_scene  # noqa: E402

# Runtime calls that block the host until the device catches up (the forward's one read of the
# pair count is a device-to-host copy).
BLOCKING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpyAsync",
            "cudaEventSynchronize")
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def device_time(event) -> float:
    """An averaged event's own time on the device, in us (the attribute's name moved)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def make_step(scene, device):
    from diff_gaussian_rasterization_depth import GaussianRasterizer
    settings = scene.raster_settings()
    inputs = {k: (v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v)
              for k, v in scene.rasterizer_inputs().items()}
    gen = torch.Generator().manual_seed(0)
    upstream = []

    def step():
        color, _, depth, weight = GaussianRasterizer(settings)(**inputs)
        if not upstream:
            upstream.extend(torch.randn(t.shape, generator=gen).to(device)
                            for t in (color, depth, weight))
        loss = ((color * upstream[0]).sum() + (depth * upstream[1]).sum()
                + (weight * upstream[2]).sum())
        loss.backward()
        for v in inputs.values():
            if torch.is_tensor(v):
                v.grad = None
    return step


def profile_step(step, steps: int, device) -> dict:
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(5):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    per_step = 1.0 / steps
    busy_us = sum(device_time(e) for e in events)
    launches = sum(e.count for e in events if e.key in LAUNCHES)
    blocked_us = sum(e.self_cpu_time_total for e in events if e.key in BLOCKING)
    runtime_us = sum(e.self_cpu_time_total for e in events if e.key.startswith(("cuda", "cu")))
    top = sorted((e for e in events if not e.key.startswith(("cuda", "cu"))),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
    return {
        "step_ms": round(wall_ms, 3),
        "device_busy_ms": round(busy_us * per_step / 1e3, 3),
        "kernel_launches": round(launches * per_step, 1),
        "host_blocked_ms": round(blocked_us * per_step / 1e3, 3),
        "host_runtime_calls_ms": round(runtime_us * per_step / 1e3, 3),
        "top_host_ops_us": [[e.key, round(e.self_cpu_time_total * per_step, 1),
                             round(e.count * per_step, 1)] for e in top],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="also write the figures to this file, on one line")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    scene = garden_scene(args.scene, camera=0, scale=args.scale, device=device)
    report = profile_step(make_step(scene, device), args.steps, device)
    report.update(scene=f"{args.scene} x{args.scale:g}", device=str(device),
                  torch=torch.__version__, load_average_1min=round(os.getloadavg()[0], 2))
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
