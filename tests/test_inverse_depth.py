"""`inverse_depth=True`: the depth channel blends 1/z instead of z (the 2024 upstream's invdepth
at the plain call's cost). The reference against its own feature channel of 1/z; the CPU
backend against the reference (outputs and gradients, the median included); colour, weight and
radii the plain call's; finite differences; and the CUDA targets against the CPU backend with
both of CUDA's depth sorts (each reverses the key of 1/z to keep the order by z)."""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend
from test_cpu_backend import compare_gradients
from test_cuda_features import features_scene, mismatches_with_cpu
from test_features import (median_ambiguous, random_features, reference_gradients, render,
                           gradients, view_depths)

F32, F64 = torch.float32, torch.float64
SEEDS = range(3)


def scene_for(seed, **options):
    return scenes.make_scene(15000 + seed, P=120, height=40, width=64, sh_degree=seed % 3,
                             antialiasing=seed == 2, **options)


def compared_pixels(scene):
    """(pixels, gaussians) left out (scenes.ambiguous and T near 0.5 for the median)."""
    internals = scenes.reference_internals(scene)
    pixels, gaussians = scenes.ambiguous(scene, internals=internals)
    return pixels | median_ambiguous(scene, internals), gaussians


@pytest.mark.parametrize("seed", SEEDS)
def test_reference_inverse_depth_is_a_channel_of_inverse_z(seed):
    """In the reference, depth * weight with inverse_depth is the feature map of 1/z (the
    definition sum_i w_i / z_i), and the median is 1 / the plain median where there is one."""
    scene = scene_for(seed)
    inverse_z = (1 / view_depths(scene))[:, None]
    with torch.no_grad():
        inv = render("reference", scene.inputs, scene.settings, inverse_z, True, True)
        plain = render("reference", scene.inputs, scene.settings, None, True)
    torch.testing.assert_close(inv["depth"] * inv["weight"], inv["feature_map"][0],
                               rtol=1e-5, atol=1e-6)
    reached = plain["median"] > 0
    assert reached.sum() >= 20
    torch.testing.assert_close(inv["median"][reached], 1 / plain["median"][reached])
    assert (inv["median"][~reached] == 0).all()
    for k in ("color", "weight", "radii"):
        assert torch.equal(inv[k], plain[k]), k


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("seed", SEEDS)
def test_inverse_depth_matches_reference(seed, dtype):
    """CPU backend: outputs within 1e-5 (float64 1e-10), gradients of a loss on depth, on the
    median, and on every map, as test_features' comparisons."""
    scene = scene_for(seed, dtype=dtype)
    pixels, gaussians = compared_pixels(scene)
    F = random_features(scene.P, 2, seed, dtype)
    with torch.no_grad():
        got = render("backend", scene.inputs, scene.settings, F, True, True)
        want = render("reference", scene.inputs, scene.settings, F, True, True)
    keep = ~pixels
    tol = 1e-5 if dtype == F32 else 1e-10
    for name in ("color", "depth", "weight", "feature_map", "median"):
        err = (got[name] - want[name]).abs()[..., keep].max().item()
        assert err <= tol, (name, err)
    assert not ((got["radii"] != want["radii"]) & ~gaussians).any()
    # Not the plain depth: a weighted mean of 1/z is at least 1 / the mean of z (Jensen), more
    # where several depths blend.
    with torch.no_grad():
        plain = render("reference", scene.inputs, scene.settings, None, False)["depth"]
    blended = keep & (want["weight"] > 0.5)
    assert blended.sum() > 100
    ratio = want["depth"][blended] * plain[blended]
    assert (ratio >= 1 - 1e-5).all() and (ratio > 1.01).sum() > 20

    gen = torch.Generator().manual_seed(seed)
    H, W = pixels.shape
    up = {k: (torch.randn(*shape, generator=gen, dtype=F64) * keep).to(dtype)
          for k, shape in (("color", (3, H, W)), ("depth", (H, W)), ("weight", (H, W)),
                           ("feature_map", (2, H, W)), ("median", (H, W)))}
    modes = ("depth", "median", "all")
    want_g = reference_gradients(scene, F, True, up, modes, inverse_depth=True)
    got_g = gradients("backend", scene, F, True, up, modes, inverse_depth=True)
    failures = compare_gradients(got_g, want_g, dtype, f"seed {seed}")
    assert not failures, "\n".join(failures)
    assert want_g[0]["depth"]["means3D"].abs().max() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_inverse_depth_changes_only_the_depth_channel(seed):
    """Backend: colour, weight and radii are the plain call's bit for bit (the order by z is
    kept), and the gradients of a colour and weight loss too; depth differs."""
    scene = scene_for(seed)
    gen = torch.Generator().manual_seed(seed)
    H, W = scene.settings.image_height, scene.settings.image_width
    gc, gw = torch.randn(3, H, W, generator=gen), torch.randn(H, W, generator=gen)
    results = []
    for inverse in (False, True):
        leaves = scene.with_grad()
        color, radii, depth, weight = GaussianRasterizer(scene.settings)(
            **leaves, inverse_depth=inverse)
        ((color * gc).sum() + (weight * gw).sum()).backward()
        grads = {k: v.grad for k, v in leaves.items() if v is not None}
        results.append((color, radii, depth, weight, grads))
    (c0, r0, d0, w0, g0), (c1, r1, d1, w1, g1) = results
    assert torch.equal(c0, c1) and torch.equal(r0, r1) and torch.equal(w0, w1)
    assert (w0 > 0.5).sum() > 100 and not torch.allclose(d0, d1)
    for k in g0:
        assert torch.equal(g0[k], g1[k]), k


@pytest.mark.parametrize("seed", range(2))
def test_gradcheck_inverse_depth(seed):
    scene = scenes.make_smooth_scene(15100 + seed, P=6, height=13, width=18, sh_degree=1)
    names = scenes.gradcheck_inputs(scene)
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}

    def fn(*tensors):
        out = GaussianRasterizer(scene.settings)(**fixed, **dict(zip(names, tensors)),
                                                  inverse_depth=True)
        return out[0], out[2], out[3]

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_inverse_depth_must_be_a_bool():
    scene = scene_for(0)
    with pytest.raises(TypeError, match="inverse_depth"):
        GaussianRasterizer(scene.settings)(**scene.inputs, inverse_depth=1)


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("depth_first", [True, False])
def test_inverse_depth_cuda_matches_cpu(depth_first, target):
    """Both CUDA sorts: a key of 1/z ordered like one of z would reverse every list."""
    failures = []
    try:
        with active(target):
            _backend.set_cuda_tuning(depth_first_sort=depth_first)
        for seed in SEEDS:
            failures += mismatches_with_cpu(features_scene(3, seed), 3, seed, target,
                                            inverse_depth=True)
    finally:
        with active(target):
            _backend.set_cuda_tuning()
    assert not failures, "\n".join(failures)
