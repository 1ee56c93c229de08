"""Bad input, extreme scenes and faults: every one gets a correct result or a clear error.

- A Gaussian with NaN or Inf in any of its inputs is culled: the render equals the render
  without it (bitwise on the CPU backend), the others' gradients are unchanged and its own are 0.
- Degenerate but finite Gaussians (zero, negative, huge scales; a zero quaternion; at the camera
  centre, on the near plane, behind the camera, far outside; opacity 0 and 1) give what the
  reference gives, and nothing non-finite.
- Scenes too large for the device raise a RuntimeError saying how many (tile, Gaussian) pairs or
  how many bytes they needed, before anything large is allocated.
- Editing returned tensors or the settings in place never changes a later backward.
Each test runs on the CPU backend and, where a GPU and the CUDA backend exist, on CUDA.
"""

import numpy
import pytest
import torch

import scenes
from cuda_target import FORWARD_ATOL, extent_factor
from diff_gaussian_rasterization_depth import GaussianRasterizer, reference
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from robust_helpers import (DEVICES, assert_as_if_removed, assert_same, assert_same_renders,
                            axis_camera, gaussians_in_view, render, settings_on, upstream)

NAN, INF = float("nan"), float("inf")
BAD_VALUES = {"nan": NAN, "+inf": INF, "-inf": -INF}

# Which scene variant carries each input, and where in a Gaussian's row the bad value goes.
VARIANTS = {
    "means3D": dict(sh_degree=2),
    "opacities": dict(sh_degree=2, antialiasing=True),
    "shs": dict(sh_degree=3),
    "dc": dict(sh_degree=1, dc=True, antialiasing=True),
    "colors_precomp": dict(precomp_colors=True, precomp_cov=True, antialiasing=True),
    "scales": dict(sh_degree=1),
    "rotations": dict(sh_degree=1, antialiasing=True),
    "cov3D_precomp": dict(precomp_colors=True, precomp_cov=True),
}


def visible_ids(inputs, settings, count, seed=0):
    radii = render(inputs, settings, grad=False)[0][1]
    ids = torch.nonzero(radii > 0).flatten()
    gen = torch.Generator().manual_seed(seed)
    return ids[torch.randperm(len(ids), generator=gen)[:count]].tolist()


def poison(inputs, name, gaussian, value, column=None, gen=None):
    """A copy of the inputs with one value of Gaussian `gaussian`'s row of `name` set."""
    out = dict(inputs)
    t = inputs[name].clone()
    row = t[gaussian]
    if name in ("shs", "dc"):
        # The DC coefficient: its basis function is a positive constant, so the value reaches
        # the colour with its sign at every viewing direction.
        row[0, column if column is not None else 1] = value
    else:
        flat = row.reshape(-1)
        col = column if column is not None else int(torch.randint(flat.numel(), (1,),
                                                                  generator=gen))
        flat[col] = value
    out[name] = t
    return out


# ---------------------------------------------------------------------------- non-finite input

def nonfinite_cases():
    for name in VARIANTS:
        for label in BAD_VALUES:
            yield pytest.param(name, label, id=f"{name}-{label}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,label", list(nonfinite_cases()))
def test_nonfinite_input_culls_that_gaussian_only(device, name, label):
    scene = scenes.make_scene(7, P=40, **VARIANTS[name])
    gen = torch.Generator().manual_seed(1)
    for k in visible_ids(scene.inputs, scene.settings, 3):
        bad = poison(scene.inputs, name, k, BAD_VALUES[label], gen=gen)
        assert_as_if_removed(bad, scene.inputs, scene.settings, [k], device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("label", ["nan", "+inf"])
def test_nonfinite_higher_order_sh_culls(device, label):
    # A used coefficient of degree 1..3 in every position; +Inf at a coefficient whose basis
    # value is negative would be the -Inf case above, so that one is only tested with NaN.
    scene = scenes.make_scene(8, P=40, sh_degree=3)
    ids = visible_ids(scene.inputs, scene.settings, 15)
    for coefficient, k in zip(range(1, 16), ids):
        bad = dict(scene.inputs)
        bad["shs"] = scene.inputs["shs"].clone()
        bad["shs"][k, coefficient, coefficient % 3] = BAD_VALUES[label]
        if label == "+inf" and _sh_basis_sign(scene, k, coefficient) <= 0:
            continue
        assert_as_if_removed(bad, scene.inputs, scene.settings, [k], device)


def _sh_basis_sign(scene, k, coefficient):
    """Sign of SH basis function `coefficient` in the direction Gaussian k is seen from."""
    onehot = torch.zeros(1, 16, 3, dtype=torch.float64)
    onehot[0, coefficient] = 1.0
    value = reference._sh_to_color(onehot, 3, scene.inputs["means3D"][k:k + 1].double(),
                                   scene.settings.campos.double())[0, 0] - 0.5
    return float(value)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_unused_sh_coefficient_is_ignored(device):
    """Coefficients above the active degree are never read: a NaN there changes nothing."""
    scene = scenes.make_scene(9, P=30, sh_degree=1)
    shs = scene.inputs["shs"]
    shs = torch.cat([shs, 0.3 * torch.randn(30, 16 - shs.shape[1], 3, dtype=shs.dtype,
                                            generator=torch.Generator().manual_seed(0))], dim=1)
    scene.inputs["shs"] = shs
    bad = dict(scene.inputs)
    bad["shs"] = shs.clone()
    ids = visible_ids(scene.inputs, scene.settings, 4)
    bad["shs"][ids, 4:] = NAN
    g_b = assert_same_renders(bad, scene.settings, scene.inputs, scene.settings, device)
    assert (g_b["shs"][:, 4:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_means2D_is_ignored(device):
    """means2D only carries the screen-space gradient; its values are never read."""
    scene = scenes.make_scene(12, P=30)
    bad = dict(scene.inputs)
    bad["means2D"] = scene.inputs["means2D"].clone()
    bad["means2D"][::3] = NAN
    bad["means2D"][1::3] = -INF
    assert_same_renders(bad, scene.settings, scene.inputs, scene.settings, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_many_nonfinite_gaussians_at_once(device, seed):
    """A third of the Gaussians poisoned, in random inputs and places, in one render."""
    variant = [dict(sh_degree=3), dict(precomp_colors=True, precomp_cov=True),
               dict(sh_degree=2, dc=True, antialiasing=True), dict(sh_degree=0)][seed]
    scene = scenes.make_scene(100 + seed, P=60, **variant)
    gen = torch.Generator().manual_seed(seed)
    names = [n for n in VARIANTS if scene.inputs.get(n) is not None]
    bad = dict(scene.inputs)
    poisoned = sorted(torch.randperm(scene.P, generator=gen)[:scene.P // 3].tolist())
    for k in poisoned:
        name = names[int(torch.randint(len(names), (1,), generator=gen))]
        labels = list(BAD_VALUES)
        label = labels[int(torch.randint(len(labels), (1,), generator=gen))]
        bad = poison(bad, name, k, BAD_VALUES[label], gen=gen)
    assert_as_if_removed(bad, scene.inputs, scene.settings, poisoned, device)


# ---------------------------------------------------------------------------- degenerate geometry

def _edit(name, fn):
    return pytest.param(fn, id=name)


DEGENERATE = [
    _edit("zero-scale-axis", lambda g, k: g["scales"][k].__setitem__(0, 0.0)),
    _edit("zero-scales", lambda g, k: g["scales"][k].zero_()),
    _edit("negative-scales", lambda g, k: g["scales"][k].neg_()),
    _edit("huge-scales-whole-screen", lambda g, k: g["scales"][k].mul_(1e3)),
    _edit("huge-scales-overflow", lambda g, k: g["scales"][k].fill_(1e30)),
    _edit("tiny-scales", lambda g, k: g["scales"][k].fill_(1e-30)),
    _edit("zero-quaternion", lambda g, k: g["rotations"][k].zero_()),
    _edit("huge-quaternion", lambda g, k: g["rotations"][k].mul_(1e12)),
    _edit("camera-centre", lambda g, k: g["means3D"][k].zero_()),
    _edit("on-near-plane", lambda g, k: g["means3D"][k].copy_(torch.tensor([0.01, 0.0, 0.2]))),
    _edit("just-past-near-plane", lambda g, k: g["means3D"][k].copy_(
        torch.tensor([0.0, 0.01, float(numpy.nextafter(0.2, 1.0))]))),
    _edit("z-zero", lambda g, k: g["means3D"][k].copy_(torch.tensor([0.3, -0.2, 0.0]))),
    _edit("behind", lambda g, k: g["means3D"][k, 2].mul_(-1.0)),
    _edit("far-outside", lambda g, k: g["means3D"][k, 0].mul_(1e6)),
    _edit("far-outside-huge", lambda g, k: (g["means3D"][k, 0].mul_(30.0),
                                            g["scales"][k].mul_(200.0))),
    _edit("opacity-zero", lambda g, k: g["opacities"][k].zero_()),
    _edit("opacity-one", lambda g, k: g["opacities"][k].fill_(1.0)),
]


def _compare_to_reference(inputs, settings, device, ambiguous=None):
    """Backend on `device` against the reference on the CPU in the same dtype. Pixels and
    Gaussians within rounding of a threshold (float32) are left out, as in the backend tests."""
    dtype = inputs["means3D"].dtype
    out, grads = render(inputs, settings, device)
    for k, g in grads.items():
        if g is not None:
            assert torch.isfinite(g).all(), f"non-finite gradient of {k}"
    for o in out:
        assert torch.isfinite(o.double()).all()
    ref_in = {k: None if v is None else v.detach().clone().requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
    ref = rasterize_reference(**ref_in, raster_settings=settings)
    pixels = torch.zeros(settings.image_height, settings.image_width, dtype=torch.bool)
    gauss = torch.zeros(inputs["means3D"].shape[0], dtype=torch.bool)
    if dtype == torch.float32:
        pixels, gauss = scenes.ambiguous(scenes.Scene(inputs=inputs, settings=settings))
    keep = ~pixels
    # float32 on CUDA: the GPU's own rounding besides the reference's (cuda_target.forward_atol).
    extent = max(settings.image_height, settings.image_width)
    cuda_atol = FORWARD_ATOL * extent_factor(extent)
    atol = (cuda_atol if device == "cuda" else 1e-5) if dtype == torch.float32 else 1e-9
    color, radii, depth, weight = out
    torch.testing.assert_close(color[:, keep], ref[0].detach()[:, keep], rtol=0, atol=atol)
    torch.testing.assert_close(depth[keep], ref[2].detach()[keep], rtol=0,
                               atol=atol * max(1.0, float(ref[2].detach().abs().max())))
    torch.testing.assert_close(weight[keep], ref[3].detach()[keep], rtol=0, atol=atol)
    assert torch.equal(radii[~gauss], ref[1][~gauss])
    if pixels.any() or gauss.any():
        return  # gradients with a threshold flip somewhere are not comparable
    c, d, w = ref[0], ref[2], ref[3]
    loss = ((c * upstream(c.shape, 0, dtype, "cpu")).sum()
            + (d * upstream(d.shape, 1, dtype, "cpu")).sum()
            + (w * upstream(w.shape, 2, dtype, "cpu")).sum())
    loss.backward()
    rtol = 1e-4 if dtype == torch.float32 else 1e-8
    if device == "cuda":
        # A gradient sums over the pixels a splat covers, each term carrying the rounding of its
        # offset from the pixel (cuda_target.FORWARD_ATOL), so the GPU's and the reference's
        # float32 sums drift apart with the extent: on the emulation built with fused
        # multiply-adds, 1.7e-4 of a gradient's scale at 1x640, 1.2e-3 at 1x5000 (the CPU's
        # float32 is as far from float64 there).
        rtol *= extent_factor(extent, base=128)
    for k, v in ref_in.items():
        if v is None or not v.is_floating_point():
            continue
        expected = v.grad if v.grad is not None else torch.zeros_like(v)
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        torch.testing.assert_close(grads[k], expected, rtol=rtol, atol=rtol * max(scale, 1e-12),
                                   msg=lambda m: f"gradient of {k}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("edit", DEGENERATE)
def test_degenerate_gaussians_match_reference(device, dtype, edit):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA backend is float32")
    settings = axis_camera(29, 37, dtype=dtype, sh_degree=1, antialiasing=True)
    gen = torch.Generator().manual_seed(5)
    g = gaussians_in_view(gen, 12, settings, dtype=torch.float64)
    for k in (2, 7):
        edit(g, k)
    g = {k: None if v is None else v.to(dtype) for k, v in g.items()}
    _compare_to_reference(g, settings, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_all_degenerate_at_once(device, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA backend is float32")
    settings = axis_camera(40, 24, dtype=dtype, sh_degree=2, antialiasing=True)
    gen = torch.Generator().manual_seed(6)
    g = gaussians_in_view(gen, 3 * len(DEGENERATE), settings, dtype=torch.float64)
    for i, edit in enumerate(DEGENERATE):
        edit.values[0](g, 3 * i)
    g = {k: None if v is None else v.to(dtype) for k, v in g.items()}
    _compare_to_reference(g, settings, device)


# A radius beyond int32 is capped (at the last float below 2^31) before the tile rectangle is
# computed, so that binning, which recomputes the rectangle from the stored radius, agrees with
# the count of the preprocess, and the reference does the same.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_radius_beyond_2_30_from_far_off_screen(device, dtype):
    """A Gaussian 1.5e9 px right of a 64 x 64 image with a 3-sigma radius of 3e9 px: the
    reference blends it everywhere with alpha ~0.3."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA backend is float32")
    settings = axis_camera(64, 64, tanfovx=0.5, dtype=dtype)
    g = dict(means3D=torch.tensor([[2.3e7, 0.0, 1.0]]), means2D=torch.zeros(1, 3),
             opacities=torch.tensor([[0.9]]), colors_precomp=torch.tensor([[1.0, 0.2, 0.0]]),
             scales=torch.full((1, 3), 1.3e7), rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    g = {k: v.to(dtype) for k, v in g.items()}
    _compare_to_reference(g, settings, device)


@pytest.mark.parametrize("device", DEVICES)
def test_degenerate_precomputed_covariances(device):
    """cov3D_precomp zero, rank one, indefinite and negative definite."""
    settings = axis_camera(31, 33)
    gen = torch.Generator().manual_seed(8)
    g = gaussians_in_view(gen, 10, settings, sh_coeffs=None, dtype=torch.float64)
    scale = g.pop("scales")
    g.pop("rotations")
    cov = torch.zeros(10, 6, dtype=torch.float64)
    cov[:, 0], cov[:, 3], cov[:, 5] = scale[:, 0] ** 2, scale[:, 1] ** 2, scale[:, 2] ** 2
    cov[1] = 0.0                                                  # zero
    v = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64) * float(scale[2].max())
    cov[2] = torch.stack([v[0] * v[0], v[0] * v[1], v[0] * v[2], v[1] * v[1], v[1] * v[2],
                          v[2] * v[2]])                           # rank one
    cov[3, 1] = 3 * float(cov[3, 0].sqrt() * cov[3, 3].sqrt())    # indefinite
    cov[4] = -cov[4]                                              # negative definite
    cov[5, [0, 3]] = -1e-9                                        # slightly negative
    g["cov3D_precomp"] = cov
    g = {k: v.to(torch.float64) if v is not None else None for k, v in g.items()}
    if device == "cuda":
        g = {k: v.to(torch.float32) if v is not None else None for k, v in g.items()}
        settings = axis_camera(31, 33)
    else:
        settings = axis_camera(31, 33, dtype=torch.float64)
    _compare_to_reference(g, settings, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1), (2, 3), (17, 1)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_extreme_image_sizes(device, size):
    H, W = size
    dtype = torch.float32 if device == "cuda" else torch.float64
    scene = scenes.make_scene(21, P=25, height=H, width=W, sh_degree=1, dtype=dtype)
    _compare_to_reference(scene.inputs, scene.settings, device)


@pytest.mark.parametrize("device", DEVICES)
def test_no_gaussians_and_all_culled(device):
    for P, culled in ((0, False), (20, True)):
        scene = scenes.make_scene(31, P=P, all_culled=culled)
        (color, radii, depth, weight), grads = render(scene.inputs, scene.settings, device)
        bg = scene.settings.bg.reshape(3, 1, 1).expand_as(color)
        assert torch.equal(color, bg)
        assert not depth.any() and not weight.any() and not radii.any()
        for k, v in grads.items():
            if v is not None:
                assert not v.any(), k


@pytest.mark.parametrize("device", DEVICES)
def test_prefiltered_culls_gaussians_behind_the_camera(device):
    """The original traps on these; prefiltered only promises nothing, we cull as usual."""
    scene = scenes.make_scene(41, P=50)   # outliers: some behind, some on the near plane
    behind = render(scene.inputs, scene.settings, grad=False)[0][1] == 0
    assert behind.any()
    assert_same_renders(scene.inputs, scene.settings._replace(prefiltered=True), scene.inputs,
                        scene.settings, device)


@pytest.mark.parametrize("device", DEVICES)
def test_many_gaussians_on_one_pixel(device):
    """Thousands of Gaussians at the same place and depth: ties, early stop, no overflow."""
    settings = axis_camera(16, 16, dtype=torch.float32)
    P = 3000
    gen = torch.Generator().manual_seed(3)
    g = gaussians_in_view(gen, P, settings, sh_coeffs=None)
    g["means3D"][:] = torch.tensor([0.0, 0.0, 2.0])
    g["opacities"][:] = 0.02
    (color, radii, depth, weight), grads = render(g, settings, device)
    assert torch.isfinite(color).all() and (radii > 0).all()
    torch.testing.assert_close(depth[weight > 0], torch.full_like(depth[weight > 0], 2.0))
    for k, v in grads.items():
        if v is not None:
            assert torch.isfinite(v).all(), k


# ---------------------------------------------------------------------------- too large to render

def _whole_screen_gaussians(P, settings, z=2.0):
    """P Gaussians at the image centre whose 3-sigma square covers the whole image."""
    focal = settings.image_width / (2 * settings.tanfovx)
    sigma_px = max(settings.image_width, settings.image_height)
    ones = torch.ones(P, 1)
    return dict(means3D=torch.tensor([[0.0, 0.0, z]]).repeat(P, 1),
                means2D=torch.zeros(P, 3), opacities=0.5 * ones,
                colors_precomp=torch.rand(P, 3, generator=torch.Generator().manual_seed(0)),
                scales=torch.full((P, 3), sigma_px * z / focal),
                rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(P, 1))


def _rasterize(g, settings, device):
    g = {k: v.to(device) for k, v in g.items()}
    return GaussianRasterizer(settings_on(settings, device))(**g)


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_31_tile_pairs_is_a_clear_error(device):
    """32768 x 32768 has 2048^2 = 4194304 tiles; 600 whole-screen Gaussians need 2516582400
    pairs, more than int32 indices address. Only P-sized buffers exist when this is detected:
    the per-pixel ones (36 GiB here) are allocated after the check."""
    settings = axis_camera(32768, 32768, tanfovx=0.5)
    g = _whole_screen_gaussians(600, settings)
    with pytest.raises(RuntimeError) as info:
        _rasterize(g, settings, device)
    message = str(info.value)
    assert "2516582400" in message and "pairs" in message and "GiB" in message, message
    assert "2^31" in message, message


def test_tile_pairs_over_the_memory_budget_is_a_clear_error(monkeypatch):
    """Host budget set to 1 MiB: 256 tiles x 2000 whole-screen Gaussians = 512000 pairs of
    4 bytes (1.95 MiB) do not fit."""
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", str(1 << 20))
    settings = axis_camera(256, 256)
    g = _whole_screen_gaussians(2000, settings)
    with pytest.raises(RuntimeError) as info:
        _rasterize(g, settings, "cpu")
    message = str(info.value)
    assert "512000" in message and "GiB" in message and "available" in message, message
    monkeypatch.delenv("DGRD_HOST_MEMORY_LIMIT")
    color = _rasterize(g, settings, "cpu")[0]
    assert torch.isfinite(color).all()


def test_image_over_the_memory_budget_is_a_clear_error(monkeypatch):
    """A 20000 x 20000 float32 render keeps 36 bytes per pixel (13.4 GiB): refused under an
    8 GiB budget before anything per-pixel is allocated."""
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", str(8 << 30))
    settings = axis_camera(20000, 20000)
    g = _whole_screen_gaussians(1, settings)
    g["scales"] *= 1e-3
    with pytest.raises(RuntimeError, match=r"20000 x 20000.*GiB"):
        _rasterize(g, settings, "cpu")


def test_image_too_large_for_the_cpu_backend_is_a_clear_error(monkeypatch):
    """32768^2 x 3 values exceed the CPU loops' 32-bit indices (or, once those are 64-bit,
    the 8 GiB budget set here): an error, not memory corruption."""
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", str(8 << 30))
    settings = axis_camera(32768, 32768)
    g = _whole_screen_gaussians(1, settings)
    g["scales"] *= 1e-4
    with pytest.raises(RuntimeError, match=r"32768 x 32768"):
        _rasterize(g, settings, "cpu")


def test_invalid_memory_budget_variable(monkeypatch):
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", "lots")
    settings = axis_camera(16, 16)
    with pytest.raises(ValueError, match="DGRD_HOST_MEMORY_LIMIT"):
        _rasterize(_whole_screen_gaussians(1, settings), settings, "cpu")


# ---------------------------------------------------------------------------- in-place edits

def _run(scene, device, edit_outputs=None, edit_settings=None, second_forward=False):
    """Forward, optional edits, backward; returns the gradients."""
    leaves = {k: None if v is None else v.detach().to(device).clone().requires_grad_(True)
              for k, v in scene.inputs.items()}
    settings = scene.settings._replace(**{
        f: getattr(scene.settings, f).detach().to(device).clone()
        for f in ("bg", "viewmatrix", "projmatrix", "campos")})
    rasterizer = GaussianRasterizer(settings)
    args = {k: v for k, v in leaves.items() if v is not None}
    color, radii, depth, weight = rasterizer(**args)
    if edit_outputs:
        edit_outputs(color, radii, depth, weight)
    if edit_settings:
        edit_settings(settings)
    if second_forward:
        # The same rasterizer (and settings object) used again before the first backward.
        other = {k: (v.detach() * 1.01 if k == "means3D" else v.detach()) for k, v in args.items()}
        rasterizer(**other)
    dt = color.dtype
    loss = ((color * upstream(color.shape, 0, dt, device)).sum()
            + (depth * upstream(depth.shape, 1, dt, device)).sum()
            + (weight * upstream(weight.shape, 2, dt, device)).sum())
    loss.backward()
    return {k: v.grad.cpu() for k, v in leaves.items() if v is not None}


def _assert_same_grads(a, b, device):
    for k in b:
        assert_same(a[k], b[k], device, k)


@pytest.mark.parametrize("device", DEVICES)
def test_editing_outputs_in_place_keeps_gradients(device):
    scene = scenes.make_scene(51, P=40, sh_degree=2, antialiasing=True)
    clean = _run(scene, device)

    def vandalize(color, radii, depth, weight):
        with torch.no_grad():   # values of a linear loss do not enter its gradient
            color.zero_()
            depth.fill_(float("nan"))
            weight.mul_(-3.0)
            radii.fill_(-7)
    _assert_same_grads(_run(scene, device, edit_outputs=vandalize), clean, device)


@pytest.mark.parametrize("device", DEVICES)
def test_tracked_in_place_ops_on_outputs(device):
    """color.clamp_, depth.mul_, weight.pow_ with autograd: as the out-of-place versions."""
    scene = scenes.make_scene(52, P=40, sh_degree=1)
    grads = []
    for in_place in (True, False):
        leaves = {k: None if v is None else v.detach().to(device).clone().requires_grad_(True)
                  for k, v in scene.inputs.items()}
        settings = settings_on(scene.settings, device)
        color, _, depth, weight = GaussianRasterizer(settings)(
            **{k: v for k, v in leaves.items() if v is not None})
        if in_place:
            color.clamp_(0.1, 0.8)
            depth.mul_(2.0).add_(1.0)
            weight.pow_(2)
        else:
            color = color.clamp(0.1, 0.8)
            depth = depth * 2.0 + 1.0
            weight = weight.pow(2)
        loss = (color.sum() + (depth * upstream(depth.shape, 3, depth.dtype, device)).sum()
                + weight.sum())
        loss.backward()
        grads.append({k: v.grad.cpu() for k, v in leaves.items() if v is not None})
    _assert_same_grads(grads[0], grads[1], device)


@pytest.mark.parametrize("device", DEVICES)
def test_mutating_the_settings_after_forward_keeps_gradients(device):
    scene = scenes.make_scene(53, P=40, sh_degree=3)
    clean = _run(scene, device)

    def vandalize(settings):
        settings.bg.fill_(float("nan"))
        settings.viewmatrix.mul_(2.0)
        settings.projmatrix.zero_()
        settings.campos.add_(5.0)
    _assert_same_grads(_run(scene, device, edit_settings=vandalize), clean, device)


@pytest.mark.parametrize("device", DEVICES)
def test_reusing_the_settings_before_backward_keeps_gradients(device):
    scene = scenes.make_scene(54, P=40, sh_degree=1, dc=True)
    clean = _run(scene, device)

    def shift(settings):
        settings.bg.mul_(0.5)
        settings.campos.add_(0.1)
    _assert_same_grads(_run(scene, device, edit_settings=shift, second_forward=True), clean,
                       device)


# Whether this torch tells a Function's backward that the graph is freed after it (a private
# query of PyTorch 2.x; 1.12 has none, and the state is then kept as for retain_graph).
TELLS_KEPT_GRAPH = hasattr(torch._C._autograd, "_get_current_graph_task_keep_graph")


@pytest.mark.parametrize("device", DEVICES)
def test_backward_twice_with_retain_graph(device):
    scene = scenes.make_scene(55, P=30)
    leaves = {k: None if v is None else v.detach().to(device).clone().requires_grad_(True)
              for k, v in scene.inputs.items()}
    settings = settings_on(scene.settings, device)
    color, _, depth, weight = GaussianRasterizer(settings)(
        **{k: v for k, v in leaves.items() if v is not None})
    loss = color.sum() + depth.sum() + weight.sum()
    saved = color.grad_fn.state  # the forward's state, which a kept graph keeps whole
    count = len(saved)
    loss.backward(retain_graph=True)
    assert len(saved) == count and all(t is not None for t in saved)
    first = {k: v.grad.clone() for k, v in leaves.items() if v is not None}
    for v in leaves.values():
        if v is not None:
            v.grad = None
    loss.backward()
    for k, v in first.items():
        assert_same(leaves[k].grad.cpu(), v.cpu(), device, k)
    # The graph's last backward hands the state to the backend, which frees it as it goes
    # (where torch tells whether the graph is kept: test_a_torch_that_cannot_tell_keeps_the_state).
    assert saved == [] if TELLS_KEPT_GRAPH else len(saved) == count
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_a_torch_that_cannot_tell_keeps_the_state(monkeypatch):
    """Where torch has no query of whether the graph is kept (its private
    `_get_current_graph_task_keep_graph`, absent from older versions), the backward keeps the
    state whole, as for retain_graph, and the gradients are the same."""
    scene = scenes.make_scene(57, P=30)
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True)
              for k, v in scene.inputs.items()}

    def step():
        color, _, depth, weight = GaussianRasterizer(scene.settings)(
            **{k: v for k, v in leaves.items() if v is not None})
        saved = color.grad_fn.state
        (color.sum() + depth.sum() + weight.sum()).backward()
        grads = {k: v.grad for k, v in leaves.items() if v is not None}
        for v in leaves.values():
            if v is not None:
                v.grad = None
        return saved, grads

    released, expected = step()
    if TELLS_KEPT_GRAPH:  # else (PyTorch 1.12) both steps keep it
        assert released == []
        monkeypatch.delattr(torch._C._autograd, "_get_current_graph_task_keep_graph")
    kept, grads = step()
    assert len(kept) > 0 and all(t is not None for t in kept)
    for k, g in expected.items():
        assert torch.equal(grads[k], g), k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["means3D", "colors_precomp"])
def test_editing_inputs_before_backward_is_detected(device, name):
    """An optimizer step between forward and backward: autograd's version check raises, rather
    than a backward that silently mixes old and new values. The colours too: the CUDA backward
    reads them where the caller's tensor holds them (GaussianState::colors), not a copy."""
    scene = scenes.make_scene(56, P=20, precomp_colors=True)
    edited = scene.inputs[name].to(device).clone().requires_grad_(True)
    args = {k: v.to(device) for k, v in scene.inputs.items() if v is not None and k != name}
    settings = settings_on(scene.settings, device)
    color = GaussianRasterizer(settings)(**{name: edited}, **args)[0]
    with torch.no_grad():
        edited.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        color.sum().backward()


def touched_pixels(scene):
    """(P, H, W) bool: the pixels where each Gaussian's alpha reaches 1/255 (less a margin for
    rounding), by the reference: a superset of those where a backend blends it."""
    _, everyone, blend, idx, _ = scenes.reference_internals(scene)
    reach = blend["considered"] & (blend["raw_alpha"] >= reference.ALPHA_MIN * (1 - 1e-3))
    touched = torch.zeros(scene.P, *reach.shape[1:], dtype=torch.bool)
    touched[idx[blend["order"]]] = reach
    return touched


def render_with_features(scene, features, ups, device):
    """Outputs (colour, depth, weight, feature map; on the CPU) and the gradients of every input
    of sum(map x upstream) over the four maps."""
    leaves = {k: None if v is None else v.detach().to(device).requires_grad_()
              for k, v in scene.inputs.items()}
    F = features.to(device).requires_grad_()
    s = scene.settings
    settings = s._replace(bg=s.bg.to(device), viewmatrix=s.viewmatrix.to(device),
                          projmatrix=s.projmatrix.to(device), campos=s.campos.to(device))
    color, _, depth, weight, feature_map = GaussianRasterizer(settings)(**leaves, features=F)
    maps = (color, depth, weight, feature_map)
    sum((m * u.to(device)).sum() for m, u in zip(maps, ups)).backward()
    grads = {k: v.grad.cpu() for k, v in leaves.items() if v is not None}
    grads["features"] = F.grad.cpu()
    return [m.detach().cpu() for m in maps], grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nan_in", ["feature", "upstream", "feature-map-upstream"])
def test_a_nan_spoils_only_the_gaussians_that_share_its_pixels(nan_in, device):
    """A NaN feature value of one Gaussian (features take no part in culling: doc/api.md), or a
    NaN upstream gradient at one pixel, of the colour or of the feature map: the maps are as
    without it outside that Gaussian's (that pixel's) pixels, and every Gaussian that shares
    none of them gets the gradients it gets without the NaN. Both backends step every lane of a
    group where one pixel blends the splat (the CPU's 8 pixels, a CUDA warp's 32): a lane whose
    pixel does not blend it must add 0 even where its walk holds the NaN (the CUDA feature
    backward added w g = 0 x NaN to dL/dF until stop 44)."""
    for seed in range(2):
        scene = scenes.make_scene(15100 + seed, P=300, height=48, width=64, scale_modifier=0.4,
                                  outliers=False)
        touched = touched_pixels(scene)
        H, W = touched.shape[1:]
        gen = torch.Generator().manual_seed(seed)
        F = 2 * torch.rand(scene.P, 4, generator=gen) - 1
        ups = [torch.randn(3, H, W, generator=gen), torch.randn(H, W, generator=gen),
               torch.randn(H, W, generator=gen), torch.randn(4, H, W, generator=gen)]
        spoiled_F, spoiled_ups = F.clone(), [u.clone() for u in ups]
        if nan_in == "feature":
            # A Gaussian over a few hundred pixels, so that many groups hold pixels it misses.
            count = touched.flatten(1).sum(1)
            g = int(torch.argmax(torch.where(count < H * W // 10, count, 0)))
            spoiled = touched[g]
            spoiled_F[g, 1] = float("nan")
        else:
            # The pixel most Gaussians reach.
            y, x = divmod(int(torch.argmax(touched.sum(0))), W)
            spoiled = torch.zeros(H, W, dtype=torch.bool)
            spoiled[y, x] = True
            if nan_in == "upstream":
                spoiled_ups[0][1, y, x] = float("nan")
            else:
                spoiled_ups[3][2, y, x] = float("nan")
        apart = ~(touched & spoiled).flatten(1).any(1)
        assert 50 < int(apart.sum()) < scene.P and int(spoiled.sum()) > 0
        maps, grads = render_with_features(scene, spoiled_F, spoiled_ups, device)
        clean_maps, clean_grads = render_with_features(scene, F, ups, device)
        assert torch.isnan(maps[3] if nan_in == "feature" else grads["means3D"]).any()
        if nan_in == "feature-map-upstream":
            assert torch.isnan(grads["features"][~apart, 2]).any()
        for name, m, c in zip(("color", "depth", "weight", "feature map"), maps, clean_maps):
            assert_same(m[..., ~spoiled], c[..., ~spoiled], device, f"seed {seed} {name}")
        for name, g in grads.items():
            assert torch.isfinite(g[apart]).all(), f"seed {seed}: NaN in {name} of the others"
            assert_same(g[apart], clean_grads[name][apart], device, f"seed {seed} {name}")
