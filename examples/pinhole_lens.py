"""Training on photos from a distorted pinhole lens: render through it, undistort the photos, ignore it, or calibrate it.

Most cameras follow OpenCV's pinhole model with distortion (COLMAP's OPENCV camera: k1, k2, p1,
p2). The usual 3DGS recipe resamples the photos to pinhole images first (COLMAP's
image_undistorter); the rasterizer can instead project through the lens (settings
`pinhole_distortion`). The analytic scene of examples/sparse_view_depth.py is ray-cast exactly
through such a lens (--lens K1 K2 P1 P2) from 16 cameras around it, every 4th held out;
Gaussians start from the same random initialization and are fitted four times on the training
views, with the same seed and iteration count:

  through the lens    settings pinhole_distortion = the lens's coefficients
  undistorted photos  each training photo resampled (bilinear) to a pinhole image whose
                      edges' midpoints are the photo's (COLMAP's image_undistorter keeps no
                      blank pixels so: the focal shorter by the lens's barrel), the pixels
                      the photo does not cover left out of the loss; a plain pinhole fit on
                      those
  ignored             a plain pinhole fit on the photos as taken: the distortion ignored
  calibrated          the coefficients a tensor that starts at zero and is optimized with the
                      Gaussians (the rasterizer returns their gradient)

Each fit is a model of the scene, scored on the held-out views two ways: on the photos as
taken, its render through the lens model it ends with (the undistorted-photos fit, made
knowing the lens, through the true lens), and on the photos undistorted as the training ones
were, its render by their pinhole camera; PSNR, and the largest error of its lens model over
the image in pixels (means over the seeds). Run:

    python examples/pinhole_lens.py                     # one seed, a minute or two on a CPU
    python examples/pinhole_lens.py --seeds 0 1 2       # the table of doc/pinhole_distortion.md

Writes OUT/results.md and OUT/results.json (default OUT: out/pinhole_lens). The parts are plain
functions, imported by tests/test_pinhole_example.py.
"""
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fisheye_lens  # noqa: E402
from fisheye_lens import FitConfig, LensView, fit, make_views, render  # noqa: E402
from sparse_view_depth import make_cameras, psnr, random_init  # noqa: E402

from diff_gaussian_rasterization_depth import surface  # noqa: E402
from diff_gaussian_rasterization_depth._validation import NO_FOLD_U  # noqa: E402
from diff_gaussian_rasterization_depth.cameras import Camera, pose_settings  # noqa: E402

# A wide-angle lens's order (k1, k2, p1, p2): its corners 7 px in from the pinhole's at 96x72.
LENS = (-0.28, 0.09, 0.002, -0.0015)
LENS_NAMES = ("K1", "K2", "P1", "P2")
VARIANTS = ("through the lens", "undistorted photos", "ignored", "calibrated")
ERROR_TITLE = "distortion error (px)"   # the table's title of a variant's error_px


def pinhole_settings(camera: Camera, lens=None, device="cpu"):
    """The camera's settings with OpenCV's pinhole coefficients `lens` (None, numbers or a
    tensor)."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=torch.float32, device=device)
    return pose_settings(w2c, camera)._replace(pinhole_distortion=lens)


def distorted_pixels(camera: Camera, lens, a: torch.Tensor, b: torch.Tensor):
    """OpenCV's pixel (x, y) of the normalized point (a, b) through `lens` (k1, k2, p1, p2):
    x = fx (a L + 2 p1 a b + p2 (u + 2 a^2)) + cx, L = 1 + k1 u + k2 u^2, u = a^2 + b^2; the
    principal point at the image centre, pixel centres at integers (the rasterizer's)."""
    k1, k2, p1, p2 = lens
    u = a * a + b * b
    L = 1 + k1 * u + k2 * u * u
    cx, cy = (camera.width - 1) / 2, (camera.height - 1) / 2
    return (camera.fx * (a * L + 2 * p1 * a * b + p2 * (u + 2 * a * a)) + cx,
            camera.fy * (b * L + p1 * (u + 2 * b * b) + 2 * p2 * a * b) + cy)


def undistorted_camera(camera: Camera, lens) -> Camera:
    """The pinhole camera of the photo's undistorted image, as COLMAP's image_undistorter
    makes it with no blank pixels: the same pose and size, both focal lengths scaled alike
    so that the image's edges reach, at their midpoints, no further than the photo's
    (undistorted by `surface`'s Newton solve)."""
    half_w, half_h = (camera.width - 1) / 2, (camera.height - 1) / 2
    xd = torch.tensor([half_w / camera.fx, -half_w / camera.fx, 0.0, 0.0], dtype=torch.float64)
    yd = torch.tensor([0.0, 0.0, half_h / camera.fy, -half_h / camera.fy], dtype=torch.float64)
    a, b, _ = surface._undistorted_point(xd, yd, tuple(lens) + (0.0,) * 4, NO_FOLD_U)
    scale = min(float(a[:2].abs().min()) / (half_w / camera.fx),
                float(b[2:].abs().min()) / (half_h / camera.fy))
    return Camera(camera.world_to_camera, camera.width, camera.height, camera.fx / scale,
                  camera.fy / scale)


def undistort_view(view: LensView, lens) -> LensView:
    """The photo resampled (bilinear) to its undistorted pinhole image (`undistorted_camera`),
    as COLMAP's image_undistorter does: each pinhole pixel reads the photo where the lens puts
    its ray; `valid` where that lies within the photo."""
    camera = undistorted_camera(view.camera, lens)
    H, W = camera.height, camera.width
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                                torch.arange(W, dtype=torch.float64), indexing="ij")
    a, b = (cols - (W - 1) / 2) / camera.fx, (rows - (H - 1) / 2) / camera.fy
    x, y = distorted_pixels(view.camera, lens, a, b)
    grid = torch.stack([2 * x / (W - 1) - 1, 2 * y / (H - 1) - 1], -1)[None]
    color = F.grid_sample(view.color[None].double().cpu(), grid, mode="bilinear",
                          padding_mode="border", align_corners=True)[0]
    # within the photo, to a thousandth of a pixel (the edges' midpoints land on its edge)
    valid = (x >= -1e-3) & (x <= W - 1 + 1e-3) & (y >= -1e-3) & (y <= H - 1 + 1e-3)
    device = view.color.device
    return LensView(camera, color.to(device, torch.float32), valid.to(device))


def pinhole_units(camera: Camera) -> torch.Tensor:
    """The calibration's units of (k1, k2, p1, p2): a unit moves the image's corner (u at
    the corner, r = sqrt(u)) by about a pixel: k_j by focal r^(2j+1), p by about 3 focal u."""
    u = ((camera.width / 2 / camera.fx) ** 2 + (camera.height / 2 / camera.fy) ** 2)
    r = u ** 0.5
    return torch.tensor([1 / (camera.fx * r ** 3), 1 / (camera.fx * r ** 5),
                         1 / (3 * camera.fx * u), 1 / (3 * camera.fx * u)])


def distortion_error(lens, truth, camera: Camera) -> float:
    """The largest |pixel(lens) - pixel(truth)| over the image's normalized points (the
    pinhole image's, to its corners), in pixels."""
    a = torch.linspace(-camera.width / 2 / camera.fx, camera.width / 2 / camera.fx, 60,
                       dtype=torch.float64)
    b = torch.linspace(-camera.height / 2 / camera.fy, camera.height / 2 / camera.fy, 45,
                       dtype=torch.float64)
    a, b = torch.meshgrid(a, b, indexing="ij")
    x, y = distorted_pixels(camera, tuple(lens) if lens is not None else (0.0,) * 4, a, b)
    x0, y0 = distorted_pixels(camera, truth, a, b)
    return float(torch.maximum((x - x0).abs(), (y - y0).abs()).max())


def run_seed(seed: int, truth=LENS, width: int = 96, height: int = 72, n_gaussians: int = 4000,
             cfg: Optional[FitConfig] = None, device="cpu") -> Dict[str, dict]:
    """Every variant's fit from the same initialization; {variant: {psnr, psnr_undistorted,
    lens, error_px}}."""
    cfg = cfg or FitConfig()
    cameras = make_cameras(width, height, n=16)
    test_ids = list(range(0, len(cameras), 4))
    train_ids = [i for i in range(len(cameras)) if i not in test_ids]
    photos = make_views(cameras, train_ids, truth, device, lens_settings=pinhole_settings)
    test = make_views(cameras, test_ids, truth, device, lens_settings=pinhole_settings)
    test_undistorted = [undistort_view(v, truth) for v in test]
    gen = torch.Generator().manual_seed(seed)
    init = random_init([cameras[i] for i in train_ids], n_gaussians, gen).to(device)
    results = {}
    for variant in VARIANTS:
        train: List[LensView] = photos
        lens = truth if variant == "through the lens" else None
        if variant == "undistorted photos":
            train = [undistort_view(v, truth) for v in photos]
        model, lens = fit(init, train, lens, cfg, seed, calibrate=variant == "calibrated",
                          lens_settings=pinhole_settings, lens_units=pinhole_units)
        scored_lens = truth if variant == "undistorted photos" else lens
        with torch.no_grad():
            scores = [psnr(render(model, v.camera, scored_lens, pinhole_settings), v.color)
                      for v in test]
            undistorted = [psnr(render(model, v.camera, None, pinhole_settings)[:, v.valid],
                                v.color[:, v.valid]) for v in test_undistorted]
        results[variant] = dict(psnr=float(np.mean(scores)),
                                psnr_undistorted=float(np.mean(undistorted)), lens=scored_lens,
                                error_px=distortion_error(scored_lens, truth, cameras[0]))
    return results


def format_table(per_seed: Dict[int, Dict[str, dict]]) -> str:
    """fisheye_lens's table with a column more: the PSNR on the undistorted held-out views."""
    table = fisheye_lens.format_table(per_seed, sys.modules[__name__]).split("\n")
    table[0] = table[0].replace(" | distortion", " | on them undistorted (dB) | distortion")
    table[1] += "---|"
    for i, variant in enumerate(VARIANTS):
        mean = np.mean([r[variant]["psnr_undistorted"] for r in per_seed.values()])
        head, tail = table[2 + i].split(" | ", 2)[:2], table[2 + i].split(" | ", 2)[2]
        table[2 + i] = " | ".join(head + [f"{mean:.2f}", tail])
    return "\n".join(table)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return fisheye_lens.main(argv, sys.modules[__name__])


if __name__ == "__main__":
    sys.exit(main())
