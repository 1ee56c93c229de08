"""The depth fork of DreamGaussian (ashawkey/diff-gaussian-rasterization), which FSGS,
DNGaussian, LGM and many other projects carry, and FSGS's `confidence` variant of it
(diff-gaussian-rasterization-confidence): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.ashawkey import ...` and nothing else.

    color, radii, depth, alpha = GaussianRasterizer(settings)(means3D, means2D, opacities,
                                                              shs=..., colors_precomp=..., ...)

- depth (1, H, W): sum_i w_i z_i over the blended Gaussians, not normalized by the weight (the
  fork's; the package's depth times its weight), 0 where nothing is blended;
- alpha (1, H, W): sum_i w_i, the accumulated alpha (the package's weight);
- both with exact gradients, through z_i to means3D and through the blending weights to means,
  opacities, scales, rotations or cov3D_precomp, and means2D.

Watch the depth: the package's own `GaussianRasterizer` returns four outputs in the same order,
but its depth is normalized (sum_i w_i z_i / sum_i w_i). Importing it in place of this module
runs, and silently changes what a depth loss sees wherever the weight is below 1.

The settings are the original's twelve fields, and FSGS's thirteenth, `confidence`: a tensor of
one value per Gaussian ((P, 1) in FSGS) that multiplies the gradients the render sends to each
Gaussian's means3D, shs, colors_precomp, opacities, scales, rotations and cov3D_precomp (not to
means2D, and no gradient reaches the confidence itself), as FSGS's wrapper does. Left out or
None, nothing is scaled and nothing is added to the call.
"""
from typing import Optional

import torch

from . import rasterize_gaussians as _rasterize
from ._forks import ForkRasterizer, package_settings, settings_class
from ._validation import optional_float_tensor

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


# The original's twelve fields, then FSGS's `confidence`: (P, 1), scales each Gaussian's gradient.
GaussianRasterizationSettings = settings_class(__name__, "confidence", Optional[torch.Tensor], None)


class _ScaledGradient(torch.autograd.Function):
    """The identity forward; the gradient of row i multiplied by scale[i] backward."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        per_row = scale.reshape((-1,) + (1,) * (grad.dim() - 1)).to(grad)
        return grad * per_row, None


def _confidence(settings, means3D) -> Optional[torch.Tensor]:
    """FSGS's confidence, checked; None where there is none to apply (a means3D that is not a
    tensor is left to the package's own check)."""
    confidence = getattr(settings, "confidence", None)
    if confidence is None or not isinstance(means3D, torch.Tensor):
        return None
    P = means3D.shape[0] if means3D.dim() else 0
    optional_float_tensor("confidence", confidence)
    if confidence.device != means3D.device:
        raise ValueError(f"raster_settings.confidence: expected it on {means3D.device} (as "
                         f"means3D), got {confidence.device}")
    if confidence.numel() != P:
        raise ValueError(f"raster_settings.confidence: expected one value per Gaussian ({P}), "
                         f"got shape {tuple(confidence.shape)}")
    return confidence.detach()


def _with_confidence(confidence, tensors):
    """Each tensor that takes a gradient, wrapped so that its gradient is scaled per Gaussian."""
    if confidence is None or not torch.is_grad_enabled():
        return tensors
    return [t if t is None or not t.requires_grad or t.numel() == 0
            else _ScaledGradient.apply(t, confidence) for t in tensors]


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The fork's functional form and argument order; returns (color, radii, depth, alpha),
    depth and alpha (1, H, W), depth not normalized (module docstring)."""
    confidence = _confidence(raster_settings, means3D)
    means3D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp = _with_confidence(
        confidence, [means3D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp])
    color, radii, depth, weight = _rasterize(means3D, means2D, sh, colors_precomp, opacities,
                                             scales, rotations, cov3Ds_precomp,
                                             package_settings(raster_settings))
    return color, radii, (depth * weight).unsqueeze(0), weight.unsqueeze(0)


class GaussianRasterizer(ForkRasterizer):
    """The fork's module: `markVisible` as the package's, `forward` returning
    (color, radii, depth, alpha)."""

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings)
