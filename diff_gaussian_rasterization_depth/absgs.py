"""AbsGS's rasterizer API (`diff_gaussian_rasterization_abs`, the submodule of TY424/AbsGS, Ye
et al., ACM MM 2024): change

    from diff_gaussian_rasterization_abs import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.absgs import ...` and nothing else.

    means2D = torch.zeros((P, 4), requires_grad=True) + 0      # AbsGS's carrier
    color, radii, gs_w = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

- `means2D` (P, 4): `.grad[:, :2]` is dL/d NDC, `.grad[:, 2:]` the sum over pixels of |each
  pixel's part| of it (AbsGS's homodirectional gradient, which it densifies by): the package's
  (P, 4) carrier (doc/api.md), the same definition.
- gs_w (P,): each Gaussian's weight sum over the pixels where it is blended, sum_p alpha T (the
  largest over views is what AbsGS prunes by), without gradient: column 0 of the package's
  contribution statistics (`contributions=True`, a walk of the tile lists of its own after the
  render, where AbsGS's kernel adds an atomic per blended pixel to its render).

The settings are the original's 12 fields. For the depth and weight maps, call the package's
`GaussianRasterizer` with the same settings.
"""
from . import GaussianRasterizationSettings
from . import rasterize_gaussians as _rasterize
from ._forks import ForkRasterizer

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """AbsGS's functional form and argument order; returns (color, radii, gs_w)."""
    color, radii, _depth, _weight, contribution = _rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings, contributions=True)
    return color, radii, contribution[:, 0]


class GaussianRasterizer(ForkRasterizer):
    """AbsGS's module: `markVisible` as the package's, `forward` returning (color, radii,
    gs_w)."""

    functional = staticmethod(rasterize_gaussians)
