"""torch.compile around the rasterizer: a compiled 3DGS training step (activations, SH colours,
a loss on colour, depth and weight) gives eager mode's loss and gradients, meets the rasterizer
as one graph break and warns of nothing; markVisible and SparseGaussianAdam.step likewise."""
import warnings

import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import (GaussianRasterizer, SparseGaussianAdam,
                                               rasterize_gaussians)

torch_dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile came with PyTorch 2.0")

PARAMETERS = ("means3D", "opacity_logits", "log_scales", "rotations", "shs")


def raw_parameters(seed):
    """A random scene's Gaussians as a 3DGS model stores them (before activations), with SH of
    degree 1, and its settings."""
    scene = scenes.make_scene(seed, P=80, height=38, width=45, sh_degree=1, outliers=False)
    i = scene.inputs
    raw = {"means3D": i["means3D"], "opacity_logits": torch.logit(i["opacities"]),
           "log_scales": i["scales"].log(), "rotations": i["rotations"] * 1.7, "shs": i["shs"]}
    return {k: v.detach().clone().requires_grad_() for k, v in raw.items()}, scene.settings


def training_loss(settings, target, means3D, opacity_logits, log_scales, rotations, shs):
    """3DGS's render and loss: activations, the rasterizer, L1 colour, a depth and a weight
    term."""
    means2D = torch.zeros_like(means3D)
    color, radii, depth, weight = rasterize_gaussians(
        means3D, means2D, shs, None, torch.sigmoid(opacity_logits), torch.exp(log_scales),
        torch.nn.functional.normalize(rotations, dim=-1), None, settings)
    loss = (color - target).abs().mean() + 0.1 * (depth * weight).mean() + (1 - weight).mean()
    return loss, radii


def loss_and_grads(step, settings, target, params):
    loss, radii = step(settings, target, *(params[k] for k in PARAMETERS))
    grads = torch.autograd.grad(loss, [params[k] for k in PARAMETERS])
    return loss.detach(), radii, grads


def dynamo_warnings(caught):
    return [str(w.message) for w in caught if "ynamo" in str(w.message)
            or "diff_gaussian_rasterization_depth._C" in str(w.message)]


@pytest.mark.parametrize("seed", [0])
def test_compiled_training_step_matches_eager(seed):
    """Inductor, torch.compile's default: the loss, the radii and every parameter's gradient as
    in eager mode, on two scenes of the same shapes (the second through the code compiled for
    the first, or a recompile), with no warning from TorchDynamo."""
    torch_dynamo.reset()
    compiled = torch.compile(training_loss)
    gen = torch.Generator().manual_seed(1000 + seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for scene_seed in (seed, seed + 1):
            params, settings = raw_parameters(scene_seed)
            target = torch.rand((3, settings.image_height, settings.image_width), generator=gen)
            loss, radii, grads = loss_and_grads(training_loss, settings, target, params)
            c_loss, c_radii, c_grads = loss_and_grads(compiled, settings, target, params)
            assert (radii > 0).sum() > 20  # a scene that draws
            assert torch.equal(c_radii, radii)
            torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
            for name, g, c in zip(PARAMETERS, grads, c_grads):
                assert g.abs().max() > 0, name
                torch.testing.assert_close(c, g, rtol=1e-4, atol=1e-6 * float(g.abs().max()),
                                           msg=lambda m: f"{name}: {m}")
    assert dynamo_warnings(caught) == []


def test_compiled_step_breaks_the_graph_once_at_the_rasterizer():
    """Once warm, TorchDynamo stops its graph at the rasterizer's call alone: it does not trace
    into the package (where each call into the extension was a graph break of its own)."""
    torch_dynamo.reset()
    params, settings = raw_parameters(5)
    target = torch.rand((3, settings.image_height, settings.image_width))
    args = (settings, target) + tuple(params[k] for k in PARAMETERS)
    torch.compile(training_loss, backend="eager")(*args)  # the first call makes the untraced form
    explained = torch_dynamo.explain(training_loss)(*args)
    assert explained.graph_break_count == 1
    assert "disable" in str(explained.break_reasons[0].reason)
    assert explained.graph_count == 2  # the activations before, the loss after


def test_compiled_mark_visible_and_sparse_adam_match_eager():
    """markVisible and SparseGaussianAdam.step called inside a compiled function: what eager
    mode gives, bit for bit (both run eagerly), without warnings."""
    torch_dynamo.reset()
    params, settings = raw_parameters(7)
    rasterizer = GaussianRasterizer(settings)
    gen = torch.Generator().manual_seed(7)
    N = params["means3D"].shape[0]
    visible = torch.rand(N, generator=gen) < 0.6
    grads = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}

    def make_optimizer():
        copies = [{"params": [p.detach().clone()], "lr": 0.01, "name": k} for k, p in params.items()]
        for group in copies:
            group["params"][0].grad = grads[group["name"]].clone()
        return SparseGaussianAdam(copies, lr=0.0, eps=1e-15)

    eager, compiled = make_optimizer(), make_optimizer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = torch.compile(rasterizer.markVisible, backend="eager")(params["means3D"].detach())
        for _ in range(2):
            eager.step(visible, N)
            torch.compile(lambda: compiled.step(visible, N), backend="eager")()
    assert torch.equal(seen, rasterizer.markVisible(params["means3D"].detach()))
    assert seen.any()
    for a, b in zip(eager.param_groups, compiled.param_groups):
        assert torch.equal(a["params"][0], b["params"][0]), a["name"]
        assert not torch.equal(a["params"][0], params[a["name"]].detach()), a["name"]
    assert dynamo_warnings(caught) == []


def test_compiled_loss_with_fused_ssim_matches_eager():
    """3DGS's photometric loss with the fused SSIM, compiled (Inductor): the loss and the
    render's gradient as in eager mode, the SSIM run eagerly (one graph break), no warnings."""
    from diff_gaussian_rasterization_depth import fused_ssim
    torch_dynamo.reset()

    def photometric(image, gt_image):
        l1 = (image - gt_image).abs().mean()
        return 0.8 * l1 + 0.2 * (1.0 - fused_ssim(image.unsqueeze(0), gt_image.unsqueeze(0)))

    gen = torch.Generator().manual_seed(11)
    gt_image = torch.rand(3, 40, 52, generator=gen)
    image = (gt_image + 0.2 * torch.randn(3, 40, 52, generator=gen)).requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = photometric(image, gt_image)
        grad = torch.autograd.grad(loss, image)[0]
        c_loss = torch.compile(photometric)(image, gt_image)
        c_grad = torch.autograd.grad(c_loss, image)[0]
    torch.testing.assert_close(c_loss, loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c_grad, grad, rtol=1e-5, atol=1e-9)
    assert grad.abs().max() > 0
    assert dynamo_warnings(caught) == []


def test_compiled_gsplat_call_matches_eager():
    """gsplat's call on the package (`.gsplat.rasterization`) inside a compiled loss: the loss,
    every Gaussian's and the camera's gradient, and means2d's (what gsplat's strategies read),
    as in eager mode; no warnings."""
    from test_gsplat_api import H, W, leaves, twin_scene
    from diff_gaussian_rasterization_depth.gsplat import rasterization
    torch_dynamo.reset()
    scene = twin_scene(3, dtype=torch.float32)

    def loss_of(means, quats, scales, opacities, colors, viewmats, Ks):
        image, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats,
                                           Ks, W, H, render_mode="RGB+ED", packed=False)
        loss = (image[..., :3] - 0.5).abs().mean() + image[..., 3].mean() + alpha.mean()
        return loss, meta["means2d"]

    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in (loss_of, torch.compile(loss_of)):
            inputs = leaves(scene)
            loss, means2d = call(**inputs)
            loss.backward()
            results.append((loss.detach(), {k: v.grad for k, v in inputs.items()
                                            if v.grad is not None}, means2d.grad))
    (loss, grads, m2d), (c_loss, c_grads, c_m2d) = results
    torch.testing.assert_close(c_loss, loss, rtol=1e-6, atol=1e-7)
    assert set(c_grads) == set(grads) == {"means", "quats", "scales", "opacities", "colors",
                                         "viewmats"}
    for k in grads:
        torch.testing.assert_close(c_grads[k], grads[k], rtol=1e-5, atol=1e-8, msg=k)
    torch.testing.assert_close(c_m2d, m2d, rtol=1e-5, atol=1e-8)
    assert m2d.abs().max() > 0
    assert dynamo_warnings(caught) == []


def test_compiled_ashawkey_call_with_confidence_matches_eager():
    """DreamGaussian's fork's call (`.ashawkey`) with FSGS's confidence inside a compiled loss:
    the loss and the gradients (scaled by the confidence) as in eager mode; no warnings."""
    from diff_gaussian_rasterization_depth import ashawkey
    torch_dynamo.reset()
    params, settings = raw_parameters(7)
    confidence = torch.rand(params["means3D"].shape[0], 1,
                            generator=torch.Generator().manual_seed(4))
    fork = ashawkey.GaussianRasterizationSettings(*settings[:12], confidence)

    def loss_of(means3D, opacity_logits, log_scales, rotations, shs):
        color, radii, depth, alpha = ashawkey.GaussianRasterizer(fork)(
            means3D=means3D, means2D=torch.zeros_like(means3D), shs=shs,
            opacities=torch.sigmoid(opacity_logits), scales=torch.exp(log_scales),
            rotations=torch.nn.functional.normalize(rotations, dim=-1))
        return color.mean() + 0.1 * depth.mean() + (1 - alpha).mean(), radii

    check_compiled_loss(loss_of, params, 1e-6)


def check_compiled_loss(loss_of, params, gradient_atol):
    """loss_of(*params) -> (loss, radii), eager and compiled: the same radii, loss and gradients
    (to `gradient_atol` of each gradient's scale), and no warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, radii, grads = loss_and_grads(lambda s, t, *p: loss_of(*p), None, None, params)
        compiled = torch.compile(loss_of)
        c_loss, c_radii, c_grads = loss_and_grads(lambda s, t, *p: compiled(*p), None, None,
                                                  params)
    assert torch.equal(c_radii, radii) and (radii > 0).sum() > 20
    torch.testing.assert_close(c_loss, loss, rtol=1e-5, atol=1e-6)
    for name, g, c in zip(PARAMETERS, grads, c_grads):
        assert g.abs().max() > 0, name
        torch.testing.assert_close(c, g, rtol=1e-4, atol=gradient_atol * float(g.abs().max()),
                                   msg=name)
    assert dynamo_warnings(caught) == []


def test_compiled_rade_gs_call_matches_eager():
    """RaDe-GS's call (`.rade_gs`: its planes in PyTorch around the rasterizer, the medians by a
    gather) inside a compiled loss on all its maps: the loss and the gradients as in eager
    mode; no warnings."""
    from diff_gaussian_rasterization_depth import rade_gs
    torch_dynamo.reset()
    params, s = raw_parameters(8)
    rade = rade_gs.GaussianRasterizationSettings(
        s.image_height, s.image_width, s.tanfovx, s.tanfovy, 0.0, s.bg, s.scale_modifier,
        s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, False, True, True, False)

    def loss_of(means3D, opacity_logits, log_scales, rotations, shs):
        (color, radii, coord, median_coord, depth, median_depth, alpha,
         normal) = rade_gs.GaussianRasterizer(rade)(
            means3D=means3D, means2D=torch.zeros_like(means3D), shs=shs,
            opacities=torch.sigmoid(opacity_logits), scales=torch.exp(log_scales),
            rotations=torch.nn.functional.normalize(rotations, dim=-1))
        geometry = (coord - median_coord).abs().mean() + (depth - median_depth).abs().mean()
        return color.mean() + 0.1 * geometry + normal[2].mean() + (1 - alpha).mean(), radii

    check_compiled_loss(loss_of, params, 1e-5)


def test_compiled_pgsr_call_matches_eager():
    """PGSR's call (`.pgsr`: its channels blended, the plane depth in PyTorch, out_observe from
    the touch count and the crossing medians) inside a compiled loss on its maps: the loss and
    the gradients as in eager mode; no warnings."""
    from diff_gaussian_rasterization_depth import pgsr
    torch_dynamo.reset()
    params, s = raw_parameters(8)
    geo = pgsr.GaussianRasterizationSettings(
        s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.bg, s.scale_modifier,
        s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, False, True, False)

    def loss_of(means3D, opacity_logits, log_scales, rotations, shs):
        normal = torch.nn.functional.normalize(means3D - s.campos, dim=-1) * -1
        all_map = torch.cat([normal, torch.ones_like(means3D[:, :1]),
                             (normal * means3D).sum(-1, keepdim=True).abs()], 1)
        color, radii, observe, maps, plane = pgsr.GaussianRasterizer(geo)(
            means3D=means3D, means2D=torch.zeros_like(means3D),
            means2D_abs=torch.zeros_like(means3D), shs=shs,
            opacities=torch.sigmoid(opacity_logits), scales=torch.exp(log_scales),
            rotations=torch.nn.functional.normalize(rotations, dim=-1), all_map=all_map)
        solid = (maps[3] > 0.5).detach()
        geometry = torch.where(solid, plane[0], torch.zeros_like(plane[0])).mean()
        return color.mean() + 0.1 * geometry + maps[:3].mean() + (observe > 0).sum() * 0, radii

    check_compiled_loss(loss_of, params, 1e-5)
