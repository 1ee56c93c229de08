"""Gaussian Grouping's rasterizer API (the `diff-gaussian-rasterization` submodule of
lkeab/gaussian-grouping, Ye et al., ECCV 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.gaussian_grouping import ...` and nothing else.

    color, radii, rendered_objects = GaussianRasterizer(settings)(
        means3D, means2D, opacities, shs=..., sh_objs=E, colors_precomp=..., ...)

rendered_objects (K, H, W) = sum_i w_i E_i, the Gaussians' identity encodings E ((P, 1, K) as
Gaussian Grouping stores them, or (P, K)) taken as they are (no SH evaluation, as the fork's)
and blended with the colour's weights and no background; its gradient reaches E and every
Gaussian input. The fork compiles K = 16 (NUM_OBJECTS); here any K works. None: an empty
(0, H, W) map.
"""
from . import GaussianRasterizationSettings as _PackageSettings
from ._forks import ForkRasterizer, render_with_features

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]

# The original's twelve fields (the package's class: its own fields after them have defaults).
GaussianRasterizationSettings = _PackageSettings


def rasterize_gaussians(means3D, means2D, sh, sh_objs, colors_precomp, opacities, scales,
                        rotations, cov3Ds_precomp, raster_settings):
    """Gaussian Grouping's functional form and argument order; returns (color, radii,
    rendered_objects)."""
    color, radii, _, _, rendered_objects = render_with_features(
        "sh_objs", sh_objs, means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
        cov3Ds_precomp, raster_settings)
    return color, radii, rendered_objects


class GaussianRasterizer(ForkRasterizer):
    """Gaussian Grouping's module: `markVisible` as the package's, `forward` (sh_objs after
    shs) returning (color, radii, rendered_objects)."""

    def forward(self, means3D, means2D, opacities, shs=None, sh_objs=None, colors_precomp=None,
                scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, shs, sh_objs, colors_precomp, opacities,
                                   scales, rotations, cov3D_precomp, self.raster_settings)
