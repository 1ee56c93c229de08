"""The original (2023) API (`diff_gaussian_rasterization_depth.original`): two outputs, the
package's colour and radii, gradients of a colour loss as the package's and as autograd
through the float64 reference's; settings, argument order and markVisible as the original's."""
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth import original
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from robust_helpers import DEVICES, settings_on

F64 = torch.float64
CONFIGS = {"sh": dict(sh_degree=2), "colors": dict(precomp_colors=True),
           "cov3D": dict(sh_degree=1, precomp_cov=True)}


def without_dc(inputs):
    inputs = dict(inputs)
    assert inputs.pop("dc", None) is None
    return inputs


def on_device(inputs, device):
    return {k: None if v is None else v.detach().to(device).requires_grad_(v.requires_grad)
            for k, v in inputs.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_two_outputs_are_the_packages(config, device):
    """(color, radii) of the module and the functional form, bit for bit the package's first
    two outputs; every input's gradient of a random colour loss the package's with no loss on
    depth and weight, bit for bit."""
    seed = 9100 + sorted(CONFIGS).index(config)
    scene = scenes.make_scene(seed, P=120, height=33, width=47, **CONFIGS[config])
    settings = settings_on(scene.settings, device)
    ours = on_device(without_dc(scene.with_grad()), device)
    package = on_device(without_dc(scene.with_grad()), device)
    out = original.GaussianRasterizer(settings)(**ours)
    assert isinstance(out, tuple) and len(out) == 2
    want = PackageRasterizer(settings)(**package)
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])
    assert out[1].dtype == torch.int32 and (out[1] > 0).any()
    upstream = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(seed)).to(device)
    (out[0] * upstream).sum().backward()
    (want[0] * upstream).sum().backward()
    checked = 0
    for name, t in ours.items():
        if t is not None and t.requires_grad:
            assert torch.equal(t.grad, package[name].grad), name
            checked += t.grad.abs().sum().item() > 0
    assert checked >= 4
    i = without_dc(scene.inputs)
    functional = original.rasterize_gaussians(
        i["means3D"].to(device), i["means2D"].to(device), None if i["shs"] is None else
        i["shs"].to(device), None if i["colors_precomp"] is None else
        i["colors_precomp"].to(device), i["opacities"].to(device),
        None if i["scales"] is None else i["scales"].to(device),
        None if i["rotations"] is None else i["rotations"].to(device),
        None if i["cov3D_precomp"] is None else i["cov3D_precomp"].to(device), settings)
    assert len(functional) == 2
    assert torch.equal(functional[0], out[0]) and torch.equal(functional[1], out[1])


@pytest.mark.parametrize("seed", range(2))
def test_against_the_reference(seed):
    """float64: colour and radii the reference's, and every gradient of a colour loss autograd's
    through the reference (what the original's backward computes)."""
    scene = scenes.make_scene(9200 + seed, P=90, height=31, width=43, sh_degree=3, dtype=F64)
    ours = without_dc(scene.with_grad())
    ref = without_dc(scene.with_grad())
    color, radii = original.GaussianRasterizer(scene.settings)(**ours)
    want = rasterize_reference(**ref, raster_settings=scene.settings)
    torch.testing.assert_close(color, want[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(radii, want[1].to(radii.dtype))
    upstream = torch.randn(color.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    (color * upstream).sum().backward()
    (want[0] * upstream).sum().backward()
    for name, t in ours.items():
        if t is not None and t.requires_grad:
            torch.testing.assert_close(t.grad, ref[name].grad, rtol=1e-8, atol=1e-10,
                                       msg=name)


def test_the_originals_call_as_its_training_code_writes_it():
    """Settings built with the original's 12 fields (positional and by keyword), the module
    called with keywords as 3DGS's renderer calls it and positionally in the original's order,
    markVisible; the names the original exports."""
    scene = scenes.make_scene(9300, P=60, height=24, width=32, sh_degree=1)
    s = scene.settings
    fields = (s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.bg, s.scale_modifier,
              s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, False, False)
    positional = original.GaussianRasterizationSettings(*fields)
    keyword = original.GaussianRasterizationSettings(
        image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
        tanfovy=s.tanfovy, bg=s.bg, scale_modifier=s.scale_modifier, viewmatrix=s.viewmatrix,
        projmatrix=s.projmatrix, sh_degree=s.sh_degree, campos=s.campos, prefiltered=False,
        debug=False)
    assert positional == keyword
    i = without_dc(scene.inputs)
    rasterizer = original.GaussianRasterizer(raster_settings=positional)
    by_keyword = rasterizer(means3D=i["means3D"], means2D=i["means2D"], shs=i["shs"],
                            colors_precomp=None, opacities=i["opacities"], scales=i["scales"],
                            rotations=i["rotations"], cov3D_precomp=None)
    by_position = rasterizer(i["means3D"], i["means2D"], i["opacities"], i["shs"], None,
                             i["scales"], i["rotations"], None)
    assert torch.equal(by_keyword[0], by_position[0])
    assert torch.equal(by_keyword[1], by_position[1])
    # A different call (the colour of another scene) gives another image: the comparison above
    # can fail.
    other = without_dc(scenes.make_scene(9301, P=60, height=24, width=32, sh_degree=1).inputs)
    assert not torch.equal(rasterizer(**other)[0], by_keyword[0])
    assert torch.equal(rasterizer.markVisible(i["means3D"]),
                       PackageRasterizer(positional).markVisible(i["means3D"]))
    assert set(original.__all__) == {"GaussianRasterizationSettings", "GaussianRasterizer",
                                     "rasterize_gaussians"}
    # The package's own extras are not part of this call: a `dc` or `features` keyword is an
    # error, as in the original.
    with pytest.raises(TypeError):
        rasterizer(**i, features=torch.zeros(60, 2))
