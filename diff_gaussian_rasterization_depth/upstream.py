"""The 2024 upstream's API (graphdeco-inria diff-gaussian-rasterization, 3dgs_accel): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer
    from diff_gaussian_rasterization import SparseGaussianAdam

into `from diff_gaussian_rasterization_depth.upstream import ...` and nothing else.

    color, radii, invdepth = GaussianRasterizer(settings)(means3D, means2D, opacities, dc, shs, ...)

`invdepth` (1, H, W) is sum_i w_i / z_i over the blended Gaussians (no background, not
normalized), what the 2024 training code's depth regularization (`-d`) compares with inverse
monocular depth. Note the third output: the package's own `GaussianRasterizer` returns the
expected depth z there (and the weight fourth); unpacking its outputs as the upstream's feeds z
into an inverse-depth loss.

How: 1/z_i is computed here in PyTorch (differentiable, so the loss reaches means3D through it)
and blended as a one-channel feature, so one render gives colour and inverse depth, and the
gradient of invdepth reaches every input through the blending weights too.
"""
import torch

from . import GaussianRasterizationSettings, GaussianRasterizer as _DepthRasterizer
from . import rasterize_gaussians as _rasterize_with_features
from ._validation import _require_shape, _require_tensor, _small_tensor
from .reference import NEAR_PLANE
from .sparse_adam import SparseGaussianAdam

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "SparseGaussianAdam"]


def _inverse_view_depth(means3D: torch.Tensor, viewmatrix: torch.Tensor) -> torch.Tensor:
    """(P, 1) 1/z of each mean in view space; 0 where z <= the near plane (those Gaussians are
    culled, never blended), so no inf or NaN enters the render or its gradient."""
    view = viewmatrix.reshape(4, 4).to(device=means3D.device, dtype=means3D.dtype)
    z = means3D @ view[:3, 2] + view[3, 2]   # [p, 1] @ M, transposed layout (SPEC 4)
    in_front = z > NEAR_PLANE
    return torch.where(in_front, 1 / torch.where(in_front, z, torch.ones_like(z)),
                       torch.zeros_like(z)).unsqueeze(1)


def rasterize_gaussians(means3D, means2D, dc, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The upstream's functional form and argument order; returns (color, radii, invdepth)."""
    # 1/z is computed before the package checks everything else: these two must be sound first.
    _require_shape("means3D", _require_tensor("means3D", means3D), [(None, 3)], "(P, 3)")
    _small_tensor("viewmatrix", raster_settings.viewmatrix, 16)
    inverse_depth = _inverse_view_depth(means3D, raster_settings.viewmatrix)
    color, radii, _depth, _weight, invdepth = _rasterize_with_features(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings, dc=dc, features=inverse_depth)
    return color, radii, invdepth


class GaussianRasterizer(_DepthRasterizer):
    """The upstream's module: `markVisible` as the package's, `forward` with dc 4th."""

    def forward(self, means3D, means2D, opacities, dc=None, shs=None, colors_precomp=None,
                scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, dc, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings)
