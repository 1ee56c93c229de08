"""examples/fisheye_lens.py: its fisheye cameras and rays, the lens curve's error, the three fits
on a small frame, and its command line."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import fisheye_lens as fl  # noqa: E402

from diff_gaussian_rasterization_depth.reference import _lens_pixels  # noqa: E402

F64 = torch.float64


def test_cameras_and_settings():
    """Every camera a fisheye whose half-width spans HALF_ANGLE of theta_d; its settings say
    fisheye=True with the lens given, the focal the pinhole's W / (2 tanfovx)."""
    cameras = fl.fisheye_cameras(96, 72, n=16)
    assert len(cameras) == 16
    for camera in cameras:
        assert camera.fx == camera.fy == pytest.approx(96 / (2 * fl.HALF_ANGLE))
        s = fl.fisheye_settings(camera, fl.LENS)
        assert s.fisheye and s.fisheye_distortion == fl.LENS
        assert 96 / (2 * s.tanfovx) == pytest.approx(camera.fx)


@pytest.mark.parametrize("lens", [None, fl.LENS], ids=["equidistant", "distorted"])
def test_view_rays_project_back_to_their_pixels(lens):
    """Each pixel's ray (world space, view z = 1), taken back into view space, lands on its
    own pixel through the rasterizer's fisheye (the reference's formula); at 3x the pixels
    too, where pixel (i, j) of the fine image is ((i + 0.5) / 3 - 0.5, ...) of the coarse."""
    camera = fl.fisheye_cameras(40, 30, n=4)[1]
    rotation = torch.as_tensor(camera.rotation, dtype=F64)
    for scale in (1, 3):
        rays = fl.view_rays(camera, lens, scale)
        H, W = 30 * scale, 40 * scale
        assert rays.shape == (H, W, 3)
        view = rays @ rotation.T            # back into view space
        torch.testing.assert_close(view[..., 2], torch.ones(H, W, dtype=F64))
        fine = fl.Camera(camera.world_to_camera, W, H, camera.fx * scale, camera.fy * scale)
        settings = fl.fisheye_settings(fine, lens)._replace(
            viewmatrix=torch.as_tensor(fine.viewmatrix(), dtype=F64),
            projmatrix=torch.as_tensor(fine.projmatrix(), dtype=F64))
        x, y = _lens_pixels(view[..., 0], view[..., 1], view[..., 2], settings)
        cols = torch.arange(W, dtype=F64).expand(H, W)
        rows = torch.arange(H, dtype=F64)[:, None].expand(H, W)
        torch.testing.assert_close(x, cols, rtol=0, atol=1e-8)
        torch.testing.assert_close(y, rows, rtol=0, atol=1e-8)


def test_lens_curve_error():
    """0 for the true lens; for the equidistant model, focal times the largest theta_d - theta
    to the image's corner, written out."""
    camera = fl.fisheye_cameras(96, 72)[0]
    assert fl.lens_curve_error(fl.LENS, fl.LENS, camera) == 0.0
    corner = math.hypot(96, 72) / 2 / camera.fx
    theta = torch.linspace(0, corner, 1000, dtype=F64)
    k1, k2, k3, k4 = fl.LENS
    theta_d = theta * (1 + k1 * theta ** 2 + k2 * theta ** 4 + k3 * theta ** 6 + k4 * theta ** 8)
    want = float(camera.fx * (theta_d - theta).abs().max())
    assert fl.lens_curve_error(None, fl.LENS, camera) == pytest.approx(want, rel=1e-4)
    assert want > 3.0


def test_run_seed_small():
    """The three fits on a 48x36 frame, 40 iterations: every variant scored; the true lens's
    curve error 0, the equidistant model's that of no coefficients; the calibrated
    coefficients moved off zero (the calibration starts at 20% of the iterations)."""
    cfg = fl.FitConfig(iterations=40)
    results = fl.run_seed(3, width=48, height=36, n_gaussians=400, cfg=cfg)
    assert set(results) == set(fl.VARIANTS)
    for r in results.values():
        assert math.isfinite(r["psnr"]) and r["psnr"] > 5
    camera = fl.fisheye_cameras(48, 36)[0]
    assert results["true lens"]["error_px"] == 0.0
    assert results["equidistant"]["lens"] is None
    assert results["equidistant"]["error_px"] == pytest.approx(
        fl.lens_curve_error(None, fl.LENS, camera))
    calibrated = results["calibrated"]["lens"]
    assert len(calibrated) == 4 and any(v != 0 for v in calibrated)
    table = fl.format_table({3: results})
    assert all(v in table for v in fl.VARIANTS)


def test_command_line_checks():
    for bad in (["--iterations", "0"], ["--width", "8"], ["--gaussians", "-1"]):
        with pytest.raises(SystemExit):
            fl.main(bad)
