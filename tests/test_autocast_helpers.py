"""The full_precision helpers under CPU bfloat16 autocast: outputs and gradients bit for bit."""
import contextlib

import numpy as np
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, cameras, surface

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

from diff_gaussian_rasterization_depth import mini_splatting, monogs, rade_gs  # noqa: E402
from diff_gaussian_rasterization_depth.gsplat import rasterization  # noqa: E402
from test_gsplat_api import H as GS_H, W as GS_W, twin_scene  # noqa: E402
from test_mini_splatting import fork_inputs  # noqa: E402
from test_rade_gs import rade_call, rade_settings  # noqa: E402
from test_touch_count import monogs_call, monogs_settings  # noqa: E402

F32 = torch.float32
SEEDS = range(2)


# ----------------------------------------------------------------------------------------------
# The comparison: one call plainly, one inside the autocast region, on clones of the same inputs
# ----------------------------------------------------------------------------------------------

def region(autocast: bool):
    return (torch.autocast("cpu", dtype=torch.bfloat16) if autocast
            else contextlib.nullcontext())


def named_values(out, prefix="out"):
    """[(name, value)] of every tensor and number in a (nested) tuple, NamedTuple, list or dict
    of outputs (None left out)."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, dict):
        items = out.items()
    elif isinstance(out, tuple) and hasattr(out, "_fields"):
        items = zip(out._fields, out)
    elif isinstance(out, (tuple, list)):
        items = enumerate(out)
    elif out is None:
        return []
    else:
        return [(prefix, out)]
    return [pair for key, value in items for pair in named_values(value, f"{prefix}.{key}")]


def assert_identical(plain, cast, what):
    """Same names; every floating tensor float32 on both sides and torch.equal (else the max abs
    difference is named); other tensors of the same dtype and equal; numbers equal."""
    a, b = named_values(plain, what), named_values(cast, what)
    assert [n for n, _ in a] == [n for n, _ in b]
    checked = 0
    for (name, x), (_, y) in zip(a, b):
        if not isinstance(x, torch.Tensor):
            assert not isinstance(y, torch.Tensor) and x == y, name
            continue
        assert isinstance(y, torch.Tensor), name
        if x.is_floating_point():
            assert x.dtype == F32, f"{name}: the plain call gives {x.dtype}"
            assert y.dtype == F32, f"{name}: {y.dtype} under autocast, float32 plainly"
            checked += 1
        assert y.dtype == x.dtype and y.shape == x.shape, name
        if not torch.equal(x, y):
            diff = (x.double() - y.double()).abs()
            raise AssertionError(f"{name}: differs under autocast, max abs difference "
                                 f"{diff.nan_to_num(float('inf')).max().item():.3g} "
                                 f"({int((diff != 0).sum())} of {x.numel()} values)")
    return checked


def weighted_loss(out, seed):
    """sum (o * w) over the floating outputs o that require grad, w fixed random weights."""
    gen = torch.Generator().manual_seed(seed)
    terms = [(t * torch.randn(t.shape, generator=gen, dtype=F32)).sum()
             for _, t in named_values(out)
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    assert terms, "no output requires grad"
    return sum(terms)


def run(call, inputs, grad_names=(), loss_seed=0, autocast=False):
    """(output, {name: grad}) of call(**leaves), leaves fresh clones of `inputs` (those in
    grad_names requiring grad); the call and the loss in the region, the backward after it."""
    leaves = {k: v.detach().clone().requires_grad_(k in grad_names)
              if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in inputs.items()}
    with region(autocast):
        assert torch.is_autocast_enabled("cpu") == autocast
        out = call(**leaves)
        loss = weighted_loss(out, loss_seed) if grad_names else None
    if loss is not None:
        loss.backward()
    return out, {k: leaves[k].grad for k in grad_names}


def check(call, inputs, grad_names=(), loss_seed=0):
    """The call plainly and under autocast: outputs identical, gradients identical (and not
    all zero, where asked for); returns the plain call's (output, grads)."""
    plain = run(call, inputs, grad_names, loss_seed)
    cast = run(call, inputs, grad_names, loss_seed, autocast=True)
    assert assert_identical(plain[0], cast[0], "out") > 0
    for name in grad_names:
        assert plain[1][name] is not None and cast[1][name] is not None, name
        assert_identical(plain[1][name], cast[1][name], f"grad[{name}]")
    if grad_names:
        assert any(g.abs().max() > 0 for g in plain[1].values())
    return plain


def with_matrices(settings, inputs):
    """The inputs with the settings' view and projection matrices as two more, so that they
    can be gradient leaves (the call rebuilds its settings with settings_of)."""
    return dict(inputs, viewmatrix=settings.viewmatrix, projmatrix=settings.projmatrix)


def settings_of(settings, viewmatrix, projmatrix):
    return settings._replace(viewmatrix=viewmatrix, projmatrix=projmatrix)


# ----------------------------------------------------------------------------------------------
# The tests can fail
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_autocast_region_rounds_a_plain_product(seed):
    """Power: inside the region this torch build computes float32 `x @ y` in bfloat16, so a
    helper without full_precision would be caught."""
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 5, generator=gen), torch.randn(5, 7, generator=gen)
    with region(True):
        cast = x @ y
    assert cast.dtype == torch.bfloat16
    assert not torch.equal(cast.float(), x @ y)


def test_undecorated_helper_fails_the_comparison():
    """Power: view_points without its decorator (`__wrapped__`) fails the comparison under
    autocast (float32 out, as bfloat16 + float32 promotes, but rounded)."""
    scene = scenes.make_scene(60000, P=20)
    undecorated = surface.view_points.__wrapped__
    with pytest.raises(AssertionError, match="out: differs under autocast, max abs difference"):
        check(lambda means3D: undecorated(means3D, scene.settings),
              {"means3D": scene.inputs["means3D"]})


# ----------------------------------------------------------------------------------------------
# cameras
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1e-4, 0.7])
@pytest.mark.parametrize("seed", SEEDS)
def test_se3_exp_under_autocast(seed, scale):
    """se3_exp (the Taylor branch and the closed form): the 4x4 and d/dxi unchanged."""
    gen = torch.Generator().manual_seed(60100 + seed)
    xi = torch.randn(6, generator=gen) * scale
    check(lambda xi: cameras.se3_exp(xi), {"xi": xi}, ("xi",), seed)


def random_camera(seed, width=40, height=30):
    rng = np.random.default_rng(seed)
    eye = rng.normal(size=3) * 2 + np.array([0.0, 0.0, 4.0])
    return cameras.Camera.looking_at(eye, rng.normal(size=3) * 0.3, width, height,
                                     float(rng.uniform(40, 70)))


@pytest.mark.parametrize("seed", SEEDS)
def test_camera_centre_under_autocast(seed):
    """camera_centre of a float32 world-to-camera: the centre and d/dw2c unchanged."""
    w2c = torch.as_tensor(random_camera(60200 + seed).world_to_camera, dtype=F32)
    check(lambda w2c: cameras.camera_centre(w2c), {"w2c": w2c}, ("w2c",), seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_camera_matrices_under_autocast(seed):
    """camera_matrices: viewmatrix, projmatrix, campos and d/dw2c unchanged."""
    camera = random_camera(60300 + seed)
    w2c = torch.as_tensor(camera.world_to_camera, dtype=F32)
    check(lambda w2c: cameras.camera_matrices(w2c, camera), {"w2c": w2c}, ("w2c",), seed)


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_pose_settings_under_autocast(seed, focal):
    """pose_settings (with a focal_scale tensor or without): every field of the settings and
    the gradients to w2c (and focal_scale) unchanged."""
    camera = random_camera(60400 + seed)
    inputs = {"w2c": torch.as_tensor(camera.world_to_camera, dtype=F32),
              "focal_scale": torch.tensor(1.0 + 0.1 * seed) if focal else None}
    names = ("w2c", "focal_scale") if focal else ("w2c",)
    check(lambda w2c, focal_scale: cameras.pose_settings(
        w2c, camera, sh_degree=1, bg=(0.1, 0.2, 0.3), focal_scale=focal_scale), inputs, names,
        seed)


# ----------------------------------------------------------------------------------------------
# surface
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_view_points_under_autocast(seed):
    """view_points: the view positions and the gradients to means3D and viewmatrix."""
    scene = scenes.make_scene(60500 + seed, P=40)
    check(lambda means3D, viewmatrix, projmatrix: surface.view_points(
        means3D, settings_of(scene.settings, viewmatrix, projmatrix)),
        with_matrices(scene.settings, {"means3D": scene.inputs["means3D"]}),
        ("means3D", "viewmatrix"), seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_gaussian_normals_under_autocast(seed):
    """gaussian_normals: the normals and the gradients to rotations and viewmatrix (view_t only
    picks the sign)."""
    scene = scenes.make_scene(60600 + seed, P=40, normalize_rotations=False)
    i = scene.inputs
    inputs = with_matrices(scene.settings, {
        "scales": i["scales"], "rotations": i["rotations"],
        "view_t": surface.view_points(i["means3D"], scene.settings)})
    check(lambda scales, rotations, view_t, viewmatrix, projmatrix: surface.gaussian_normals(
        scales, rotations, view_t, settings_of(scene.settings, viewmatrix, projmatrix)),
        inputs, ("rotations", "viewmatrix"), seed)


def camera_settings(seed, camera, height=14, width=18):
    """A look-at camera's settings, or the same seen by a (distorted) fisheye or a distorted
    pinhole with a shifted principal point."""
    scene = scenes.make_scene(seed, P=1, height=height, width=width)
    if camera == "fisheye":
        scene = scenes.fisheye(scene, distortion=(0.05, -0.02, 0.004, -0.0005))
    elif camera == "distorted":
        scene = scenes.distorted_pinhole(scene, (0.08, -0.03, 0.002, -0.001), shift=(0.7, -0.4))
    return scene.settings


def random_depth(gen, height, width):
    """A smooth positive depth map (a tilted plane plus noise) with a hole of zeros."""
    rows = torch.linspace(-1, 1, height)[:, None]
    cols = torch.linspace(-1, 1, width)[None, :]
    depth = 4 + 0.8 * rows - 0.5 * cols + 0.05 * torch.rand(height, width, generator=gen)
    depth[2:4, 3:6] = 0
    return depth


CAMERAS = ["pinhole", "fisheye", "distorted"]


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("helper", ["depth_to_points", "depth_to_normal"])
def test_depth_map_helpers_under_autocast(helper, seed, camera):
    """depth_to_points and depth_to_normal through each camera model: the points or normals
    and the gradients to the depth and the matrices."""
    settings = camera_settings((60700 if helper == "depth_to_points" else 60800) + seed, camera)
    depth = random_depth(torch.Generator().manual_seed(seed), 14, 18)
    function = getattr(surface, helper)
    check(lambda depth, viewmatrix, projmatrix: function(
        depth, settings_of(settings, viewmatrix, projmatrix)),
        with_matrices(settings, {"depth": depth}), ("depth", "viewmatrix", "projmatrix"), seed)


@pytest.mark.parametrize("camera", CAMERAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_plane_depth_under_autocast(seed, camera):
    """plane_depth of random normal and distance maps (most planes facing the camera): the
    depth and the gradients to both maps and the matrices."""
    settings = camera_settings(60900 + seed, camera)
    gen = torch.Generator().manual_seed(seed)
    normal_sum = torch.randn(3, 14, 18, generator=gen) * 0.3
    normal_sum[2] -= 1.0
    distance_sum = -4 - torch.rand(14, 18, generator=gen)
    check(lambda normal_sum, distance_sum, viewmatrix, projmatrix: surface.plane_depth(
        normal_sum, distance_sum, settings_of(settings, viewmatrix, projmatrix)),
        with_matrices(settings, {"normal_sum": normal_sum, "distance_sum": distance_sum}),
        ("normal_sum", "distance_sum", "viewmatrix", "projmatrix"), seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_dominant_points_under_autocast(seed):
    """dominant_points of the rasterizer's dominant map: the points, the validity mask and the
    gradients to means3D, scales, rotations and the matrices."""
    scene = scenes.make_scene(61000 + seed, P=30, height=16, width=20, outliers=False)
    i = scene.inputs
    with torch.no_grad():
        dominant = GaussianRasterizer(scene.settings)(**i, dominant=True)[-1]
    assert (dominant >= 0).sum() > 20
    inputs = with_matrices(scene.settings, {k: i[k] for k in ("means3D", "scales", "rotations")})
    check(lambda means3D, scales, rotations, viewmatrix, projmatrix: surface.dominant_points(
        dominant, means3D, settings_of(scene.settings, viewmatrix, projmatrix), scales=scales,
        rotations=rotations), inputs,
        ("means3D", "scales", "rotations", "viewmatrix", "projmatrix"), seed)


@pytest.mark.parametrize("covariance", ["scales", "cov3D_precomp"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("helper", ["surface.intersection_planes", "rade_gs.ray_planes"])
def test_covariance_planes_under_autocast(helper, seed, covariance):
    """surface.intersection_planes and rade_gs.ray_planes (from scales and rotations, or
    cov3D_precomp; outliers included): every field and the gradients to every input and the
    matrices."""
    base = 61100 if helper.startswith("surface") else 61300
    scene = scenes.make_scene(base + seed, P=40, precomp_cov=covariance == "cov3D_precomp")
    i = scene.inputs
    names = ("means3D", "cov3D_precomp") if covariance == "cov3D_precomp" \
        else ("means3D", "scales", "rotations")
    inputs = with_matrices(scene.settings, {k: i[k] for k in names})
    module, name = helper.split(".")
    function = getattr({"surface": surface, "rade_gs": rade_gs}[module], name)
    check(lambda viewmatrix, projmatrix, **g: function(
        settings=settings_of(scene.settings, viewmatrix, projmatrix), **g), inputs,
        names + ("viewmatrix", "projmatrix"), seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_intersection_depth_under_autocast(seed):
    """intersection_depth of a random feature map and weight map (zeros included): the depth
    and the gradients to both maps."""
    settings = camera_settings(61200 + seed, "pinhole")
    gen = torch.Generator().manual_seed(seed)
    feature_map = torch.randn(3, 14, 18, generator=gen)
    weight = torch.rand(14, 18, generator=gen)
    weight[weight < 0.2] = 0
    check(lambda feature_map, weight: surface.intersection_depth(feature_map, weight, settings),
          {"feature_map": feature_map, "weight": weight}, ("feature_map", "weight"), seed)


# ----------------------------------------------------------------------------------------------
# RaDe-GS, MonoGS, Mini-Splatting, gsplat
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("switches", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("seed", SEEDS)
def test_rade_gs_rasterize_gaussians_under_autocast(seed, switches):
    """RaDe-GS's GaussianRasterizer (its rasterize_gaussians): the eight maps and the gradients
    to every Gaussian input, means2D's carrier included."""
    scene = scenes.make_scene(61400 + seed, P=40, height=18, width=24, sh_degree=1)
    settings = rade_settings(scene.settings, kernel_size=0.1, require_depth=switches[0],
                             require_coord=switches[1])
    check(lambda **inputs: rade_call(inputs, settings), fork_inputs(scene),
          ("means3D", "means2D", "opacities", "shs", "scales", "rotations"), seed)


@pytest.mark.parametrize("pose", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_monogs_package_settings_under_autocast(seed, pose):
    """MonoGS's GaussianRasterizer (its _package_settings), theta and rho requiring grad or not:
    the five outputs, markVisible and the gradients to theta, rho and the Gaussians."""
    scene = scenes.make_scene(61500 + seed, P=40, height=18, width=24, sh_degree=1)
    settings = monogs_settings(scene, F32)
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(fork_inputs(scene), theta=torch.randn(3, generator=gen) * 0.01,
                  rho=torch.randn(3, generator=gen) * 0.01)
    names = ("means3D", "opacities", "scales") + (("theta", "rho") if pose else ())

    def call(theta, rho, **gaussians):
        visible = monogs.GaussianRasterizer(settings).markVisible(gaussians["means3D"])
        return monogs_call(settings, gaussians, theta, rho) + (visible,)

    _, grads = check(call, inputs, names, seed)
    if pose:
        assert grads["theta"].abs().max() > 0 and grads["rho"].abs().max() > 0


@pytest.mark.parametrize("covariance", ["scales", "cov3D_precomp"])
@pytest.mark.parametrize("seed", SEEDS)
def test_mini_splatting_depth_call_under_autocast(seed, covariance):
    """Mini-Splatting's render_depth (its rasterize_gaussians_depth, no gradient): every map of
    the dict, the points and the discriminants included."""
    scene = scenes.make_scene(61600 + seed, P=40, height=18, width=24, outliers=False,
                              precomp_cov=covariance == "cov3D_precomp")
    plain, _ = check(lambda **inputs: mini_splatting.GaussianRasterizer(
        scene.settings).render_depth(**inputs), fork_inputs(scene))
    assert (plain["gidx"] >= 0).sum() > 100


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_gsplat_rasterization_under_autocast(seed, packed):
    """gsplat's rasterization (two cameras, RGB+ED, antialiased, packed or not): the images,
    alphas, meta, the gradients to every input (viewmats and Ks included) and means2d's."""
    scene = twin_scene(61700 + seed, N=12, dtype=F32, cameras=2)
    names = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")
    results = []
    for autocast in (False, True):
        (image, alpha, meta), grads = run(
            lambda **t: rasterization(**t, width=GS_W, height=GS_H, render_mode="RGB+ED",
                                      rasterize_mode="antialiased", packed=packed),
            scene, names, seed, autocast)
        results.append(((image, alpha, meta), grads, meta["means2d"].grad))
    (plain, plain_grads, plain_2d), (cast, cast_grads, cast_2d) = results
    assert assert_identical(plain, cast, "out") > 0
    assert (plain[1] > 0.3).sum() > 20
    for name in names:
        assert_identical(plain_grads[name], cast_grads[name], f"grad[{name}]")
    assert plain_2d.abs().max() > 0
    assert_identical(plain_2d, cast_2d, "meta.means2d.grad")



@pytest.mark.parametrize("seed", SEEDS)
def test_tsdf_fusion_under_autocast(seed):
    """TSDF fusion (the dense and the sparse volume) of a sphere's depth maps with colours,
    integrated and meshed inside the region: the fields, weights, colours and meshes bit for
    bit the plain ones. The mesh module runs no product autocast lowers (it needs no
    full_precision; this keeps it so)."""
    from test_mesh import sphere_depth, sphere_views
    from diff_gaussian_rasterization_depth.mesh import SparseTSDFVolume, TSDFVolume
    gen = torch.Generator().manual_seed(61800 + seed)
    centre = ((torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 0.4).tolist()
    views = []
    for camera in sphere_views(centre)[::3]:
        depth = sphere_depth(camera, centre, 0.8).float()
        views.append((depth, camera.raster_settings(), torch.rand(3, 48, 64, generator=gen)))
    results = []
    for autocast in (False, True):
        dense = TSDFVolume([-1.2] * 3, [1.2] * 3, 0.08)
        sparse = SparseTSDFVolume(0.08)
        with region(autocast):
            for depth, settings, color in views:
                for volume in (dense, sparse):
                    volume.integrate(depth, settings, color=color, mask=depth > 0)
            results.append([(v.tsdf, v.weight, v.color, v.extract_mesh()) for v in
                            (dense, sparse)])
    plain, cast = results
    for (ta, wa, ca, ma), (tb, wb, cb, mb) in zip(plain, cast):
        assert assert_identical((ta, wa, ca), (tb, wb, cb), "fields") > 0
        assert assert_identical((ma.vertices, ma.faces, ma.colors),
                                (mb.vertices, mb.faces, mb.colors), "mesh") > 0
        assert ma.faces.shape[0] > 500
