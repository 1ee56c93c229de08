"""3DGS-MCMC's API: the relocation (`compute_relocation`) against its float64 twin (the paper's
eq. 9 as written), against 80-digit sums where float sums cancel, its identities (the stack's
peak and its integral along an axis), what the rasterizer renders of the copies, the fork's
signature and bad input; the `mcmc` module's rasterizer and its `is_used` against the
reference."""
import math
from decimal import Decimal, localcontext

import pytest
import torch

import scenes
from cuda_target import active, cuda_targets, is_emulated
from diff_gaussian_rasterization_depth import compute_relocation, mcmc
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth.reference import (binomial_table,
                                                         compute_relocation_reference,
                                                         rasterize_reference)
from diff_gaussian_rasterization_depth.scenes import Gaussians, render

F32, F64 = torch.float32, torch.float64
TARGETS = cuda_targets()


def random_inputs(seed, P=600, dtype=F64, largest_copies=51, axes=3):
    """Opacities over the whole range (some exactly 0, some exactly 1 shared by few copies),
    scales over orders of magnitude, counts 1..largest_copies as 3DGS-MCMC draws them."""
    gen = torch.Generator().manual_seed(seed)
    opacity = torch.rand(P, generator=gen, dtype=F64) ** 0.5 * (1 - 1e-6)
    opacity[torch.rand(P, generator=gen) < 0.2] *= 1e-4
    copies = torch.randint(1, largest_copies + 1, (P,), generator=gen)
    opacity[:5] = 0.0
    opacity[5:10], copies[5:10] = 1.0, torch.arange(1, 6)  # (1 + o_N)^N <= 32: the twin holds
    scale = torch.exp(torch.randn(P, axes, generator=gen, dtype=F64) * 2)
    return opacity.to(dtype), scale.to(dtype), copies


def exact_factor(opacity: float, copies: int) -> float:
    """o / D of relocation.h's formula from an 80-digit (or as many as the cancellation takes)
    alternating sum, with the copies' opacity a computed in double as the operation does."""
    if opacity == 0:
        return 1.0
    a = -math.expm1(math.log1p(-opacity) / copies) if opacity < 1 else 1.0
    with localcontext() as ctx:
        ctx.prec = 80 + int(copies * math.log10(1 + a))
        total, binomial, a_d = Decimal(0), Decimal(1), Decimal(a)
        tiny = Decimal(10) ** -(ctx.prec - 5)
        for j in range(1, copies + 1):
            binomial = binomial * (copies - j + 1) / j
            term = binomial * a_d ** j / Decimal(j).sqrt()
            total += term if j % 2 else -term
            # Past their peak the terms alternate and shrink: the rest is below the next one.
            if j > a * copies and term < tiny * abs(total):
                break
        return float(Decimal(opacity) / total)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("seed", range(3))
def test_relocation_matches_twin(seed, dtype):
    opacity, scale, copies = random_inputs(seed, dtype=dtype)
    new_opacity, new_scale = compute_relocation(opacity, scale, copies)
    # The twin in float64 throughout, then the one rounding to the tensors' dtype.
    ref_opacity, ref_scale = compute_relocation_reference(opacity.double(), scale.double(),
                                                          copies)
    assert new_opacity.dtype == dtype and new_scale.dtype == dtype
    assert new_opacity.shape == opacity.shape and new_scale.shape == scale.shape
    # Twin and operation sum differently (a double sum against its hockey-stick form): about
    # 1e-16 (1 + o_N)^N apart, at most 2^20 here; float32 adds its one rounding.
    rtol = 1e-9 if dtype == F64 else 1.2e-7
    torch.testing.assert_close(new_opacity.double(), ref_opacity, rtol=rtol, atol=0)
    torch.testing.assert_close(new_scale.double(), ref_scale, rtol=rtol, atol=0)


# (opacity, copies) where the paper's float sums cancel: terms of up to 2^N for o = 1 against a
# result of about 2; float32's sigmoid gives exactly 1 from a logit of 17 on. Both of
# relocation.h's ways: the sum up to (1 + a)^N = 2^20, the quadrature past it.
HARD_CASES = [(1.0, 20), (1.0, 21), (1.0, 50), (1.0, 51), (1.0, 1000), (1 - 2 ** -24, 50),
              (1 - 2 ** -24, 200), (1 - 1e-9, 60), (0.99999, 100), (0.999, 10000),
              (1e-30, 10 ** 6), (0.5, 10 ** 6), (0.3, 3), (2 ** -20, 1)]


@pytest.mark.parametrize("dtype", [F32, F64])
def test_relocation_exact_where_float_sums_cancel(dtype):
    opacity = torch.tensor([o for o, _ in HARD_CASES], dtype=dtype)
    copies = torch.tensor([n for _, n in HARD_CASES])
    scale = torch.ones(len(HARD_CASES), 3, dtype=dtype)
    new_opacity, new_scale = compute_relocation(opacity, scale, copies)
    for i, n in enumerate(copies.tolist()):
        o = float(opacity[i])  # as the tensor holds it
        want_opacity = -math.expm1(math.log1p(-o) / n) if o < 1 else 1.0
        want_factor = exact_factor(o, n)
        rtol = 1e-11 if dtype == F64 else 6e-8
        assert abs(float(new_opacity[i]) - want_opacity) <= rtol * want_opacity, (o, n)
        assert abs(float(new_scale[i, 0]) - want_factor) <= rtol * want_factor, (o, n)
        assert torch.equal(new_scale[i], new_scale[i, :1].expand(3))
    # The premise: the paper's sum as written, even in float64, is far off at o = 1, N = 50.
    _, twin = compute_relocation_reference(torch.tensor([1.0], dtype=F64),
                                           torch.ones(1, 1, dtype=F64), torch.tensor([50]))
    assert abs(float(twin) - exact_factor(1.0, 50)) > 1e-6 * exact_factor(1.0, 50)


@pytest.mark.parametrize("seed", range(2))
def test_stack_keeps_peak_and_axis_integral(seed):
    """What eq. 9 is made for: N copies of opacity o_N stacked, 1 - (1 - o_N g)^N, peak at o and,
    along each axis, the integral of o g (g a Gaussian of the scale): checked by an independent
    trapezoidal integral over x."""
    opacity, scale, copies = random_inputs(seed, P=200, largest_copies=40, axes=1)
    keep = (opacity > 1e-3) & (opacity < 0.999)
    opacity, scale, copies = opacity[keep], scale[keep], copies[keep]
    new_opacity, new_scale = compute_relocation(opacity, scale, copies)
    peak = 1 - (1 - new_opacity) ** copies.double()
    torch.testing.assert_close(peak, opacity, rtol=1e-12, atol=0)
    x = torch.linspace(-12, 12, 48001, dtype=F64)[None, :] * scale  # 12 old sigmas
    def integral(o, s, n):
        g = torch.exp(-0.5 * (x / s) ** 2)
        return torch.trapezoid(1 - (1 - o[:, None] * g) ** n[:, None].double(), x, dim=1)
    stack = integral(new_opacity, new_scale, copies)
    single = opacity * scale[:, 0] * math.sqrt(2 * math.pi)
    torch.testing.assert_close(stack, single, rtol=1e-9, atol=0)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_one_copy_and_zero_opacity_change_nothing(dtype):
    opacity, scale, _ = random_inputs(3, dtype=dtype)
    new_opacity, new_scale = compute_relocation(opacity, scale, torch.ones_like(opacity,
                                                                               dtype=torch.long))
    assert torch.equal(new_opacity, opacity) and torch.equal(new_scale, scale)
    zero = torch.zeros(4, dtype=dtype)
    new_opacity, new_scale = compute_relocation(zero, scale[:4], torch.tensor([1, 2, 7, 10 ** 5]))
    assert torch.equal(new_opacity, zero) and torch.equal(new_scale, scale[:4])


def flat_gaussians(count, opacity, scale):
    return Gaussians(torch.zeros(count, 3), torch.zeros(count, 1, 3),
                     torch.full((count, 1), float(opacity)), scale.expand(count, 3).clone(),
                     torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(count, 4).clone())


@pytest.mark.parametrize("opacity", [0.3, 0.7, 0.95])
def test_relocated_copies_render_like_the_original(opacity):
    """Through the rasterizer: N relocated copies at one place give about the weight map of the
    one Gaussian (exactly its peak; its footprint to the paper's per-axis approximation), far
    closer than N copies of it or N copies with the new opacity alone."""
    camera = Camera.looking_at((0.0, -5.0, 0.0), (0.0, 0.0, 0.0), 96, 96, fov_x_deg=40.0)
    gen = torch.Generator().manual_seed(int(opacity * 100))
    scale = (0.1 + 0.2 * torch.rand(1, 3, generator=gen))
    with torch.no_grad():
        one = render(flat_gaussians(1, opacity, scale), camera).weight
        error = lambda w: float((w - one).abs().sum() / one.sum())  # noqa: E731
        for copies in (2, 3, 5, 10):
            new_opacity, new_scale = compute_relocation(torch.tensor([opacity]), scale,
                                                        torch.tensor([copies]))
            relocated = render(flat_gaussians(copies, new_opacity, new_scale), camera).weight
            naive = render(flat_gaussians(copies, opacity, scale), camera).weight
            opacity_only = render(flat_gaussians(copies, new_opacity, scale), camera).weight
            assert abs(float(relocated.max()) - float(one.max())) < 2e-3 * copies
            assert error(relocated) < 0.9 * error(opacity_only), copies
            assert error(relocated) < 0.3 * error(naive), copies
            assert error(relocated) < 0.3


def test_the_forks_call_runs_unchanged():
    """3DGS-MCMC's reloc_utils: a float32 table of binomials, n_max = 51, N = ratio + 1 clamped
    to 1..50, opacity (P,) and scale (P, 3); the caller reshapes the scale (-1, 3)."""
    opacity, scale, copies = random_inputs(4, dtype=F32)
    n_max = 51
    binoms = binomial_table(n_max, F32)
    exact = math.factorial(50) // math.factorial(25) ** 2
    assert float(binoms[50, 25]) == float(torch.tensor(float(exact), dtype=F32))
    N = copies.clamp(min=1, max=n_max - 1)
    new_opacity, new_scale = compute_relocation(opacity, scale, N, binoms, n_max)
    plain_opacity, plain_scale = compute_relocation(opacity, scale, N)
    assert torch.equal(new_opacity, plain_opacity) and torch.equal(new_scale, plain_scale)
    assert new_scale.reshape(-1, 3).shape == scale.shape
    # (P, 1) opacities and counts of any integer type, as 3DGS's get_opacity gives them.
    col_opacity, col_scale = compute_relocation(opacity[:, None], scale, N.int()[:, None])
    assert col_opacity.shape == (opacity.shape[0], 1)
    assert torch.equal(col_opacity[:, 0], plain_opacity) and torch.equal(col_scale, plain_scale)
    # 2DGS-style two scales, and no Gaussians.
    two = compute_relocation(opacity, scale[:, :2].contiguous(), N)[1]
    assert torch.equal(two, plain_scale[:, :2])
    empty = compute_relocation(opacity[:0], scale[:0], N[:0])
    assert empty[0].shape == (0,) and empty[1].shape == (0, 3)
    # No gradient, whatever the inputs.
    with_grad = compute_relocation(opacity.requires_grad_(), scale.requires_grad_(), N)
    assert not with_grad[0].requires_grad and not with_grad[1].requires_grad


def test_bad_input_is_named():
    opacity, scale, copies = random_inputs(5, P=16, dtype=F32)
    cases = [
        ((opacity + 1.5, scale, copies), ValueError, "opacity_old: expected values in"),
        ((torch.full_like(opacity, float("nan")), scale, copies), ValueError, "opacity_old"),
        ((opacity, scale, copies * 0), ValueError, "N: expected counts >= 1"),
        ((opacity, scale, copies.float()), TypeError, "N: expected an integer tensor"),
        ((opacity, scale, copies[:5]), ValueError, "N: expected 16 counts"),
        ((opacity, scale[:5], copies), ValueError, "scale_old: expected a row per Gaussian"),
        ((opacity, scale.double(), copies), ValueError, "scale_old: expected opacity_old's"),
        ((opacity.half(), scale.half(), copies), TypeError, "float32 or float64"),
        ((opacity[:, None, None], scale, copies), ValueError, "opacity_old: expected shape"),
        ((opacity.tolist(), scale, copies), TypeError, "opacity_old: expected a torch.Tensor"),
        ((opacity, scale, copies, torch.ones(3, 4), 51), ValueError, "binoms and n_max"),
    ]
    for args, error, text in cases:
        with pytest.raises(error, match=text):
            compute_relocation(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_cuda_kernel_matches_cpu(target, dtype):
    opacity, scale, copies = random_inputs(6, P=3000 if not is_emulated(target) else 700,
                                           dtype=dtype, largest_copies=200)
    hard_opacity = torch.tensor([o for o, _ in HARD_CASES], dtype=dtype)
    opacity = torch.cat([opacity, hard_opacity])
    copies = torch.cat([copies, torch.tensor([n for _, n in HARD_CASES])])
    scale = torch.cat([scale, torch.rand(len(HARD_CASES), 3, dtype=dtype) + 0.5])
    cpu = compute_relocation(opacity, scale, copies)
    with active(target):
        got = compute_relocation(opacity.to(target), scale.to(target), copies.to(target))
    assert got[0].device.type == ("cpu" if is_emulated(target) else "cuda")
    # The same double arithmetic; a GPU's libm (log1p, expm1, exp) may differ from glibc's by
    # an ulp of double, and fused multiply-adds round the sums otherwise.
    for g, c in zip(got, cpu):
        torch.testing.assert_close(g.cpu().double(), c.double(),
                                   rtol=1e-10 if dtype == F64 else 1.2e-7, atol=0)


# ----------------------------------------------------------------------------------------------
# The fork's rasterizer: (color, radii, is_used)
# ----------------------------------------------------------------------------------------------

def fork_inputs(inputs):
    """A test scene's inputs as the fork's forward takes them (no `dc`)."""
    assert inputs.get("dc") is None
    return {k: v for k, v in inputs.items() if k != "dc"}


@pytest.mark.parametrize("seed", range(3))
def test_mcmc_rasterizer_is_the_package_call_with_is_used(seed):
    """color and radii are the package's (bits and gradients); is_used is 1 exactly for the
    Gaussians the reference blends at one pixel at least. float64: no alpha or transmittance
    within rounding of its threshold on these scenes, so the sets are equal."""
    scene = scenes.make_scene(7700 + seed, P=120, height=36, width=52, sh_degree=1,
                              dtype=F64)
    inputs = fork_inputs(scene.with_grad())
    color, radii, is_used = mcmc.GaussianRasterizer(scene.settings)(**inputs)
    assert is_used.dtype == torch.int32 and is_used.shape == (scene.P,)
    with torch.no_grad():
        want = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                                   contributions=True)[-1]
    assert torch.equal(is_used, (want[:, 2] > 0).to(torch.int32))
    # Not vacuous: some are used, and some that project onto the image (radius > 0) are not.
    assert is_used.sum() >= 10 and (is_used == 0).any()
    package = fork_inputs(scene.with_grad())
    p_color, p_radii, _, _ = PackageRasterizer(scene.settings)(**package)
    assert torch.equal(color, p_color) and torch.equal(radii, p_radii)
    upstream = torch.randn_like(color)
    (color * upstream).sum().backward()
    (p_color * upstream).sum().backward()
    for name, t in inputs.items():
        if t is not None and t.requires_grad:
            assert torch.equal(t.grad, package[name].grad), name


def test_is_used_off_skips_the_walk_and_a_hidden_gaussian_is_unused():
    """Behind two nearly opaque walls (alpha 0.99 and 0.9: the transmittance is 1e-3 behind
    them), a third wall (alpha 0.95, which would leave 5e-5, below the 1e-4 where the blend
    stops) and a small Gaussian behind it project onto the image but are never blended: the
    fork's is_used is 0 for them; is_used=False returns None."""
    scene = scenes.make_scene(7800, P=4, height=32, width=32, sh_degree=0, dtype=F32)
    inputs = fork_inputs(scene.inputs)
    campos = scene.settings.campos.double()
    view = scene.settings.viewmatrix.double()
    forward_axis = view[:3, 2]  # the camera's z axis in world coordinates (row-vector matrices)
    wall = campos + 2.0 * forward_axis
    inputs["means3D"] = torch.stack([wall, wall + 0.1 * forward_axis, wall + 0.2 * forward_axis,
                                     wall + 1.0 * forward_axis]).float()
    inputs["opacities"] = torch.tensor([[0.99], [0.9], [0.95], [0.9]])
    inputs["scales"] = torch.tensor([[20.0] * 3] * 3 + [[0.05] * 3])
    color, radii, is_used = mcmc.GaussianRasterizer(scene.settings)(**inputs)
    assert (radii > 0).all()
    assert is_used.tolist() == [1, 1, 0, 0]
    _, _, none = mcmc.GaussianRasterizer(scene.settings, is_used=False)(**inputs)
    assert none is None
    with pytest.raises(TypeError, match="is_used: expected a bool"):
        mcmc.GaussianRasterizer(scene.settings, is_used=1)
    # The functional form, in the fork's order.
    f_color, f_radii, f_used = mcmc.rasterize_gaussians(
        inputs["means3D"], inputs["means2D"], inputs.get("shs"), inputs.get("colors_precomp"),
        inputs["opacities"], inputs["scales"], inputs["rotations"], None, scene.settings)
    assert torch.equal(f_color, color) and torch.equal(f_used, is_used)
    assert mcmc.compute_relocation is compute_relocation
