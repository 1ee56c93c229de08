"""Fisheye cameras (settings `fisheye=True`; Fisheye-GS's `is_fisheye`, gsplat's
camera_model="fisheye"): the equidistant projection, a point theta radians off the optical axis
landing focal * theta px from the principal point, which is where projmatrix puts the axis.

Against autograd through the reference: outputs, the Gaussians' gradients and the camera's,
float32 and float64, in views as wide as the pinhole's and in wide ones (160 degrees, the camera
turned so that the Gaussians lie 70 degrees and more off the axis, the principal point moved);
finite differences; what the projection means (a small splat lands where theta says, up to 85
degrees off the axis; a principal point moved by a tile moves the image by as much); the CUDA
kernels against the CPU backend; the checks; Fisheye-GS's module. gsplat's own fisheye:
tests/test_gsplat_api.py.
"""
import math

import pytest
import torch

import scenes
from cuda_target import cuda_targets
from diff_gaussian_rasterization_depth import (GaussianRasterizationSettings, GaussianRasterizer,
                                               fisheye_gs, surface)
from diff_gaussian_rasterization_depth.reference import _fisheye_centre, _fisheye_terms
from test_camera_gradients import (camera_gradients, camera_reference_gradients,
                                   make_camera_gradcheck_fn)
from test_cpu_backend import (compare_gradients, forward_against_reference, gradients,
                              reference_gradients, run_backend, upstream_gradients)

F32, F64 = torch.float32, torch.float64

# A wide view: 80 degrees each side, the camera turned 50 degrees off the cloud (its Gaussians
# from about 20 to 70-80 degrees off the axis), the principal point moved off the centre.
WIDE = dict(half_angle=1.4, yaw=0.87, shift=(4.5, -2.5))

CONFIGS = {
    "sh1": (dict(sh_degree=1), {}),
    "sh3-aa-wide": (dict(sh_degree=3, antialiasing=True), WIDE),
    "colors-cov-wide": (dict(precomp_colors=True, precomp_cov=True), WIDE),
    "mip-kernel0.1": (dict(sh_degree=2, antialiasing=True, kernel_size=0.1), {}),
    "size-64x40-wide": (dict(sh_degree=2, height=40, width=64, P=120), WIDE),
    "float64": (dict(sh_degree=2, dtype=F64), {}),
    "float64-aa-cov-wide": (dict(sh_degree=1, antialiasing=True, precomp_cov=True, dtype=F64),
                            WIDE),
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
        dtype = scene.inputs["means3D"].dtype
        found, (_, radii, _, _), _, keep = forward_against_reference(scene, f"seed {seed}",
                                                                     FORWARD_TOL[dtype])
        failures += found
        assert (radii > 0).sum() > scene.P // 3
        widest = max(widest, float(off_axis_angles(scene)[radii > 0].max()))
        upstream = upstream_gradients(scene, ~keep, seed)
        failures += compare_gradients(gradients(run_backend, scene, upstream),
                                      reference_gradients(scene, upstream), dtype,
                                      f"seed {seed}")
        wants = camera_reference_gradients(scene, upstream)
        failures += compare_camera_gradients(camera_gradients(run_backend, scene, upstream),
                                             wants, dtype, f"seed {seed} camera")
        for name in ("viewmatrix", "projmatrix"):
            assert wants[0]["all"][name].abs().max() > 0
    assert not failures, "\n".join(failures)
    # The wide views draw Gaussians far off the axis, where the closed forms hold sway.
    assert widest > (1.2 if CONFIGS[config][1] else 0.3)


def smooth_fisheye_scene(seed, view, **kwargs):
    """The first fisheye view of make_scene(seed + 1000 k, smooth=True) that passes
    scenes.smooth_margin (no value within 1e-3 of a threshold), float64."""
    for attempt in range(50):
        scene = scenes.fisheye(scenes.make_scene(seed + 1000 * attempt, smooth=True, dtype=F64,
                                                 **kwargs), **view)
        if scenes.smooth_margin(scene):
            return scene
    raise RuntimeError(f"no smooth scene found from seed {seed}")


@pytest.mark.parametrize("view", [{}, WIDE], ids=["narrow", "wide"])
def test_gradcheck(view):
    """Finite differences, float64: the Gaussians' inputs and the camera's matrices."""
    scene = smooth_fisheye_scene(950, view, P=5, height=13, width=18, sh_degree=1,
                                 antialiasing=True)
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def single_splat_settings(size, half_angle, dtype, shift=(0.0, 0.0)):
    """A fisheye at the origin looking down +z (view = world), `size` px square, spanning
    `half_angle` radians each side of the centre; its principal point moved by `shift` px."""
    base = scenes.make_scene(0, P=1, height=size, width=size, dtype=dtype)
    eye = torch.eye(4, dtype=dtype).reshape(base.settings.viewmatrix.shape)
    plain = base.settings._replace(viewmatrix=eye, projmatrix=eye.clone(),
                                   campos=torch.zeros(3, dtype=dtype))
    return scenes.fisheye(scenes.Scene(base.inputs, plain), half_angle=half_angle,
                          shift=shift).settings


@pytest.mark.parametrize("dtype", [F32, F64])
def test_small_splat_lands_at_focal_times_theta(dtype):
    """A small round Gaussian 5 units from the camera, theta off the axis in direction phi,
    lands (the centroid of its weight) at c + theta (fx cos phi, fy sin phi), fx = W / (2 tanfovx):
    the equidistant projection, to 85 degrees off the axis. The pinhole would put the last at
    f tan(theta), 11 times farther."""
    size, half_angle = 160, 1.6
    settings = single_splat_settings(size, half_angle, dtype)
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
        want = torch.tensor([centre + f * theta * math.cos(phi),
                             centre + fy * theta * math.sin(phi)], dtype=F64)
        assert (got - want).abs().max() < 0.02, (theta, phi, got, want)
        # Depth is the view-space z, as ever.
        seen = w > 0.1
        torch.testing.assert_close(depth[seen].double(),
                                   torch.full_like(w[seen], 5.0 * math.cos(theta)),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_far_off_the_axis_lands_on_the_rim(dtype):
    """Points 90 degrees off the axis in all but name (x / z up to 1e13, z = 1) land on the
    image's rim, focal * pi / 2 px out, with finite outputs and gradients (the camera's too):
    no term of the projection or its derivatives overflows on the way."""
    size = 96
    settings = single_splat_settings(size, 2.0, dtype)   # the rim at pi / 2 lies inside
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
    camera = {n: getattr(settings, n).clone().requires_grad_() for n in ("viewmatrix",
                                                                         "projmatrix")}
    color, radii, depth, weight = GaussianRasterizer(settings._replace(**camera))(**leaves)
    assert (radii > 0).all()
    # They land focal * pi / 2 right of the centre (the first 0.02 px short of it).
    w = weight.detach().double()
    cols = torch.arange(size, dtype=F64)
    centroid = float((w.sum(0) * cols).sum() / w.sum())
    assert abs(centroid - ((size - 1) / 2 + f * math.pi / 2)) < 0.1
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
    torch.testing.assert_close(torch.stack(_fisheye_centre(moved)),
                               torch.stack(_fisheye_centre(plain)) + torch.tensor([16.0, -16.0],
                                                                                  dtype=F64),
                               rtol=0, atol=2e-6)
    here, there = (slice(16, 48), slice(32, 80)), (slice(32, 64), slice(16, 64))
    assert weight[there].max() > 0.5 and (weight[there] > 0.05).sum() > 300
    torch.testing.assert_close(weight2[here], weight[there], rtol=0, atol=1e-5)
    torch.testing.assert_close(color2[:, here[0], here[1]], color[:, there[0], there[1]], rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(depth2[here], depth[there], rtol=0, atol=1e-4)


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


@pytest.mark.parametrize("view", [{}, WIDE], ids=["narrow", "wide"])
def test_depth_to_points_on_fisheye_rays(view):
    """surface.depth_to_points through a fisheye (and so depth_to_normal, plane_depth and
    dominant_points, which take its rays): each pixel's point projects back to the pixel by the
    fisheye's own formula (the reference's), at every depth; float64."""
    scene = scenes.fisheye(scenes.make_scene(7990, P=10, height=30, width=40, dtype=F64), **view)
    s = scene.settings
    depth = 0.5 + torch.rand(30, 40, generator=torch.Generator().manual_seed(2), dtype=F64)
    points = surface.depth_to_points(depth, s)
    assert torch.equal(points[2], depth)
    torch.testing.assert_close(surface.depth_to_points(3 * depth, s)[:2], 3 * points[:2])
    a, b = points[0] / points[2], points[1] / points[2]
    K = _fisheye_terms(a, b)[0]
    cx, cy = _fisheye_centre(s)
    cols = cx + 40 / (2 * s.tanfovx) * a * K
    rows = cy + 30 / (2 * s.tanfovy) * b * K
    want_cols = torch.arange(40, dtype=F64).expand(30, 40)
    want_rows = torch.arange(30, dtype=F64)[:, None].expand(30, 40)
    # Pixels 90 degrees off the axis or more (the wide view's corners) have no ray in front of
    # the camera: their points lie on the axis.
    theta = torch.sqrt(((want_cols - cx) * 2 * s.tanfovx / 40) ** 2
                       + ((want_rows - cy) * 2 * s.tanfovy / 30) ** 2)
    seen = theta < math.pi / 2
    assert seen.sum() > 1000 and (view == {} or (~seen).any())
    torch.testing.assert_close(cols[seen], want_cols[seen])
    torch.testing.assert_close(rows[seen], want_rows[seen])
    assert (points[:2, ~seen] == 0).all()
    # The helpers that take these rays run (those whose rays are the pinhole's refuse).
    normals = surface.depth_to_normal(depth, s)
    assert torch.isfinite(normals).all() and normals.abs().sum() > 0
    n = torch.tensor([0.0, 0.0, -1.0], dtype=F64)[:, None, None].expand(3, 30, 40)
    plane = surface.plane_depth(n, torch.full((30, 40), -2.0, dtype=F64), s)
    torch.testing.assert_close(plane, torch.full_like(plane, 2.0))   # the plane z = 2


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
    fisheye, against the CPU backend."""
    import test_cuda
    for seed in range(2):
        scene = scenes.fisheye(scenes.make_scene(7950 + seed, P=100, height=40, width=64,
                                                 sh_degree=2, antialiasing=bool(seed)),
                               **(WIDE if seed else {}))
        test_cuda.check_projection_against_cpu(scene, target, seed)
