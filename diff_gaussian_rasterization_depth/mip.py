"""Mip-Splatting's rasterizer API (the `diff-gaussian-rasterization` submodule of
autonomousvision/mip-splatting, Yu et al., CVPR 2024, which Gaussian Opacity Fields and other
forks carry too): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.mip import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., tanfovy=..., kernel_size=0.1,
                                             subpixel_offset=None or zeros (H, W, 2), bg=..., ...)
    color, radii = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

Mip-Splatting's 2D filter: each projected covariance is dilated by `kernel_size` px^2 (in
place of the original's 0.3) and the opacity scaled by sqrt(det / det_dilated), which keeps a
Gaussian's integral as the filter widens it: the package's `kernel_size` and `antialiasing=True`.
Its 3D filter lives in the training code (the model's scales and opacities), untouched here.

For the depth and weight maps (and everything else the package renders) with the same filter,
give the package's rasterizer `package_settings(settings)`:

    color, radii, depth, weight = diff_gaussian_rasterization_depth.GaussianRasterizer(
        package_settings(settings))(means3D, means2D, opacities, ...)

`subpixel_offset` ((H, W, 2), or None) moves each pixel's sample point, as Mip-Splatting's
`--ray_jitter` does with uniform offsets in [-0.5, 0.5): pixel (x, y) samples the splats at
(x + o[y, x, 0], y + o[y, x, 1]) in the forward and the backward alike. Zeros or None sample
every pixel at its own coordinates; reading the offsets is a reduction and, on a GPU, one host
sync per call (None skips it). No gradient reaches them, as in Mip-Splatting.
"""
from typing import NamedTuple, Optional

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from .original import rasterize_gaussians as _color_and_radii
from ._forks import ForkRasterizer

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "package_settings"]


class GaussianRasterizationSettings(NamedTuple):
    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    kernel_size: float
    subpixel_offset: Optional[torch.Tensor]  # (H, W, 2) sample offsets, or None
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool = False
    debug: bool = False


def package_settings(settings: GaussianRasterizationSettings) -> _PackageSettings:
    """The package's settings of a Mip-Splatting call: its filter is `kernel_size` with the
    opacity compensation (`antialiasing=True`), its sample offsets `subpixel_offset`."""
    return _PackageSettings(settings.image_height, settings.image_width, settings.tanfovx,
                            settings.tanfovy, settings.bg, settings.scale_modifier,
                            settings.viewmatrix, settings.projmatrix, settings.sh_degree,
                            settings.campos, settings.prefiltered, settings.debug,
                            antialiasing=True, kernel_size=settings.kernel_size,
                            subpixel_offset=settings.subpixel_offset)


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """Mip-Splatting's functional form and argument order; returns (color, radii)."""
    return _color_and_radii(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                            cov3Ds_precomp, package_settings(raster_settings))


class GaussianRasterizer(ForkRasterizer):
    """Mip-Splatting's module: `markVisible` as the package's (no pixel is sampled: the
    offsets play no part), `forward` returning (color, radii)."""

    to_package = staticmethod(package_settings)
    functional = staticmethod(rasterize_gaussians)
