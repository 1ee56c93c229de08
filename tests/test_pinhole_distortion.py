"""OpenCV's pinhole distortion (settings `pinhole_distortion`: (k1, k2, p1, p2[, k3[, k4, k5,
k6]]), COLMAP's OPENCV, FULL_OPENCV and RADIAL cameras): the normalized point (a, b) =
(x, y) / z lands at c + focal (a L + tau_x, b L + tau_y), L = (1 + k1 u + k2 u^2 + k3 u^3) /
(1 + k4 u + k5 u^2 + k6 u^3) (u = a^2 + b^2), tau the tangential terms, through the fisheye's
lens path (preprocess.h, pinhole_lens_terms).

Against autograd through the reference: outputs, the Gaussians' gradients and the camera's (the
coefficients' included), float32 and float64; the reference's Jacobian against autograd's of its
own pixel position; finite differences; what the model means (a small splat lands where
OpenCV's formula puts it, with a COLMAP OPENCV camera's intrinsics); the fold's culling; zeros
as no distortion; the checks; calibration from zero; `depth_to_points` as the projection's
inverse; the CUDA kernels against the CPU backend.
"""
import math
from types import SimpleNamespace

import pytest
import torch

import scenes
from cuda_target import cuda_targets
from diff_gaussian_rasterization_depth import (GaussianRasterizationSettings, GaussianRasterizer,
                                               surface)
from diff_gaussian_rasterization_depth._validation import NO_FOLD_U, pinhole_fold_u
from diff_gaussian_rasterization_depth.reference import _lens_pixels, _lens_terms
from test_camera_gradients import make_camera_gradcheck_fn, projection_failures
from test_cpu_backend import run_backend
from test_fisheye import colmap_settings, fit_coefficients, splat_centroid

F32, F64 = torch.float32, torch.float64

# A wide-angle lens's order of coefficients (k1, k2, p1, p2, k3), tangential ones larger than
# most lenses' so that their terms show: r L grows to u = 3.6 (62 degrees off the axis), past
# every Gaussian of these scenes but the far outliers. COLMAP's OPENCV: four, k3 = 0.
DISTORTION = (-0.25, 0.08, 0.01, -0.008, -0.01)
OPENCV = (0.12, -0.05, -0.006, 0.004)
# COLMAP's FULL_OPENCV, the rational model: numerator and denominator of a similar size, as
# calibrations of it find them (L from 1 to 0.83 at u = 1).
RATIONAL = (0.9, 0.25, 0.004, -0.006, 0.02, 1.1, 0.35, 0.03)
# r L stops growing at u = 1 / 1.2 (42 degrees off the axis): inside these scenes' views.
FOLDING = (-0.4, 0.0, 0.0, 0.0)

CONFIGS = {
    "sh1": (dict(sh_degree=1), DISTORTION, (0.0, 0.0)),
    "sh3-aa-shifted": (dict(sh_degree=3, antialiasing=True), DISTORTION, (3.5, -2.0)),
    "colors-cov-opencv": (dict(precomp_colors=True, precomp_cov=True), OPENCV, (0.0, 0.0)),
    "size-64x40": (dict(sh_degree=2, height=40, width=64, P=120), OPENCV, (-2.0, 1.5)),
    "float64": (dict(sh_degree=2, dtype=F64), DISTORTION, (1.0, 1.0)),
    "rational-sh1": (dict(sh_degree=1), RATIONAL, (-1.0, 0.5)),
    "rational-float64-cov": (dict(precomp_cov=True, dtype=F64), RATIONAL, (0.0, 0.0)),
    "folding-float64-aa": (dict(sh_degree=1, antialiasing=True, dtype=F64), FOLDING, (0.0, 0.0)),
}
# The lens path's position (c + focal (a L + tau)) is not rounded as projmatrix's projection.
FORWARD_TOL = {F32: 5e-5, F64: 1e-10}


def scene_for(config, seed):
    make, distortion, shift = CONFIGS[config]
    return scenes.distorted_pinhole(scenes.config_scene("pinhole-distortion", {config: make},
                                                        config, seed), distortion, shift)


def view_points(scene):
    """(P, 3) float64 view-space means."""
    view = scene.settings.viewmatrix.detach().reshape(4, 4).double()
    means = scene.inputs["means3D"].detach().double()
    return (torch.cat([means, torch.ones_like(means[:, :1])], 1) @ view)[:, :3]


def opencv_pixels(t, k, fx, fy, cx, cy):
    """OpenCV's projectPoints, written out from its documentation: (P, 2) pixels."""
    k1, k2, p1, p2, k3, k4, k5, k6 = tuple(k) + (0.0,) * (8 - len(k))
    x, y = t[:, 0] / t[:, 2], t[:, 1] / t[:, 2]
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3) / (1 + k4 * r2 + k5 * r2 ** 2
                                                            + k6 * r2 ** 3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return torch.stack([fx * xd + cx, fy * yd + cy], 1)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config):
    """Outputs, every Gaussian input's gradient and the camera's (the coefficients' too),
    against the reference."""
    failures = []
    for seed in range(3):
        scene = scene_for(config, seed)
        found, radii, wants = projection_failures(
            scene, seed, FORWARD_TOL[scene.inputs["means3D"].dtype])
        failures += found
        assert (radii > 0).sum() > scene.P // 3
        for name in ("viewmatrix", "projmatrix", "pinhole_distortion"):
            assert wants[0]["all"][name].abs().max() > 0
    assert not failures, "\n".join(failures)


def test_jacobian_is_the_pixel_positions():
    """The reference's EWA Jacobian (`_lens_terms`' entries, as the kernels write them) is
    autograd's Jacobian of its own pixel position `_lens_pixels` by the view-space point, for
    random coefficients and points up to 60 degrees off the axis."""
    gen = torch.Generator().manual_seed(41)
    from diff_gaussian_rasterization_depth.reference import _projection_jacobian
    for trial in range(6):
        k = tuple((torch.rand(8, generator=gen, dtype=F64) - 0.5).mul(
            torch.tensor([0.6, 0.2, 0.04, 0.04, 0.05, 0.6, 0.2, 0.05], dtype=F64)).tolist())
        k = k if trial % 2 else k[:5] + (0.0,) * 3
        settings = scene_for("float64", trial).settings._replace(pinhole_distortion=k)
        t = torch.cat([(torch.rand(20, 2, generator=gen, dtype=F64) - 0.5) * 3.4,
                       torch.ones(20, 1, dtype=F64)], 1) * (1 + 4 * torch.rand(
                           20, 1, generator=gen, dtype=F64))
        _, _, jac = _projection_jacobian(t[:, 0], t[:, 1], t[:, 2], settings)
        for i in range(len(t)):
            want = torch.autograd.functional.jacobian(
                lambda p: torch.stack(_lens_pixels(p[0:1], p[1:2], p[2:3], settings))[:, 0],
                t[i])
            torch.testing.assert_close(jac[i], want, rtol=1e-10, atol=1e-10)


def test_small_splat_lands_where_opencv_projects():
    """A COLMAP OPENCV camera (fx, fy, cx, cy, k1, k2, p1, p2; pixel centres at +0.5) set up as
    doc/api.md says: cameras.projection_from_intrinsics with the principal point less half a
    pixel, and pinhole_distortion=(k1, k2, p1, p2). A small splat's weight centroid lies where
    OpenCV's projectPoints puts its mean, less half a pixel; the reference's positions agree
    with it to 1e-6 px in float64 (the principal point, read off projmatrix, carries the
    projection's 1e-7 guard on w)."""
    fx, fy, cx, cy = 120.0, 117.0, 77.3, 52.6
    k = (-0.21, 0.06, 0.004, -0.003)
    settings = colmap_settings(fx, fy, cx, cy, pinhole_distortion=k)
    for direction in ((0.3, -0.2, 1.0), (-0.45, 0.3, 1.0), (0.5, 0.35, 1.0), (-0.5, -0.38, 1)):
        point = 4.0 * torch.tensor(direction, dtype=F64)
        want = opencv_pixels(point[None], k, fx, fy, cx - 0.5, cy - 0.5)[0]
        got = splat_centroid(settings, point, 0.01)
        assert (got - want).abs().max() < 0.02, (direction, got, want)
        # Not where the undistorted camera puts it.
        moved = splat_centroid(settings._replace(pinhole_distortion=None), point, 0.01)
        assert (moved - want).abs().max() > 0.5
    # The reference's positions are OpenCV's, everywhere in the view.
    gen = torch.Generator().manual_seed(5)
    t = torch.cat([(torch.rand(200, 2, generator=gen, dtype=F64) - 0.5) * 1.2,
                   torch.ones(200, 1, dtype=F64)], 1) * 3
    checked = settings._replace(pinhole_distortion=k + (0.0,) * 4)
    got = torch.stack(_lens_pixels(t[:, 0], t[:, 1], t[:, 2], checked), 1)
    torch.testing.assert_close(got, opencv_pixels(t, k, fx, fy, cx - 0.5, cy - 0.5),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", ["sh1", "float64", "rational-sh1"])
def test_gradcheck(config):
    """Finite differences, float64: the Gaussians' inputs, and the camera's matrices, fields of
    view and coefficients."""
    _, distortion, shift = CONFIGS[config]
    for attempt in range(50):
        scene = scenes.distorted_pinhole(scenes.make_scene(
            960 + 1000 * attempt, smooth=True, dtype=F64, P=5, height=13, width=18,
            sh_degree=1, antialiasing=True), distortion, shift)
        if scenes.smooth_margin(scene):
            break
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert len(leaves) == 6   # the coefficients last
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_fold_u():
    """pinhole_fold_u: the first u where d(r L)/dr = 1 + 3 k1 u + 5 k2 u^2 + 7 k3 u^3 reaches 0,
    for random coefficients (the slope positive below it, 0 at it); none where it stays
    positive."""
    assert pinhole_fold_u(FOLDING) == pytest.approx(1 / 1.2, rel=1e-12)
    assert pinhole_fold_u((0.1, 0.02, 0.0, 0.0, 0.001)) == NO_FOLD_U
    assert pinhole_fold_u((0.0,) * 8) == NO_FOLD_U
    # k4 = -1: the denominator 1 - u meets its pole at u = 1, where r L grows without bound
    assert pinhole_fold_u((0.0,) * 5 + (-1.0, 0.0, 0.0)) == pytest.approx(1.0, rel=1e-12)
    gen = torch.Generator().manual_seed(8)
    grid = torch.linspace(0, 50, 20001, dtype=F64)
    found = 0
    for trial in range(300):
        k = ((torch.rand(8, generator=gen, dtype=F64) - 0.5) * 2).tolist()
        k[2] = k[3] = 0.0
        if trial % 2 == 0:
            k[5:] = [0.0, 0.0, 0.0]
        fold = pinhole_fold_u(k)
        # r L by its definition, and its slope by differences
        k1, k2, _, _, k3, k4, k5, k6 = k
        n = 1 + k1 * grid + k2 * grid ** 2 + k3 * grid ** 3
        d = 1 + k4 * grid + k5 * grid ** 2 + k6 * grid ** 3
        rL = grid.sqrt() * n / d
        rising = (rL[1:] > rL[:-1]) & (d[1:] > 0)
        below = grid[1:] < fold * (1 - 1e-6)
        assert rising[below].all()
        if fold == NO_FOLD_U:
            continue
        found += 1
        # past it (by a step of the grid or two) r L falls or d has changed sign
        after = (grid[1:] > fold * (1 + 1e-6)) & (grid[1:] < fold + 0.01)
        assert (~rising[after]).any() or not after.any()
    assert found > 100


@pytest.mark.parametrize("dtype", [F32, F64])
def test_fold_culls(dtype):
    """FOLDING's image folds back 42 degrees off the axis: every Gaussian past it is culled
    (radius 0), and the opacity field sees no point past it (1), though the polynomial would
    bring some of them back onto the image."""
    scene = scenes.distorted_pinhole(scenes.make_scene(7300, P=300, height=40, width=64,
                                                       dtype=dtype), FOLDING)
    # a wider view (the focal shorter): the image reaches past the fold's distorted radius
    scene = scenes.Scene(scene.inputs, scene.settings._replace(tanfovx=0.9, tanfovy=0.6))
    t = view_points(scene)
    past = (t[:, 2] > 0.2) & ((t[:, 0] / t[:, 2]) ** 2 + (t[:, 1] / t[:, 2]) ** 2 > 1 / 1.2)
    with torch.no_grad():
        out = GaussianRasterizer(scene.settings)(**scene.inputs, points3D=scene.inputs["means3D"])
    radii, point_opacity = out[1], out[-1]
    assert past.sum() > 20 and (radii[past] == 0).all()
    assert (point_opacity[past] == 1).all()
    assert (radii[~past] > 0).sum() > 30
    # Past the fold the polynomial brings points back onto the image: some of them would land
    # there, near where the Gaussians within it are drawn.
    padded = FOLDING + (0.0,) * 4
    checked = SimpleNamespace(**dict(scene.settings._asdict(), pinhole_distortion=padded,
                                     pinhole_max_u=pinhole_fold_u(padded)))
    px, py = _lens_pixels(t[:, 0], t[:, 1], t[:, 2], checked)
    on_image = (px > 0) & (px < scene.settings.image_width) & (py > 0) & \
        (py < scene.settings.image_height)
    assert (on_image & past).sum() >= 3


def test_zeros():
    """Zero coefficients (four, five or eight, a tuple or a tensor) are the plain pinhole, bit
    for bit;
    zeros in a tensor that requires grad take the lens path (c + focal (a, b), within rounding
    of projmatrix's projection) and get a gradient: d/dk1 moves every splat off the axis."""
    scene = scene_for("sh3-aa-shifted", 1)
    plain_settings = scene.settings._replace(pinhole_distortion=None)
    with torch.no_grad():
        plain = GaussianRasterizer(plain_settings)(**scene.inputs)
        for zeros in ((0.0,) * 4, (0.0,) * 5, (0.0,) * 8, torch.zeros(5)):
            outputs = GaussianRasterizer(plain_settings._replace(pinhole_distortion=zeros))(
                **scene.inputs)
            assert all(torch.equal(x, y) for x, y in zip(outputs, plain))
    zeros = torch.zeros(4, requires_grad=True)
    color = run_backend(scene.inputs, plain_settings._replace(pinhole_distortion=zeros))[0]
    torch.testing.assert_close(color, plain[0], rtol=0, atol=1e-4)
    weights = torch.randn(color.shape, generator=torch.Generator().manual_seed(3))
    (color * weights).sum().backward()
    assert zeros.grad is not None and zeros.grad.shape == (4,) and zeros.grad[0].abs() > 0


def test_checked():
    """pinhole_distortion: 4, 5 or 8 finite numbers (a sequence or a tensor), on the
    perspective camera alone; ray-based helpers that assume the plain pinhole refuse it."""
    scene = scene_for("sh1", 0)
    s = scene.settings
    cases = [(s._replace(fisheye=True), ValueError, "perspective camera"),
             (s._replace(orthographic=True), ValueError, "perspective camera"),
             (s._replace(pinhole_distortion=(0.1, 0.2, 0.3)), ValueError, "4, 5 or 8"),
             (s._replace(pinhole_distortion=(0.1,) * 6), ValueError, "4, 5 or 8"),
             (s._replace(pinhole_distortion=(0.1, math.inf, 0.0, 0.0)), ValueError, "finite"),
             (s._replace(pinhole_distortion="abcd"), TypeError, "4, 5 or 8 numbers")]
    for settings, error, match in cases:
        with pytest.raises(error, match=match):
            GaussianRasterizer(settings)(**scene.inputs)
    with torch.no_grad():
        as_tensor = GaussianRasterizer(s._replace(pinhole_distortion=torch.tensor(DISTORTION)))(
            **scene.inputs)
        as_tuple = GaussianRasterizer(s)(**scene.inputs)
        plain = GaussianRasterizer(s._replace(pinhole_distortion=None))(**scene.inputs)
    assert all(torch.equal(x, y) for x, y in zip(as_tensor, as_tuple))
    assert (as_tuple[3] - plain[3]).abs().max() > 0.01
    with pytest.raises(NotImplementedError, match="pinhole_distortion"):
        surface.intersection_planes(scene.inputs["means3D"], s, scene.inputs["scales"],
                                    scene.inputs["rotations"])
    assert GaussianRasterizationSettings._field_defaults["pinhole_distortion"] is None


def test_self_calibration_recovers_the_distortion():
    """A render through OPENCV's coefficients (0.12, -0.05, -0.006, 0.004), and the same
    Gaussians rendered from coefficients that start at zero (a tensor that takes a gradient):
    Adam on the four alone (L1 colour, 300 steps) brings the distortion field from 3.7 px off
    the truth to within 0.1 px of it over the image (0.06 when written). Float32, the CPU
    backend."""
    scene = scenes.distorted_pinhole(scenes.make_scene(7400, P=400, height=72, width=96),
                                     OPENCV)
    inputs, s = scene.inputs, scene.settings
    with torch.no_grad():
        target = run_backend(inputs, s)[0]
    estimate = fit_coefficients(inputs, s, "pinhole_distortion", target)
    fx = s.image_width / (2 * s.tanfovx)
    grid = torch.stack(torch.meshgrid(torch.linspace(-s.tanfovx, s.tanfovx, 40, dtype=F64),
                                      torch.linspace(-s.tanfovy, s.tanfovy, 30, dtype=F64),
                                      indexing="ij"), -1).reshape(-1, 2)
    t = torch.cat([grid, torch.ones(len(grid), 1, dtype=F64)], 1)

    def field_error(k):   # px, the largest over the image
        return float((opencv_pixels(t, k, fx, fx, 0, 0) - opencv_pixels(t, OPENCV, fx, fx, 0, 0))
                     .abs().max())
    assert field_error((0.0,) * 4) > 3
    assert field_error(estimate) < 0.1


@pytest.mark.parametrize("distortion", [DISTORTION, OPENCV, RATIONAL, FOLDING],
                         ids=["wide", "opencv", "rational", "folding"])
def test_depth_to_points_inverts_the_projection(distortion):
    """depth_to_points through the distorted pinhole: each pixel's point, projected by the
    lens (`_lens_pixels`), lands on the pixel's centre (1e-6 px, float64) at its depth;
    with FOLDING, pixels no point within the fold reaches get the axis (0, 0, z)."""
    scene = scene_for("float64", 0)   # widened: FOLDING's fold inside the image
    s = scene.settings._replace(pinhole_distortion=distortion, tanfovx=0.9, tanfovy=0.7)
    H, W = s.image_height, s.image_width
    depth = 1 + torch.rand(H, W, generator=torch.Generator().manual_seed(2), dtype=F64)
    points = surface.depth_to_points(depth, s)
    assert torch.equal(points[2], depth)
    x, y, z = points.reshape(3, -1)
    reached = (x != 0) | (y != 0)
    padded = tuple(distortion) + (0.0,) * (8 - len(distortion))
    checked = SimpleNamespace(**dict(s._asdict(), pinhole_distortion=padded,
                                     pinhole_max_u=pinhole_fold_u(padded)))
    px, py = _lens_pixels(x, y, z, checked)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    assert (px[reached] - xs.reshape(-1)[reached]).abs().max() < 1e-6
    assert (py[reached] - ys.reshape(-1)[reached]).abs().max() < 1e-6
    if distortion is FOLDING:
        assert 0 < (~reached).sum() < H * W
        assert ((x[reached] / z[reached]) ** 2 + (y[reached] / z[reached]) ** 2).max() \
            <= 1 / 1.2 + 1e-12
    else:
        assert reached.all()


def test_depth_to_points_gradients():
    """depth_to_points' gradient through the undistortion (its last Newton step under
    autograd: the implicit function's), by finite differences: in the depth, the matrices'
    principal point and the coefficients."""
    scene = scenes.make_scene(9, P=3, height=7, width=9, dtype=F64)
    s = scenes.distorted_pinhole(scene, DISTORTION, (0.5, -0.3)).settings
    depth = (1 + torch.rand(7, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
             ).requires_grad_()
    k = torch.tensor(DISTORTION, dtype=F64, requires_grad=True)
    proj = s.projmatrix.detach().clone().requires_grad_()

    def fn(depth, k, proj):
        return surface.depth_to_points(depth, s._replace(pinhole_distortion=k, projmatrix=proj))
    assert torch.autograd.gradcheck(fn, (depth, k, proj), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
def test_cuda_matches_cpu(target):
    """The CUDA preprocess and its backward (the camera's gradient, the coefficients' included)
    through the distorted pinhole and its fold, against the CPU backend."""
    import test_cuda
    for seed, (distortion, shift) in enumerate(((DISTORTION, (0.0, 0.0)), (OPENCV, (2.5, -1.0)),
                                                (RATIONAL, (-1.0, 0.0)),
                                                (FOLDING, (0.0, 0.0)))):
        scene = scenes.distorted_pinhole(
            scenes.make_scene(7960 + seed, P=100, height=40, width=64, sh_degree=2,
                              antialiasing=seed % 2 == 1), distortion, shift)
        test_cuda.check_projection_against_cpu(scene, target, seed)
