"""The APIs of the depth forks whose depth is not normalized: DreamGaussian's
(`diff_gaussian_rasterization_depth.ashawkey`, the rasterizer of FSGS, DNGaussian, LGM) with
FSGS's `confidence`, and Deformable 3D Gaussians' (`.ingra14m`, three outputs; 4DGaussians):
outputs and gradients against autograd through the reference in float64, the confidence's
scaling of the gradients, FSGS's depth loss training with it, and the same calls on the CUDA
targets.
"""
import math

import pytest
import torch

import scenes
from cuda_target import active, adds_in_fixed_order, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, ashawkey, ingra14m
from diff_gaussian_rasterization_depth.reference import rasterize_reference

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
GRAD_INPUTS = ("means3D", "means2D", "shs", "colors_precomp", "opacities", "scales", "rotations",
               "cov3D_precomp")


def fork_settings(scene, confidence=None, device="cpu", dtype=None):
    """The fork's settings of a scene: its twelve fields by position, as its users build them,
    and FSGS's thirteenth when a confidence is given."""
    s = scene.settings
    put = lambda t: t.to(device) if dtype is None else t.to(dtype).to(device)  # noqa: E731
    fields = [s.image_height, s.image_width, s.tanfovx, s.tanfovy, put(s.bg), s.scale_modifier,
              put(s.viewmatrix), put(s.projmatrix), s.sh_degree, put(s.campos), False, False]
    if confidence is not None:
        fields.append(confidence)
    return ashawkey.GaussianRasterizationSettings(*fields)


def fork_call(settings, inputs):
    """The fork's call, by keyword, as FSGS's and DNGaussian's renderers make it."""
    return ashawkey.GaussianRasterizer(raster_settings=settings)(
        means3D=inputs["means3D"], means2D=inputs["means2D"], shs=inputs.get("shs"),
        colors_precomp=inputs.get("colors_precomp"), opacities=inputs["opacities"],
        scales=inputs.get("scales"), rotations=inputs.get("rotations"),
        cov3D_precomp=inputs.get("cov3D_precomp"))


def leaves_of(inputs, dtype=None, device=None):
    return {k: None if v is None else
            v.detach().to(dtype=dtype or v.dtype, device=device or v.device).clone()
            .requires_grad_() for k, v in inputs.items()}


def upstream_grads(shape, seed, dtype=F64):
    """Random upstream gradients for (color, depth, alpha)."""
    gen = torch.Generator().manual_seed(seed)
    H, W = shape
    return [torch.randn(c, H, W, generator=gen, dtype=dtype) for c in (3, 1, 1)]


def fork_loss(outputs, upstream):
    color, _, depth, alpha = outputs
    return sum((o * u.to(o)).sum() for o, u in zip((color, depth, alpha), upstream))


def fork_grads(settings, inputs, upstream):
    leaves = leaves_of(inputs)
    out = fork_call(settings, leaves)
    fork_loss(out, upstream).backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


def reference_grads(scene, upstream):
    """The fork's maps from the reference in float64: depth = sum_i w_i z_i = the reference's
    normalized depth times its weight, alpha = the weight; and the gradients of the same loss
    by autograd through it."""
    leaves = leaves_of(scene.inputs, dtype=F64)
    settings = scene.settings._replace(
        **{f: getattr(scene.settings, f).to(F64) for f in ("bg", "viewmatrix", "projmatrix",
                                                           "campos")})
    color, radii, depth, weight = rasterize_reference(**leaves, raster_settings=settings)
    out = (color, radii, (depth * weight)[None], weight[None])
    fork_loss(out, upstream).backward()
    return out, {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("variant", ["sh", "colors", "cov3D"])
def test_outputs_and_gradients_match_the_reference(variant, dtype):
    """(color, radii, depth, alpha): depth the unnormalized sum_i w_i z_i and alpha the weight,
    both (1, H, W); the gradients of a loss on colour, depth and alpha reach every input, as
    autograd through the reference gives them (float64 to 1e-9, float32 to its rounding)."""
    seed = {"sh": 31000, "colors": 31100, "cov3D": 31200}[variant]
    scene = scenes.make_scene(seed + (dtype == F32), P=120, height=31, width=45,
                              sh_degree=2, precomp_colors=variant == "colors",
                              precomp_cov=variant == "cov3D", dtype=dtype, outliers=False)
    upstream = upstream_grads((31, 45), seed)
    out, grads = fork_grads(fork_settings(scene), scene.inputs, upstream)
    want_out, want_grads = reference_grads(scene, upstream)
    assert out[2].shape == out[3].shape == (1, 31, 45) and out[0].shape == (3, 31, 45)
    assert torch.equal(out[1], want_out[1]) and (out[1] > 0).sum() > 30
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == F64 else dict(rtol=2e-4, atol=2e-5)
    for got, want in zip(out[:1] + out[2:], want_out[:1] + want_out[2:]):
        torch.testing.assert_close(got.to(F64), want, **tol)
    # The depth is not normalized: below 1 of weight it is the normalized depth times it.
    assert (out[3] < 0.9).any() and (out[3] > 0.5).any()
    gtol = dict(rtol=1e-8, atol=1e-10) if dtype == F64 else None
    for name in grads:
        assert name in want_grads and want_grads[name].abs().max() > 0, name
        if gtol is not None:
            torch.testing.assert_close(grads[name], want_grads[name], **gtol, msg=name)
        else:
            scale = want_grads[name].abs().max()
            err = (grads[name].to(F64) - want_grads[name]).abs()
            # float32: most entries to its rounding; a few splats on a threshold may differ more
            assert (err <= 1e-3 * scale).float().mean() > 0.97, name


def test_package_call_normalizes_the_depth():
    """What the module docstring warns of: the package's own call returns four outputs in the
    same order, with depth / alpha where the fork has depth; the colour and alpha agree."""
    scene = scenes.make_scene(31300, P=100, height=29, width=37, sh_degree=1, dtype=F64)
    with torch.no_grad():
        color, radii, depth, alpha = fork_call(fork_settings(scene), scene.inputs)
        p_color, p_radii, p_depth, p_weight = GaussianRasterizer(scene.settings)(**scene.inputs)
    assert torch.equal(color, p_color) and torch.equal(radii, p_radii)
    assert torch.equal(alpha[0], p_weight)
    torch.testing.assert_close(depth[0], p_depth * p_weight, rtol=1e-14, atol=0)
    partial = (p_weight > 0.05) & (p_weight < 0.9)
    assert partial.sum() > 10
    assert ((depth[0] - p_depth).abs()[partial] > 1e-3 * p_depth[partial]).all()
    assert (depth[0][p_weight == 0] == 0).all()


@pytest.mark.parametrize("variant", ["sh", "cov3D"])
def test_confidence_scales_each_gaussians_gradients(variant):
    """FSGS's confidence c (P, 1): every input's gradient is the plain call's times c_i per
    Gaussian, means2D's is the plain call's; the outputs do not change; ones change nothing and
    no gradient reaches c."""
    scene = scenes.make_scene(31400, P=90, height=27, width=39, sh_degree=1, dtype=F64,
                              precomp_cov=variant == "cov3D")
    upstream = upstream_grads((27, 39), 7)
    gen = torch.Generator().manual_seed(8)
    confidence = torch.rand(scene.P, 1, generator=gen, dtype=F64).requires_grad_()
    plain_out, plain = fork_grads(fork_settings(scene), scene.inputs, upstream)
    out, scaled = fork_grads(fork_settings(scene, confidence), scene.inputs, upstream)
    for a, b in zip(out, plain_out):
        assert torch.equal(a.detach(), b.detach())
    assert confidence.grad is None
    for name, grad in scaled.items():
        c = confidence.detach().reshape((-1,) + (1,) * (grad.dim() - 1))
        want = plain[name] if name == "means2D" else plain[name] * c
        torch.testing.assert_close(grad, want, rtol=1e-14, atol=0, msg=name)
        assert plain[name].abs().max() > 0, name
    _, ones = fork_grads(fork_settings(scene, torch.ones(scene.P, 1, dtype=F64)), scene.inputs,
                         upstream)
    for name in plain:
        assert torch.equal(ones[name], plain[name]), name


def test_confidence_checked_and_named():
    scene = scenes.make_scene(31500, P=40, height=20, width=24)
    for bad, error in ((torch.ones(scene.P + 1, 1), ValueError),
                       (torch.ones(scene.P, 1, dtype=torch.int32), TypeError),
                       (torch.ones(scene.P, 1, device="meta"), ValueError),
                       ([1.0] * scene.P, TypeError)):
        with pytest.raises(error, match="raster_settings.confidence"):
            fork_call(fork_settings(scene, bad), scene.inputs)


def test_settings_and_mark_visible():
    """The fork's twelve fields, in order (FSGS's confidence thirteenth, None by default), and
    markVisible as the package's."""
    assert ashawkey.GaussianRasterizationSettings._fields == (
        "image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
        "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "debug", "confidence")
    scene = scenes.make_scene(31600, P=200, height=30, width=40)
    settings = fork_settings(scene)
    assert settings.confidence is None
    visible = ashawkey.GaussianRasterizer(settings).markVisible(scene.inputs["means3D"])
    assert torch.equal(visible,
                       GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"]))
    assert 0 < visible.sum() < scene.P
    color, radii, depth, alpha = ashawkey.rasterize_gaussians(
        scene.inputs["means3D"], scene.inputs["means2D"], scene.inputs["shs"], None,
        scene.inputs["opacities"], scene.inputs["scales"], scene.inputs["rotations"], None,
        settings)
    assert (radii[~visible] == 0).all() and depth.shape == (1, 30, 40)


def pearson(x, y):
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum())


def test_fsgs_depth_loss_trains_the_depth():
    """FSGS's depth loss as its train.py writes it,
    min(1 - pearson(-prior, depth), 1 - pearson(1 / (prior + 200), depth)) on the fork's depth,
    the prior a monocular-style disparity of a target scene's depth. Adam on the means and
    opacities raises the depth's correlation with the prior, and the loss falls; means2D (FSGS's
    viewspace points) gets its gradient for densification."""
    target = scenes.make_scene(31700, P=150, height=24, width=32, sh_degree=0, outliers=False)
    with torch.no_grad():
        _, _, target_depth, _ = fork_call(fork_settings(target), target.inputs)
    prior = 2.0 / (target_depth[0] + 0.5)  # relative disparity: larger nearer, unknown scale
    start = dict(target.inputs)
    gen = torch.Generator().manual_seed(9)
    start["means3D"] = start["means3D"] + 0.3 * torch.randn(start["means3D"].shape,
                                                             generator=gen)
    params = leaves_of({k: start[k] for k in ("means3D", "opacities")})
    optimizer = torch.optim.Adam(params.values(), lr=0.01)
    settings = fork_settings(target, confidence=torch.ones(target.P, 1))
    losses, correlations = [], []
    for _ in range(40):
        inputs = dict(start, **params)
        inputs["means2D"] = torch.zeros_like(inputs["means3D"], requires_grad=True) + 0
        inputs["means2D"].retain_grad()
        depth = fork_call(settings, inputs)[2]
        d, m = depth[0].reshape(-1, 1), prior.reshape(-1, 1)
        loss = torch.minimum(1 - pearson(-m, d), 1 - pearson(1 / (m + 200.0), d))
        loss.backward()
        assert inputs["means2D"].grad is not None and (inputs["means2D"].grad != 0).any()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        correlations.append(pearson(-m, d).item())
    assert math.isfinite(losses[-1])
    # Measured: 0.63 -> 0.05, the correlation 0.37 -> 0.95.
    assert losses[-1] < 0.5 * losses[0], losses
    assert correlations[-1] > correlations[0] + 0.3, correlations


@pytest.mark.parametrize("target", cuda_targets())
def test_ashawkey_api_on_cuda(target):
    """The fork's call on a CUDA target, with FSGS's confidence: the package's call on that
    target, with depth times weight; gradients to rounding (atomics add in any order on a GPU).
    The kernels against the CPU backend: test_cuda.py."""
    scene = scenes.make_scene(31800, P=120, height=40, width=64, sh_degree=1)
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    gen = torch.Generator().manual_seed(10)
    confidence = torch.rand(scene.P, 1, generator=gen).to(target)
    upstream = [u.to(target) for u in upstream_grads((40, 64), 11, F32)]
    package_settings = scene.settings._replace(
        **{f: getattr(scene.settings, f).to(target) for f in ("bg", "viewmatrix", "projmatrix",
                                                              "campos")})
    with active(target):
        out, grads = fork_grads(fork_settings(scene, confidence, device=target), moved, upstream)
        leaves = leaves_of(moved)
        color, radii, depth, weight = GaussianRasterizer(package_settings)(**leaves)
        fork_loss((color, radii, (depth * weight)[None], weight[None]), upstream).backward()
    assert out[0].device == color.device
    assert torch.equal(out[0], color) and torch.equal(out[1], radii)
    assert torch.equal(out[2][0], depth * weight) and torch.equal(out[3][0], weight)
    assert (radii > 0).sum() > 20
    for name, grad in grads.items():
        c = confidence.reshape((-1,) + (1,) * (grad.dim() - 1))
        plain = leaves[name].grad
        want = plain if name == "means2D" else plain * c
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_ingra14m_api_is_the_first_three_maps(target):
    """Deformable 3D Gaussians' fork (`.ingra14m`): (color, radii, depth), the same as the
    four-output fork's first three, outputs and gradients (a loss on colour and depth), by
    keyword and in the functional form; its settings the original's twelve fields."""
    scene = scenes.make_scene(31900, P=110, height=33, width=47, sh_degree=1)
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    settings = fork_settings(scene, device=target)
    upstream = upstream_grads((33, 47), 12, F32)
    upstream[2] = torch.zeros_like(upstream[2])  # no alpha output to carry a gradient
    upstream = [u.to(target) for u in upstream]
    with active(target):
        want, want_grads = fork_grads(settings, moved, upstream)
        leaves = leaves_of(moved)
        out = ingra14m.GaussianRasterizer(raster_settings=settings)(
            means3D=leaves["means3D"], means2D=leaves["means2D"], shs=leaves["shs"],
            opacities=leaves["opacities"], scales=leaves["scales"],
            rotations=leaves["rotations"])
        assert len(out) == 3
        ((out[0] * upstream[0]).sum() + (out[2] * upstream[1]).sum()).backward()
        functional = ingra14m.rasterize_gaussians(
            moved["means3D"], moved["means2D"], moved["shs"], None, moved["opacities"],
            moved["scales"], moved["rotations"], None, settings)
    for got, w in zip(out, want[:3]):
        assert torch.equal(got.detach(), w.detach())
    for got, w in zip(functional, want[:3]):
        assert torch.equal(got.detach(), w.detach())
    assert out[2].shape == (1, 33, 47) and (out[1] > 0).sum() > 20
    # The same render twice: the same bits where atomics add in a fixed order.
    tol = dict(rtol=0, atol=0) if adds_in_fixed_order(target) else dict(rtol=1e-5, atol=1e-7)
    for name, grad in want_grads.items():
        torch.testing.assert_close(leaves[name].grad, grad, **tol, msg=name)
    assert ingra14m.GaussianRasterizationSettings._fields[:12] == (
        "image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
        "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "debug")


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_ingra14m_means2d_densify_takes_the_absolute_gradient(target):
    """Deformable 3D Gaussians' `means2D_densify` (the fork's filter-norm branch): its
    .grad[:, :2] is the package's absolute gradient (a (P, 4) carrier's columns 2-3), means2D's
    gradient and every other one as without it, the maps the same; the absolute sums are at
    least the signed ones' magnitudes, and larger where pixels pull apart."""
    scene = scenes.make_scene(32000, P=100, height=35, width=41, sh_degree=1)
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    settings = fork_settings(scene, device=target)
    upstream = [u.to(target) for u in upstream_grads((35, 41), 13, F32)]

    def run(with_densify):
        leaves = leaves_of(moved)
        densify = torch.zeros_like(leaves["means3D"], requires_grad=True) if with_densify \
            else None
        out = ingra14m.GaussianRasterizer(settings)(
            means3D=leaves["means3D"], means2D=leaves["means2D"], shs=leaves["shs"],
            opacities=leaves["opacities"], scales=leaves["scales"],
            rotations=leaves["rotations"], means2D_densify=densify)
        ((out[0] * upstream[0]).sum() + (out[2] * upstream[1]).sum()).backward()
        return out, leaves, densify

    with active(target):
        out, leaves, densify = run(True)
        plain_out, plain_leaves, _ = run(False)
        carrier = torch.zeros(scene.P, 4, device=moved["means3D"].device, requires_grad=True)
        color, _, depth, weight = GaussianRasterizer(scene.settings._replace(
            **{f: getattr(scene.settings, f).to(target)
               for f in ("bg", "viewmatrix", "projmatrix", "campos")}))(
            **dict(moved, means2D=carrier))
        ((color * upstream[0]).sum() + (depth * weight * upstream[1][0]).sum()).backward()
    for a, b in zip(out, plain_out):
        assert torch.equal(a.detach(), b.detach())
    tol = dict(rtol=0, atol=0) if adds_in_fixed_order(target) else dict(rtol=1e-5, atol=1e-7)
    for name in plain_leaves:
        if plain_leaves[name] is not None:
            torch.testing.assert_close(leaves[name].grad, plain_leaves[name].grad, **tol,
                                       msg=name)
    absolute = densify.grad[:, :2]
    assert (densify.grad[:, 2] == 0).all()
    torch.testing.assert_close(absolute, carrier.grad[:, 2:], rtol=1e-5, atol=1e-9)
    signed = leaves["means2D"].grad[:, :2]
    assert (absolute >= signed.abs() * (1 - 1e-5) - 1e-9).all()
    assert (absolute > 1.5 * signed.abs() + 1e-6).any()
    for bad, error in ((torch.zeros(3, 2), ValueError), ([[0.0, 0.0]] * scene.P, TypeError)):
        with pytest.raises(error, match="means2D_densify"):
            ingra14m.rasterize_gaussians(moved["means3D"], None, moved["shs"], None,
                                         moved["opacities"], moved["scales"],
                                         moved["rotations"], None, settings,
                                         means2D_densify=bad)


def test_gradcheck_f64():
    """Finite differences (float64, the CPU backend) of the fork's four maps, the unnormalized
    depth and alpha included, in every Gaussian input (a smooth scene; with a confidence the
    gradient is scaled on purpose, so none here: that one is checked against these)."""
    scene = scenes.make_smooth_scene(32700, sh_degree=1)
    settings = fork_settings(scene)
    names = scenes.gradcheck_inputs(scene)

    def call(*tensors):
        out = fork_call(settings, dict(scene.inputs, **dict(zip(names, tensors))))
        return out[0], out[2], out[3]

    leaves = [scene.inputs[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
