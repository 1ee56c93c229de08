"""examples/pinhole_lens.py: OpenCV's formula it writes out against the rasterizer's, the
undistorted photos, the distortion error, the four fits on a small frame, and its command line."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import fisheye_lens as fl  # noqa: E402
import pinhole_lens as pl  # noqa: E402

from diff_gaussian_rasterization_depth.reference import _lens_pixels  # noqa: E402
from diff_gaussian_rasterization_depth._validation import CheckedSettings  # noqa: E402

F64 = torch.float64


def test_distorted_pixels_are_the_rasterizers():
    """distorted_pixels (OpenCV's formula, the principal point at the image centre) puts
    points where the rasterizer's lens path does with the example's settings (the
    reference's positions, float64), and the settings carry the lens."""
    camera = pl.make_cameras(48, 36, n=4)[1]
    settings = pl.pinhole_settings(camera, pl.LENS)
    assert settings.pinhole_distortion == pl.LENS and not settings.fisheye
    checked = CheckedSettings(settings._replace(
        viewmatrix=torch.as_tensor(camera.viewmatrix(), dtype=F64),
        projmatrix=torch.as_tensor(camera.projmatrix(), dtype=F64),
        campos=torch.as_tensor(camera.center, dtype=F64)), "cpu", F64)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 50, generator=gen, dtype=F64) - 0.5) * 1.2
    z = 1 + 3 * torch.rand(50, generator=gen, dtype=F64)
    x, y = _lens_pixels(a * z, b * z, z, checked)
    want_x, want_y = pl.distorted_pixels(camera, pl.LENS, a, b)
    torch.testing.assert_close(x, want_x, rtol=0, atol=1e-5)
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-5)


def test_undistorted_photo():
    """A photo of a smooth pattern resampled to its undistorted pinhole image: the camera's
    focal shorter than the photo's (a barrel lens shows more), its edges' midpoints on the
    photo's (the farthest of the four on it, none beyond); each valid pixel
    holds the pattern where the lens puts its ray (bilinear: close for a smooth pattern), the
    invalid ones only in the corners."""
    camera = pl.make_cameras(48, 36, n=4)[0]
    H, W = 36, 48
    rows, cols = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                                indexing="ij")

    def pattern(x, y):   # smooth, three channels
        return torch.stack([torch.sin(x / 7), torch.cos(y / 5), torch.sin((x + y) / 9)])
    pinhole = pl.undistorted_camera(camera, pl.LENS)
    assert pinhole.fx < camera.fx * 0.97 and pinhole.fx / pinhole.fy == camera.fx / camera.fy
    midpoints = torch.tensor([[W - 1.0, (H - 1) / 2], [0.0, (H - 1) / 2], [(W - 1) / 2, H - 1.0],
                              [(W - 1) / 2, 0.0]], dtype=F64)
    x, y = pl.distorted_pixels(camera, pl.LENS, (midpoints[:, 0] - (W - 1) / 2) / pinhole.fx,
                               (midpoints[:, 1] - (H - 1) / 2) / pinhole.fy)
    reach = torch.maximum((x - (W - 1) / 2).abs() / ((W - 1) / 2),
                          (y - (H - 1) / 2).abs() / ((H - 1) / 2))
    # (to 1e-4 of the half-size: the undistorted midpoints lie a hair off the axes, by p1, p2)
    assert reach.max() == pytest.approx(1.0, abs=1e-4) and (reach <= 1 + 1e-4).all()
    view = pl.undistort_view(fl.LensView(camera, pattern(cols, rows).float()), pl.LENS)
    assert view.camera.fx == pinhole.fx
    a, b = (cols - (W - 1) / 2) / pinhole.fx, (rows - (H - 1) / 2) / pinhole.fy
    want = pattern(*pl.distorted_pixels(camera, pl.LENS, a, b))
    assert (view.color - want.float())[:, view.valid].abs().max() < 0.02
    centre = torch.zeros(H, W, dtype=torch.bool)
    centre[H // 4:3 * H // 4, :] = True
    centre[:, W // 4:3 * W // 4] = True
    assert view.valid[centre].all() and view.valid.float().mean() > 0.9


def test_distortion_error():
    """0 for the true lens; for no distortion, the largest displacement OpenCV's formula
    makes at the pinhole image's corners (a barrel lens's largest), written out."""
    camera = pl.make_cameras(96, 72)[0]
    assert pl.distortion_error(pl.LENS, pl.LENS, camera) == 0.0
    a, b = 48 / camera.fx, 36 / camera.fy
    k1, k2, p1, p2 = pl.LENS
    u = a * a + b * b
    shift = abs(camera.fx * (a * (k1 * u + k2 * u * u) + 2 * p1 * a * b + p2 * (u + 2 * a * a)))
    error = pl.distortion_error(None, pl.LENS, camera)
    assert error == pytest.approx(shift, rel=0.05) and error > 5


def test_run_seed_small():
    """The four fits on a 48x36 frame, 40 iterations: every variant scored; the lens-aware
    variants' error 0, the ignoring one's that of no coefficients; the calibrated coefficients
    moved off zero."""
    results = pl.run_seed(3, width=48, height=36, n_gaussians=400,
                          cfg=fl.FitConfig(iterations=40))
    assert set(results) == set(pl.VARIANTS)
    for r in results.values():
        assert math.isfinite(r["psnr"]) and r["psnr"] > 5
        assert math.isfinite(r["psnr_undistorted"]) and r["psnr_undistorted"] > 5
    camera = pl.make_cameras(48, 36)[0]
    assert results["through the lens"]["error_px"] == 0.0
    assert results["undistorted photos"]["error_px"] == 0.0
    assert results["ignored"]["lens"] is None
    assert results["ignored"]["error_px"] == pytest.approx(
        pl.distortion_error(None, pl.LENS, camera))
    calibrated = results["calibrated"]["lens"]
    assert len(calibrated) == 4 and any(v != 0 for v in calibrated)
    table = pl.format_table({3: results})
    assert all(v in table for v in pl.VARIANTS) and pl.ERROR_TITLE in table
    assert "undistorted (dB)" in table and all(line.count("|") == 6
                                                 for line in table.splitlines())


def test_command_line(tmp_path):
    for bad in (["--iterations", "0"], ["--width", "8"], ["--lens", "0.1", "0.2", "0.3"]):
        with pytest.raises(SystemExit):
            pl.main(bad)
    assert pl.main(["--iterations", "2", "--gaussians", "50", "--width", "16", "--height",
                    "16", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert "through the lens" in (tmp_path / "results.md").read_text()
