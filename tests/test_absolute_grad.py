"""AbsGS's absolute gradient: means2D given as (P, 4) takes, in columns 2-3 of its gradient, the
sum over pixels of |each pixel's part| of dL/d(ndc.x, ndc.y) (doc/api.md), on every backend.

The oracle is the reference, where autograd sums |.| over per-pixel copies of each mean
(reference._AbsoluteGradient). What is counted: each pixel's whole loss, on colour, depth (and
so the inverse depth), weight and feature channels; the median's gradient reaches z alone.
Pixels and Gaussians within rounding of a threshold (scenes.ambiguous) take no upstream
gradient, as in the other gradient tests. Tolerances: float32 rtol 1e-4 and atol 1e-4 times the
largest reference value (tests/test_cpu_backend.py), float64 1e-8.
"""
import pytest
import torch

import scenes
from cuda_target import active, adds_in_fixed_order, cuda_targets, emulated_param
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, upstream
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_cpu_backend import grad_tolerance
from test_cuda import settings_on
from test_cuda_tuning import launch_record

CPU_TARGETS = [pytest.param(("cpu", torch.float32, True), id="cpu-f32-lanes"),
               pytest.param(("cpu", torch.float32, False), id="cpu-f32-pixels"),
               pytest.param(("cpu", torch.float64, False), id="cpu-f64")]
# CUDA: the warp sums by the scatter butterfly (the default) and by a shuffle tree per value.
CUDA_TARGETS = [pytest.param((p.values[0], torch.float32, scatter),
                             id=p.id + ("" if scatter else "-tree"), marks=p.marks)
                for p in cuda_targets() for scatter in (True, False)]
TARGETS = CPU_TARGETS + CUDA_TARGETS
GRAD_NAMES = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales",
              "rotations", "cov3D_precomp", "dc")


@pytest.fixture
def variant():
    """Sets a target's variant for one test: on the CPU its lanes or its per-pixel loop, on CUDA
    the scatter sum of a warp's gradients or the shuffle tree; the defaults again afterwards."""
    ext = _backend._ext()
    switched = []

    def switch(target):
        device, _, on = target
        if device == "cpu":
            ext.set_cpu_tuning(lanes=on, power_bound=True)
        else:
            with active(device):
                _backend.set_cuda_tuning(scatter_reduce=on)
            switched.append(device)

    yield switch
    ext.set_cpu_tuning(lanes=True, power_bound=True)
    for device in switched:
        with active(device):
            _backend.set_cuda_tuning()


def upstream_grads(scene, seed, channels=0):
    """Random upstream gradients of every map, zero at the pixels within rounding of a
    threshold."""
    pixels, _ = scenes.ambiguous(scene)
    keep = (~pixels).to(scene.inputs["means3D"].dtype)
    H, W = pixels.shape
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=keep.dtype) * keep

    return {"color": draw(3, H, W), "depth": draw(H, W), "weight": draw(H, W),
            "feature_map": draw(channels, H, W), "median": draw(H, W)}


def render(scene, device, up, columns=4, rasterize=None, features=None, median_depth=False,
           inverse_depth=False):
    """Every input's gradient (on the CPU) of sum(map * up) over the maps rendered, with means2D
    (P, columns). `rasterize`: None for this package, else a function(settings, **inputs)."""
    with active(device):
        leaves = {k: None if v is None else v.detach().to(device).requires_grad_(k in GRAD_NAMES)
                  for k, v in scene.inputs.items()}
        leaves["means2D"] = torch.zeros(scene.P, columns, dtype=scene.inputs["means3D"].dtype,
                                        device=device, requires_grad=True)
        optional = dict(features=None if features is None else features.to(device),
                        median_depth=median_depth, inverse_depth=inverse_depth)
        if rasterize is None:
            out = GaussianRasterizer(settings_on(scene.settings, device))(**leaves, **optional)
        else:
            out = rasterize(scene.settings, **leaves, **optional)
        names = ["color", None, "depth", "weight"]
        names += ["feature_map"] if features is not None else []
        names += ["median"] if median_depth else []
        loss = sum((m * up[n].to(device)).sum() for n, m in zip(names, out) if n is not None)
        loss.backward()
        return {k: v.grad.cpu() for k, v in leaves.items() if v is not None and v.grad is not None}


def reference(settings, **inputs):
    return rasterize_reference(**inputs, raster_settings=settings)


def assert_close(got, want, dtype, what):
    tol = grad_tolerance(dtype)
    scale = want.abs().max().item() if want.numel() else 0.0
    try:
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)
    except AssertionError as e:  # named (a callable msg needs PyTorch 1.13)
        raise AssertionError(f"{what}: {e}") from None


def scene_for(seed, dtype, **kw):
    options = dict(P=48, height=29, width=37, sh_degree=1)
    options.update(kw)
    return scenes.make_scene(seed, dtype=dtype, **options)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_absolute_columns_match_the_reference(target, seed, variant):
    device, dtype, _ = target
    variant(target)
    scene = scene_for(100 + seed, dtype, antialiasing=seed == 2, precomp_colors=seed == 1)
    up = upstream_grads(scene, seed)
    want = render(scene, "cpu", up, rasterize=reference)
    got = render(scene, device, up)
    assert got["means2D"].shape == (scene.P, 4)
    assert_close(got["means2D"][:, 2:], want["means2D"][:, 2:], dtype, "absolute columns")
    assert_close(got["means2D"][:, :2], want["means2D"][:, :2], dtype, "signed columns")
    # Real sums of absolute values: never below the signed sums, and above them somewhere.
    assert (want["means2D"][:, 2:] > 0).any()
    slack = 1e-5 if dtype == torch.float32 else 1e-12
    absolute, signed = got["means2D"][:, 2:], got["means2D"][:, :2].abs()
    assert (absolute >= signed - slack * absolute.abs().max()).all()
    assert (absolute > 1.01 * signed).any()


@pytest.mark.parametrize("target", TARGETS)
def test_four_columns_change_no_other_gradient(target, variant):
    """The (P, 4) call differentiates everything else as the (P, 3) one does, and its columns 0-1
    are the (P, 3) call's columns 0-1; (P, 3) keeps a zero third column."""
    device, dtype, _ = target
    variant(target)
    scene = scene_for(7, dtype)
    up = upstream_grads(scene, 7)
    three, four = render(scene, device, up, columns=3), render(scene, device, up, columns=4)
    assert set(three) == set(four)
    # The same sums in the same order on the CPU; CUDA's atomics may add in another order.
    exact = adds_in_fixed_order(device)
    for name in three:
        a, b = three[name], four[name]
        if name == "means2D":
            assert (a[:, 2] == 0).all()
            a, b = a[:, :2], b[:, :2]
        if exact:
            assert torch.equal(a, b), name
        else:
            assert_close(b, a, dtype, name)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("channels", [5, 20])
def test_feature_losses_count_in_the_absolute_columns(target, channels, variant):
    """With feature channels, the median and the inverse depth in the call and a loss on every
    map, the absolute columns are the reference's: each pixel's |.| of its whole gradient, the
    colour's, depth's (of 1/z), weight's and every channel's together (on CUDA
    render_absolute_grad_kernel: 5 channels held in registers; of 20, 8 in registers and 12
    read from memory), which is not the sum of |.| of the maps' part and of the channels'
    part. A loss on the median alone leaves them zero, one on the feature map alone does not."""
    device, dtype, _ = target
    variant(target)
    scene = scene_for(11, dtype)
    gen = torch.Generator().manual_seed(11)
    F = torch.rand(scene.P, channels, generator=gen, dtype=dtype) * 2 - 1
    up = upstream_grads(scene, 11, channels=channels)
    # T within rounding of 0.5 would move a median between Gaussians: no gradient there.
    blend = scenes.reference_internals(scene)[2]
    up["median"] *= ~(blend["blended"] & ((blend["T_after"] - 0.5).abs() <= 1e-4)).any(dim=0)
    optional = dict(features=F, median_depth=True, inverse_depth=True)
    want = render(scene, "cpu", up, rasterize=reference, **optional)
    got = render(scene, device, up, **optional)
    assert_close(got["means2D"], want["means2D"], dtype, "means2D")

    def only(*names):
        return render(scene, device, {k: v if k in names else torch.zeros_like(v)
                                      for k, v in up.items()}, **optional)["means2D"]

    maps, features, median = only("color", "depth", "weight"), only("feature_map"), only("median")
    assert (median == 0).all()  # its gradient reaches the Gaussians' z alone
    assert (features[:, :2] != 0).any() and (features[:, 2:] > 0).any()
    # Where both parts reach a Gaussian, their pixels' parts cancel in places: |a + b| below
    # |a| + |b| by more than rounding.
    parts = maps[:, 2:] + features[:, 2:]
    assert (got["means2D"][:, 2:] <= parts * (1 + 1e-5) + 1e-6 * parts.max()).all()
    assert (got["means2D"][:, 2:] < 0.99 * parts).any()


@pytest.mark.parametrize("target", cuda_targets())
def test_absolute_columns_with_features_over_long_tile_lists(target):
    """render_absolute_grad_kernel over lists of several batches of 256 splats (a faint scene whose
    pixels blend past 256), with 20 channels: the CPU's columns (float32, the CPU's own tolerance
    against the reference)."""
    scene = scenes.make_scene(24400, P=400, height=16, width=16, sh_degree=1, smooth=True)
    scene.inputs["opacities"] = scene.inputs["opacities"] * 0.1
    gen = torch.Generator().manual_seed(24)
    F = torch.rand(scene.P, 20, generator=gen) * 2 - 1
    up = upstream_grads(scene, 24, channels=20)
    optional = dict(features=F, median_depth=True)
    up["median"].zero_()
    want = render(scene, "cpu", up, **optional)
    got = render(scene, target, up, **optional)
    assert_close(got["means2D"], want["means2D"], torch.float32, "means2D")
    assert (want["means2D"][:, 2:] > 0).sum() > 100


@pytest.mark.parametrize("target", [emulated_param("asc")])
def test_the_absolute_walk_runs_only_where_a_feature_loss_needs_it(target):
    """render_absolute_grad_kernel (read from the emulation's launch record) runs once in a
    backward with a (P, 4) carrier and a loss on the feature map, and not without either (the
    render backward then sums the statistic as before): calls that do not ask for it pay nothing.
    Without a feature loss the columns are those of the call without feature channels."""
    scene = scene_for(51, torch.float32)
    F = torch.rand(scene.P, 6, generator=torch.Generator().manual_seed(51))

    def launches(columns, features, feature_loss):
        with active(target), launch_record(target) as record:
            leaves = {k: None if v is None else v.detach().to(target).requires_grad_()
                      for k, v in scene.inputs.items()}
            leaves["means2D"] = torch.zeros(scene.P, columns, requires_grad=True)
            extra = {} if features is None else dict(features=features)
            out = GaussianRasterizer(settings_on(scene.settings, target))(**leaves, **extra)
            loss = out[0].sum() + out[2].sum() - out[3].sum()
            if feature_loss:
                ramp = torch.linspace(-1, 1, out[4].numel()).view_as(out[4])
                loss = loss + (out[4] * ramp).sum()
            loss.backward()
        walks = [k for k, _, _ in record].count("absolute_variant")
        return walks, leaves["means2D"].grad

    assert launches(4, F, True)[0] == 1
    without_loss, plain = launches(4, F, False), launches(4, None, False)
    assert without_loss[0] == plain[0] == launches(3, F, True)[0] == 0
    torch.testing.assert_close(without_loss[1], plain[1], rtol=1e-6, atol=0)
    assert (plain[1][:, 2:] > 0).any()


def test_absolute_columns_scale_with_the_loss_and_ignore_its_sign():
    """|.| summed: the loss times -2 doubles the absolute columns and flips the signed ones."""
    scene = scene_for(21, torch.float64)
    up = upstream_grads(scene, 21)
    once = render(scene, "cpu", up)["means2D"]
    twice = render(scene, "cpu", {k: -2 * v for k, v in up.items()})["means2D"]
    torch.testing.assert_close(twice[:, 2:], 2 * once[:, 2:], rtol=1e-12, atol=0)
    torch.testing.assert_close(twice[:, :2], -2 * once[:, :2], rtol=1e-12, atol=0)


def test_culled_gaussians_take_zero():
    """Gaussians behind the camera or off screen take no absolute gradient either."""
    scene = scene_for(31, torch.float32)
    up = upstream_grads(scene, 31)
    radii = GaussianRasterizer(scene.settings)(**scene.inputs)[1]
    g = render(scene, "cpu", up)["means2D"]
    assert (radii == 0).any() and (radii > 0).any()
    assert (g[radii == 0] == 0).all()
    assert (g[radii > 0, 2:] > 0).any()


def test_the_2024_api_takes_four_columns_too():
    """upstream.GaussianRasterizer (the 2024 API: dc apart, a map of inverse depth) with means2D
    (P, 4): the absolute columns of the reference's call with the same loss."""
    scene = scene_for(41, torch.float64, dc=True)
    up = upstream_grads(scene, 41)
    up["weight"] = torch.zeros_like(up["weight"])  # the 2024 call has no weight map

    def api_2024(settings, means3D, means2D, opacities, dc, shs, scales, rotations, **_):
        color, radii, invdepth = upstream.GaussianRasterizer(settings)(
            means3D=means3D, means2D=means2D, opacities=opacities, dc=dc, shs=shs,
            scales=scales, rotations=rotations)
        return color, radii, invdepth, torch.zeros_like(invdepth)

    def reference_2024(settings, **inputs):
        inputs.pop("inverse_depth")
        color, radii, depth, weight = rasterize_reference(**inputs, raster_settings=settings,
                                                          inverse_depth=True)
        return color, radii, depth * weight, torch.zeros_like(weight)  # sum of w / z

    got = render(scene, "cpu", up, rasterize=api_2024)
    want = render(scene, "cpu", up, rasterize=reference_2024)
    assert_close(got["means2D"], want["means2D"], torch.float64, "means2D")
