"""The CPU backend on a few small scenes against the PyTorch reference, in seconds: the first check
benchmarks/run_gpu.sh makes of a build on a new machine, since its CUDA-vs-CPU tests need the CPU
backend (on the H200, 2026-12-04, each of them died of a segmentation fault in its first CPU
forward, where the CUDA-only stages ran).

    python tools/cpu_probe.py               # exit 0: every output and gradient agrees
    python tools/cpu_probe.py --no-lanes    # the per-pixel loops instead of the eight lanes
    python tools/cpu_probe.py --no-cuda     # without making a CUDA context first

Prints one line a scene and step as it goes (flushed), so that a crash shows where it happened,
after a line naming the OpenMP runtimes and the extension mapped into the process and the CPU's
vector extensions: two OpenMP runtimes side by side (PyTorch's bundled libgomp and the one the
extension was linked against), or the AVX-512 clone of the lane loops, are what differ on a GPU
machine from the machines where the CPU backend passes.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import torch  # noqa: E402

import scenes  # noqa: E402  (tests/scenes.py)
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend  # noqa: E402
from diff_gaussian_rasterization_depth.reference import rasterize_reference  # noqa: E402

# (P, height, width): one pixel, a partial tile, and enough pixels (over kMinParallelItems,
# 4096) for the threaded loops.
CASES = ((16, 1, 1), (300, 37, 29), (2000, 64, 80))


def outputs_and_grads(render, scene, upstream):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(k in scenes.GRAD_NAMES)
              for k, v in scene.inputs.items()}
    color, _, depth, weight = render(leaves)
    loss = sum((m * u).sum() for m, u in zip((color, depth, weight), upstream))
    names = [k for k in scenes.GRAD_NAMES if leaves.get(k) is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)
    return [color, depth, weight], dict(zip(names, grads))


def runtime_report():
    """The OpenMP libraries and the extension's module mapped into this process, and the CPU's
    AVX2 / AVX-512 flags (Linux; elsewhere what can be read)."""
    mapped = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if any(k in name for k in ("gomp", "iomp", "libomp", "_C.", "_emulated_cuda")):
                    mapped.add(path)
    except OSError:
        mapped.add("(no /proc/self/maps)")
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if f in flags]
    return (f"cpu_probe: mapped {sorted(mapped)}; CPU {' '.join(vector) or 'flags unknown'}; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-lanes", action="store_true", help="the per-pixel loops")
    ap.add_argument("--no-cuda", action="store_true",
                    help="make no CUDA context first (by default one is made where a GPU is)")
    args = ap.parse_args(argv)
    cuda = not args.no_cuda and torch.cuda.is_available()
    if cuda:
        torch.zeros(1, device="cuda").sum().item()  # as in a process that also renders on CUDA
    _backend._ext().set_cpu_tuning(lanes=not args.no_lanes, power_bound=True)
    print(runtime_report(), flush=True)
    worst = 0.0
    for seed, (P, H, W) in enumerate(CASES):
        scene = scenes.make_scene(4200 + seed, P=P, height=H, width=W, sh_degree=1)
        gen = torch.Generator().manual_seed(seed)
        upstream = (torch.randn(3, H, W, generator=gen), torch.randn(H, W, generator=gen),
                    torch.randn(H, W, generator=gen))
        print(f"P={P} {H}x{W}: CPU backend ...", end=" ", flush=True)
        got_maps, got = outputs_and_grads(
            lambda leaves: GaussianRasterizer(scene.settings)(**leaves), scene, upstream)
        print("reference ...", end=" ", flush=True)
        want_maps, want = outputs_and_grads(
            lambda leaves: rasterize_reference(**leaves, raster_settings=scene.settings),
            scene, upstream)
        errors = [(a - b).abs().max().item() / max(1.0, b.abs().max().item())
                  for a, b in zip(got_maps, want_maps)]
        errors += [(got[k] - want[k]).abs().max().item() / max(1e-12, want[k].abs().max().item())
                   for k in want if want[k] is not None and got[k] is not None]
        worst = max(worst, max(errors))
        print(f"largest error {max(errors):.2e} of scale", flush=True)
    # Loose bounds: a crash or a wrong path, not rounding, is what this looks for (the tests
    # hold the backend to 1e-5 and 1e-4).
    ok = worst < 1e-3
    print(f"cpu_probe: {'ok' if ok else 'FAILED'} (lanes {'off' if args.no_lanes else 'on'}, "
          f"{torch.get_num_threads()} torch threads, CUDA context {'made' if cuda else 'none'}, "
          f"largest error {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
