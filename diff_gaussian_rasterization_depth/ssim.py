"""SSIM in one compiled pass each way (CPU and CUDA), for 3DGS's D-SSIM loss term:

    from diff_gaussian_rasterization_depth import fused_ssim
    loss = (1 - 0.2) * l1_loss(image, gt_image) + 0.2 * (1 - fused_ssim(image, gt_image))

The SSIM 3DGS trains with (utils/loss_utils.py's `ssim`): an 11 x 11 Gaussian window of sigma
1.5 over each channel, zero beyond the image, C1 = 0.01^2 and C2 = 0.03^2, averaged over every
pixel and channel. `fused_ssim(img1, img2, padding="same", train=True)` is the call of the
`fused_ssim` package (which the 2024 training code imports; CUDA only): change
`from fused_ssim import fused_ssim` into `from diff_gaussian_rasterization_depth import
fused_ssim`. It takes (B, C, H, W) as that package does, and also (C, H, W) or any (..., H, W).

Where PyTorch's version runs five convolutions forward and as many backward and keeps a dozen
image-sized tensors for autograd, the forward here blurs the five products (a, b, a^2, b^2,
ab) in two separable passes of one loop (CPU) or kernel (CUDA) and keeps the formula's four
partial derivatives per pixel; the backward blurs their products with the map's gradient (the
window is its own transpose) in one more pass. Gradients reach both images (the package's
reach the first only). float32 and float64; float16 and bfloat16 are computed in float32.
`fused_l1_ssim_loss(img1, img2, ssim_weight=0.2)` is the whole photometric loss, as that
package's call of the name. `ssim_map` returns the map itself (differentiable, any C1, C2),
and `reference.ssim_map_reference` is its PyTorch twin, the test oracle (tests/test_ssim.py).
"""
import torch

from . import _backend
from ._validation import _describe

__all__ = ["fused_ssim", "fused_l1_ssim_loss", "ssim_map", "fusedssim", "fusedssim_backward"]

C1 = 0.01 ** 2
C2 = 0.03 ** 2
_RADIUS = 5  # the window's reach on each side of a pixel
_COMPUTED = (torch.float32, torch.float64)


class _FusedSsimMap(torch.autograd.Function):
    """The full ("same") map of planes (N, H, W); the partials kept only for the inputs that
    need a gradient (3 planes of the images' size for img1, 4 for img2 too)."""

    @staticmethod
    def forward(ctx, a, b, c1, c2):
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # 3 partials serve img1's gradient (the render's); img2's (rarely asked) takes a 4th.
        ssim, partials = _backend.ssim_forward(a, b, c1, c2, 4 if need_b else 3 if need_a else 0)
        if need_a or need_b:
            ctx.save_for_backward(a, b, partials)
        return ssim

    @staticmethod
    def backward(ctx, grad_map):
        a, b, partials = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a, grad_b = _backend.ssim_backward(a, b, grad_map.contiguous(), partials, need_a,
                                                need_b)
        return grad_a if need_a else None, grad_b if need_b else None, None, None


def _check(where, img1, img2, padding):
    """img1 and img2 as float32/float64 planes (N, H, W), contiguous, after the checks a user
    needs to read (the compiled functions only guard their pointers)."""
    for name, t in (("img1", img1), ("img2", img2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: {name}: expected a torch.Tensor, got {_describe(t)}")
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name}: expected a floating tensor, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{where}: {name}: expected images (..., H, W), got shape "
                             f"{tuple(t.shape)}")
    if img1.shape != img2.shape:
        raise ValueError(f"{where}: img1 and img2: expected one shape, got {tuple(img1.shape)} "
                         f"and {tuple(img2.shape)}")
    if img1.dtype != img2.dtype or img1.device != img2.device:
        raise ValueError(f"{where}: img1 and img2: expected one dtype and device, got "
                         f"{_describe(img1)} and {_describe(img2)}")
    if padding not in ("same", "valid"):
        raise ValueError(f"{where}: padding: expected 'same' or 'valid', got {padding!r}")
    if padding == "valid" and min(img1.shape[-2:]) <= 2 * _RADIUS:
        raise ValueError(f"{where}: padding 'valid' keeps no pixel of a {img1.shape[-2]} x "
                         f"{img1.shape[-1]} image (the window reaches {_RADIUS} pixels)")
    _backend._check_device(img1.device)
    compute = img1.dtype if img1.dtype in _COMPUTED else torch.float32
    height, width = img1.shape[-2:]
    return tuple(t.to(compute).reshape(-1, height, width).contiguous() for t in (img1, img2))


def _map(where, img1, img2, padding, c1, c2):
    a, b = _check(where, img1, img2, padding)
    ssim = _FusedSsimMap.apply(a, b, float(c1), float(c2)).reshape(img1.shape)
    if padding == "valid":
        ssim = ssim[..., _RADIUS:img1.shape[-2] - _RADIUS, _RADIUS:img1.shape[-1] - _RADIUS]
    return ssim.to(img1.dtype)


@_backend.run_eagerly_under_compile
def ssim_map(img1, img2, padding="same", C1=C1, C2=C2):
    """The per-pixel SSIM of img1 against img2 (..., H, W), of their shape ("same") or 5
    pixels smaller on each side ("valid": the pixels whose window lies inside the image).
    Differentiable in both images."""
    return _map("ssim_map", img1, img2, padding, C1, C2)


@_backend.run_eagerly_under_compile
def fused_ssim(img1, img2, padding="same", train=True):
    """The mean SSIM of img1 against img2 (the `fused_ssim` package's call): images (B, C, H,
    W), or any (..., H, W), of one dtype and device; padding "same" (3DGS's) or "valid".
    train=False computes the value alone, without gradient (evaluation)."""
    if not train:
        with torch.no_grad():
            return _map("fused_ssim", img1, img2, padding, C1, C2).mean()
    return _map("fused_ssim", img1, img2, padding, C1, C2).mean()


@_backend.run_eagerly_under_compile
def fused_l1_ssim_loss(img1, img2, ssim_weight=0.2, padding="same"):
    """3DGS's photometric loss, (1 - w) * mean |img1 - img2| + w * (1 - SSIM), with w =
    ssim_weight (3DGS's lambda_dssim, 0.2): the `fused_ssim` package's call of that name. The
    SSIM is `fused_ssim`'s; the L1 term one PyTorch reduction beside it."""
    ssim = fused_ssim(img1, img2, padding)
    l1 = (img1 - img2).abs().mean()
    return (1.0 - ssim_weight) * l1 + ssim_weight * (1.0 - ssim)


# The 2024 upstream rasterizer's two SSIM functions (its `_C.fusedssim`, `_C.fusedssim_backward`,
# which the 2024 training code's utils/loss_utils.py wraps as `fast_ssim`).

@_backend.run_eagerly_under_compile
@torch.no_grad()
def fusedssim(C1, C2, img1, img2):
    """The SSIM map of img1 against img2 (padding "same"), without gradient."""
    return _map("fusedssim", img1, img2, "same", C1, C2)


@_backend.run_eagerly_under_compile
def fusedssim_backward(C1, C2, img1, img2, dL_dmap):
    """dL/d img1 of the map `fusedssim(C1, C2, img1, img2)` from dL/d map."""
    with torch.enable_grad():
        a = img1.detach().requires_grad_()
        ssim = _map("fusedssim_backward", a, img2.detach(), "same", C1, C2)
        if not isinstance(dL_dmap, torch.Tensor) or dL_dmap.shape != ssim.shape:
            raise ValueError(f"fusedssim_backward: dL_dmap: expected the map's shape "
                             f"{tuple(ssim.shape)}, got {_describe(dL_dmap)}")
        return torch.autograd.grad(ssim, a, dL_dmap.to(ssim.dtype))[0]
