"""Pruning by contribution: which Gaussians can go with the least loss?

The analytic scene of examples/sparse_view_depth.py (a floor, a wall and three spheres) is seen
by 24 cameras; every 8th is held out and the other 21 are the training views. 3,000 Gaussians
from a random initialization are fitted (photometric loss), then a fraction of them is removed
by each of four rules, the same number by each, and the rest fine-tuned briefly:

  opacity      the lowest opacities go (3DGS's own pruning test)
  random       a seeded random choice
  weight sum   the lowest sums of blending weights over the training views (the importance of
               LightGaussian and Mini-Splatting), from the rasterizer's contributions=True
  max weight   the lowest largest weight over the training views (RadSplat's pruning score)

Scored on the held-out views: PSNR of the fit, right after pruning and after the fine-tune.
Run:

    python examples/prune_by_contribution.py                 # one seed, about 15 s on a CPU
    python examples/prune_by_contribution.py --seeds 0 1 2   # the table of doc/depth_and_weight.md

Writes OUT/results.md and OUT/results.json (default OUT: out/prune). Needs the package's
[demo] extra (tqdm, for the progress bars).
"""
import argparse
import copy
import importlib.util
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import numpy as np
import torch

from diff_gaussian_rasterization_depth import scenes
from diff_gaussian_rasterization_depth.cameras import choose_device

# The scene, cameras, model, fit and metrics are the sparse-view example's.
_spec = importlib.util.spec_from_file_location(
    "sparse_view_depth", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "sparse_view_depth.py"))
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)

RULES = ("opacity", "random", "weight sum", "max weight")


@torch.no_grad()
def contribution_scores(model: sv.GaussianModel, views: Sequence[sv.View]) -> torch.Tensor:
    """(P, 2): each Gaussian's weight sum over the views, and its largest weight in any."""
    g = model.activated()
    total = torch.zeros((len(g), 2), device=g.means.device)
    for view in views:
        settings = view.camera.raster_settings(sh_degree=g.sh_degree, device=g.means.device)
        *_, contribution = scenes.rasterize(
            settings, means3D=g.means, means2D=None, opacities=g.opacities, shs=g.sh,
            scales=g.scales, rotations=g.rotations, contributions=True)
        total[:, 0] += contribution[:, 0]
        total[:, 1] = torch.maximum(total[:, 1], contribution[:, 1])
    return total


def keep_mask(rule: str, model: sv.GaussianModel, scores: torch.Tensor, fraction: float,
              seed: int) -> torch.Tensor:
    """The Gaussians that stay when `fraction` of them go by `rule` (the lowest scores go;
    ties by index)."""
    P = model.means.shape[0]
    drop = int(round(fraction * P))
    if rule == "random":
        score = torch.rand(P, generator=torch.Generator().manual_seed(seed + 1000))
    elif rule == "opacity":
        score = torch.sigmoid(model.opacity_logits.detach()[:, 0]).cpu()
    elif rule == "weight sum":
        score = scores[:, 0].cpu()
    elif rule == "max weight":
        score = scores[:, 1].cpu()
    else:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    order = torch.sort(score, stable=True).indices
    keep = torch.ones(P, dtype=torch.bool)
    keep[order[:drop]] = False
    return keep.to(model.means.device)


def pruned(model: sv.GaussianModel, keep: torch.Tensor) -> sv.GaussianModel:
    parts = [getattr(model, name).detach()[keep].clone()
             for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc")]
    return sv.GaussianModel(*parts)


@dataclass
class ExperimentConfig:
    width: int = 96
    height: int = 72
    gaussians: int = 3000
    iterations: int = 600
    finetune: int = 100
    fractions: List[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])
    n_cameras: int = 24
    test_every: int = 8


def run_seed(seed: int, cfg: ExperimentConfig, device, progress: bool = True) -> dict:
    """{"fit": metrics, "fit_tuned": metrics of the unpruned fit fine-tuned, "fit_gaussians": P,
    "blended_nowhere": count, "RULE @ FRACTION": {"kept": count, "pruned": psnr, "tuned":
    psnr}} for one seed."""
    scene = sv.default_scene()
    cams = sv.make_cameras(cfg.width, cfg.height, cfg.n_cameras)
    held_out = len(range(0, cfg.n_cameras, cfg.test_every))
    train_ids, test_ids = sv.split_views(cfg.n_cameras, cfg.n_cameras - held_out, cfg.test_every)
    gen = torch.Generator().manual_seed(seed)
    train = sv.make_views(scene, cams, train_ids, device)
    test = sv.make_views(scene, cams, test_ids, device)
    init = sv.random_init([v.camera for v in train], cfg.gaussians, gen).to(device)
    model = sv.fit(init, train, sv.FitConfig(iterations=cfg.iterations), seed,
                   progress=f"seed {seed} fit" if progress else None)
    fitted, _ = sv.evaluate(model, test)
    # The same fine-tuning without pruning: what the pruned fits are to be held against.
    unpruned, _ = sv.evaluate(sv.fit(model, train, sv.FitConfig(iterations=cfg.finetune),
                                     seed + 1), test)
    scores = contribution_scores(model, train)
    result = {"fit": fitted, "fit_tuned": unpruned, "fit_gaussians": int(model.means.shape[0]),
              "blended_nowhere": int((scores[:, 0] == 0).sum())}
    for fraction in cfg.fractions:
        for rule in RULES:
            keep = keep_mask(rule, model, scores, fraction, seed)
            small = pruned(model, keep)
            right_after, _ = sv.evaluate(small, test)
            tuned = sv.fit(small, train, sv.FitConfig(iterations=cfg.finetune), seed + 1)
            after_tuning, _ = sv.evaluate(tuned, test)
            result[f"{rule} @ {fraction:g}"] = dict(kept=int(keep.sum()),
                                                     pruned=right_after["psnr"],
                                                     tuned=after_tuning["psnr"])
    return result


def format_table(per_seed: Dict[int, dict], cfg: ExperimentConfig) -> str:
    seeds = sorted(per_seed)
    fit = np.mean([per_seed[s]["fit"]["psnr"] for s in seeds])
    tuned = np.mean([per_seed[s]["fit_tuned"]["psnr"] for s in seeds])
    lines = [f"Held-out PSNR (dB), mean of seeds {', '.join(map(str, seeds))}: the fit "
             f"{fit:.2f} with {cfg.gaussians} Gaussians ({tuned:.2f} after {cfg.finetune} more "
             f"iterations); pruned, right after / after {cfg.finetune} iterations of "
             f"fine-tuning:", "",
             "| pruned | " + " | ".join(RULES) + " |",
             "|---|" + "---|" * len(RULES)]
    for fraction in cfg.fractions:
        cells = []
        for rule in RULES:
            rows = [per_seed[s][f"{rule} @ {fraction:g}"] for s in seeds]
            cells.append(f"{np.mean([r['pruned'] for r in rows]):.2f} / "
                         f"{np.mean([r['tuned'] for r in rows]):.2f}")
        lines.append(f"| {100 * fraction:.0f}% | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=ExperimentConfig.iterations)
    p.add_argument("--finetune", type=int, default=ExperimentConfig.finetune)
    p.add_argument("--gaussians", type=int, default=ExperimentConfig.gaussians)
    p.add_argument("--width", type=int, default=ExperimentConfig.width)
    p.add_argument("--height", type=int, default=ExperimentConfig.height)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=os.path.join("out", "prune"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if any(not 0 <= f < 1 for f in args.fractions):
        p.error("--fractions: each in [0, 1)")
    cfg = ExperimentConfig(width=args.width, height=args.height, gaussians=args.gaussians,
                           iterations=args.iterations, finetune=args.finetune,
                           fractions=list(args.fractions))
    device = choose_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    per_seed = {s: run_seed(s, cfg, device, progress=not args.no_progress) for s in args.seeds}
    table = format_table(per_seed, cfg)
    print(table)
    print(f"({time.perf_counter() - t0:.0f} s on {device})")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": asdict(cfg), "device": str(device),
                   "seeds": {str(s): r for s, r in per_seed.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
