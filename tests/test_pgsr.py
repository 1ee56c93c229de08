"""PGSR's API (`.pgsr`): its five outputs and their gradients against the reference's blend and
PGSR's formulas written out per pixel in float64 (out_observe counted from the per-Gaussian
weights: blended with the transmittance in front above 0.5); render_geo off; the two carriers;
the settings, markVisible and named errors; the CUDA targets.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, pgsr
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_rade_gs import assert_gradients_match, blend_weights

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
NAMES = ("means3D", "means2D", "opacities", "shs", "scales", "rotations", "all_map")
OUTPUTS = ("color", "radii", "out_observe", "out_all_map", "plane_depth")


def pgsr_settings(settings, render_geo=True):
    s = settings
    return pgsr.GaussianRasterizationSettings(
        image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
        tanfovy=s.tanfovy, bg=s.bg, scale_modifier=s.scale_modifier, viewmatrix=s.viewmatrix,
        projmatrix=s.projmatrix, sh_degree=s.sh_degree, campos=s.campos, prefiltered=False,
        render_geo=render_geo, debug=False)


def pgsr_all_map(means3D, settings, seed):
    """PGSR's per-Gaussian channels for a random plane per Gaussian: a unit view-space normal
    facing the camera, a 1, and the plane's distance |n . t| from the centre t."""
    gen = torch.Generator().manual_seed(seed)
    P = means3D.shape[0]
    tilt = (torch.rand(P, 2, generator=gen, dtype=F64) - 0.5) * 0.6
    normal = torch.nn.functional.normalize(torch.cat([tilt, -torch.ones(P, 1, dtype=F64)], 1),
                                           dim=1).to(means3D.dtype)
    view = settings.viewmatrix.reshape(4, 4).to(means3D)
    t = means3D.detach() @ view[:3, :3] + view[3, :3]
    distance = (normal * t).sum(1, keepdim=True).abs()
    return torch.cat([normal, torch.ones_like(distance), distance], 1)


def inputs_of(scene, settings, seed, dtype=F64, device="cpu"):
    """Leaves of the call's inputs (all_map included), means2D_abs apart."""
    leaves = {k: None if v is None else v.detach().to(dtype).to(device).clone().requires_grad_(
        k in NAMES) for k, v in scene.inputs.items()}
    leaves["all_map"] = pgsr_all_map(scene.inputs["means3D"].to(dtype), settings, seed).to(
        device).requires_grad_()
    means2D_abs = torch.zeros_like(leaves["means3D"]).requires_grad_()
    return leaves, means2D_abs


def pgsr_call(leaves, means2D_abs, settings):
    """The call as PGSR's renderer makes it, by keyword."""
    return pgsr.GaussianRasterizer(raster_settings=settings)(
        means3D=leaves["means3D"], means2D=leaves["means2D"], means2D_abs=means2D_abs,
        shs=leaves["shs"], colors_precomp=None, opacities=leaves["opacities"],
        scales=leaves["scales"], rotations=leaves["rotations"], all_map=leaves["all_map"],
        cov3D_precomp=None)


def written_out(leaves, settings, render_geo=True):
    """PGSR's five outputs from the reference (float64, autograd): the blend of all_map as
    features, the plane depth per pixel, and out_observe counted from each Gaussian's weights."""
    package = pgsr.package_settings(settings)
    inputs = {k: v for k, v in leaves.items() if k != "all_map"}
    color, radii, _, weight, all_map_pixels = rasterize_reference(
        **inputs, raster_settings=package, features=leaves["all_map"])
    H, W = settings.image_height, settings.image_width
    fx, fy = W / (2 * settings.tanfovx), H / (2 * settings.tanfovy)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    normal, distance = all_map_pixels[:3], all_map_pixels[4]
    along = normal[0] * (xs - W / 2) / fx + normal[1] * (ys - H / 2) / fy + normal[2]
    plane = (distance / -(along + 1e-8))[None]
    # out_observe: per Gaussian, the pixels where it is blended with T in front above 0.5.
    detached = {k: None if v is None else v.detach() for k, v in inputs.items()}
    w, z = blend_weights(detached, package)
    w = w[4]
    order = torch.argsort(z)
    ws = w[order]
    T_before = 1 - torch.cumsum(ws, 0) + ws
    counted = (ws > 0) & (T_before > 0.5)
    assert not ((ws > 0) & ((T_before - 0.5).abs() < 1e-9)).any()   # no tie at 0.5
    observe = torch.zeros(len(order), dtype=torch.int32)
    observe[order] = counted.flatten(1).sum(1).to(torch.int32)
    if not render_geo:
        return (color, radii, observe, torch.zeros_like(all_map_pixels),
                torch.zeros_like(plane))
    return color, radii, observe, all_map_pixels, plane


def random_loss(maps, seed):
    gen = torch.Generator().manual_seed(seed)
    return sum((m * torch.randn(m.shape, generator=gen, dtype=F64).to(m)).sum()
               for k, m in enumerate(maps) if k not in (1, 2))


@pytest.mark.parametrize("seed", range(3))
def test_outputs_and_gradients_match_the_written_out_blend(seed):
    """Every output and every input's gradient (all_map's included) of the call on the CPU
    backend equals PGSR's formulas on the reference's blend, float64; out_observe counts one
    more pixel than the touch count (MonoGS's, after the blend) where a Gaussian takes the
    transmittance across 0.5; means2D_abs.grad[:, :2] is the absolute gradient of the whole loss."""
    scene = scenes.make_scene(36000 + seed, P=60, height=30, width=42, sh_degree=1, dtype=F64,
                              outliers=seed == 2)
    settings = pgsr_settings(scene.settings)
    want_leaves, _ = inputs_of(scene, settings, seed)
    got_leaves, means2D_abs = inputs_of(scene, settings, seed)
    want = written_out(want_leaves, settings)
    got = pgsr_call(got_leaves, means2D_abs, settings)
    assert len(got) == 5
    for name, a, b in zip(OUTPUTS, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b.detach(), rtol=1e-9, atol=1e-10, msg=name)
    touched = GaussianRasterizer(pgsr.package_settings(settings))(
        **{k: v.detach() if v is not None else None for k, v in scene.inputs.items()},
        touch_count=True)[-1]
    extra = got[2] - touched
    assert (extra >= 0).all() and extra.sum() > 100
    solid = got[3][3] > 0.5
    assert extra.sum() == solid.sum()                      # one per pixel past 0.5
    assert solid.sum() > 200 and (got[4][0][solid] > 0).all()
    random_loss(want, seed).backward()
    random_loss(got, seed).backward()
    assert_gradients_match(got_leaves, want_leaves, NAMES)
    # The absolute gradient of the whole loss, out_all_map's and plane_depth's parts through
    # alpha included (as PGSR's): the reference's (P, 4) carrier, columns 2-3.
    reference_leaves, _ = inputs_of(scene, settings, seed)
    reference_leaves["means2D"] = torch.zeros(scene.P, 4, dtype=F64, requires_grad=True)
    random_loss(written_out(reference_leaves, settings), seed).backward()
    absolute = reference_leaves["means2D"].grad[:, 2:]
    torch.testing.assert_close(means2D_abs.grad[:, :2], absolute, rtol=1e-9,
                               atol=1e-12 * absolute.abs().max().item())
    assert torch.equal(means2D_abs.grad[:, 2], torch.zeros(scene.P, dtype=F64))
    # The package's carrier with a loss on the colour alone: the same as PGSR's call with it,
    # and short of the whole loss's.
    wide = {k: None if v is None else v.detach() for k, v in scene.inputs.items()}
    wide["means2D"] = torch.zeros(scene.P, 4, dtype=F64, requires_grad=True)
    out = GaussianRasterizer(pgsr.package_settings(settings))(**wide)
    random_loss((out[0],), seed).backward()
    color_only, abs_leaf = inputs_of(scene, settings, seed)
    random_loss(pgsr_call(color_only, abs_leaf, settings)[:1], seed).backward()
    torch.testing.assert_close(abs_leaf.grad[:, :2], wide["means2D"].grad[:, 2:], rtol=1e-12,
                               atol=0)
    assert (abs_leaf.grad[:, :2] < 0.9 * absolute).any()


def test_gradcheck_f64():
    """Finite differences of out_all_map and plane_depth in every Gaussian input and all_map (a
    smooth scene, float64, the CPU backend)."""
    scene = scenes.make_smooth_scene(36050, P=4, height=12, width=10, sh_degree=1)
    settings = pgsr_settings(scene.settings)
    names = ("means3D", "opacities", "scales", "rotations")
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}
    all_map = pgsr_all_map(scene.inputs["means3D"], settings, 0)

    def fn(*tensors):
        inputs = dict(fixed, **dict(zip(names, tensors[:-1])), all_map=tensors[-1])
        out = pgsr_call(inputs, None, settings)
        return out[3], out[4]

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, leaves + (all_map.clone().requires_grad_(),), eps=1e-6,
                                    atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_observe_is_touch_count_plus_crossing_median(dtype):
    """out_observe of a scene with Gaussians behind, beside and far off the image, in float32
    too: the reference's touch count plus, at each pixel whose transmittance crosses 0.5
    (median depth > 0), one for its median Gaussian."""
    scene = scenes.make_scene(36100, P=400, height=41, width=67, dtype=dtype)
    settings = pgsr_settings(scene.settings, render_geo=False)
    out = rasterize_reference(**scene.inputs, raster_settings=scene.settings, median_depth=True,
                              touch_count=True, median_gaussian=True)
    median, touched, gaussian = out[4], out[5], out[6]
    want = touched + torch.bincount(gaussian[median > 0].long(), minlength=scene.P).to(
        torch.int32)
    leaves = {k: v for k, v in scene.inputs.items()}
    got = pgsr.GaussianRasterizer(settings)(leaves["means3D"], leaves["means2D"], None,
                                           leaves["opacities"], shs=leaves["shs"],
                                           scales=leaves["scales"],
                                           rotations=leaves["rotations"])
    assert torch.equal(got[2], want)
    assert (want > touched).sum() > 20


def test_render_geo_off():
    """render_geo=False: out_all_map and plane_depth are zeros whatever all_map is (None
    included), the colour, radii and out_observe are the render_geo=True call's, and all_map
    gets no gradient."""
    scene = scenes.make_scene(36200, P=80, height=30, width=42, sh_degree=1)
    on, off = pgsr_settings(scene.settings), pgsr_settings(scene.settings, render_geo=False)
    leaves, means2D_abs = inputs_of(scene, on, 0, F32)
    want = pgsr_call(leaves, means2D_abs, on)
    for all_map in (leaves["all_map"], None):
        got = pgsr_call(dict(leaves, all_map=all_map), means2D_abs, off)
        for k in range(3):
            assert torch.equal(got[k], want[k]), OUTPUTS[k]
        assert got[3].shape == (5, 30, 42) and not got[3].any()
        assert got[4].shape == (1, 30, 42) and not got[4].any()
    (got[0].sum() + got[3].sum()).backward()
    assert leaves["all_map"].grad is None
    assert means2D_abs.grad[:, :2].sum() > 0


def test_settings_mark_visible_and_errors():
    """PGSR's settings fields in its order; markVisible as the package's; a missing or
    malformed all_map or means2D_abs, or a render_geo that is not a bool, raises an error
    naming it before anything is rendered."""
    assert pgsr.GaussianRasterizationSettings._fields == (
        "image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
        "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "render_geo", "debug")
    scene = scenes.make_scene(36300, P=60)
    s = pgsr_settings(scene.settings)
    want = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert torch.equal(pgsr.GaussianRasterizer(s).markVisible(scene.inputs["means3D"]), want)
    assert 0 < want.sum() < scene.P
    leaves, means2D_abs = inputs_of(scene, s, 0, F32)
    for name, bad, error in (("all_map", None, ValueError),
                             ("all_map", leaves["all_map"][:, :4], ValueError),
                             ("all_map", leaves["all_map"][:-1], ValueError),
                             ("all_map", leaves["all_map"].double(), TypeError),
                             ("all_map", [1.0] * 5, TypeError)):
        with pytest.raises(error, match=name):
            pgsr_call(dict(leaves, **{name: bad}), means2D_abs, s)
    for bad, error in ((means2D_abs[:-1], ValueError), ("zeros", TypeError)):
        with pytest.raises(error, match="means2D_abs"):
            pgsr_call(leaves, bad, s)
    with pytest.raises(TypeError, match="render_geo"):
        pgsr_call(leaves, means2D_abs, s._replace(render_geo=1))


@pytest.mark.parametrize("target", cuda_targets())
def test_pgsr_on_cuda(target):
    """The call on a CUDA target against the CPU backend's (float32): the maps to the CUDA
    tolerance, out_observe exactly (where no transmittance is near 0.5), the gradients and the
    absolute gradient to 1e-3 of their scale."""
    scene = scenes.make_scene(36400, P=150, height=36, width=52, sh_degree=1, outliers=False)
    settings = pgsr_settings(scene.settings)
    cpu_leaves, cpu_abs = inputs_of(scene, settings, 1, F32)
    want = pgsr_call(cpu_leaves, cpu_abs, settings)
    random_loss(want, 5).backward()
    leaves, means2D_abs = inputs_of(scene, settings, 1, F32, target)
    with active(target):
        got = pgsr_call(leaves, means2D_abs, settings._replace(
            **{f: getattr(settings, f).to(target)
               for f in ("bg", "viewmatrix", "projmatrix", "campos")}))
        random_loss(got, 5).backward()
    ambiguous_pixels, _ = scenes.ambiguous_checked(scene)
    for name, a, b in zip(OUTPUTS, got, want):
        if name in ("radii", "out_observe"):
            if name == "radii" or not ambiguous_pixels.any():
                assert torch.equal(a.cpu(), b), name
            continue
        tol = 1e-4 * max(1.0, float(b.detach().abs().max()))
        torch.testing.assert_close(a.cpu(), b.detach(), rtol=0, atol=tol, msg=name)
    grads = [(name, leaves[name].grad, cpu_leaves[name].grad) for name in NAMES]
    for name, a, b in grads + [("means2D_abs", means2D_abs.grad, cpu_abs.grad)]:
        scale = float(b.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-3 * scale, msg=name)
