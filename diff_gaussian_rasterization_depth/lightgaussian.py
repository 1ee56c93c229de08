"""LightGaussian's rasterizer API (compress-diff-gaussian-rasterization, the submodule of
VITA-Group/LightGaussian, Fan et al., NeurIPS 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.lightgaussian import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., debug=False, f_count=True)
    gaussians_count, important_score, color, radii = GaussianRasterizer(settings)(means3D, ...)

The settings are the original's 12 fields and `f_count`. With f_count False the rasterizer is
the original's, `(color, radii)`, differentiable. With f_count True it also counts, as the fork
does, for each Gaussian the pixels where it is blended (`gaussians_count`, int32) and the sum
over them of its opacity times the transmittance in front of it (`important_score`, o T, its
global significance before the volume factor): the package's contribution statistics, columns 2
and 4 (`contributions=True`, a walk of the tile lists of its own after the render). As the
fork's counting call, it takes no gradient. For the depth and weight maps, call the package's
`GaussianRasterizer(package_settings(settings))`.
"""
from typing import NamedTuple

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import rasterize_gaussians as _rasterize
from ._forks import ForkRasterizer

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "package_settings"]


class GaussianRasterizationSettings(NamedTuple):
    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool
    debug: bool
    f_count: bool = False


def package_settings(settings: GaussianRasterizationSettings) -> _PackageSettings:
    """The package's settings of the same call (its first 12 fields)."""
    return _PackageSettings(*settings[:12])


def _check_flag(settings) -> bool:
    f_count = settings.f_count
    if not isinstance(f_count, bool):
        raise TypeError(f"raster_settings.f_count: expected a bool, got {type(f_count).__name__}")
    return f_count


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The fork's functional form and argument order: (color, radii), or with f_count
    (gaussians_count, important_score, color, radii) without gradient."""
    args = (means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
            package_settings(raster_settings))
    if not _check_flag(raster_settings):
        return _rasterize(*args)[:2]
    with torch.no_grad():
        color, radii, _, _, contribution = _rasterize(*args, contributions=True)
    return contribution[:, 2].to(torch.int32), contribution[:, 4], color, radii


class GaussianRasterizer(ForkRasterizer):
    """The fork's module: `markVisible` as the package's; `forward` returning (color, radii),
    or with `f_count` (gaussians_count, important_score, color, radii); `forward_count` the
    latter, for settings with f_count set."""

    to_package = staticmethod(package_settings)
    functional = staticmethod(rasterize_gaussians)

    def forward_count(self, means3D, means2D, opacities, shs=None, colors_precomp=None,
                      scales=None, rotations=None, cov3D_precomp=None):
        if not _check_flag(self.raster_settings):
            raise ValueError("forward_count: raster_settings.f_count must be True (the fork "
                             "asserts it)")
        return self.forward(means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                            cov3D_precomp)
