#!/usr/bin/env python3
"""Peak memory of one call of the CUDA backend, on a GPU or without one.

    python benchmarks/peak_memory.py [--scenes 112k,1m] [--scales 1,2] [--sh] [--device cuda]
                                     [--tuning compact_state=0,...]

The extra memory at the peak of one forward (no autograd) and of one forward + backward (a loss
on colour, depth and weight, the outputs dropped before the backward) on the garden frames,
over what was allocated before the call, as bench.py's peak columns. Without a GPU (the
default, `--device cpu`) the emulated CUDA backend runs the call: its glue allocates through
PyTorch the very buffers the CUDA glue does (CUB's scratch sized as CUB sizes it, but for the
split lists' slots, which follow the emulation's one multiprocessor), and torch's profiler
records each allocation and free. With `--device cuda`: `torch.cuda.max_memory_allocated`.
`peak_extra_bytes` is what tests/test_peak_memory.py measures with.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

MIB = 2.0 ** 20


def measures_on_cpu() -> bool:
    """Whether this PyTorch's profiler reports each CPU allocation with its size, which the
    measurement without a GPU reads (PyTorch 2.x; 1.12's profiler has no such events)."""
    try:
        from torch._C import _profiler
    except ImportError:
        return False
    return hasattr(_profiler, "_ExtraFields_Allocation")


def _profiled_peak(call) -> int:
    """Bytes allocated at the peak of call() on the CPU, over those at its start, from the
    allocation events of torch's profiler (each with its size, negative when freed)."""
    from torch._C import _profiler
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events = []

    def collect(nodes):
        for node in nodes:
            if isinstance(node.extra_fields, _profiler._ExtraFields_Allocation):
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            collect(node.children)

    collect(prof.profiler.kineto_results.experimental_event_tree())
    events.sort(key=lambda event: event[0])
    held = peak = 0
    for _, size in events:
        held += size
        peak = max(peak, held)
    return peak


def peak_extra_bytes(call, device) -> int:
    """The extra memory, in bytes, at the peak of call() on `device` ("cuda", or the CPU that
    also runs the emulated CUDA backend)."""
    if torch.device(device).type != "cuda":
        return _profiled_peak(call)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="112k")
    ap.add_argument("--scales", default="1")
    ap.add_argument("--sh", action="store_true", help="SH of degree 3 instead of colours")
    ap.add_argument("--device", default="cpu", help="cpu (the emulated CUDA backend) or cuda")
    ap.add_argument("--tuning", default="",
                    help="CUDA switches off the defaults, as name=0/1 pairs separated by commas "
                         "(_backend.set_cuda_tuning's names), e.g. compact_state=0")
    args = ap.parse_args()
    switches = {name: bool(int(value)) for name, value in
                (item.split("=") for item in args.tuning.split(",") if item)}

    import contextlib

    from benchmarks.cpu_bench import work_counts
    from benchmarks.scenes import garden_scene
    from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend

    device = torch.device(args.device)
    if device.type == "cuda":
        backend = contextlib.nullcontext
    elif _backend.has_emulated_cuda():
        def backend():
            return _backend.emulated_cuda("asc")
    else:
        sys.exit("the emulated CUDA backend is not built: see the README's test set-up")
    if device.type != "cuda" and not measures_on_cpu():
        sys.exit(f"PyTorch {torch.__version__}'s profiler does not report allocations: measure "
                 "with --device cuda, or without a GPU under PyTorch 2.x")
    print(f"{'scene':6s} {'scale':>5s} {'Gaussians':>10s} {'pairs':>10s} {'pixels':>9s} "
          f"{'fwd MiB':>8s} {'fwd+bwd MiB':>11s}")
    for name in args.scenes.split(","):
        for scale in (float(s) for s in args.scales.split(",")):
            scene = garden_scene(name, camera=0, scale=scale, seed=0, sh=args.sh, device=device,
                                 requires_grad=True)
            pairs = work_counts(garden_scene(name, camera=0, scale=scale, seed=0,
                                             sh=args.sh))["pairs"]
            settings = scene.raster_settings()
            pixels = settings.image_height * settings.image_width

            def forward():
                with torch.no_grad():
                    GaussianRasterizer(settings)(**scene.rasterizer_inputs())

            def forward_backward():
                # The outputs go before the backward, as in bench.py.
                color, radii, depth, weight = GaussianRasterizer(settings)(
                    **scene.rasterizer_inputs())
                loss = color.sum() + depth.sum() + weight.sum()
                del color, radii, depth, weight
                loss.backward()

            with backend():
                _backend.set_cuda_tuning(**switches)
                try:
                    fwd = peak_extra_bytes(forward, device) / MIB
                    both = peak_extra_bytes(forward_backward, device) / MIB
                finally:
                    _backend.set_cuda_tuning()
            print(f"{name:6s} {scale:5g} {len(scene.gaussians):10d} {pairs:10d} {pixels:9d} "
                  f"{fwd:8.2f} {both:11.2f}", flush=True)


if __name__ == "__main__":
    main()
