"""The original (2023) rasterizer's API, two outputs: change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.original import ...` and nothing else.

    color, radii = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

For code written against graphdeco-inria's package before its 2024 update (the 3DGS training
code up to April 2024 and the many projects built on it), which unpacks two outputs. The
render is the package's: the same colour, radii and gradients as the four-output call with a
loss on the colour alone. The depth and weight maps are rendered beside the colour (they cost
next to nothing there) and dropped; no gradient is ever computed for them. When you want them,
switch to the package's own `GaussianRasterizer` and unpack four.
"""
from . import GaussianRasterizationSettings
from . import rasterize_gaussians as _rasterize
from ._forks import ForkRasterizer

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The original's functional form and argument order; returns (color, radii)."""
    color, radii, _depth, _weight = _rasterize(means3D, means2D, sh, colors_precomp, opacities,
                                               scales, rotations, cov3Ds_precomp,
                                               raster_settings)
    return color, radii


class GaussianRasterizer(ForkRasterizer):
    """The original's module: `markVisible` as the package's, `forward` returning
    (color, radii)."""

    functional = staticmethod(rasterize_gaussians)
