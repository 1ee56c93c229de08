"""Fisheye cameras (settings `fisheye=True`; Fisheye-GS's `is_fisheye`, gsplat's
camera_model="fisheye"): the equidistant projection, a point theta radians off the optical axis
landing focal * theta px from the principal point, which is where projmatrix puts the axis.

Against autograd through the reference: outputs, the Gaussians' gradients and the camera's,
float32 and float64, in views as wide as the pinhole's and in wide ones (160 degrees, the camera
turned so that the Gaussians lie 70 degrees and more off the axis, the principal point moved);
finite differences; what the projection means (a small splat lands where theta says, up to 85
degrees off the axis; a principal point moved by a tile moves the image by as much); the CUDA
kernels against the CPU backend; the checks; Fisheye-GS's module. gsplat's own fisheye:
tests/test_gsplat_api.py. OpenCV's fisheye distortion (settings `fisheye_distortion`, k1-k4) in
each of these, and its own: the terms against their definitions, a splat landing at theta_d,
the fold's culling, zeros as no distortion, the inverse of `depth_to_points`.
"""
import math

import pytest
import torch

import scenes
from cuda_target import cuda_targets
from diff_gaussian_rasterization_depth import (GaussianRasterizationSettings, GaussianRasterizer,
                                               fisheye_gs, surface)
from diff_gaussian_rasterization_depth._validation import fisheye_fold_angle
from diff_gaussian_rasterization_depth.reference import _lens_centre, _fisheye_terms
from test_camera_gradients import make_camera_gradcheck_fn, projection_failures
from test_cpu_backend import compare_gradients, gradients, run_backend, upstream_gradients

F32, F64 = torch.float32, torch.float64

# A wide view: 80 degrees each side, the camera turned 50 degrees off the cloud (its Gaussians
# from about 20 to 70-80 degrees off the axis), the principal point moved off the centre.
WIDE = dict(half_angle=1.4, yaw=0.87, shift=(4.5, -2.5))
# OpenCV's fisheye coefficients (k1, k2, k3, k4) of a real lens's order: theta_d grows to 90
# degrees, 4% past theta there. FOLDING's theta_d stops growing at theta = 1 / sqrt(0.9), 60.4
# degrees, past which the image folds back.
DISTORTION = (0.05, -0.02, 0.004, -0.0005)
FOLDING = (-0.3, 0.0, 0.0, 0.0)

CONFIGS = {
    "sh1": (dict(sh_degree=1), {}),
    "sh3-aa-wide": (dict(sh_degree=3, antialiasing=True), WIDE),
    "colors-cov-wide": (dict(precomp_colors=True, precomp_cov=True), WIDE),
    "mip-kernel0.1": (dict(sh_degree=2, antialiasing=True, kernel_size=0.1), {}),
    "size-64x40-wide": (dict(sh_degree=2, height=40, width=64, P=120), WIDE),
    "float64": (dict(sh_degree=2, dtype=F64), {}),
    "float64-aa-cov-wide": (dict(sh_degree=1, antialiasing=True, precomp_cov=True, dtype=F64),
                            WIDE),
    "distorted-sh2": (dict(sh_degree=2), dict(distortion=DISTORTION)),
    "distorted-aa-wide": (dict(sh_degree=1, antialiasing=True), dict(WIDE, distortion=DISTORTION)),
    "distorted-float64-cov-wide": (dict(precomp_cov=True, dtype=F64),
                                   dict(WIDE, distortion=DISTORTION)),
    "folding-float64-wide": (dict(sh_degree=1, dtype=F64), dict(WIDE, distortion=FOLDING)),
}
# The fisheye's screen position is not rounded as the reference rounds it (atan, and the
# series near the axis with another switch): float32 positions differ by an ulp or two, the
# outputs by a few 1e-6 more than the pinhole's, which match the reference bit for bit.
FORWARD_TOL = {F32: 5e-5, F64: 1e-10}


def scene_for(config, seed):
    make, view = CONFIGS[config]
    return scenes.fisheye(scenes.config_scene("fisheye", {config: make}, config, seed), **view)


def compare_camera_gradients(got, wants, dtype, label):
    """compare_gradients, but for projmatrix's in float32: through the fisheye it reaches the
    render by the principal point alone, and its gradient is the sum of every Gaussian's
    screen-space gradient, which mostly cancel (moving the whole image changes little but at
    its border: |sum| is down to 1/400 of sum |.| on these scenes); float32 rounding of the
    terms then shows 10 times larger against the result. Float64 holds it to 1e-8."""
    if dtype != F32:
        return compare_gradients(got, wants, dtype, label)
    rest = [{m: {n: g for n, g in w[m].items() if n != "projmatrix"} for m in w} for w in wants]
    failures = compare_gradients(got, rest, dtype, label)
    for mode in wants[0]:
        g = got[mode]["projmatrix"]
        if not any(torch.allclose(g, w[mode]["projmatrix"], rtol=1e-3,
                                  atol=1e-3 * w[mode]["projmatrix"].abs().max().item())
                   for w in wants):
            failures.append(f"{label} {mode} projmatrix: max |diff| "
                            f"{(g - wants[-1][mode]['projmatrix']).abs().max().item():.3g}")
    return failures


def off_axis_angles(scene):
    """(P,) each Gaussian's angle off the camera's axis, radians."""
    s = scene.settings
    view = s.viewmatrix.detach().reshape(4, 4).double()
    means = scene.inputs["means3D"].detach().double()
    t = torch.cat([means, torch.ones_like(means[:, :1])], 1) @ view
    return torch.atan2(t[:, :2].norm(dim=1), t[:, 2])


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config):
    """Outputs, every Gaussian input's gradient and the camera's, against the reference."""
    failures = []
    widest = 0.0
    for seed in range(3):
        scene = scene_for(config, seed)
        found, radii, wants = projection_failures(scene, seed,
                                                  FORWARD_TOL[scene.inputs["means3D"].dtype],
                                                  compare_camera_gradients)
        failures += found
        assert (radii > 0).sum() > scene.P // 3
        widest = max(widest, float(off_axis_angles(scene)[radii > 0].max()))
        for name in ("viewmatrix", "projmatrix") + (
                ("fisheye_distortion",) if "distortion" in CONFIGS[config][1] else ()):
            assert wants[0]["all"][name].abs().max() > 0
    assert not failures, "\n".join(failures)
    # The wide views draw Gaussians far off the axis, where the closed forms hold sway (but
    # past the fold).
    view = CONFIGS[config][1]
    assert widest > (0.9 if view.get("distortion") == FOLDING else
                     1.2 if "half_angle" in view else 0.3)


def smooth_fisheye_scene(seed, view, **kwargs):
    """The first fisheye view of make_scene(seed + 1000 k, smooth=True) that passes
    scenes.smooth_margin (no value within 1e-3 of a threshold), float64."""
    for attempt in range(50):
        scene = scenes.fisheye(scenes.make_scene(seed + 1000 * attempt, smooth=True, dtype=F64,
                                                 **kwargs), **view)
        if scenes.smooth_margin(scene):
            return scene
    raise RuntimeError(f"no smooth scene found from seed {seed}")


@pytest.mark.parametrize("view", [{}, WIDE, dict(distortion=DISTORTION),
                                  dict(WIDE, distortion=DISTORTION)],
                         ids=["narrow", "wide", "narrow-distorted", "wide-distorted"])
def test_gradcheck(view):
    """Finite differences, float64: the Gaussians' inputs and the camera's matrices."""
    scene = smooth_fisheye_scene(950, view, P=5, height=13, width=18, sh_degree=1,
                                 antialiasing=True)
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def single_splat_settings(size, half_angle, dtype, shift=(0.0, 0.0), distortion=None):
    """A fisheye at the origin looking down +z (view = world), `size` px square, spanning
    `half_angle` radians each side of the centre; its principal point moved by `shift` px; with
    OpenCV's `distortion`."""
    base = scenes.make_scene(0, P=1, height=size, width=size, dtype=dtype)
    eye = torch.eye(4, dtype=dtype).reshape(base.settings.viewmatrix.shape)
    plain = base.settings._replace(viewmatrix=eye, projmatrix=eye.clone(),
                                   campos=torch.zeros(3, dtype=dtype))
    return scenes.fisheye(scenes.Scene(base.inputs, plain), half_angle=half_angle,
                          shift=shift, distortion=distortion).settings


def distorted_angle(theta, k):
    """OpenCV's fisheye model, written out: theta (1 + k1 theta^2 + ... + k4 theta^8)."""
    return theta * (1 + sum(c * theta ** (2 * i + 2) for i, c in enumerate(k or ())))


@pytest.mark.parametrize("distortion", [None, DISTORTION], ids=["equidistant", "distorted"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_small_splat_lands_at_focal_times_theta(dtype, distortion):
    """A small round Gaussian 5 units from the camera, theta off the axis in direction phi,
    lands (the centroid of its weight) at c + theta (fx cos phi, fy sin phi), fx = W / (2 tanfovx):
    the equidistant projection, to 85 degrees off the axis. The pinhole would put the last at
    f tan(theta), 11 times farther. With OpenCV's distortion, at c + theta_d (fx cos phi,
    fy sin phi) (`distorted_angle`; 2.5 px farther out at 85 degrees)."""
    size, half_angle = 160, 1.6
    settings = single_splat_settings(size, half_angle, dtype, distortion=distortion)
    f = size / (2.0 * half_angle)
    fy = size / (2.0 * settings.tanfovy)   # the base scene's aspect: within 10% of f
    centre = (size - 1) / 2.0
    for theta, phi in ((0.0, 0.0), (0.05, 2.0), (0.3, 0.5), (0.8, -2.2), (1.25, 3.0),
                       (1.48, 1.1)):
        direction = torch.tensor([math.sin(theta) * math.cos(phi),
                                  math.sin(theta) * math.sin(phi), math.cos(theta)], dtype=dtype)
        sigma = 2.0 * 5.0 / f    # about 2 px across the ray
        inputs = dict(means3D=5.0 * direction[None], means2D=torch.zeros(1, 3, dtype=dtype),
                      opacities=torch.full((1, 1), 0.9, dtype=dtype),
                      colors_precomp=torch.ones(1, 3, dtype=dtype),
                      scales=torch.full((1, 3), sigma, dtype=dtype),
                      rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=dtype))
        with torch.no_grad():
            _, radii, depth, weight = GaussianRasterizer(settings)(**inputs)
        assert radii[0] > 0
        ys, xs = torch.meshgrid(torch.arange(size, dtype=F64), torch.arange(size, dtype=F64),
                                indexing="ij")
        w = weight.double()
        got = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
        theta_d = distorted_angle(theta, distortion)
        want = torch.tensor([centre + f * theta_d * math.cos(phi),
                             centre + fy * theta_d * math.sin(phi)], dtype=F64)
        assert (got - want).abs().max() < 0.02, (theta, phi, got, want)
        # Depth is the view-space z, as ever.
        seen = w > 0.1
        torch.testing.assert_close(depth[seen].double(),
                                   torch.full_like(w[seen], 5.0 * math.cos(theta)),
                                   rtol=1e-5, atol=1e-5)


def colmap_settings(fx, fy, cx, cy, W=150, H=110, **lens):
    """Float64 settings of a COLMAP camera at the origin looking down +z, as doc/api.md makes
    them: cameras.projection_from_intrinsics with the principal point less half a pixel
    (COLMAP's pixel centres lie at +0.5, the rasterizer's at integers), and the `lens` fields."""
    from diff_gaussian_rasterization_depth.cameras import projection_from_intrinsics
    tanfovx, tanfovy, P = projection_from_intrinsics(fx, fy, cx - 0.5, cy - 0.5, W, H)
    eye = torch.eye(4, dtype=F64)
    return GaussianRasterizationSettings(
        image_height=H, image_width=W, tanfovx=tanfovx, tanfovy=tanfovy,
        bg=torch.zeros(3, dtype=F64), scale_modifier=1.0, viewmatrix=eye,
        projmatrix=(eye @ P.T).to(F64), sh_degree=0, campos=torch.zeros(3, dtype=F64),
        prefiltered=False, debug=False, **lens)


def test_colmap_opencv_fisheye_camera():
    """A COLMAP OPENCV_FISHEYE camera (fx, fy, cx, cy, k1-k4; pixel centres at +0.5) as
    doc/api.md sets it up: settings from cameras.projection_from_intrinsics with the principal
    point less half a pixel, fisheye=True and fisheye_distortion=(k1, k2, k3, k4). A small
    splat lands (its weight's centroid) where COLMAP's model projects its mean, less half a
    pixel: u = fx theta_d a / s + cx."""
    fx, fy, cx, cy = 52.0, 49.0, 77.3, 52.6
    k = (0.03, -0.012, 0.004, -0.0007)
    settings = colmap_settings(fx, fy, cx, cy, fisheye=True, fisheye_distortion=k)
    for direction in ((0.3, -0.2, 1.0), (-1.1, 0.4, 1.0), (0.9, 1.2, 0.6), (-2.0, -1.5, 0.5)):
        point = 4.0 * torch.tensor(direction, dtype=F64) / torch.tensor(direction).norm()
        a, b = float(point[0] / point[2]), float(point[1] / point[2])
        s = math.hypot(a, b)
        theta_d = distorted_angle(math.atan(s), k)
        want = torch.tensor([fx * theta_d * a / s + cx - 0.5, fy * theta_d * b / s + cy - 0.5],
                            dtype=F64)
        got = splat_centroid(settings, point, 0.02)
        assert (got - want).abs().max() < 0.02, (direction, got, want)


def splat_centroid(settings, point, scale):
    """(2,) float64: the weight centroid in pixels of one small round splat (float64, opacity
    0.9, standard deviation `scale`) at `point`, rendered with `settings`."""
    H, W = settings.image_height, settings.image_width
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    inputs = dict(means3D=point[None], means2D=torch.zeros(1, 3, dtype=F64),
                  opacities=torch.full((1, 1), 0.9, dtype=F64),
                  colors_precomp=torch.ones(1, 3, dtype=F64),
                  scales=torch.full((1, 3), scale, dtype=F64),
                  rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=F64))
    with torch.no_grad():
        weight = GaussianRasterizer(settings)(**inputs)[3]
    return torch.stack([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])


@pytest.mark.parametrize("distortion", [None, DISTORTION], ids=["equidistant", "distorted"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_far_off_the_axis_lands_on_the_rim(dtype, distortion):
    """Points 90 degrees off the axis in all but name (x / z up to 1e13, z = 1) land on the
    image's rim, focal * pi / 2 px out (focal * theta_d(pi / 2) with OpenCV's distortion), with
    finite outputs and gradients (the camera's too, the coefficients' among them): no term of
    the projection or its derivatives overflows on the way."""
    size = 96
    settings = single_splat_settings(size, 2.0, dtype)   # the rim at pi / 2 lies inside
    if distortion is not None:
        settings = settings._replace(fisheye_distortion=torch.tensor(distortion, dtype=dtype))
    f = size / (2.0 * 2.0)
    ratios = torch.tensor([1e3, 1e6, 1e9, 1e13], dtype=dtype)
    P = len(ratios)
    # Sizes across the ray of about 1.5 px: sigma = 1.5 distance / (f pi / 2 / sin(theta)).
    sigma = 1.5 * ratios / (f * math.pi / 2)
    inputs = dict(means3D=torch.stack([ratios, torch.zeros(P, dtype=dtype),
                                       torch.ones(P, dtype=dtype)], 1),
                  means2D=torch.zeros(P, 3, dtype=dtype),
                  opacities=torch.full((P, 1), 0.8, dtype=dtype),
                  colors_precomp=torch.rand(P, 3, dtype=dtype,
                                            generator=torch.Generator().manual_seed(0)),
                  scales=sigma[:, None].expand(P, 3).contiguous(),
                  rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).expand(P, 4).contiguous())
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    names = ("viewmatrix", "projmatrix") + (("fisheye_distortion",) if distortion else ())
    camera = {n: getattr(settings, n).clone().requires_grad_() for n in names}
    color, radii, depth, weight = GaussianRasterizer(settings._replace(**camera))(**leaves)
    assert (radii > 0).all()
    # They land focal * pi / 2 right of the centre (the first 0.02 px short of it).
    w = weight.detach().double()
    cols = torch.arange(size, dtype=F64)
    centroid = float((w.sum(0) * cols).sum() / w.sum())
    assert abs(centroid - ((size - 1) / 2 + f * distorted_angle(math.pi / 2, distortion))) < 0.1
    (color.sum() + depth.sum() + weight.sum()).backward()
    for t in list(leaves.values()) + list(camera.values()):
        assert torch.isfinite(t.grad).all()
    assert leaves["means3D"].grad.abs().sum() > 0


def test_principal_point_moves_the_image():
    """A principal point moved by a whole tile (16 px) moves the render by as much, float64:
    the tiles a splat is listed in move with it (by a shift of another size, the pixels of a
    listed tile beyond a splat's 3-sigma square would blend it or not). Compared away from the
    outermost tiles, where splats enter and leave the image. The projection of the axis point
    (at view depth 1, w + 1e-7 as every projection) moves by 16 (1 - 1e-7) px: 1.6e-6 px short,
    so values agree to a few 1e-6."""
    def render(shift):
        scene = scenes.fisheye(scenes.make_scene(960, P=80, height=80, width=96, dtype=F64),
                               half_angle=1.0, shift=shift)
        with torch.no_grad():
            return scene.settings, GaussianRasterizer(scene.settings)(**scene.inputs)
    plain, (color, radii, depth, weight) = render((0.0, 0.0))
    moved, (color2, radii2, depth2, weight2) = render((16.0, -16.0))
    torch.testing.assert_close(torch.stack(_lens_centre(moved)),
                               torch.stack(_lens_centre(plain)) + torch.tensor([16.0, -16.0],
                                                                                  dtype=F64),
                               rtol=0, atol=2e-6)
    here, there = (slice(16, 48), slice(32, 80)), (slice(32, 64), slice(16, 64))
    assert weight[there].max() > 0.5 and (weight[there] > 0.05).sum() > 300
    torch.testing.assert_close(weight2[here], weight[there], rtol=0, atol=1e-5)
    torch.testing.assert_close(color2[:, here[0], here[1]], color[:, there[0], there[1]], rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(depth2[here], depth[there], rtol=0, atol=1e-4)


def random_distortion(gen):
    """OpenCV fisheye coefficients drawn about a real lens's, each of either sign."""
    return tuple(float(v) for v in (torch.rand(4, generator=gen, dtype=F64) * 2 - 1)
                 * torch.tensor([0.1, 0.04, 0.01, 0.002], dtype=F64))


def test_distortion_terms_are_their_definitions():
    """The reference's terms with OpenCV's distortion, float64, against what they stand for:
    s K = theta_d (OpenCV's formula written out), M = (dK/da) / a (autograd), N = -(d theta_d /
    d theta) / (1 + u) (the derivative written out), from 1e-4 to 89.4 degrees off the axis
    (both sides of the series' switch at u = 0.01), random coefficients. The compiled terms
    (and their P, Q and R) answer to these through the gradients (test_matches_reference,
    test_gradcheck)."""
    gen = torch.Generator().manual_seed(31)
    s = torch.logspace(-4, 2, 400, dtype=F64)
    phi = torch.rand(400, generator=gen, dtype=F64) * 2 * math.pi
    a = (s * torch.cos(phi)).requires_grad_()
    b = (s * torch.sin(phi)).requires_grad_()
    theta = torch.atan(s)
    for _ in range(5):
        k = random_distortion(gen)
        K, M, N = _fisheye_terms(a, b, k)
        torch.testing.assert_close(s * K, distorted_angle(theta, k), rtol=1e-13, atol=0)
        (dK_da,) = torch.autograd.grad(K.sum(), a, retain_graph=True)
        torch.testing.assert_close(M, dK_da / a, rtol=1e-9, atol=1e-12)
        slope = 1 + sum((2 * i + 3) * c * theta ** (2 * i + 2) for i, c in enumerate(k))
        torch.testing.assert_close(N, -slope / (1 + s * s), rtol=1e-13, atol=0)
    # Without coefficients, the equidistant terms exactly.
    plain = _fisheye_terms(a, b)
    assert all(torch.equal(x, y) for x, y in zip(plain, _fisheye_terms(a, b, None)))


def test_fold_angle():
    """fisheye_fold_angle: where d theta_d / d theta first reaches 0 (the bisection's answer
    within 1e-12 of the closed form for k1 alone), pi / 2 where theta_d grows all the way; for
    random coefficients strong enough to fold, the slope is positive below it and 0 at it."""
    assert fisheye_fold_angle(FOLDING) == pytest.approx(math.sqrt(1 / 0.9), abs=1e-12)
    assert fisheye_fold_angle(DISTORTION) == math.pi / 2
    assert fisheye_fold_angle((0.0, 0.0, 0.0, 0.0)) == math.pi / 2
    gen = torch.Generator().manual_seed(8)
    folded = 0
    for _ in range(20):
        k = tuple(float(v) for v in torch.randn(4, generator=gen, dtype=F64) * 0.3)
        fold = fisheye_fold_angle(k)

        def slope(t):
            return 1 + sum((2 * i + 3) * c * t ** (2 * i + 2) for i, c in enumerate(k))
        below = torch.linspace(0, fold, 2000, dtype=F64)[:-1]
        assert (slope(below) > 0).all()
        if fold < math.pi / 2:
            folded += 1
            assert abs(slope(fold)) < 1e-9
    assert folded >= 5


@pytest.mark.parametrize("dtype", [F32, F64])
def test_fold_culls(dtype):
    """FOLDING's image folds back 60.4 degrees off the axis: every Gaussian past that angle is
    culled (radius 0; the wide view has many), the others are drawn as the reference draws
    them (test_matches_reference, "folding-float64-wide"); the opacity field does not see
    points past it (1)."""
    scene = scenes.fisheye(scenes.make_scene(7200, P=300, height=40, width=64, dtype=dtype),
                           **WIDE, distortion=FOLDING)
    angles = off_axis_angles(scene)
    fold = fisheye_fold_angle(FOLDING)
    with torch.no_grad():
        out = GaussianRasterizer(scene.settings)(**scene.inputs, points3D=scene.inputs["means3D"])
    radii, point_opacity = out[1], out[-1]
    past = angles > fold
    assert past.sum() > 30 and (radii[past] == 0).all()
    assert (point_opacity[past] == 1).all()
    assert (radii[~past] > 0).sum() > 30
    # Without the fold, some of those past it land on the image.
    with torch.no_grad():
        unfolded = GaussianRasterizer(scene.settings._replace(fisheye_distortion=None))(
            **scene.inputs)[1]
    assert (unfolded[past] > 0).sum() > 10


def test_zero_distortion_is_none():
    """Four zero coefficients (a tuple or a tensor) render and differentiate bit for bit as
    no distortion: the plain equidistant path, nothing extra computed."""
    scene = scene_for("sh3-aa-wide", 2)
    s = scene.settings
    upstream = upstream_gradients(scene, torch.zeros(s.image_height, s.image_width,
                                                      dtype=torch.bool), 2)
    want = gradients(run_backend, scene, upstream)
    for zeros in ((0.0, 0.0, 0.0, 0.0), torch.zeros(4)):
        zeroed = scenes.Scene(scene.inputs, scene.settings._replace(fisheye_distortion=zeros))
        with torch.no_grad():
            outputs = GaussianRasterizer(zeroed.settings)(**zeroed.inputs)
            plain = GaussianRasterizer(scene.settings)(**scene.inputs)
        assert all(torch.equal(x, y) for x, y in zip(outputs, plain))
        got = gradients(run_backend, zeroed, upstream)
        assert all(torch.equal(got[m][n], want[m][n]) for m in want for n in want[m])


def test_self_calibration_recovers_the_distortion():
    """A fisheye render with OpenCV's coefficients (0.05, -0.02, 0.004, -0.0005), 128 px across
    75 degrees each side, 500 Gaussians up to 72 degrees off the axis; the same Gaussians
    rendered from coefficients that start at zero (a tensor that takes a gradient): Adam on the
    four alone (L1 colour, 300 steps) brings theta_d's curve from 2.6 px off the truth to within
    0.1 px of it over that whole range (the coefficients trade off against each other; the
    curve is what the images fix). Float32, the CPU backend."""
    gen = torch.Generator().manual_seed(7610)
    size, half_angle, P = 128, 1.3, 500
    settings = single_splat_settings(size, half_angle, F32)
    focal = size / (2 * half_angle)
    theta = torch.sqrt(torch.rand(P, generator=gen, dtype=F64)) * 1.25
    phi = torch.rand(P, generator=gen, dtype=F64) * 2 * math.pi
    directions = torch.stack([torch.sin(theta) * torch.cos(phi),
                              torch.sin(theta) * torch.sin(phi), torch.cos(theta)], 1)
    distance = 3 + 3 * torch.rand(P, generator=gen, dtype=F64)
    sizes = (0.6 + 0.6 * torch.rand(P, 3, generator=gen, dtype=F64)) * distance[:, None] / focal
    inputs = dict(means3D=(directions * distance[:, None]).float(), means2D=torch.zeros(P, 3),
                  opacities=0.3 + 0.6 * torch.rand(P, 1, generator=gen),
                  colors_precomp=torch.rand(P, 3, generator=gen), scales=sizes.float(),
                  rotations=torch.nn.functional.normalize(torch.randn(P, 4, generator=gen),
                                                          dim=1))
    with torch.no_grad():
        target = run_backend(inputs, settings._replace(fisheye_distortion=DISTORTION))[0]
    estimate = fit_coefficients(inputs, settings, "fisheye_distortion", target, lr=3e-3)
    angles = torch.linspace(0, 1.25, 200, dtype=F64)

    def curve_error(k):   # px, the largest over the angles
        return float(focal * (distorted_angle(angles, k) - distorted_angle(angles, DISTORTION))
                     .abs().max())
    assert curve_error(None) > 2.5
    assert curve_error(estimate) < 0.1


def fit_coefficients(inputs, settings, field, target, count=4, lr=1e-2, steps=300):
    """Lens coefficients (settings `field`) fitted from `count` zeros to the colour `target`,
    the Gaussians `inputs` held: Adam, L1 colour, the rate decaying a hundredfold over `steps`.
    Returns the coefficients (a detached float64 tuple)."""
    estimate = torch.zeros(count, requires_grad=True)
    optimizer = torch.optim.Adam([estimate], lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.01 ** (1 / steps))
    for _ in range(steps):
        color = run_backend(inputs, settings._replace(**{field: estimate}))[0]
        loss = (color - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return tuple(estimate.detach().double().tolist())


def test_zeros_that_take_a_gradient():
    """Zero coefficients in a tensor that requires grad render bit for bit as no distortion
    (the distorted terms at k = 0 are the equidistant ones exactly), give the Gaussians the
    same gradients, and get a gradient themselves: d theta_d / d k1 = theta^3 moves every
    splat off the axis."""
    scene = scene_for("sh3-aa-wide", 2)
    inputs = scene.with_grad()
    weights = torch.randn(3, scene.settings.image_height, scene.settings.image_width,
                          generator=torch.Generator().manual_seed(3))
    color = run_backend(inputs, scene.settings)[0]
    (color * weights).sum().backward()
    want = {k: v.grad for k, v in inputs.items() if v is not None}
    zeros = torch.zeros(4, requires_grad=True)
    inputs = scene.with_grad()
    color2 = run_backend(inputs, scene.settings._replace(fisheye_distortion=zeros))[0]
    (color2 * weights).sum().backward()
    assert torch.equal(color2, color)
    assert all(torch.equal(v.grad, want[k]) for k, v in inputs.items() if v is not None)
    assert zeros.grad is not None and zeros.grad.abs().min() > 0


def test_distortion_checked():
    """fisheye_distortion: four finite numbers (a sequence or a tensor), with fisheye=True."""
    scene = scene_for("sh1", 0)
    s = scene.settings
    cases = [(s._replace(fisheye=False, fisheye_distortion=DISTORTION), ValueError,
              "need fisheye=True"),
             (s._replace(fisheye_distortion=(0.1, 0.2, 0.3)), ValueError, "four finite"),
             (s._replace(fisheye_distortion=(0.1, float("nan"), 0.0, 0.0)), ValueError,
              "four finite"),
             (s._replace(fisheye_distortion="abcd"), TypeError, "four numbers")]
    for settings, error, match in cases:
        with pytest.raises(error, match=match):
            GaussianRasterizer(settings)(**scene.inputs)
    with torch.no_grad():
        as_tensor = GaussianRasterizer(s._replace(fisheye_distortion=torch.tensor(DISTORTION)))(
            **scene.inputs)
        as_tuple = GaussianRasterizer(s._replace(fisheye_distortion=DISTORTION))(**scene.inputs)
        plain = GaussianRasterizer(s)(**scene.inputs)
    assert all(torch.equal(x, y) for x, y in zip(as_tensor, as_tuple))
    assert (as_tuple[3] - plain[3]).abs().max() > 0.01
    assert GaussianRasterizationSettings._field_defaults["fisheye_distortion"] is None


def test_checked():
    scene = scene_for("sh1", 0)
    with torch.no_grad():
        # A flag read as the others are (bool()): 1 as True.
        assert all(torch.equal(a, b) for a, b in zip(
            GaussianRasterizer(scene.settings._replace(fisheye=1))(**scene.inputs),
            GaussianRasterizer(scene.settings)(**scene.inputs)))
        # Not the pinhole's render of the same settings.
        pinhole = GaussianRasterizer(scene.settings._replace(fisheye=False))(**scene.inputs)
        assert (pinhole[3] - GaussianRasterizer(scene.settings)(**scene.inputs)[3]).abs().max() \
            > 0.1
    with pytest.raises(ValueError, match="orthographic and fisheye"):
        GaussianRasterizer(scene.settings._replace(orthographic=True))(**scene.inputs)
    # RaDe-GS's planes, linear in the pinhole's ray coordinates.
    with pytest.raises(NotImplementedError, match="intersection_planes"):
        surface.intersection_planes(scene.inputs["means3D"], scene.settings,
                                    scene.inputs["scales"], scene.inputs["rotations"])
    assert GaussianRasterizationSettings._field_defaults["fisheye"] is False


@pytest.mark.parametrize("distortion", [None, DISTORTION, FOLDING],
                         ids=["equidistant", "distorted", "folding"])
@pytest.mark.parametrize("view", [{}, WIDE], ids=["narrow", "wide"])
def test_depth_to_points_on_fisheye_rays(view, distortion):
    """surface.depth_to_points through a fisheye (and so depth_to_normal, plane_depth and
    dominant_points, which take its rays): each pixel's point projects back to the pixel by the
    fisheye's own formula (the reference's), at every depth; float64. With OpenCV's distortion
    too (its inverse by Newton's method), where pixels past the fold have no ray."""
    scene = scenes.fisheye(scenes.make_scene(7990, P=10, height=30, width=40, dtype=F64), **view,
                           distortion=distortion)
    s = scene.settings
    depth = 0.5 + torch.rand(30, 40, generator=torch.Generator().manual_seed(2), dtype=F64)
    points = surface.depth_to_points(depth, s)
    assert torch.equal(points[2], depth)
    torch.testing.assert_close(surface.depth_to_points(3 * depth, s)[:2], 3 * points[:2])
    a, b = points[0] / points[2], points[1] / points[2]
    K = _fisheye_terms(a, b, distortion)[0]
    cx, cy = _lens_centre(s)
    cols = cx + 40 / (2 * s.tanfovx) * a * K
    rows = cy + 30 / (2 * s.tanfovy) * b * K
    want_cols = torch.arange(40, dtype=F64).expand(30, 40)
    want_rows = torch.arange(30, dtype=F64)[:, None].expand(30, 40)
    # Pixels 90 degrees off the axis or more (the wide view's corners), or past the fold, have
    # no ray in front of the camera: their points lie on the axis.
    theta_d = torch.sqrt(((want_cols - cx) * 2 * s.tanfovx / 40) ** 2
                         + ((want_rows - cy) * 2 * s.tanfovy / 30) ** 2)
    seen = theta_d < distorted_angle(fisheye_fold_angle(distortion or (0, 0, 0, 0)), distortion)
    assert seen.sum() > (250 if distortion == FOLDING else 1000)
    assert view == {} or (~seen).any()
    torch.testing.assert_close(cols[seen], want_cols[seen])
    torch.testing.assert_close(rows[seen], want_rows[seen])
    assert (points[:2, ~seen] == 0).all()
    # The helpers that take these rays run (those whose rays are the pinhole's refuse).
    normals = surface.depth_to_normal(depth, s)
    assert torch.isfinite(normals).all() and normals.abs().sum() > 0
    n = torch.tensor([0.0, 0.0, -1.0], dtype=F64)[:, None, None].expand(3, 30, 40)
    plane = surface.plane_depth(n, torch.full((30, 40), -2.0, dtype=F64), s)
    torch.testing.assert_close(plane, torch.full_like(plane, 2.0))   # the plane z = 2


def test_depth_to_points_gradient_through_the_inverse():
    """The distorted rays' gradient (the last Newton step's, the implicit function's) by finite
    differences, float64: in the depth, the fields of view, the projection matrix (the
    principal point) and the coefficients (a tensor)."""
    scene = scenes.fisheye(scenes.make_scene(7991, P=10, height=9, width=12, dtype=F64),
                           half_angle=1.1, yaw=0.5, shift=(0.3, -0.2), distortion=DISTORTION)
    s = scene.settings
    depth = 0.5 + torch.rand(9, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    leaves = (depth.clone().requires_grad_(), torch.tensor(s.tanfovx, dtype=F64).requires_grad_(),
              torch.tensor(s.tanfovy, dtype=F64).requires_grad_(),
              s.projmatrix.detach().clone().requires_grad_(),
              torch.tensor(DISTORTION, dtype=F64).requires_grad_())

    def points(depth, tanfovx, tanfovy, projmatrix, distortion):
        return surface.depth_to_points(depth, s._replace(
            tanfovx=tanfovx, tanfovy=tanfovy, projmatrix=projmatrix,
            fisheye_distortion=distortion))
    assert (points(*leaves)[:2] != 0).all()   # every pixel's ray in front, none on the axis
    assert torch.autograd.gradcheck(points, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_fisheye_gs_module():
    """Fisheye-GS's settings (its is_fisheye between campos and prefiltered) and call:
    (color, radii), the package's render with fisheye=is_fisheye."""
    scene = scene_for("sh3-aa-wide", 1)
    s = scene.settings
    fields = dict(image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
                  tanfovy=s.tanfovy, bg=s.bg, scale_modifier=s.scale_modifier,
                  viewmatrix=s.viewmatrix, projmatrix=s.projmatrix, sh_degree=s.sh_degree,
                  campos=s.campos)
    assert fisheye_gs.GaussianRasterizationSettings._fields[10:] == ("is_fisheye", "prefiltered",
                                                                     "debug")
    inputs = {k: v for k, v in scene.inputs.items() if k != "dc"}
    for flag in (True, False):
        theirs = fisheye_gs.GaussianRasterizationSettings(**fields, is_fisheye=flag,
                                                          prefiltered=False, debug=False)
        with torch.no_grad():
            out = fisheye_gs.GaussianRasterizer(theirs)(**inputs)
            want = GaussianRasterizer(s._replace(fisheye=flag, antialiasing=False))(**inputs)
        assert len(out) == 2
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
        assert fisheye_gs.package_settings(theirs).fisheye is flag
        visible = fisheye_gs.GaussianRasterizer(theirs).markVisible(inputs["means3D"])
        assert torch.equal(visible, GaussianRasterizer(s).markVisible(inputs["means3D"]))
    # Positional, as Fisheye-GS's class is declared.
    positional = fisheye_gs.GaussianRasterizationSettings(*fields.values(), True, False, False)
    assert positional.is_fisheye is True


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
def test_cuda_matches_cpu(target):
    """The CUDA preprocess and its backward (the camera's gradient included) through the
    fisheye, OpenCV's distortion and its fold, against the CPU backend."""
    import test_cuda
    views = ({}, WIDE, dict(WIDE, distortion=DISTORTION), dict(WIDE, distortion=FOLDING))
    for seed, view in enumerate(views):
        scene = scenes.fisheye(scenes.make_scene(7950 + seed, P=100, height=40, width=64,
                                                 sh_degree=2, antialiasing=seed % 2 == 1),
                               **view)
        test_cuda.check_projection_against_cpu(scene, target, seed)
