"""The semantic forks' APIs: LangSplat's (`.langsplat`: language features, `include_feature`),
Feature 3DGS's (`.feature_3dgs`: semantic features and the unnormalized depth) and Gaussian
Grouping's (`.gaussian_grouping`: identity encodings). Outputs and gradients against autograd
through the reference in float64, the features in the forks' own shapes and channel counts
beyond theirs, the switches and errors, and the calls on the CUDA targets.
"""
import pytest
import torch

import scenes
from cuda_target import active, adds_in_fixed_order, cuda_targets
from diff_gaussian_rasterization_depth import (GaussianRasterizer, _backend, feature_3dgs,
                                               gaussian_grouping, langsplat)
from diff_gaussian_rasterization_depth.reference import rasterize_reference

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
CAMERA_FIELDS = ("bg", "viewmatrix", "projmatrix", "campos")


def twelve_fields(scene, device="cpu"):
    s = scene.settings
    return [s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.bg.to(device),
            s.scale_modifier, s.viewmatrix.to(device), s.projmatrix.to(device), s.sh_degree,
            s.campos.to(device), False, False]


def fork_call(fork, scene, inputs, values, device="cpu"):
    """The fork's call by keyword, as its renderer makes it, with `values` its per-Gaussian
    tensor; returns its outputs."""
    if fork == "langsplat":
        settings = langsplat.GaussianRasterizationSettings(*twelve_fields(scene, device),
                                                           include_feature=True)
        return langsplat.GaussianRasterizer(raster_settings=settings)(
            means3D=inputs["means3D"], means2D=inputs["means2D"], shs=inputs.get("shs"),
            colors_precomp=inputs.get("colors_precomp"), language_feature_precomp=values,
            opacities=inputs["opacities"], scales=inputs["scales"],
            rotations=inputs["rotations"], cov3D_precomp=None)
    module = {"feature_3dgs": feature_3dgs, "gaussian_grouping": gaussian_grouping}[fork]
    settings = module.GaussianRasterizationSettings(*twelve_fields(scene, device))
    name = {"feature_3dgs": "semantic_feature", "gaussian_grouping": "sh_objs"}[fork]
    return module.GaussianRasterizer(raster_settings=settings)(
        means3D=inputs["means3D"], means2D=inputs["means2D"], shs=inputs.get("shs"),
        colors_precomp=inputs.get("colors_precomp"), opacities=inputs["opacities"],
        scales=inputs["scales"], rotations=inputs["rotations"], cov3D_precomp=None,
        **{name: values})


def named_maps(fork, out):
    """{colour, features, depth (Feature 3DGS only)} of a fork's outputs."""
    if fork == "langsplat":
        return {"color": out[0], "features": out[1]}
    if fork == "feature_3dgs":
        return {"color": out[0], "features": out[1], "depth": out[3]}
    return {"color": out[0], "features": out[2]}


def radii_of(fork, out):
    return out[{"langsplat": 2, "feature_3dgs": 2, "gaussian_grouping": 1}[fork]]


def loss_of(maps, seed):
    gen = torch.Generator().manual_seed(seed)
    return sum((m * torch.randn(m.shape, generator=gen, dtype=F64).to(m)).sum()
               for _, m in sorted(maps.items()))


FORKS = {"langsplat": (3, "P,C"), "feature_3dgs": (128, "P,1,C"),
         "gaussian_grouping": (16, "P,1,C")}


def fork_values(fork, P, seed, dtype, channels=None):
    count, layout = FORKS[fork]
    count = channels or count
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(P, count, generator=gen, dtype=F64).to(dtype)
    return values[:, None, :] if layout == "P,1,C" else values


@pytest.mark.parametrize("fork", sorted(FORKS))
@pytest.mark.parametrize("dtype", [F64, F32])
def test_maps_and_gradients_match_the_reference(fork, dtype):
    """Each fork's maps: the colour, the features blended with the colour's weights and no
    background (feature_map = sum_i w_i values_i), Feature 3DGS's depth sum_i w_i z_i; the
    gradients of a loss on all of them reach the fork's values in their own shape and every
    Gaussian input, as autograd through the reference gives them."""
    seed = 32100 + sorted(FORKS).index(fork) * 10 + (dtype == F32)
    scene = scenes.make_scene(seed, P=90, height=27, width=35, sh_degree=1, dtype=dtype,
                              outliers=False)
    values = fork_values(fork, scene.P, seed, dtype)
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in dict(scene.inputs, values=values).items()}
    out = fork_call(fork, scene, leaves, leaves["values"])
    loss_of(named_maps(fork, out), seed).backward()

    ref = {k: None if v is None else v.detach().to(F64).clone().requires_grad_()
           for k, v in dict(scene.inputs, values=values).items()}
    settings = scene.settings._replace(**{f: getattr(scene.settings, f).to(F64)
                                          for f in CAMERA_FIELDS})
    inputs = {k: v for k, v in ref.items() if k != "values"}
    color, radii, depth, weight, feature_map = rasterize_reference(
        **inputs, raster_settings=settings, features=ref["values"].reshape(scene.P, -1))
    want = {"color": color, "features": feature_map, "depth": (depth * weight)[None]}
    want = {k: want[k] for k in named_maps(fork, out)}
    loss_of(want, seed).backward()

    channels = FORKS[fork][0]
    assert named_maps(fork, out)["features"].shape == (channels, 27, 35)
    assert torch.equal(radii_of(fork, out), radii) and (radii > 0).sum() > 30
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == F64 else dict(rtol=2e-4, atol=2e-5)
    for name, got in named_maps(fork, out).items():
        torch.testing.assert_close(got.detach().to(F64), want[name].detach(), **tol, msg=name)
    assert leaves["values"].grad.shape == values.shape
    for name, leaf in leaves.items():
        if leaf is None:
            continue
        expected = ref[name].grad
        assert expected.abs().max() > 0, name
        if dtype == F64:
            torch.testing.assert_close(leaf.grad, expected, rtol=1e-8, atol=1e-10, msg=name)
        else:
            err = (leaf.grad.to(F64) - expected).abs()
            assert (err <= 1e-3 * expected.abs().max()).float().mean() > 0.97, name


def test_langsplat_without_include_feature_is_the_colour_call():
    """include_feature=False: LangSplat's placeholder (a zero of one value) and the colour
    call's outputs and gradients, the language features never read (LangSplat passes a dummy
    tensor of one value then)."""
    scene = scenes.make_scene(32200, P=80, height=25, width=31, sh_degree=1, dtype=F64)
    settings = langsplat.GaussianRasterizationSettings(*twelve_fields(scene))
    assert settings.include_feature is False
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in scene.inputs.items()}
    color, language_feature_image, radii = langsplat.GaussianRasterizer(settings)(
        means3D=leaves["means3D"], means2D=leaves["means2D"], shs=leaves["shs"],
        opacities=leaves["opacities"], scales=leaves["scales"], rotations=leaves["rotations"],
        language_feature_precomp=torch.zeros((1,), dtype=F64))
    assert language_feature_image.shape == (1,) and language_feature_image.item() == 0
    color.sum().backward()
    plain = {k: None if v is None else v.detach().clone().requires_grad_()
             for k, v in scene.inputs.items()}
    p_color, p_radii, _, _ = GaussianRasterizer(scene.settings)(**plain)
    p_color.sum().backward()
    assert torch.equal(color, p_color) and torch.equal(radii, p_radii)
    for k in plain:
        if plain[k] is not None:
            assert torch.equal(leaves[k].grad, plain[k].grad), k
    with pytest.raises(TypeError, match="include_feature"):
        langsplat.GaussianRasterizer(settings._replace(include_feature=1))(
            means3D=leaves["means3D"], means2D=None, shs=leaves["shs"],
            opacities=leaves["opacities"], scales=leaves["scales"],
            rotations=leaves["rotations"])


@pytest.mark.parametrize("fork", ["feature_3dgs", "gaussian_grouping"])
def test_no_values_give_an_empty_map_and_any_channel_count_works(fork):
    """Without the fork's values an empty (0, H, W) map and the colour call's colour; a channel
    count the fork's kernel is not compiled for (5) renders all the same."""
    scene = scenes.make_scene(32300, P=70, height=22, width=30, sh_degree=0, dtype=F64)
    with torch.no_grad():
        out = fork_call(fork, scene, scene.inputs, None)
        maps = named_maps(fork, out)
        assert maps["features"].shape == (0, 22, 30)
        color, radii, depth, weight = GaussianRasterizer(scene.settings)(**scene.inputs)
        assert torch.equal(maps["color"], color) and torch.equal(radii_of(fork, out), radii)
        values = fork_values(fork, scene.P, 5, F64, channels=5)
        maps = named_maps(fork, fork_call(fork, scene, scene.inputs, values))
        want = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                                   features=values.reshape(scene.P, 5))[4]
    torch.testing.assert_close(maps["features"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fork", sorted(FORKS))
def test_bad_values_are_named(fork):
    scene = scenes.make_scene(32400, P=30, height=16, width=16)
    name = {"langsplat": "language_feature_precomp", "feature_3dgs": "semantic_feature",
            "gaussian_grouping": "sh_objs"}[fork]
    for bad, error in ((torch.zeros(scene.P + 1, 3), ValueError),
                       (torch.zeros(scene.P, 0), ValueError),
                       (torch.zeros(scene.P, 3, dtype=F64), TypeError),
                       ([[0.0] * 3] * scene.P, TypeError)):
        with pytest.raises(error, match=name):
            fork_call(fork, scene, scene.inputs, bad)


def test_settings_fields_and_mark_visible():
    """The forks' settings: the original's twelve fields (LangSplat's include_feature
    thirteenth); markVisible as the package's."""
    twelve = ("image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
              "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "debug")
    assert langsplat.GaussianRasterizationSettings._fields == twelve + ("include_feature",)
    for module in (feature_3dgs, gaussian_grouping):
        assert module.GaussianRasterizationSettings._fields[:12] == twelve
    scene = scenes.make_scene(32500, P=150, height=30, width=40)
    want = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert 0 < want.sum() < scene.P
    for module, extra in ((langsplat, [True]), (feature_3dgs, []), (gaussian_grouping, [])):
        settings = module.GaussianRasterizationSettings(*twelve_fields(scene), *extra)
        got = module.GaussianRasterizer(settings).markVisible(scene.inputs["means3D"])
        assert torch.equal(got, want)


@pytest.mark.parametrize("fork", sorted(FORKS))
@pytest.mark.parametrize("target", cuda_targets())
def test_forks_on_cuda(fork, target):
    """Each fork's call on a CUDA target: the package's call with feature channels on that
    target, maps bit for bit, gradients to rounding (atomics add in any order on a GPU). The
    feature kernels against the CPU backend: test_cuda_features.py."""
    scene = scenes.make_scene(32600, P=100, height=36, width=52, sh_degree=1)
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    values = fork_values(fork, scene.P, 14, F32).to(target)
    package = scene.settings._replace(**{f: getattr(scene.settings, f).to(target)
                                         for f in CAMERA_FIELDS})
    with active(target):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                  for k, v in dict(moved, values=values).items()}
        out = fork_call(fork, scene, leaves, leaves["values"], device=target)
        loss_of(named_maps(fork, out), 15).backward()
        plain = {k: None if v is None else v.detach().clone().requires_grad_()
                 for k, v in dict(moved, values=values).items()}
        inputs = {k: v for k, v in plain.items() if k != "values"}
        color, radii, depth, weight, feature_map = GaussianRasterizer(package)(
            **inputs, features=plain["values"].reshape(scene.P, -1))
        want = {"color": color, "features": feature_map, "depth": (depth * weight)[None]}
        loss_of({k: want[k] for k in named_maps(fork, out)}, 15).backward()
    assert named_maps(fork, out)["color"].device == color.device
    for name, got in named_maps(fork, out).items():
        assert torch.equal(got, want[name]), name
    assert torch.equal(radii_of(fork, out), radii) and (radii > 0).sum() > 20
    tol = dict(rtol=0, atol=0) if adds_in_fixed_order(target) else dict(rtol=1e-5, atol=1e-7)
    for name, leaf in leaves.items():
        if leaf is not None:
            torch.testing.assert_close(leaf.grad, plain[name].grad, **tol, msg=name)


@pytest.mark.parametrize("fork", ["feature_3dgs", "langsplat"])
def test_gradcheck_f64(fork):
    """Finite differences (float64, the CPU backend) of each map of the fork (the features,
    Feature 3DGS's unnormalized depth) in the fork's values and every Gaussian input (a smooth
    scene)."""
    scene = scenes.make_smooth_scene(32800, sh_degree=1)
    names = scenes.gradcheck_inputs(scene)
    values = fork_values(fork, scene.P, 16, F64, channels=2)

    def call(values, *tensors):
        out = fork_call(fork, scene, dict(scene.inputs, **dict(zip(names, tensors))), values)
        return tuple(named_maps(fork, out).values())

    leaves = [values.clone().requires_grad_()] + [
        scene.inputs[n].detach().clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(call, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)
