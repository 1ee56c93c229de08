"""Per-pixel sample offsets (`subpixel_offset`, Mip-Splatting's --ray_jitter): pixel (x, y)
samples the splats at (x + o[y, x, 0], y + o[y, x, 1]), in the forward and the backward.

Against autograd through the reference (which evaluates every splat at every sample point,
with no reach box), outputs and gradients, float32 and float64, offsets of Mip-Splatting's
range [-0.5, 0.5) and of a few pixels (which move samples across tiles: the reach boxes must
widen by the margin, or splats are lost); the optional outputs on the per-pixel loops; zeros
equal to None bit for bit; the CUDA kernels (warp skipping, split tile lists) against the CPU
backend; Mip-Splatting's call.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets, forward_atol
from diff_gaussian_rasterization_depth import GaussianRasterizer, mip
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_cpu_backend import (compare_gradients, forward_against_reference, gradients,
                              reference_gradients, run_backend, upstream_gradients)
from test_cuda_tuning import tuning  # noqa: F401  (the fixture)
from test_mip import assert_identical, mip_module_call, mip_settings, outputs_and_grads

F32, F64 = torch.float32, torch.float64

# name -> make_scene options
CONFIGS = {
    "sh1": dict(sh_degree=1),
    "size-17x33": dict(precomp_colors=True, height=33, width=17),
    "size-64x40-aa": dict(sh_degree=2, height=40, width=64, P=120, antialiasing=True),
    "mip-kernel0.1": dict(sh_degree=2, antialiasing=True, kernel_size=0.1),
    "float64": dict(sh_degree=2, dtype=F64),
    "float64-cov": dict(sh_degree=0, precomp_cov=True, dtype=F64, height=40, width=48, P=90),
}


def jitter(settings, seed, bound=0.5, dtype=torch.float32):
    """Uniform offsets in [-bound, bound) for every pixel, as --ray_jitter draws them (0.5)."""
    H, W = settings.image_height, settings.image_width
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(H, W, 2, generator=gen, dtype=F64) * 2 - 1).mul(bound).to(dtype)


def jittered(scene, seed, bound=0.5):
    offset = jitter(scene.settings, seed, bound, scene.inputs["means3D"].dtype)
    return scenes.Scene(scene.inputs, scene.settings._replace(subpixel_offset=offset))


@pytest.mark.parametrize("bound", [0.5, 3.0])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config, bound):
    failures = []
    moved = 0
    for seed in range(4):
        scene = jittered(scenes.config_scene("offset", CONFIGS, config, seed), 70 + seed, bound)
        dtype = scene.inputs["means3D"].dtype
        found, (_, _, _, weight), _, keep = forward_against_reference(scene, f"seed {seed}")
        failures += found
        pixels = ~keep
        with torch.no_grad():
            plain = run_backend(scene.inputs, scene.settings._replace(subpixel_offset=None))
        moved += int(((plain[3] - weight).abs() > 1e-3).sum())
        upstream = upstream_gradients(scene, pixels, seed)
        failures += compare_gradients(gradients(run_backend, scene, upstream),
                                      reference_gradients(scene, upstream), dtype,
                                      f"seed {seed}")
    assert not failures, "\n".join(failures)
    assert moved > 20  # the offsets change the render


@pytest.mark.parametrize("seed", range(3))
def test_optional_outputs_match_reference(seed):
    """Feature channels, the median depth and the walks of their own (touch count, contribution
    statistics, dominant Gaussian) at the sample points, float64, against the reference."""
    scene = jittered(scenes.make_scene(7100 + seed, P=90, height=35, width=41, sh_degree=1,
                                       dtype=F64), seed, 0.5)
    features = torch.randn(scene.P, 5, generator=torch.Generator().manual_seed(seed),
                           dtype=F64)
    options = dict(features=features, median_depth=True, touch_count=True, contributions=True,
                   dominant=True)
    pixels, gaussians = scenes.ambiguous_checked(scene)
    leaves = scene.with_grad()
    got = GaussianRasterizer(scene.settings)(**leaves, **options)
    ref_leaves = scene.with_grad()
    want = rasterize_reference(**ref_leaves, raster_settings=scene.settings, **options)
    assert len(got) == len(want) == 9
    keep = ~pixels
    for index in (0, 2, 3, 4, 5):  # colour, depth, weight, features, median
        a, b = got[index][..., keep], want[index][..., keep]
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), index
    assert torch.equal(got[1], want[1])
    if not pixels.any() and not gaussians.any():
        assert torch.equal(got[6], want[6])   # touch count
        assert torch.allclose(got[7], want[7], rtol=1e-9, atol=1e-12)  # contributions
        assert torch.equal(got[8], want[8])   # dominant
    weights = torch.Generator().manual_seed(10 + seed)
    upstream = [torch.randn(want[i].shape, generator=weights, dtype=F64) * keep
                for i in (0, 2, 3, 4, 5)]
    for out in (got, want):
        sum((o * u).sum() for o, u in zip((out[0], out[2], out[3], out[4], out[5]),
                                          upstream)).backward()
    for name in ("means3D", "opacities", "shs", "scales", "rotations"):
        a, b = leaves[name].grad, ref_leaves[name].grad
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-7 * b.abs().max()), name


@pytest.mark.parametrize("dtype", [F32, F64])
def test_zeros_are_none_and_offsets_move_samples(dtype):
    """Offsets of zeros render what None renders, bit for bit (outputs and gradients); an
    offset of a whole pixel everywhere samples where the next pixel sits, away from the tile
    edges that decide which splats a pixel considers."""
    scene = scenes.make_scene(7200, P=150, height=48, width=64, sh_degree=1, dtype=dtype,
                              outliers=False)
    H, W = scene.settings.image_height, scene.settings.image_width
    none = outputs_and_grads(scene.settings, scene.inputs)
    zeros = scene.settings._replace(subpixel_offset=torch.zeros(H, W, 2, dtype=dtype))
    assert_identical(outputs_and_grads(zeros, scene.inputs), none)
    shift = torch.zeros(H, W, 2, dtype=dtype)
    shift[..., 0] = 1.0
    with torch.no_grad():
        plain = GaussianRasterizer(scene.settings)(**scene.inputs)
        shifted = GaussianRasterizer(scene.settings._replace(subpixel_offset=shift))(
            **scene.inputs)
    # Columns whose pixel and next pixel share a tile see the same tile lists.
    inner = torch.tensor([x % 16 != 15 for x in range(W - 1)])
    for got, want in ((shifted[0][:, :, :-1], plain[0][:, :, 1:]),
                      (shifted[3][:, :-1], plain[3][:, 1:])):
        assert torch.equal(got[..., inner], want[..., inner])
    assert not torch.equal(shifted[3], plain[3])


def test_checked():
    scene = scenes.make_scene(7300, P=30, height=20, width=24, sh_degree=0)
    cases = [(torch.zeros(24, 20), ValueError, r"\(20, 24, 2\)"),
             (torch.zeros(20, 24, 3), ValueError, "subpixel_offset"),
             ([[0.0, 0.0]], TypeError, "subpixel_offset"),
             (torch.zeros(20, 24, 2, dtype=torch.int32), TypeError, "floating-point"),
             (torch.full((20, 24, 2), float("nan")), ValueError, "finite"),
             (torch.full((20, 24, 2), float("inf")), ValueError, "finite")]
    for value, error, pattern in cases:
        settings = scene.settings._replace(subpixel_offset=value)
        with pytest.raises(error, match=pattern):
            GaussianRasterizer(settings)(**scene.inputs)
    # (W, H, 2) holds as many values: read pixel by pixel, as Mip-Splatting reads its buffer.
    GaussianRasterizer(scene.settings._replace(subpixel_offset=torch.zeros(24, 20, 2)))(
        **scene.inputs)


def test_strided_and_other_typed_offsets():
    """Offsets in any layout (a permuted view), dtype (float64 with float32 Gaussians) or far
    off the image render as their contiguous copy in the Gaussians' dtype does."""
    scene = scenes.make_scene(7350, P=80, height=30, width=40, sh_degree=1)
    planes = torch.rand(2, 30, 40, generator=torch.Generator().manual_seed(4)) - 0.5
    strided = planes.permute(1, 2, 0)
    assert not strided.is_contiguous()
    want = outputs_and_grads(scene.settings._replace(subpixel_offset=strided.contiguous()),
                             scene.inputs)
    assert_identical(outputs_and_grads(scene.settings._replace(subpixel_offset=strided),
                                       scene.inputs), want)
    assert_identical(outputs_and_grads(scene.settings._replace(
        subpixel_offset=strided.double()), scene.inputs), want)
    with torch.no_grad():
        gone = GaussianRasterizer(scene.settings._replace(
            subpixel_offset=torch.full((30, 40, 2), 1e30)))(**scene.inputs)
    assert (gone[3] == 0).all() and (gone[1] > 0).any()


def test_offsets_are_copied_and_take_no_gradient():
    """The backward samples where the forward did, whatever the caller does to the offsets in
    between; no gradient reaches them (Mip-Splatting gives none)."""
    scene = scenes.make_scene(7400, P=80, height=32, width=40, sh_degree=1)
    offset = jitter(scene.settings, 1).requires_grad_()
    settings = scene.settings._replace(subpixel_offset=offset)
    leaves = scene.with_grad()
    color = GaussianRasterizer(settings)(**leaves)[0]
    with torch.no_grad():
        offset.mul_(-1)
    color.sum().backward()
    want = scene.with_grad()
    GaussianRasterizer(settings._replace(subpixel_offset=offset.detach() * -1))(
        **want)[0].sum().backward()
    for name in ("means3D", "scales", "opacities"):
        assert torch.equal(leaves[name].grad, want[name].grad), name
    assert offset.grad is None


def test_mip_api_renders_the_offsets():
    """Mip-Splatting's call with --ray_jitter's offsets: the package's call with
    package_settings, and the reference's render with the compensated filter."""
    scene = scenes.make_scene(7500, P=100, height=40, width=48, sh_degree=1)
    offset = jitter(scene.settings, 2)
    settings = mip_settings(scene.settings, kernel_size=0.1, offset=offset)
    package = mip.package_settings(settings)
    assert package.subpixel_offset is offset
    got = outputs_and_grads(settings, scene.inputs, mip_module_call(settings))
    want = outputs_and_grads(package, scene.inputs,
                             lambda **inputs: GaussianRasterizer(package)(**inputs)[:2])
    assert_identical(got, want)
    with torch.no_grad():
        reference = rasterize_reference(**scene.inputs, raster_settings=package)[0]
    pixels, _ = scenes.ambiguous_checked(scenes.Scene(scene.inputs, package))
    assert torch.allclose(got[0][0][:, ~pixels], reference[:, ~pixels], atol=1e-5)


# CUDA: (height, width, P, make_scene options, split length or 0, offset bound)
CUDA_CONFIGS = {
    "37x29": (29, 37, 60, dict(sh_degree=1), 0, 0.5),
    "64x40-aa-far": (40, 64, 150, dict(sh_degree=2, antialiasing=True), 0, 3.0),
    # Large faint splats over two tiles: lists past a batch of 256, split into parts of 256.
    "32x16-faint-split": (16, 32, 700, dict(sh_degree=1, smooth=True, outliers=False), 256, 0.5),
}


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("config", list(CUDA_CONFIGS))
def test_cuda_matches_cpu(config, target, tuning):
    """The kernels' sample points and the warps' reach masks widened by the margin: CUDA (warp
    skipping, split lists) against the CPU backend, forward and gradients, with features and
    the median."""
    import test_cuda
    H, W, P, opts, split, bound = CUDA_CONFIGS[config]
    for seed in range(2):
        scene = scenes.make_scene(7600 + seed, P=P, height=H, width=W, **opts)
        if "faint" in config:
            scene.inputs["opacities"] = scene.inputs["opacities"] / 10
        scene = jittered(scene, 80 + seed, bound)
        pixels, gaussians = scenes.ambiguous(scene)
        up = test_cuda.upstream_for(scene, pixels, seed)
        (c0, r0, d0, w0), g0 = test_cuda.run(scene, "cpu", up)
        with active(target):
            tuning(split_length=split)
            (c1, r1, d1, w1), g1 = test_cuda.run(scene, target, up)
        keep = ~pixels
        for a, b in ((c1[:, keep], c0[:, keep]), (w1[keep], w0[keep]),
                     ((d1 * w1)[keep], (d0 * w0)[keep])):
            assert (a - b).abs().max() <= forward_atol(b), config
        assert torch.equal(r1[~gaussians], r0[~gaussians])
        for mode in g0:
            for name, ref in g0[mode].items():
                scale = ref.abs().max().item()
                torch.testing.assert_close(g1[mode][name], ref, rtol=1e-4, atol=1e-4 * scale)
        features = torch.rand(P, 4, generator=torch.Generator().manual_seed(seed))
        outputs = {}
        for device in ("cpu", target):
            with active(device):
                leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                          for k, v in scene.inputs.items()}
                f = features.clone().requires_grad_()
                out = GaussianRasterizer(scene.settings)(**leaves, features=f, median_depth=True)
                gen = torch.Generator().manual_seed(5)
                (out[4] * torch.rand(out[4].shape, generator=gen) * keep).sum().backward()
                outputs[device == "cpu"] = (out[4].detach()[:, keep], f.grad,
                                            leaves["means3D"].grad)
        for a, b in zip(outputs[False], outputs[True]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("options", [{}, dict(features=5, median_depth=True),
                                     dict(touch_count=True, contributions=True, dominant=True)])
def test_lanes_and_per_pixel_loops_agree_bit_for_bit(options):
    """The CPU's eight lanes take each pixel's sample point as the per-pixel loop does: the same
    bits in every output, the optional outputs and the walks included; gradients to the
    rounding of their sums, which the lanes add in another order (as without offsets:
    test_cpu_fast_path.test_each_technique_changes_no_bit)."""
    from test_cpu_fast_path import ALL_ON
    from diff_gaussian_rasterization_depth import _backend
    scene = jittered(scenes.make_scene(7950, P=150, height=45, width=61, sh_degree=1), 3, 1.5)
    options = dict(options)
    if "features" in options:
        options["features"] = torch.rand(scene.P, options["features"],
                                         generator=torch.Generator().manual_seed(2))
    results = []
    try:
        for lanes in (True, False):
            _backend._ext().set_cpu_tuning(**{**ALL_ON, "lanes": lanes})
            results.append(outputs_and_grads(scene.settings, scene.inputs, lambda **inputs:
                                             GaussianRasterizer(scene.settings)(**inputs,
                                                                                **options)))
    finally:
        _backend._ext().set_cpu_tuning(**ALL_ON)
    (out_lanes, grads_lanes), (out_pixels, grads_pixels) = results
    assert len(out_lanes) == len(out_pixels)
    for a, b in zip(out_lanes, out_pixels):
        assert torch.equal(a, b)
    for k, want in grads_pixels.items():
        torch.testing.assert_close(grads_lanes[k], want, rtol=1e-5,
                                   atol=3e-5 * float(want.abs().max()))


def test_gradcheck_with_offsets():
    """Finite differences, float64, of the CPU backend's render with sample offsets, in every
    Gaussian input (a scene with no value within 1e-3 of a threshold at its sample points)."""
    for attempt in range(50):
        base = scenes.make_scene(7990 + 1000 * attempt, P=5, height=13, width=18, sh_degree=1,
                                 smooth=True, dtype=F64)
        scene = jittered(base, attempt, 0.5)
        if scenes.smooth_margin(scene):
            break
    else:
        raise RuntimeError("no smooth scene found")
    fn, leaves = scenes.make_gradcheck_fn(
        scene, lambda kw: GaussianRasterizer(scene.settings)(**kw))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
