#!/usr/bin/env python3
"""CPU backend speed: forward, backward and both on the garden frame, 1 and 2 threads, the work
counts and the work model, and gsplat's PyTorch reference side by side when gsplat is installed.

    python benchmarks/cpu_bench.py [--scene 112k] [--scale 1] [--reps 5] [--threads 1,2]
                                   [--json PATH] [--gsplat-scene 2k] [--quick]

- The machine's load is printed with the figures: the load average, and the share of the cores
  that other processes used while the benchmark ran (from /proc/stat less this process's own
  CPU time). Absolute times on a shared machine are noisy; the thread counts are interleaved
  repetition by repetition, so their ratio is measured under the same load.
- Times are medians over --reps after a warm-up: forward without autograd; backward alone (a
  loss on colour, depth and weight with fixed random upstream gradients); forward + backward.
  The render and render-backward stages are timed inside the backend (`_C.cpu_stage_seconds`).
- Work counts (`_C.cpu_render_work`): tile pairs; evaluations (a splat tested at a pixel, up to
  where that pixel stops); exps (evaluations within the power bound, which reach the
  exponential); blends; lane evaluations (what the eight-pixel groups actually test). The work
  model: 28 flops an evaluation (13, plus about 15 for an exponential) and 14 a blend, at 30 GFLOP/s
  on the two cores, is the time the render should take.
- gsplat (optional): `gsplat.rendering._rasterization`, its PyTorch rasterizer (gradients by
  autograd) and its only path on a CPU, with render_mode="RGB+ED" on a subsample small enough
  for it, against this backend on the same scene. Three pieces it calls are CUDA-only in gsplat
  1.5.3 and nerfacc; `gsplat_cpu_twins.py` stands in for them in PyTorch. The mean difference
  of the two colour and alpha images is printed, to show that both render the same thing.
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
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.scenes import garden_scene  # noqa: E402
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend  # noqa: E402
from diff_gaussian_rasterization_depth._validation import check_gaussians  # noqa: E402

FLOPS_PER_EVALUATION = 13 + 15   # the power and the alpha test, plus an exponential
FLOPS_PER_BLEND = 14
MODEL_FLOPS_PER_SECOND = 30e9    # two cores, scalar-ish code: the issue's work model


class LoadMeter:
    """Other processes' share of the cores between start() and stop()."""

    @staticmethod
    def _busy_jiffies():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle

    def start(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_jiffies(), os.times()
        return self

    def stop(self) -> dict:
        hz = os.sysconf("SC_CLK_TCK")
        wall = time.perf_counter() - self.t0
        busy = (self._busy_jiffies() - self.busy0) / hz
        own = (os.times().user + os.times().system) - (self.own0.user + self.own0.system)
        cores = os.cpu_count() or 1
        return {"cores": cores, "loadavg_1min": os.getloadavg()[0],
                "others_cores_used": max(0.0, (busy - own) / wall)}


def upstream_grads(H, W):
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(3, H, W, generator=gen), torch.randn(H, W, generator=gen),
            torch.randn(H, W, generator=gen))


def time_ours(scene, threads, up):
    """One repetition: seconds of forward, backward, both, and the backend's stage times."""
    torch.set_num_threads(threads)
    settings = scene.raster_settings()
    inputs = scene.rasterizer_inputs()
    rasterizer = GaussianRasterizer(settings)
    with torch.no_grad():
        t0 = time.perf_counter()
        rasterizer(**inputs)
        forward = time.perf_counter() - t0
    stages = dict(_backend._ext().cpu_stage_seconds())
    scene.gaussians.zero_grad()
    t0 = time.perf_counter()
    color, _, depth, weight = rasterizer(**inputs)
    t1 = time.perf_counter()
    loss = (color * up[0]).sum() + (depth * up[1]).sum() + (weight * up[2]).sum()
    loss.backward()
    t2 = time.perf_counter()
    stages.update({k: v for k, v in _backend._ext().cpu_stage_seconds().items()
                   if k.endswith("backward")})
    return {"forward": forward, "backward": t2 - t1, "both": t2 - t0, **stages}


def forward_state(scene):
    """The backend's config and forward state (_C's list: radii, means2d, conic_opacity,
    features, point_list, tile_ranges, pixel_state, n_contrib, median_contrib) for this frame,
    from a float32 CPU forward."""
    settings = scene.raster_settings()
    inputs = {k: (v.detach() if torch.is_tensor(v) else v)
              for k, v in scene.rasterizer_inputs().items()}
    out = check_gaussians(inputs["means3D"], inputs["means2D"], inputs["opacities"],
                          inputs.get("shs"), inputs.get("colors_precomp"), inputs["scales"],
                          inputs["rotations"], None, None, settings)
    means3D, opacities, sh, colors, scales, rotations, cov, checked = out
    config = _backend.make_config(checked)
    gaussians = _backend.make_gaussians(means3D, opacities, sh, colors, scales, rotations, cov)
    return config, _backend.forward(config, gaussians)[-1]


def work_counts(scene) -> dict:
    """The backend's work counts for this frame (float32 CPU forward)."""
    config, state = forward_state(scene)
    pairs, evaluations, exps, blends, lane_evaluations = _backend._ext().cpu_render_work(
        config, state)
    flops = evaluations * FLOPS_PER_EVALUATION + blends * FLOPS_PER_BLEND
    return {"pairs": pairs, "evaluations": evaluations, "exps": exps, "blends": blends,
            "lane_evaluations": lane_evaluations,
            "model_render_seconds": flops / MODEL_FLOPS_PER_SECOND}


def median_table(runs):
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def gsplat_side_by_side(points: int, reps: int) -> dict:
    try:
        from benchmarks import gsplat_cpu_twins
        gsplat_cpu_twins.install()
        from gsplat.rendering import _rasterization
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        print(f"gsplat: not installed or not importable ({type(e).__name__}: {e}); skipped. "
              "`pip install gsplat==1.5.3` adds the comparison.")
        return {}
    scene = garden_scene(str(points), camera=0, scale=0.25, seed=0, requires_grad=True)
    H, W = scene.camera.height, scene.camera.width
    up = upstream_grads(H, W)

    def ours():
        color, _, depth, weight = GaussianRasterizer(scene.raster_settings())(
            **scene.rasterizer_inputs())
        return (color * up[0]).sum() + (depth * up[1]).sum() + (weight * up[2]).sum()

    def theirs():
        gs = scene.gsplat_inputs()
        bg = scene.raster_settings().bg[None]
        render, alpha, _ = _rasterization(**gs, render_mode="RGB+ED", backgrounds=bg)
        rgb, depth = render[0, ..., :3].permute(2, 0, 1), render[0, ..., 3]
        return ((rgb * up[0]).sum() + (depth * up[1]).sum()
                + (alpha[0, ..., 0] * up[2]).sum())

    out = {"points": len(scene.gaussians), "width": W, "height": H}
    try:
        with torch.no_grad():
            render, alpha, _ = _rasterization(**scene.gsplat_inputs(), render_mode="RGB+ED",
                                              backgrounds=scene.raster_settings().bg[None])
            color, _, _, weight = GaussianRasterizer(scene.raster_settings())(
                **scene.rasterizer_inputs())
    except Exception as e:  # noqa: BLE001 - its reference may need more than the CPU has
        print(f"gsplat: its PyTorch reference did not run on the CPU ({type(e).__name__}: {e}); "
              "skipped.")
        return {}
    # Not equal to rounding: gsplat clamps alpha at 0.999 (the original 0.99) and stops a pixel
    # at T <= 1e-4, and its antialiasing and pixel-centre conventions differ slightly.
    out["color_mean_abs_diff"] = float((render[0, ..., :3].permute(2, 0, 1) - color).abs().mean())
    out["alpha_mean_abs_diff"] = float((alpha[0, ..., 0] - weight).abs().mean())
    for name, fn in (("ours", ours), ("gsplat_reference", theirs)):
        fwd, both = [], []
        for r in range(reps + 1):
            with torch.no_grad():
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
            scene.gaussians.zero_grad()
            t2 = time.perf_counter()
            fn().backward()
            t3 = time.perf_counter()
            if r:
                fwd.append(t1 - t0)
                both.append(t3 - t2)
        out[name] = {"forward": statistics.median(fwd), "both": statistics.median(both)}
    out["ratio_forward"] = out["gsplat_reference"]["forward"] / out["ours"]["forward"]
    out["ratio_both"] = out["gsplat_reference"]["both"] / out["ours"]["both"]
    return out


ABLATIONS = {  # name -> set_cpu_tuning arguments: each technique off alone
    "all on": dict(lanes=True, power_bound=True),
    "no lanes (per-pixel loop)": dict(lanes=False, power_bound=True),
    "no power bound": dict(lanes=True, power_bound=False),
}


def ablation(scene, threads, up, reps) -> dict:
    """Forward and forward + backward with each technique off alone, interleaved."""
    ext = _backend._ext()
    runs = {name: [] for name in ABLATIONS}
    try:
        for _ in range(reps):
            for name, tuning in ABLATIONS.items():
                ext.set_cpu_tuning(**tuning)
                runs[name].append(time_ours(scene, threads, up))
    finally:
        ext.set_cpu_tuning(**ABLATIONS["all on"])
    table = {name: median_table(r) for name, r in runs.items()}
    print(f"ablation ({threads} threads, medians of {reps}; ratio = time / all on):")
    base = table["all on"]
    for name, m in table.items():
        print(f"  {name:<28} forward {1e3 * m['forward']:7.1f} ms ({m['forward'] / base['forward']:4.2f}x)"
              f"  both {1e3 * m['both']:7.1f} ms ({m['both'] / base['both']:4.2f}x)")
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--camera", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--gsplat-points", type=int, default=2000,
                    help="Gaussians of the gsplat side-by-side scene (0: leave it out)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--ablation", action="store_true",
                    help="also time each technique of the float path switched off alone")
    ap.add_argument("--quick", action="store_true",
                    help="a small frame and one repetition (a smoke test of the harness)")
    args = ap.parse_args(argv)
    if args.quick:
        args.scene, args.scale, args.reps, args.gsplat_points = "3000", 0.25, 1, 300
    threads = [int(t) for t in args.threads.split(",")]

    scene = garden_scene(args.scene, camera=args.camera, scale=args.scale, seed=0,
                         requires_grad=True)
    H, W = scene.camera.height, scene.camera.width
    up = upstream_grads(H, W)
    meter = LoadMeter().start()
    for t in threads:                      # warm-up
        time_ours(scene, t, up)
    runs = {t: [] for t in threads}
    for _ in range(args.reps):             # interleaved, so the ratio sees one load
        for t in threads:
            runs[t].append(time_ours(scene, t, up))
    load = meter.stop()
    work = work_counts(scene)
    result = {"scene": args.scene, "points": len(scene.gaussians), "width": W, "height": H,
              "reps": args.reps, "load": load, "work": work,
              "threads": {t: median_table(runs[t]) for t in threads}}

    print(f"garden {args.scene} ({len(scene.gaussians):,} Gaussians) at {W}x{H}, camera "
          f"{args.camera}, medians of {args.reps}")
    print(f"load: {load['cores']} cores, load average {load['loadavg_1min']:.2f}, other "
          f"processes used {load['others_cores_used']:.2f} cores during the run")
    print(f"{'threads':>8} {'forward':>10} {'backward':>10} {'both':>10} {'render':>10} "
          f"{'render_bw':>10}  (ms)")
    for t, m in result["threads"].items():
        print(f"{t:>8} {1e3 * m['forward']:>10.1f} {1e3 * m['backward']:>10.1f} "
              f"{1e3 * m['both']:>10.1f} {1e3 * m['render']:>10.1f} "
              f"{1e3 * m['render_backward']:>10.1f}")
    if len(threads) > 1:
        a, b = threads[0], threads[-1]
        ra, rb = result["threads"][a], result["threads"][b]
        result["speedup"] = {k: ra[k] / rb[k] for k in ("forward", "backward", "both")}
        print(f"{b} threads vs {a}: forward {result['speedup']['forward']:.2f}x, backward "
              f"{result['speedup']['backward']:.2f}x, both {result['speedup']['both']:.2f}x")
    best = result["threads"][max(threads)]
    print(f"work: {work['pairs']:,} tile pairs, {work['evaluations']:,} evaluations, "
          f"{work['exps']:,} exps ({100 * work['exps'] / max(1, work['evaluations']):.0f}%), "
          f"{work['blends']:,} blends, {work['lane_evaluations']:,} lane evaluations")
    print(f"work model: render {1e3 * work['model_render_seconds']:.1f} ms at 30 GFLOP/s; "
          f"measured {1e3 * best['render']:.1f} ms with {max(threads)} threads "
          f"({best['render'] / work['model_render_seconds']:.2f}x the model)")
    if args.ablation:
        result["ablation"] = ablation(scene, max(threads), up, args.reps)
    result["gsplat"] = (gsplat_side_by_side(args.gsplat_points, max(1, args.reps // 2))
                        if args.gsplat_points > 0 else None)
    if result["gsplat"]:
        g = result["gsplat"]
        print(f"gsplat PyTorch reference (RGB+ED) on {g['points']} Gaussians at "
              f"{g['width']}x{g['height']}: forward {1e3 * g['gsplat_reference']['forward']:.1f} "
              f"ms vs ours {1e3 * g['ours']['forward']:.2f} ms ({g['ratio_forward']:.0f}x); "
              f"forward+backward {1e3 * g['gsplat_reference']['both']:.1f} ms vs ours "
              f"{1e3 * g['ours']['both']:.2f} ms ({g['ratio_both']:.0f}x); images agree to "
              f"{g['color_mean_abs_diff']:.1e} (colour) and {g['alpha_mean_abs_diff']:.1e} "
              "(alpha) mean absolute difference")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
