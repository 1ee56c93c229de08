"""The fused SSIM (`fused_ssim`, `ssim_map`, the 2024 upstream's `fusedssim`): its map and both
images' gradients against autograd through the PyTorch twin (reference.ssim_map_reference, 3DGS's
loss_utils formula), gradcheck, SSIM's own properties, the input checks, and the CUDA kernels
against the CPU loops (on a GPU and on the emulation)."""
import pytest
import torch

from cuda_target import REAL_CUDA, active, cuda_targets, is_emulated
from diff_gaussian_rasterization_depth import fused_l1_ssim_loss, fused_ssim, ssim_map, upstream
from diff_gaussian_rasterization_depth.reference import ssim_map_reference

F32, F64 = torch.float32, torch.float64

# Shapes: 3DGS's (C, H, W) and the fused_ssim package's (B, C, H, W), sides that are not
# multiples of the CUDA tile (16), images narrower than the window (11), one pixel.
SHAPES = [(3, 37, 53), (2, 3, 29, 18), (1, 4, 70), (5, 6), (1, 1)]


def images(seed, shape, dtype=F64, grad=True, device="cpu"):
    """Two images in [0, 1] where the second is the first plus noise (as a render against its
    photo: high SSIM in places, low in others), with one flat patch (zero variance)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=gen, dtype=F64)
    b = (a + 0.3 * torch.randn(shape, generator=gen, dtype=F64)).clamp(0, 1)
    if shape[-2] > 8 and shape[-1] > 8:
        a[..., 2:8, 2:8] = 0.25
        b[..., 2:8, 2:8] = 0.25
    return tuple(t.to(dtype).to(device).requires_grad_(grad) for t in (a, b))


def map_and_grads(fn, a, b, upstream_grad):
    a = a.detach().requires_grad_()
    b = b.detach().requires_grad_()
    m = fn(a, b)
    ga, gb = torch.autograd.grad((m * upstream_grad).sum(), (a, b))
    return m.detach(), ga, gb


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape", SHAPES)
def test_map_and_gradients_match_the_reference(shape, padding, dtype):
    if padding == "valid" and min(shape[-2:]) <= 10:
        pytest.skip("no pixel is valid in an image narrower than the window")
    a, b = images(1, shape, dtype)
    out_shape = shape[:-2] + ((shape[-2] - 10, shape[-1] - 10) if padding == "valid"
                              else shape[-2:])
    g = torch.randn(out_shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    got = map_and_grads(lambda x, y: ssim_map(x, y, padding), a, b, g)
    want = map_and_grads(lambda x, y: ssim_map_reference(x, y, padding), a, b, g)
    assert got[0].shape == out_shape and got[0].dtype == dtype
    # float64: the same arithmetic in another order; float32: a few roundings of the moments,
    # whose differences (the variances) cancel.
    tol = 1e-12 if dtype == F64 else 3e-5
    for x, y in zip(got, want):
        scale = max(1.0, float(y.abs().max()))
        assert float((x - y).abs().max()) <= tol * scale


def test_gradcheck_both_images():
    a, b = images(3, (2, 13, 12))
    assert torch.autograd.gradcheck(lambda x, y: ssim_map(x, y), (a, b), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_ssim_properties(seed):
    a, b = images(seed, (3, 40, 31))
    a0, b0 = a.detach(), b.detach()
    # Identical images: 1 everywhere, and a maximum, so the gradient vanishes.
    same = ssim_map(a0, a0)
    assert float((same - 1).abs().max()) < 1e-12
    grad = torch.autograd.grad(fused_ssim(a, a.detach().clone()), a)[0]
    assert float(grad.abs().max()) < 1e-12
    # Symmetric in its two images, and at most 1.
    ab, ba = ssim_map(a0, b0), ssim_map(b0, a0)
    assert float((ab - ba).abs().max()) < 1e-13
    assert float(ab.max()) <= 1 + 1e-12
    ga = torch.autograd.grad(ssim_map(a, b).sum(), a)[0]
    gb = torch.autograd.grad(ssim_map(b, a).sum(), a)[0]
    assert float((ga - gb).abs().max()) < 1e-12
    # fused_ssim is the mean of the map, and "valid" the mean of its interior.
    assert float(fused_ssim(a0, b0)) == pytest.approx(float(ab.mean()), abs=1e-15)
    assert float(fused_ssim(a0, b0, padding="valid")) == pytest.approx(
        float(ab[..., 5:-5, 5:-5].mean()), abs=1e-15)
    # Each plane on its own: the planes do not mix.
    alone = ssim_map(a0[1:2], b0[1:2])
    assert torch.equal(alone[0], ab[1])


def test_batch_layout_and_strides_do_not_matter():
    a, b = images(4, (2, 3, 24, 20), F32)
    flat = ssim_map(a.reshape(6, 24, 20), b.reshape(6, 24, 20)).reshape(2, 3, 24, 20)
    assert torch.equal(ssim_map(a, b).detach(), flat.detach())
    # A channels-last view (a render permuted from (H, W, 3)) gives the same map.
    hwc = a.detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not hwc.is_contiguous()
    assert torch.equal(ssim_map(hwc, b.detach()), ssim_map(a.detach(), b.detach()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    a, b = images(5, (3, 30, 30), dtype)
    got = fused_ssim(a, b)
    assert got.dtype == dtype
    want = fused_ssim(a.detach().float(), b.detach().float())
    assert float(got.detach()) == pytest.approx(float(want), abs=1e-2)
    grad = torch.autograd.grad(got, a)[0]
    assert grad.dtype == dtype and bool(torch.isfinite(grad).all())


def test_train_false_and_no_grad_keep_nothing():
    a, b = images(6, (3, 20, 20), F32)
    value = fused_ssim(a, b, train=False)
    assert not value.requires_grad
    assert float(value) == float(fused_ssim(a, b).detach())
    plain = ssim_map(a.detach(), b.detach())
    assert not plain.requires_grad


@pytest.mark.parametrize("which", ["img1", "img2"])
def test_only_the_image_that_needs_it_gets_a_gradient(which):
    """The render alone (the forward keeps 3 partials), or the other image alone (4)."""
    a, b = images(7, (3, 22, 19))
    if which == "img1":
        b = b.detach()
    else:
        a = a.detach()
    loss = 1 - fused_ssim(a, b)
    loss.backward()
    leaf, other = (a, b) if which == "img1" else (b, a)
    want = torch.autograd.grad(1 - ssim_map_reference(a, b).mean(), leaf)[0]
    assert other.grad is None
    assert float((leaf.grad - want).abs().max()) < 1e-14


@pytest.mark.parametrize("weight", [0.2, 0.0, 1.0])
def test_fused_l1_ssim_loss_is_3dgs_photometric_loss(weight):
    a, b = images(9, (1, 3, 26, 31))
    b = b.detach()
    got = fused_l1_ssim_loss(a, b, weight)
    want = (1 - weight) * (a - b).abs().mean() + weight * (1 - ssim_map_reference(a, b).mean())
    assert float(got.detach()) == pytest.approx(float(want.detach()), abs=1e-14)
    g_got, g_want = (torch.autograd.grad(v, a)[0] for v in (got, want))
    assert float((g_got - g_want).abs().max()) < 1e-14


def test_bad_input_is_named():
    a = torch.rand(3, 20, 20)
    cases = [
        ((a.numpy(), a), TypeError, "img1: expected a torch.Tensor"),
        ((a, a.long()), TypeError, "img2: expected a floating tensor"),
        ((a, a[:, :19]), ValueError, "expected one shape"),
        ((a, a.double()), ValueError, "expected one dtype and device"),
        ((a, torch.empty(3, 20, 20, device="meta")), ValueError, "expected one dtype and device"),
        ((a[0, 0], a[0, 0]), ValueError, r"expected images \(\.\.\., H, W\)"),
        ((a, a, "full"), ValueError, "padding: expected 'same' or 'valid'"),
        ((a[:, :10], a[:, :10], "valid"), ValueError, "keeps no pixel"),
    ]
    for args, error, text in cases:
        with pytest.raises(error, match=text):
            fused_ssim(*args)


def test_upstream_fusedssim_as_the_2024_loss_utils_wraps_it():
    """The 2024 training code's utils/loss_utils.py: `fast_ssim` wraps the rasterizer's
    `fusedssim(C1, C2, img1, img2)` and `fusedssim_backward(C1, C2, img1, img2, dL_dmap)` in a
    Function of its own; with the imports from `.upstream`, that Function's gradient is
    the reference's."""
    class FusedSSIMMap(torch.autograd.Function):
        @staticmethod
        def forward(ctx, C1, C2, img1, img2):
            ssim = upstream.fusedssim(C1, C2, img1, img2)
            ctx.save_for_backward(img1.detach(), img2)
            ctx.C1, ctx.C2 = C1, C2
            return ssim

        @staticmethod
        def backward(ctx, grad):
            img1, img2 = ctx.saved_tensors
            return None, None, upstream.fusedssim_backward(ctx.C1, ctx.C2, img1, img2, grad), None

    a, b = images(8, (3, 33, 27), F32)
    b = b.detach()
    value = FusedSSIMMap.apply(0.01 ** 2, 0.03 ** 2, a, b).mean()
    got = torch.autograd.grad(value, a)[0]
    want_value = ssim_map_reference(a, b).mean()
    want = torch.autograd.grad(want_value, a)[0]
    assert float(value.detach()) == pytest.approx(float(want_value.detach()), abs=1e-6)
    assert float((got - want).abs().max()) <= 3e-5 * float(want.abs().max())
    # Other constants are the map's own.
    other = upstream.fusedssim(1e-3, 2e-3, a.detach(), b)
    assert float((other - ssim_map_reference(a.detach(), b, C1=1e-3, C2=2e-3)).abs().max()) < 3e-5


@pytest.mark.cuda
@pytest.mark.parametrize("device", cuda_targets())
@pytest.mark.parametrize("dtype", [F32, F64])
def test_cuda_kernels_match_the_cpu(device, dtype):
    # Several tiles, a partial tile on each side, several planes; on a GPU a larger image too.
    shapes = [(2, 3, 37, 53), (1, 1), (20, 3)]
    if not is_emulated(device):
        shapes.append((3, 840, 1296))
    for seed, shape in enumerate(shapes):
        a, b = images(10 + seed, shape, dtype)
        g = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        want = map_and_grads(ssim_map, a, b, g)
        with active(device):
            got = map_and_grads(ssim_map, a.detach().to(device), b.detach().to(device),
                                g.to(device))
            # The render's gradient alone: the kernels of 3 partials.
            render = a.detach().to(device).requires_grad_()
            got_a = torch.autograd.grad((ssim_map(render, b.detach().to(device)) * g.to(device))
                                        .sum(), render)[0]
        assert got[0].device.type == ("cpu" if is_emulated(device) else "cuda")
        got = got + (got_a,)
        want = want + (want[1],)
        # The same sums in the same order; nvcc fuses multiply-adds where the CPU does not.
        tol = 1e-12 if dtype == F64 else 2e-6
        for x, y in zip(got, want):
            scale = max(1.0, float(y.abs().max()))
            assert float((x.cpu() - y).abs().max()) <= tol * scale


@pytest.mark.cuda
@pytest.mark.skipif(not REAL_CUDA, reason="needs a CUDA GPU and the CUDA backend")
def test_cuda_more_planes_than_a_grid_holds():
    """More planes than gridDim.z's 65,535: the blocks loop over the rest."""
    a, b = images(20, (70000, 5, 6), F32)
    g = torch.randn(a.shape, generator=torch.Generator().manual_seed(0))
    want = map_and_grads(ssim_map, a, b, g)
    got = map_and_grads(ssim_map, a.detach().cuda(), b.detach().cuda(), g.cuda())
    for x, y in zip(got, want):
        assert float((x.cpu() - y).abs().max()) <= 2e-6 * max(1.0, float(y.abs().max()))
