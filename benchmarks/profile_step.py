#!/usr/bin/env python3
"""One training step of each rasterizer per garden configuration, marked for Nsight Compute.

    ncu --clock-control none --profile-from-start off --nvtx --section SpeedOfLight ... \
        python benchmarks/profile_step.py --scenes 112k,1m --scales 1,2 --impls ours,gsplat

Timings (bench.py) say how long a step takes; a kernel's hardware counters say what bounds it
(occupancy, memory or issue throughput, stalls), which is what an account of a missed target
needs. For each (scene, resolution, implementation) this runs `--warmup` unprofiled steps, then
one forward + backward with bench.py's loss (colour, depth and weight) between
cudaProfilerStart and cudaProfilerStop, inside an NVTX range named "impl scene WxH": with
`--profile-from-start off --nvtx`, ncu reports exactly that step's kernels, each under the name
of its step. benchmarks/run_gpu.sh's `profile` stage runs it under ncu. On the CPU (the
run_gpu.sh dry run, the harness test) the steps run without the profiler.
"""
import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

from benchmarks.bench import IMPLS, _parse_list, _upstream, _zero_grads  # noqa: E402
from benchmarks.scenes import garden_scene  # noqa: E402


def profile_steps(device: torch.device, scene_names, scales, impl_names, warmup: int,
                  data=None) -> list:
    """Runs the marked steps; returns (label, milliseconds of the marked step or the reason it
    did not run) per configuration, in order."""
    cuda = device.type == "cuda"
    impls = {name: IMPLS[name]() for name in impl_names}
    done = []
    for scene_name in scene_names:
        for scale in scales:
            scene = garden_scene(scene_name, camera=0, scale=scale, seed=0, device=device,
                                 requires_grad=True, data=data)
            upstream = _upstream(scene, 0)
            cam = scene.camera
            for name, impl in impls.items():
                label = f"{name} {scene_name} {cam.width}x{cam.height}"
                why_not = impl.available(device)
                if why_not is not None:
                    done.append((label, why_not))
                    print(f"{label}: skipped ({why_not})", flush=True)
                    continue
                p = impl.prepare(scene, upstream)
                for _ in range(warmup):
                    _zero_grads(scene)
                    p.loss(p.forward()).backward()
                _zero_grads(scene)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.profiler.start()
                    torch.cuda.nvtx.range_push(label)
                t0 = time.perf_counter()
                p.loss(p.forward()).backward()
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.nvtx.range_pop()
                    torch.cuda.profiler.stop()
                ms = (time.perf_counter() - t0) * 1000.0
                done.append((label, ms))
                print(f"{label}: marked step {ms:.2f} ms (under the profiler, if any)", flush=True)
                _zero_grads(scene)
            del scene, upstream
            if cuda:
                torch.cuda.empty_cache()
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda when available, else cpu")
    ap.add_argument("--scenes", default="112k,1m", help="comma-separated, as bench.py's")
    ap.add_argument("--scales", default="1,2", help="resolution factors of 648x420")
    ap.add_argument("--impls", default="ours,gsplat",
                    help=f"comma-separated, some of {', '.join(IMPLS)}")
    ap.add_argument("--warmup", type=int, default=2, help="unprofiled steps before the marked one")
    ap.add_argument("--data", default=None, help="garden_points.npz (default: see scenes.py)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    impl_names = _parse_list(args.impls)
    unknown = [i for i in impl_names if i not in IMPLS]
    if unknown or args.warmup < 0:
        ap.error(f"--impls: unknown {unknown}" if unknown else "--warmup must be >= 0")
    done = profile_steps(device, _parse_list(args.scenes),
                         [float(s) for s in _parse_list(args.scales)], impl_names, args.warmup,
                         args.data)
    ours_ran = any(isinstance(v, float) for label, v in done if label.startswith("ours "))
    return 0 if ours_ran else 1


if __name__ == "__main__":
    sys.exit(main())
