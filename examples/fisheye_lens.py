"""Training on fisheye photos whose lens is not quite equidistant: model it, ignore it, or calibrate it.

Real fisheye lenses follow OpenCV's model (COLMAP's OPENCV_FISHEYE): a point theta off the axis
lands focal * theta_d from the principal point, theta_d = theta (1 + k1 theta^2 + k2 theta^4 +
k3 theta^6 + k4 theta^8). The analytic scene of examples/sparse_view_depth.py is ray-cast
exactly through such a lens (--lens K1 K2 K3 K4) from 16 cameras around it, every 4th held out;
Gaussians start from the same random initialization and are fitted three times on the training
views, with the same seed and iteration count:

  true lens     settings fisheye_distortion = the lens's coefficients
  equidistant   fisheye=True alone: the distortion ignored (the plain fisheye's model)
  calibrated    the coefficients a tensor that starts at zero and is optimized with the
                Gaussians (the rasterizer returns their gradient)

and each is scored on the held-out views rendered through its own lens model: PSNR, and the
largest error of its theta_d curve over the image, in pixels (means over the seeds). Run:

    python examples/fisheye_lens.py                     # one seed, a minute or so on a CPU
    python examples/fisheye_lens.py --seeds 0 1 2       # the table of doc/fisheye.md

Writes OUT/results.md and OUT/results.json (default OUT: out/fisheye_lens). The parts are plain
functions, imported by tests/test_fisheye_example.py and, with the pinhole's settings, by
examples/pinhole_lens.py.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparse_view_depth import FitConfig as SparseViewConfig  # noqa: E402
from sparse_view_depth import (GaussianModel, _as64, default_scene, make_cameras,  # noqa: E402
                               make_optimizer, photometric_loss, psnr, random_init,
                               raycast_rays)

from diff_gaussian_rasterization_depth import scenes, surface  # noqa: E402
from diff_gaussian_rasterization_depth.cameras import (Camera, choose_device,  # noqa: E402
                                                       pose_settings)

# A lens whose theta_d runs 7% past theta at the image's edge (about 3 px at 96 px across).
LENS = (0.08, -0.03, 0.006, -0.0005)
LENS_NAMES = ("K1", "K2", "K3", "K4")
HALF_ANGLE = 1.2   # the image's half-width spans this theta_d (radians): focal = W / (2 * it)
VARIANTS = ("true lens", "equidistant", "calibrated")
ERROR_TITLE = "lens curve error (px)"   # the table's title of a variant's error_px


def fisheye_cameras(width: int, height: int, n: int = 16) -> List[Camera]:
    """`n` cameras on sparse_view_depth's arc, each a fisheye whose half-width spans
    HALF_ANGLE of theta_d (focal W / (2 HALF_ANGLE) px per radian), centred."""
    focal = width / (2.0 * HALF_ANGLE)
    return [Camera(c.world_to_camera, width, height, focal, focal)
            for c in make_cameras(width, height, n=n)]


def fisheye_settings(camera: Camera, lens=None, device="cpu"):
    """The camera's fisheye settings (fisheye=True; its focal from fx, as the pinhole's)
    with OpenCV's coefficients `lens` (None, numbers or a tensor)."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=torch.float32, device=device)
    return pose_settings(w2c, camera)._replace(fisheye=True, fisheye_distortion=lens)


def view_rays(camera: Camera, lens, scale: int = 1, lens_settings=fisheye_settings
              ) -> torch.Tensor:
    """(H s, W s, 3) world-space ray directions (view z = 1) of the pixels of the camera seen
    `scale` times finer (focal and size times `scale`), through the lens (`lens_settings`
    makes the camera's settings with it): the inverse of the rasterizer's projection
    (`surface.depth_to_points`); zero where a pixel has no ray."""
    fine = Camera(camera.world_to_camera, camera.width * scale, camera.height * scale,
                  camera.fx * scale, camera.fy * scale)
    settings = lens_settings(fine, lens)._replace(
        viewmatrix=torch.as_tensor(fine.viewmatrix(), dtype=torch.float64),
        projmatrix=torch.as_tensor(fine.projmatrix(), dtype=torch.float64))
    rays = surface.depth_to_points(torch.ones(fine.height, fine.width, dtype=torch.float64),
                                   settings)
    directions = rays.permute(1, 2, 0) @ _as64(camera.rotation)
    return torch.where(rays[:2].abs().sum(0)[..., None] > 0, directions,
                       torch.zeros_like(directions))


@dataclass
class LensView:
    camera: Camera
    color: torch.Tensor   # (3, H, W) float32
    # (H, W) bool: the pixels the loss reads (a resampled photo's), or None: all of them
    valid: Optional[torch.Tensor] = None


def make_views(cameras: Sequence[Camera], ids: Sequence[int], lens, device,
               supersample: int = 3, lens_settings=fisheye_settings) -> List[LensView]:
    """The scene ray-cast through `lens` from cameras[ids], each pixel the mean of
    supersample^2 rays."""
    scene = default_scene()
    views = []
    for i in ids:
        rays = view_rays(cameras[i], lens, supersample, lens_settings)
        color = raycast_rays(scene, _as64(cameras[i].center), rays)["color"]
        color = F.avg_pool2d(color[None], supersample)[0]
        views.append(LensView(cameras[i], color.to(device, torch.float32)))
    return views


def render(model: GaussianModel, camera: Camera, lens,
           lens_settings=fisheye_settings) -> torch.Tensor:
    g = model.activated()
    color, _, _, _ = scenes.rasterize(
        lens_settings(camera, lens, g.means.device), means3D=g.means, means2D=None,
        opacities=g.opacities, shs=g.sh, scales=g.scales, rotations=g.rotations)
    return color


def fisheye_units(camera: Camera) -> torch.Tensor:
    """The calibration's units of k1-k4: a unit of k_j moves theta_d at the image's corner by
    one pixel (k_j moves it by focal corner^(2j+3))."""
    corner = math.hypot(camera.width, camera.height) / 2 / camera.fx
    return torch.tensor([1.0 / (camera.fx * corner ** (2 * j + 3)) for j in range(4)])


def lens_curve_error(lens, truth, camera: Camera) -> float:
    """The largest |focal (theta_d(lens) - theta_d(truth))| in pixels over the angles the
    image holds (to its corners)."""
    corner = math.hypot(camera.width, camera.height) / 2 / camera.fx   # theta_d at the corner
    theta = torch.linspace(0.0, corner, 400, dtype=torch.float64)

    def curve(k):
        k = (0.0,) * 4 if k is None else tuple(float(v) for v in k)
        return theta * (1 + sum(c * theta ** (2 * i + 2) for i, c in enumerate(k)))
    return float(camera.fx * (curve(lens) - curve(truth)).abs().max())


@dataclass
class FitConfig:
    iterations: int = 600
    # Adam on the coefficients ("calibrated"): each coefficient's step moves theta_d at the
    # image's corner by about lr_lens_px pixels (Adam's steps are about its rate, and k_j
    # moves theta_d there by theta^(2j+3) times as much), from lens_start of the iterations
    # on (before it the Gaussians are too far from anything for the lens's gradient to mean
    # much), decaying to lens_final_ratio of it.
    lr_lens_px: float = 0.2
    lens_start: float = 0.2
    lens_final_ratio: float = 0.05
    lr_means: float = 2e-3
    lr_means_final_ratio: float = 0.01
    lambda_ssim: float = 0.2


def fit(model: GaussianModel, train: Sequence[LensView], lens, cfg: FitConfig, seed: int,
        calibrate: bool = False, lens_settings=fisheye_settings, lens_units=fisheye_units):
    """Adam on the Gaussians (sparse_view_depth's rates), the views in a seeded random order,
    rendered through `lens` (the camera's settings by `lens_settings`), each view's loss on its
    valid pixels; with `calibrate`, `lens` is the starting coefficients and is optimized too.
    Returns (model, the lens it ended with)."""
    model = copy.deepcopy(model)
    opt = make_optimizer(model, SparseViewConfig(lr_means=cfg.lr_means))
    lens_opt = None
    if calibrate:
        # k_j = unit_j * raw_j (`lens_units`): a unit of raw_j moves the image's corner by
        # about a pixel, so Adam's steps (about its rate) move every coefficient's part alike
        unit = lens_units(train[0].camera)
        start = torch.tensor(lens if lens is not None else (0.0,) * len(unit),
                             dtype=torch.float32)
        raw = (start / unit).requires_grad_()
        lens_opt = torch.optim.Adam([raw], lr=cfg.lr_lens_px)
    order = np.random.default_rng(seed).integers(0, len(train), size=cfg.iterations)
    for it in range(cfg.iterations):
        frac = it / max(cfg.iterations - 1, 1)
        opt.param_groups[0]["lr"] = cfg.lr_means * cfg.lr_means_final_ratio ** frac
        view = train[int(order[it])]
        if lens_opt is not None:
            lens = raw * unit
        color = render(model, view.camera, lens, lens_settings)
        target = view.color
        if view.valid is not None:   # pixels no photo covers match the render: no gradient
            target = torch.where(view.valid, target, color.detach())
        loss = photometric_loss(color, target, cfg.lambda_ssim)
        for optimizer in (opt, lens_opt):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if lens_opt is not None and frac >= cfg.lens_start:
            lens_frac = (frac - cfg.lens_start) / (1 - cfg.lens_start)
            lens_opt.param_groups[0]["lr"] = cfg.lr_lens_px * cfg.lens_final_ratio ** lens_frac
            lens_opt.step()
    if calibrate:
        lens = raw.detach() * unit
        lens = tuple(float(v) for v in lens.detach())
    return model, lens


def run_seed(seed: int, truth=LENS, width: int = 96, height: int = 72, n_gaussians: int = 4000,
             cfg: Optional[FitConfig] = None, device="cpu") -> Dict[str, dict]:
    """Every variant's fit from the same initialization; {variant: {psnr, lens, error_px}}
    (error_px: the lens curve's error, `lens_curve_error`)."""
    cfg = cfg or FitConfig()
    cameras = fisheye_cameras(width, height)
    test_ids = list(range(0, len(cameras), 4))
    train_ids = [i for i in range(len(cameras)) if i not in test_ids]
    train = make_views(cameras, train_ids, truth, device)
    test = make_views(cameras, test_ids, truth, device)
    gen = torch.Generator().manual_seed(seed)
    init = random_init([cameras[i] for i in train_ids], n_gaussians, gen).to(device)
    results = {}
    for variant in VARIANTS:
        lens = truth if variant == "true lens" else None
        model, lens = fit(init, train, lens, cfg, seed, calibrate=variant == "calibrated")
        with torch.no_grad():
            scores = [psnr(render(model, v.camera, lens), v.color) for v in test]
        results[variant] = dict(psnr=float(np.mean(scores)), lens=lens,
                                error_px=lens_curve_error(lens, truth, cameras[0]))
    return results


def format_table(per_seed: Dict[int, Dict[str, dict]], example=None) -> str:
    """The table of an example's results (`example`: its module, by default this one: its
    VARIANTS and ERROR_TITLE): mean PSNR and error over the seeds, the first seed's lens."""
    example = example or sys.modules[__name__]
    first = min(per_seed)
    lines = [f"| variant | held-out PSNR (dB) | {example.ERROR_TITLE} | "
             f"coefficients (seed {first}) |", "|---|---|---|---|"]
    for variant in example.VARIANTS:
        runs = [r[variant] for r in per_seed.values()]
        mean_psnr = np.mean([r["psnr"] for r in runs])
        mean_error = np.mean([r["error_px"] for r in runs])
        lens = per_seed[first][variant]["lens"]
        shown = "none" if lens is None else ", ".join(f"{float(v):.4f}" for v in lens)
        lines.append(f"| {variant} | {mean_psnr:.2f} | {mean_error:.2f} | {shown} |")
    return "\n".join(lines)


def main(argv=None, example=None) -> int:
    """The command line of a lens example (`example`: its module, by default this one: its
    docstring, LENS, LENS_NAMES, run_seed and the table's names), writing OUT/results.md and
    OUT/results.json, OUT by default out/<the module's name>."""
    example = example or sys.modules[__name__]
    name = os.path.splitext(os.path.basename(example.__file__))[0]
    p = argparse.ArgumentParser(description=example.__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lens", type=float, nargs=len(example.LENS), default=example.LENS,
                   metavar=example.LENS_NAMES)
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--gaussians", type=int, default=4000)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--height", type=int, default=72)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=os.path.join("out", name))
    args = p.parse_args(argv)
    if args.iterations < 1 or args.gaussians < 1 or args.width < 16 or args.height < 16:
        p.error("--iterations and --gaussians must be positive, --width and --height >= 16")
    device = choose_device(args.device)
    truth = tuple(args.lens)
    start = time.time()
    per_seed = {s: example.run_seed(s, truth, args.width, args.height, args.gaussians,
                                    FitConfig(iterations=args.iterations), device)
                for s in args.seeds}
    table = example.format_table(per_seed)
    print(f"lens {truth}, {args.width}x{args.height}, {args.gaussians} Gaussians, "
          f"{args.iterations} iterations, seeds {args.seeds}, {device}, "
          f"{time.time() - start:.0f} s")
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"lens": truth, "seeds": per_seed, "config": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
