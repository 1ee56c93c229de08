"""3DGS-MCMC's rasterizer API (the `gs-mcmc` branch of shakibakh/diff-gaussian-rasterization, the
submodule of ubc-vision/3dgs-mcmc, Kheradmand et al., NeurIPS 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer
    from diff_gaussian_rasterization import compute_relocation

into `from diff_gaussian_rasterization_depth.mcmc import ...` and nothing else.

    color, radii, is_used = GaussianRasterizer(settings)(means3D, means2D, opacities, ...)
    new_opacity, new_scale = compute_relocation(opacity_old, scale_old, N, binoms, n_max)

`is_used` (P,) int32 is 1 for each Gaussian blended at one pixel at least, as the fork's; it
comes from the package's contribution statistics (`contributions=True`), a walk of the tile
lists of its own after the render. 3DGS-MCMC's training never reads it:
`GaussianRasterizer(settings, is_used=False)` returns None in its place and skips the walk.

Not reproduced: the fork's preprocess cuts each Gaussian's tile rectangle at a radius of
sqrt(min(2 ln(255 o), 3.3)) standard deviations (1.8 for any opacity above 0.02), so its
renders lose the part of a splat beyond that radius and outside the tiles it still covers;
the package keeps the original's 3-sigma square, cut to the tiles where alpha can reach 1/255
(StopThePop's bound, exactly: no pixel changes). A model trained with the fork renders a little
differently here; training here is the original's rendering with MCMC's relocation.
"""
import torch

from . import GaussianRasterizationSettings
from . import GaussianRasterizer as _DepthRasterizer
from . import rasterize_gaussians as _rasterize
from .relocation import compute_relocation

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "compute_relocation"]


def _used(contribution: torch.Tensor) -> torch.Tensor:
    """The fork's is_used from the statistics: the pixels a Gaussian is blended at, > 0."""
    return (contribution[:, 2] > 0).to(torch.int32)


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings, is_used=True):
    """The fork's functional form and argument order; returns (color, radii, is_used), with
    None for is_used when `is_used` is False."""
    if not isinstance(is_used, bool):
        raise TypeError(f"is_used: expected a bool, got {type(is_used).__name__}")
    out = _rasterize(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                     cov3Ds_precomp, raster_settings, contributions=is_used)
    return out[0], out[1], (_used(out[4]) if is_used else None)


class GaussianRasterizer(_DepthRasterizer):
    """The fork's module: `markVisible` as the package's, `forward` returning
    (color, radii, is_used)."""

    def __init__(self, raster_settings, is_used=True):
        super().__init__(raster_settings)
        if not isinstance(is_used, bool):
            raise TypeError(f"is_used: expected a bool, got {type(is_used).__name__}")
        self.is_used = is_used

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings,
                                   self.is_used)
