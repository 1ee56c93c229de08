"""PGSR's rasterizer API (`diff_plane_rasterization`, the submodule of zju3dv/PGSR, Chen et al.,
2024): change

    from diff_plane_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.pgsr import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., campos=..., prefiltered=False,
                                             render_geo=True, debug=False)
    color, radii, out_observe, out_all_map, plane_depth = GaussianRasterizer(settings)(
        means3D, means2D, means2D_abs, opacities, shs=..., scales=..., rotations=...,
        all_map=all_map)

- out_all_map (5, H, W): `all_map` (P, 5) blended with the colour's weights, sum_i w_i a_i
  (no background). PGSR passes each Gaussian's view-space normal (3), a 1 (so channel 3 is the
  weight map) and its plane's distance |n . t| (1): the package's feature channels, with their
  exact gradients to `all_map` and, through the weights, to every Gaussian input.
- plane_depth (1, H, W): where each pixel's ray r = ((x - W/2) / f_x, (y - H/2) / f_y, 1) meets
  the blended plane, `out_all_map[4] / -(N . r + 1e-8)` with N = out_all_map[:3], PGSR's
  formula to the epsilon, in PyTorch on the feature map (its gradient is autograd's).
- out_observe (P,) int32: the pixels where each Gaussian is blended with the transmittance in
  front of it above 0.5 (PGSR counts before the blend, MonoGS's `n_touched` after it: the
  package's `touch_count` plus each pixel's median Gaussian where the transmittance crosses
  0.5, read through `median_gaussian`); no gradient. PGSR prunes by `out_observe > 0`.
- `means2D_abs`: a second screen-space carrier whose `.grad[:, :2]` is the absolute gradient,
  the sum over pixels of |each pixel's part| (AbsGS's; PGSR densifies by it), the package's
  (P, 4) carrier's columns 2-3 (doc/api.md), of the whole loss: the colour's and, as PGSR's,
  those on `out_all_map` and `plane_depth` (their part through each pixel's alpha).
  means2D's own gradient is the whole dL/d NDC, as PGSR's.

With `render_geo=False` (PGSR's training before its geometric losses start, and its multi-view
pruning pass) nothing but the colour, radii and out_observe is rendered: out_all_map and
plane_depth are zeros, and `all_map` is not read (nor needed). PGSR's kernel, like the
original's, leaves the quaternion's normalization to the training code, as the package does.
"""
import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import rasterize_gaussians as _rasterize
from ._forks import (ORIGINAL_FIELDS, ForkRasterizer, _per_gaussian, centred_rays, fork_settings,
                     with_absolute_columns)

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "package_settings", "plane_depth", "ALL_MAP_CHANNELS"]

# PGSR's NUM_ALL_MAP: normal (3), alpha (1), distance (1); its plane depth reads 0-2 and 4.
ALL_MAP_CHANNELS = 5
# PGSR's guard in the plane depth's denominator (added, not a floor: its sign is the plane's).
PLANE_EPS = 1.0e-8

# PGSR's fields: the original's up to prefiltered, then render_geo, then debug.
GaussianRasterizationSettings = fork_settings(
    __name__, ORIGINAL_FIELDS[:11] + ("render_geo", "debug"), {"render_geo": bool},
    {"prefiltered": False, "render_geo": True, "debug": False})


def package_settings(settings: GaussianRasterizationSettings) -> _PackageSettings:
    """The package's settings of PGSR's: the original's fields (render_geo is the call's)."""
    return _PackageSettings(*settings[:11], debug=settings.debug)


def _checked_all_map(all_map, means3D):
    """all_map as (P, 5) channels, checked as the forks' per-Gaussian values are (a tensor of
    means3D's dtype and device, one row per Gaussian; errors name it), and five wide."""
    if all_map is None or (isinstance(all_map, torch.Tensor) and all_map.numel() == 0):
        raise ValueError(f"all_map: render_geo=True renders it: expected (P, "
                         f"{ALL_MAP_CHANNELS}) per-Gaussian values, got none")
    all_map = _per_gaussian("all_map", all_map, means3D)
    if all_map.dim() == 2 and all_map.shape[1] != ALL_MAP_CHANNELS:
        raise ValueError(f"all_map: expected (P, {ALL_MAP_CHANNELS}) (normal, alpha, distance), "
                         f"got shape {tuple(all_map.shape)}")
    return all_map


def plane_depth(all_map_pixels: torch.Tensor, settings) -> torch.Tensor:
    """(1, H, W) PGSR's plane depth of its blended maps (5, H, W): the distance channel over
    minus the normal's component along each pixel's ray, r = (x, y, 1) from `centred_rays`."""
    x, y = centred_rays(settings, all_map_pixels)
    facing = (all_map_pixels[0] * x[None, :] + all_map_pixels[1] * y[:, None]
              + all_map_pixels[2] + PLANE_EPS)
    return (all_map_pixels[4] / -facing)[None]


def rasterize_gaussians(means3D, means2D, means2D_abs, sh, colors_precomp, opacities, scales,
                        rotations, cov3Ds_precomp, all_map, raster_settings):
    """PGSR's functional form and argument order: (color (3, H, W), radii (P,), out_observe
    (P,) int32, out_all_map (5, H, W), plane_depth (1, H, W)); see the module's docstring."""
    render_geo = raster_settings.render_geo
    if not isinstance(render_geo, bool):
        raise TypeError(f"raster_settings.render_geo: expected a bool, got "
                        f"{type(render_geo).__name__}")
    if render_geo:
        all_map = _checked_all_map(all_map, means3D)
    if means2D_abs is not None:
        means2D = with_absolute_columns("means2D_abs", means3D, means2D, means2D_abs)
    # The median Gaussian (where the transmittance crosses 0.5, median > 0) is the one Gaussian
    # per pixel that PGSR's count has and the touch count has not.
    out = _rasterize(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                     cov3Ds_precomp, package_settings(raster_settings),
                     features=all_map if render_geo else None, median_depth=True,
                     touch_count=True, median_gaussian=True)
    color, radii, _depth, weight = out[:4]
    median, touched, median_gaussian = out[-3:]
    # Added on the device, no host sync (a boolean index or bincount would wait for its size).
    out_observe = touched.index_add(0, median_gaussian.reshape(-1).clamp_min(0).long(),
                                    (median.detach() > 0).reshape(-1).to(touched.dtype))
    if render_geo:
        all_map_pixels = out[4]
        return color, radii, out_observe, all_map_pixels, plane_depth(all_map_pixels,
                                                                      raster_settings)
    H, W = weight.shape
    return (color, radii, out_observe, color.new_zeros((ALL_MAP_CHANNELS, H, W)),
            color.new_zeros((1, H, W)))


class GaussianRasterizer(ForkRasterizer):
    """PGSR's GaussianRasterizer: `forward` with means2D_abs third and all_map last (see the
    module's docstring); `markVisible` as the package's."""

    to_package = staticmethod(package_settings)

    def forward(self, means3D, means2D, means2D_abs, opacities, shs=None, colors_precomp=None,
                scales=None, rotations=None, cov3D_precomp=None, all_map=None):
        return rasterize_gaussians(means3D, means2D, means2D_abs, shs, colors_precomp,
                                   opacities, scales, rotations, cov3D_precomp, all_map,
                                   self.raster_settings)
