"""LangSplat's rasterizer API (minghanqin/langsplat-rasterization, Qin et al., CVPR 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.langsplat import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., debug=..., include_feature=True)
    color, language_feature_image, radii = GaussianRasterizer(settings)(
        means3D, means2D, opacities, shs=..., colors_precomp=...,
        language_feature_precomp=F, scales=..., rotations=..., cov3D_precomp=...)

With `include_feature`, language_feature_image (C, H, W) = sum_i w_i F_i, the Gaussians'
language features F (P, C) blended with the colour's weights and no background, and the
gradient reaches F and, through the weights, every Gaussian input, as LangSplat's. LangSplat's
kernel is compiled for C = 3; here any C works, no rebuild. Without it, language_feature_image
is a zero tensor of one value and `language_feature_precomp` is not read, as LangSplat's: the
render costs what the plain colour call does.
"""
from ._forks import ForkRasterizer, render_with_features, settings_class

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


# The original's twelve fields, then LangSplat's `include_feature`.
GaussianRasterizationSettings = settings_class(__name__, "include_feature", bool, False)


def _include_feature(settings) -> bool:
    flag = settings.include_feature
    if not isinstance(flag, bool):
        raise TypeError(f"raster_settings.include_feature: expected a bool, got "
                        f"{type(flag).__name__}")
    return flag


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, language_feature_precomp,
                        opacities, scales, rotations, cov3Ds_precomp, raster_settings):
    """LangSplat's functional form and argument order; returns (color,
    language_feature_image, radii)."""
    if not _include_feature(raster_settings):
        color, radii, _, _, _ = render_with_features(
            "language_feature_precomp", None, means3D, means2D, sh, colors_precomp, opacities,
            scales, rotations, cov3Ds_precomp, raster_settings)
        return color, color.new_zeros(1), radii
    color, radii, _, _, language_feature_image = render_with_features(
        "language_feature_precomp", language_feature_precomp, means3D, means2D, sh,
        colors_precomp, opacities, scales, rotations, cov3Ds_precomp, raster_settings)
    return color, language_feature_image, radii


class GaussianRasterizer(ForkRasterizer):
    """LangSplat's module: `markVisible` as the package's, `forward` returning (color,
    language_feature_image, radii)."""

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None,
                language_feature_precomp=None, scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp,
                                   language_feature_precomp, opacities, scales, rotations,
                                   cov3D_precomp, self.raster_settings)
