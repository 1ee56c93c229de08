"""The 2024 upstream's API (graphdeco-inria diff-gaussian-rasterization, 3dgs_accel): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer
    from diff_gaussian_rasterization import SparseGaussianAdam
    from diff_gaussian_rasterization._C import fusedssim, fusedssim_backward  # loss_utils.py

into `from diff_gaussian_rasterization_depth.upstream import ...` and nothing else.

    color, radii, invdepth = GaussianRasterizer(settings)(means3D, means2D, opacities, dc, shs, ...)

`invdepth` (1, H, W) is sum_i w_i / z_i over the blended Gaussians (no background, not
normalized), what the 2024 training code's depth regularization (`-d`) compares with inverse
monocular depth. Note the third output: the package's own `GaussianRasterizer` returns the
expected depth z there (and the weight fourth); unpacking its outputs as the upstream's feeds z
into an inverse-depth loss.

How: the render's own depth channel blends 1/z_i instead of z_i (`inverse_depth=True`), so
the call costs what the plain one does, and invdepth = depth * weight (the channel is
normalized by the weight). Its gradient reaches means3D through 1/z and every input through
the blending weights, as the upstream's does.
"""
from . import GaussianRasterizationSettings, GaussianRasterizer as _DepthRasterizer
from . import rasterize_gaussians as _rasterize
from .sparse_adam import SparseGaussianAdam
from .ssim import fusedssim, fusedssim_backward

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "SparseGaussianAdam", "fusedssim", "fusedssim_backward"]


def rasterize_gaussians(means3D, means2D, dc, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The upstream's functional form and argument order; returns (color, radii, invdepth)."""
    color, radii, inverse_depth, weight = _rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings, dc=dc, inverse_depth=True)
    return color, radii, (inverse_depth * weight).unsqueeze(0)


class GaussianRasterizer(_DepthRasterizer):
    """The upstream's module: `markVisible` as the package's, `forward` with dc 4th."""

    def forward(self, means3D, means2D, opacities, dc=None, shs=None, colors_precomp=None,
                scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, dc, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings)
