"""AbsGS's API (`.absgs`): gs_w against each Gaussian's weights summed over the pixels through
the reference (float64, and float32 within the rounding of the blend's thresholds), the colour
and the (P, 4) carrier's four gradient columns as the package's own call gives them, no gradient
to gs_w, and the CUDA targets."""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, absgs
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from robust_helpers import settings_on

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
NAMES = ("means3D", "opacities", "shs", "scales", "rotations")


def absgs_inputs(scene, dtype=None, device="cpu"):
    """The scene's inputs as AbsGS's renderer passes them: a (P, 4) carrier, no dc; leaves."""
    inputs = {k: None if v is None else v.detach().to(dtype or v.dtype).to(device).clone()
              .requires_grad_(k in NAMES) for k, v in scene.inputs.items() if k != "dc"}
    inputs["means2D"] = torch.zeros(scene.P, 4, dtype=inputs["means3D"].dtype, device=device,
                                    requires_grad=True)
    return inputs


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(2))
def test_gs_w_and_gradients(seed, dtype):
    """gs_w is sum over pixels of each Gaussian's weight alpha T (the reference's, with identity
    features); colour, radii and every gradient, the carrier's absolute columns included, are
    the package's own call's; gs_w takes no gradient."""
    scene = scenes.make_scene(37000 + seed, P=120, height=33, width=47, sh_degree=1,
                              dtype=dtype)
    got_in, want_in = absgs_inputs(scene), absgs_inputs(scene)
    color, radii, gs_w = absgs.GaussianRasterizer(scene.settings)(**got_in)
    assert gs_w.shape == (scene.P,) and gs_w.dtype == dtype and not gs_w.requires_grad
    with torch.no_grad():
        eye = torch.eye(scene.P, dtype=dtype)
        weights = rasterize_reference(**{k: v for k, v in got_in.items()},
                                      raster_settings=scene.settings, features=eye)[4]
    want_w = weights.flatten(1).sum(1)
    assert (want_w > 0).sum() > 50
    if dtype == F64:
        torch.testing.assert_close(gs_w, want_w, rtol=1e-10, atol=1e-12)
    else:
        ambiguous_pixels, ambiguous_gaussians = scenes.ambiguous_checked(scene)
        clear = ~ambiguous_gaussians
        torch.testing.assert_close(gs_w[clear], want_w[clear].to(dtype), rtol=1e-4, atol=1e-4)
    out = GaussianRasterizer(scene.settings)(**want_in)
    assert torch.equal(color, out[0]) and torch.equal(radii, out[1])
    gen = torch.Generator().manual_seed(seed)
    up = torch.randn(color.shape, generator=gen, dtype=dtype)
    (color * up).sum().backward()
    (out[0] * up).sum().backward()
    assert got_in["means2D"].grad[:, 2:].sum() > 0
    for name in NAMES + ("means2D",):
        assert torch.equal(got_in[name].grad, want_in[name].grad), name


def test_settings_and_mark_visible():
    """The original's settings; markVisible as the package's."""
    scene = scenes.make_scene(37100, P=60)
    assert absgs.GaussianRasterizationSettings is type(scene.settings)
    want = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert torch.equal(absgs.GaussianRasterizer(scene.settings).markVisible(
        scene.inputs["means3D"]), want)


@pytest.mark.parametrize("target", cuda_targets())
def test_absgs_on_cuda(target):
    """gs_w and the carrier's gradient on a CUDA target against the CPU backend (float32)."""
    scene = scenes.make_scene(37200, P=300, height=36, width=52, sh_degree=1)
    cpu_in = absgs_inputs(scene)
    want = absgs.GaussianRasterizer(scene.settings)(**cpu_in)
    want[0].sum().backward()
    cuda_in = absgs_inputs(scene, device=target)
    with active(target):
        got = absgs.GaussianRasterizer(settings_on(scene.settings, target))(**cuda_in)
        got[0].sum().backward()
    _, ambiguous_gaussians = scenes.ambiguous_checked(scene)
    clear = ~ambiguous_gaussians
    torch.testing.assert_close(got[2].cpu()[clear], want[2][clear], rtol=1e-4, atol=1e-4)
    for name in ("means2D", "means3D", "opacities"):
        b = cpu_in[name].grad
        torch.testing.assert_close(cuda_in[name].grad.cpu(), b, rtol=0,
                                   atol=1e-3 * float(b.abs().max()), msg=name)
