"""The background's gradient: a `bg` that requires grad receives d/d(bg) = sum over pixels of
d/d(colour) T_final, T_final = 1 - weight (gsplat's learnable backgrounds), against autograd
through the reference, by finite differences, on the CUDA targets against the CPU, and with the
camera's gradients beside it; a bg that requires grad changes nothing else."""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from test_camera_gradients import by_camera_part, settings_with_camera_leaves
from diff_gaussian_rasterization_depth import GaussianRasterizer
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_cpu_backend import F32, F64, run_backend, run_reference

CONFIGS = {
    "sh1": dict(sh_degree=1),
    "sh3-aa": dict(sh_degree=3, antialiasing=True),
    "colors-cov": dict(precomp_colors=True, precomp_cov=True),
    "float64": dict(sh_degree=2, dtype=F64),
}
OPTIONS = {  # the call's optional outputs do not touch the colour's composition with bg
    "plain": {},
    "features-median": dict(features=True, median_depth=True),
    "inverse-depth": dict(inverse_depth=True),
}


def background_gradient(run, scene, options, seed, dtype=None):
    """d/d(bg) of a random linear loss on every map the call returns (the colour's part is
    bg's), with the Gaussians in `dtype` (default: the scene's)."""
    inputs = {k: (None if v is None else v.detach().to(dtype or v.dtype).requires_grad_())
              for k, v in scene.inputs.items()}
    kwargs = {}
    if options.get("features"):
        kwargs["features"] = torch.rand(scene.P, 4, generator=torch.Generator().manual_seed(seed),
                                        dtype=inputs["means3D"].dtype)
    kwargs.update({k: v for k, v in options.items() if k != "features"})
    bg = scene.settings.bg.detach().clone().requires_grad_()
    outputs = run(inputs, scene.settings._replace(bg=bg), **kwargs)
    gen = torch.Generator().manual_seed(seed)
    maps = [m for m in outputs if m.is_floating_point()]
    loss = sum((m * torch.randn(m.shape, generator=gen, dtype=F64).to(m.dtype)).sum()
               for m in maps)
    return torch.autograd.grad(loss, bg)[0]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_background_gradient_matches_reference(config, option):
    for seed in range(2):
        scene = scenes.config_scene("bg-", CONFIGS, config, seed)
        got = background_gradient(lambda i, s, **k: GaussianRasterizer(s)(**i, **k), scene,
                                  OPTIONS[option], seed)
        want = background_gradient(
            lambda i, s, **k: rasterize_reference(**i, raster_settings=s, **k), scene,
            OPTIONS[option], seed)
        tol = 1e-5 if scene.inputs["means3D"].dtype == F32 else 1e-10
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


def test_gradcheck_background():
    scene = scenes.make_smooth_scene(8100, P=5, height=13, width=18, sh_degree=1)
    bg = scene.settings.bg.detach().clone().requires_grad_()

    def render(bg):
        color, _, depth, weight = run_backend(scene.inputs, scene.settings._replace(bg=bg))
        return color, depth, weight

    assert torch.autograd.gradcheck(render, (bg,), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_background_gradient_is_the_uncovered_part_of_the_colour_gradient():
    """An exact identity: with a colour gradient of ones, d/d(bg_k) is the sum of 1 - weight
    over the pixels, for each channel; nothing blended (every Gaussian behind the camera): the
    pixel count."""
    scene = scenes.make_scene(8200, P=60, sh_degree=1, dtype=F64)
    bg = scene.settings.bg.detach().clone().requires_grad_()
    color, _, _, weight = run_backend(scene.inputs, scene.settings._replace(bg=bg))
    color.sum().backward()
    torch.testing.assert_close(bg.grad, (1 - weight.detach()).sum().expand(3), rtol=1e-12,
                               atol=0)
    empty = scenes.make_scene(8201, P=20, sh_degree=1, all_culled=True)
    bg = empty.settings.bg.detach().clone().requires_grad_()
    color = run_backend(empty.inputs, empty.settings._replace(bg=bg))[0]
    color.sum().backward()
    H, W = empty.settings.image_height, empty.settings.image_width
    assert torch.equal(bg.grad, torch.full((3,), float(H * W)))


def test_background_and_camera_gradients_together():
    """bg and the camera (matrices and fields of view) requiring grad in one call: each gets
    the reference's gradient."""
    scene = scenes.make_scene(8300, P=50, sh_degree=2, dtype=F64)
    runs = []
    for run in (run_backend, run_reference):
        settings, leaves = settings_with_camera_leaves(scene.settings)
        bg = settings.bg.detach().clone().requires_grad_()
        color, _, depth, weight = run(scene.with_grad(), settings._replace(bg=bg))
        gen = torch.Generator().manual_seed(3)
        loss = sum((m * torch.randn(m.shape, generator=gen, dtype=F64)).sum()
                   for m in (color, depth, weight))
        grads = torch.autograd.grad(loss, list(leaves.values()) + [bg])
        runs.append(dict(by_camera_part(leaves, grads[:-1]), bg=grads[-1]))
    for name, want in runs[1].items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(runs[0][name], want, rtol=1e-8,
                                   atol=1e-8 * float(want.abs().max()), msg=name)


def test_a_background_that_requires_grad_changes_nothing_else():
    """Outputs and the Gaussians' gradients bit for bit as with the same bg taking no gradient;
    under no_grad nothing is asked of it."""
    scene = scenes.make_scene(8400, P=50, sh_degree=3)
    gen = torch.Generator().manual_seed(1)
    up = [torch.randn(3, 29, 37, generator=gen), torch.randn(29, 37, generator=gen),
          torch.randn(29, 37, generator=gen)]
    runs = []
    for wants in (False, True):
        inputs = scene.with_grad()
        bg = scene.settings.bg.detach().clone().requires_grad_(wants)
        color, radii, depth, weight = run_backend(inputs, scene.settings._replace(bg=bg))
        torch.autograd.backward([color, depth, weight], up)
        runs.append(((color, radii, depth, weight),
                     {k: v.grad for k, v in inputs.items() if v is not None}, bg.grad))
    (out0, g0, bg0), (out1, g1, bg1) = runs
    assert all(torch.equal(a, b) for a, b in zip(out0, out1))
    assert all(torch.equal(g0[k], g1[k]) for k in g0)
    assert bg0 is None and bg1 is not None and bg1.abs().max() > 0
    bg = scene.settings.bg.detach().clone().requires_grad_()
    with torch.no_grad():
        color = run_backend(scene.inputs, scene.settings._replace(bg=bg))[0]
    assert not color.requires_grad


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
def test_cuda_background_gradient_matches_cpu(target):
    scene = scenes.make_scene(8500, P=300, height=40, width=64, sh_degree=1)
    gen = torch.Generator().manual_seed(2)
    up = torch.randn(3, 40, 64, generator=gen)
    grads = []
    for device in ("cpu", target):
        with active(device):
            inputs = {k: None if v is None else v.to(device) for k, v in scene.inputs.items()}
            settings = scene.settings._replace(**{f: getattr(scene.settings, f).to(device)
                                                  for f in ("viewmatrix", "projmatrix",
                                                            "campos")})
            bg = scene.settings.bg.detach().clone().to(device).requires_grad_()
            color = run_backend(inputs, settings._replace(bg=bg))[0]
            (color * up.to(device)).sum().backward()
            grads.append(bg.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5,
                               atol=1e-5 * float(grads[0].abs().max()))
