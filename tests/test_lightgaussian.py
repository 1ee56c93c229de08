"""LightGaussian's API (`diff_gaussian_rasterization_depth.lightgaussian`): f_count off is the
original's call; f_count on adds the fork's gaussians_count and important_score, checked against
the reference's blended set and its sums of o T, without gradient."""
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth import lightgaussian
from diff_gaussian_rasterization_depth.reference import rasterize_reference

F32, F64 = torch.float32, torch.float64


def fork_call(scene, f_count, with_grad=False):
    """(the fork's settings, the fork's keyword inputs: no dc)."""
    s = scene.settings
    settings = lightgaussian.GaussianRasterizationSettings(
        s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.bg, s.scale_modifier,
        s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, s.prefiltered, s.debug, f_count)
    inputs = scene.with_grad() if with_grad else dict(scene.inputs)
    assert inputs.pop("dc", None) is None
    return settings, inputs


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("seed", range(3))
def test_counting_call_against_reference(seed, dtype):
    """gaussians_count: the pixels where the reference blends each Gaussian; important_score:
    the reference's sum of o T over them (float64: the same counts, sums to rounding; float32:
    within the pixels whose alpha or transmittance rounds across a threshold)."""
    scene = scenes.make_scene(8800 + seed, P=150, height=38, width=54, sh_degree=1,
                              dtype=dtype)
    settings, inputs = fork_call(scene, True, with_grad=True)
    count, score, color, radii = lightgaussian.GaussianRasterizer(settings)(**inputs)
    assert count.dtype == torch.int32 and score.dtype == dtype
    assert not (count.requires_grad or score.requires_grad or color.requires_grad)
    with torch.no_grad():
        want = rasterize_reference(**scene.inputs, raster_settings=lightgaussian.package_settings(
            settings), contributions=True)[-1]
    if dtype == F64:
        assert torch.equal(count, want[:, 2].to(torch.int32))
        torch.testing.assert_close(score, want[:, 4], rtol=1e-12, atol=1e-12)
    else:
        close = (count - want[:, 2]).abs() <= 2
        assert close.float().mean() > 0.97
        ok = (score - want[:, 4]).abs() <= 1e-4 * want[:, 4] + 1e-5
        assert ok.float().mean() > 0.97
    # Not vacuous: counts of many pixels, Gaussians never blended, and a score that is not
    # the weight sum (o T against alpha T).
    assert count.max() >= 20 and (count == 0).any()
    assert (score > want[:, 0] * 1.05).any()
    # The render is the plain call's.
    plain_color, plain_radii = lightgaussian.GaussianRasterizer(
        settings._replace(f_count=False))(**fork_call(scene, False)[1])
    assert torch.equal(color, plain_color) and torch.equal(radii, plain_radii)


def test_plain_call_is_the_originals():
    """f_count False: (color, radii) and their gradients, the package's call's bit for bit;
    markVisible and the functional form as the fork has them; forward_count needs f_count."""
    scene = scenes.make_scene(8900, P=100, height=30, width=40, sh_degree=2)
    settings, inputs = fork_call(scene, False, with_grad=True)
    out = lightgaussian.GaussianRasterizer(settings)(**inputs)
    assert len(out) == 2
    package_inputs = scene.with_grad()
    package_inputs.pop("dc")
    want = PackageRasterizer(scene.settings)(**package_inputs)
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
    upstream = torch.randn_like(out[0])
    (out[0] * upstream).sum().backward()
    (want[0] * upstream).sum().backward()
    for name, t in inputs.items():
        if t is not None and t.requires_grad:
            assert torch.equal(t.grad, package_inputs[name].grad), name
    rasterizer = lightgaussian.GaussianRasterizer(settings)
    assert torch.equal(rasterizer.markVisible(scene.inputs["means3D"]),
                       PackageRasterizer(scene.settings).markVisible(scene.inputs["means3D"]))
    with pytest.raises(ValueError, match="f_count must be True"):
        rasterizer.forward_count(**inputs)
    counting = lightgaussian.GaussianRasterizer(settings._replace(f_count=True))
    by_method = counting.forward_count(**fork_call(scene, True)[1])
    i = fork_call(scene, True)[1]
    functional = lightgaussian.rasterize_gaussians(
        i["means3D"], i["means2D"], i.get("shs"), i.get("colors_precomp"), i["opacities"],
        i["scales"], i["rotations"], i.get("cov3D_precomp"), settings._replace(f_count=True))
    for a, b in zip(by_method, functional):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="f_count: expected a bool"):
        lightgaussian.GaussianRasterizer(settings._replace(f_count=1))(**inputs)
