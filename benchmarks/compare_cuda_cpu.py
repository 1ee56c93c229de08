#!/usr/bin/env python3
"""Largest CUDA-vs-CPU differences of outputs and gradients on a garden frame, written as JSON.

    python benchmarks/compare_cuda_cpu.py --json out.json     # garden 112k at 648x420
    python benchmarks/compare_cuda_cpu.py --scene 2k --scale 0.25 --device cpu   # harness check

Both backends render the same scene (benchmarks/scenes.py, camera 0, seed 0); gradients come from
random upstream gradients on colour, depth and weight, one map at a time and all three together.
For each output: the largest absolute difference, the largest |value| of the CPU result, the mean
difference and the fraction of elements that differ by more than 1e-5; for radii, how many
differ; for each gradient: the largest absolute difference, the largest |CPU value| and
|cuda - cpu| / |cpu| in the 2-norm. `optional`: the same for one call with 4 feature channels,
the median and inverse depth (the depth channel of 1/z), gradients of a loss on every map.
The tests (tests/test_cuda.py) decide pass or fail; this records the figures for
doc/performance.md.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))   # appended: an installed build must win over the source tree

import torch  # noqa: E402

from benchmarks.scenes import garden_scene  # noqa: E402

MAPS = ("color", "depth", "weight")
MODES = MAPS + ("all",)
OPTIONAL_MAPS = MAPS + ("feature_map", "median")
CHANNELS = 4
NOTICEABLE = 1e-5      # the forward tolerance of DESIGN.md


def render_with_grads(scene, device: str, upstream: dict, features=None, modes=MODES):
    """Outputs (on the CPU) and, per loss mode, gradients of every input (on the CPU). With
    `features`, the call also renders them, the median and the depth channel of 1/z."""
    from diff_gaussian_rasterization_depth import GaussianRasterizer
    settings = scene.raster_settings()
    settings = settings._replace(**{f: getattr(settings, f).to(device)
                                    for f in ("bg", "viewmatrix", "projmatrix", "campos")})
    inputs = dict(scene.rasterizer_inputs())
    options = {}
    if features is not None:
        inputs["features"] = features
        options = dict(median_depth=True, inverse_depth=True)
    leaves = {k: v.detach().to(device).requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
    out = GaussianRasterizer(settings)(**leaves, **options)
    radii = out[1]
    names_out = OPTIONAL_MAPS if features is not None else MAPS
    maps = dict(zip(names_out, (out[0],) + tuple(out[2:])))
    names = [n for n, v in leaves.items() if v.requires_grad]
    grads = {}
    for mode in modes:
        used = list(maps) if mode == "all" else [mode]
        g = torch.autograd.grad([maps[k] for k in used], [leaves[n] for n in names],
                                [upstream[k].to(device) for k in used], retain_graph=True,
                                allow_unused=True)
        grads[mode] = {n: (torch.zeros_like(leaves[n]) if x is None else x).cpu()
                       for n, x in zip(names, g)}
    outputs = {k: v.detach().cpu() for k, v in maps.items()}
    return outputs, radii.cpu(), grads


def differences(got: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (got.double() - ref.double()).abs()
    empty = ref.numel() == 0
    return {"max_abs_diff": 0.0 if empty else float(d.max()),
            "max_abs_ref": 0.0 if empty else float(ref.abs().max()),
            "mean_abs_diff": 0.0 if empty else float(d.mean()),
            "frac_over_1e-5": 0.0 if empty else float((d > NOTICEABLE).double().mean()),
            "rel_norm_diff": float(d.norm() / ref.double().norm().clamp_min(1e-30))}


def compare(scene_name="112k", scale=1.0, sh=False, device="cuda", against="cpu",
            seed=0) -> dict:
    scene = garden_scene(scene_name, camera=0, scale=scale, seed=seed, sh=sh, device="cpu")
    H, W = scene.camera.height, scene.camera.width
    gen = torch.Generator().manual_seed(2_000_003 + seed)
    upstream = {"color": torch.randn(3, H, W, generator=gen),
                "depth": torch.randn(H, W, generator=gen),
                "weight": torch.randn(H, W, generator=gen)}
    out_ref, radii_ref, grads_ref = render_with_grads(scene, against, upstream)
    out, radii, grads = render_with_grads(scene, device, upstream)
    features = torch.rand(len(scene.gaussians), CHANNELS, generator=gen)
    upstream.update(feature_map=torch.randn(CHANNELS, H, W, generator=gen),
                    median=torch.randn(H, W, generator=gen))
    opt_ref, _, opt_grads_ref = render_with_grads(scene, against, upstream, features, ("all",))
    opt, _, opt_grads = render_with_grads(scene, device, upstream, features, ("all",))
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "scene": scene_name, "n_gaussians": len(scene.gaussians), "width": W, "height": H,
        "sh": sh, "device": device, "against": against, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "visible_gaussians": int((radii_ref > 0).sum()),
        "outputs": {k: differences(out[k], out_ref[k]) for k in MAPS},
        "radii_mismatches": int((radii != radii_ref).sum()),
        "gradients": {mode: {n: differences(grads[mode][n], grads_ref[mode][n])
                             for n in grads_ref[mode]} for mode in MODES},
        "optional": {
            "call": f"features (P, {CHANNELS}), median_depth=True, inverse_depth=True",
            "outputs": {k: differences(opt[k], opt_ref[k]) for k in OPTIONAL_MAPS},
            "gradients": {"all": {n: differences(opt_grads["all"][n], opt_grads_ref["all"][n])
                                  for n in opt_grads_ref["all"]}}},
    }


def print_summary(result: dict):
    print(f"{result['device']} vs {result['against']}: {result['scene']} "
          f"({result['n_gaussians']} Gaussians, {result['visible_gaussians']} visible) at "
          f"{result['width']}x{result['height']}; radii differing: {result['radii_mismatches']}")
    for k, d in result["outputs"].items():
        print(f"  {k:8s} max |diff| {d['max_abs_diff']:.3g} (max |ref| {d['max_abs_ref']:.3g}), "
              f"{100 * d['frac_over_1e-5']:.4f}% over 1e-5")
    for mode, per_input in result["gradients"].items():
        print_worst(f"grad[{mode}]", per_input)
    optional = result["optional"]
    print(f"  {optional['call']}:")
    for k, d in optional["outputs"].items():
        print(f"    {k:11s} max |diff| {d['max_abs_diff']:.3g} (max |ref| "
              f"{d['max_abs_ref']:.3g}), {100 * d['frac_over_1e-5']:.4f}% over 1e-5")
    print_worst("  grad[all]", optional["gradients"]["all"])


def print_worst(label: str, per_input: dict):
    worst = max(per_input.items(), key=lambda kv: kv[1]["rel_norm_diff"])
    print(f"  {label} worst {worst[0]}: rel 2-norm diff {worst[1]['rel_norm_diff']:.3g}, "
          f"max |diff| {worst[1]['max_abs_diff']:.3g} (max |ref| {worst[1]['max_abs_ref']:.3g})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default="112k")
    ap.add_argument("--scale", type=float, default=1.0, help="of 648x420")
    ap.add_argument("--sh", action="store_true", help="SH degree 3 instead of colours")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--against", default="cpu", choices=("cuda", "cpu"))
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args(argv)
    if "cuda" in (args.device, args.against) and not torch.cuda.is_available():
        ap.error("this PyTorch sees no CUDA device")
    result = compare(args.scene, args.scale, args.sh, args.device, args.against)
    print_summary(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
