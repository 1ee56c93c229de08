"""Feature 3DGS's rasterizer API (the `diff-gaussian-rasterization-feature` submodule of
ShijieZhou-UCLA/feature-3dgs, Zhou et al., CVPR 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.feature_3dgs import ...` and nothing else.

    color, feature_map, radii, depth = GaussianRasterizer(settings)(
        means3D, means2D, opacities, shs=..., semantic_feature=S, colors_precomp=..., ...)

- feature_map (D, H, W) = sum_i w_i S_i, the Gaussians' semantic features S ((P, 1, D) as
  Feature 3DGS stores them, or (P, D)) blended with the colour's weights and no background;
  Feature 3DGS compiles D into its kernel (NUM_SEMANTIC_CHANNELS in config.h, edited and rebuilt
  for each feature model); here any D works, no rebuild. None: an empty (0, H, W) map.
- depth (1, H, W) = sum_i w_i z_i, not normalized (the fork's; the package's depth times its
  weight).
- The gradients of all three maps reach S and every Gaussian input (S's in its own shape).
"""
from . import GaussianRasterizationSettings as _PackageSettings
from ._forks import ForkRasterizer, render_with_features

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]

# The original's twelve fields (the package's class: its own fields after them have defaults).
GaussianRasterizationSettings = _PackageSettings


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, semantic_feature, opacities,
                        scales, rotations, cov3Ds_precomp, raster_settings):
    """Feature 3DGS's functional form and argument order; returns (color, feature_map, radii,
    depth)."""
    color, radii, depth, weight, feature_map = render_with_features(
        "semantic_feature", semantic_feature, means3D, means2D, sh, colors_precomp, opacities,
        scales, rotations, cov3Ds_precomp, raster_settings)
    return color, feature_map, radii, (depth * weight).unsqueeze(0)


class GaussianRasterizer(ForkRasterizer):
    """Feature 3DGS's module: `markVisible` as the package's, `forward` (semantic_feature after
    shs) returning (color, feature_map, radii, depth)."""

    def forward(self, means3D, means2D, opacities, shs=None, semantic_feature=None,
                colors_precomp=None, scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, semantic_feature,
                                   opacities, scales, rotations, cov3D_precomp,
                                   self.raster_settings)
