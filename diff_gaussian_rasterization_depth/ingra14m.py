"""The depth fork of Deformable 3D Gaussians (ingra14m/depth-diff-gaussian-rasterization), which
4DGaussians, GaussianDreamer and many other projects carry: change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.ingra14m import ...` and nothing else.

    color, radii, depth = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

depth (1, H, W) is sum_i w_i z_i over the blended Gaussians, not normalized by the weight (the
fork's; the package's depth times its weight), 0 where nothing is blended. Its gradient is exact
on every branch of the fork's: the fork's `main` renders the depth without a gradient, its
`depth` branch adds the gradient through the blending weights, `depth-mean3D` the one through z
to means3D; here both, so a loss on the depth acts as on the fork's `depth-mean3D`, and code
that puts none on it trains as on `main`. The fork's `latest` branch returns a fourth map, the
accumulated alpha: that call is `diff_gaussian_rasterization_depth.ashawkey`'s.

`means2D_densify` (the `filter-norm` branch of the fork's successor,
diff-gaussian-rasterization-extentions, which Deformable 3D Gaussians renders with now): a
second screen-space carrier whose `.grad[:, :2]` is the absolute gradient, the sum over pixels
of |each pixel's part| (AbsGS's), in the units of means2D's. The package's (P, 4) carrier
(columns 2-3, doc/api.md) gives it; means2D keeps its own gradient.
"""

from .ashawkey import GaussianRasterizationSettings as _AshawkeySettings
from .ashawkey import GaussianRasterizer as _AshawkeyRasterizer
from .ashawkey import rasterize_gaussians as _rasterize_with_alpha
from ._forks import with_absolute_columns

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]

# The original's twelve fields; `confidence` (FSGS's, None by default) is never set here.
GaussianRasterizationSettings = _AshawkeySettings


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings, means2D_densify=None):
    """The fork's functional form and argument order; returns (color, radii, depth), depth
    (1, H, W) not normalized (module docstring)."""
    if means2D_densify is not None:
        means2D = with_absolute_columns("means2D_densify", means3D, means2D, means2D_densify)
    color, radii, depth, _alpha = _rasterize_with_alpha(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings)
    return color, radii, depth


class GaussianRasterizer(_AshawkeyRasterizer):
    """The fork's module: `markVisible` as the package's, `forward` returning
    (color, radii, depth), with `means2D_densify` (module docstring) by keyword."""

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None, means2D_densify=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings,
                                   means2D_densify=means2D_densify)
