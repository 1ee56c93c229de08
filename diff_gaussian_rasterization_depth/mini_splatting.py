"""Mini-Splatting's rasterizer API (`diff_gaussian_rasterization_ms`, the submodule of
fatPeter/mini-splatting, Fang and Wang, ECCV 2024): change

    from diff_gaussian_rasterization_ms import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.mini_splatting import ...` and nothing else (its
plain `render` imports the original's API: `diff_gaussian_rasterization_depth.original`).

    color, radii, accum_weights, accum_weights_count, accum_max_count = rasterizer(...)
    res = rasterizer.render_depth(...)     # dict: render, out_pts, rendered_depth, accum_alpha,
                                           # gidx, discriminants

The forward's three statistics are the package's contribution statistics
(`contributions=True`, a walk of the tile lists of its own after the render), as the fork
accumulates them over the pixels where each Gaussian is blended: the sum of its weights
alpha T (float), the number of those pixels (int32) and the number where its weight is the
pixel's largest, the front one among equal weights (float, as the fork stores it). None takes
a gradient; the colour's gradients are the package's.

`render_depth` (no gradient, as the fork's) renders each pixel's dominant Gaussian
(`dominant=True`) and finds where the pixel's ray is densest in it (`surface.dominant_points`,
the midpoint of the ray's chord through any of its ellipsoids, the fork's point): `out_pts`
(3, H, W) world points, `rendered_depth` (1, H, W) their view depth, `accum_alpha` (1, H, W)
the final transmittance (1 where nothing is blended: the fork's name, its meaning),
`discriminants` (1, H, W) the fork's b^2 - 4ac of the ray against the 3-sigma ellipsoid
(>= 0 where the ray meets it) and `gidx` (1, H, W) int32 the dominant Gaussian; all 0 where no
Gaussian is blended but `gidx`, -1 there (the fork writes 0, which is also Gaussian 0's index).
Where the dominant Gaussian has no densest point in front of the camera (a needle, or a flat
Gaussian whose plane the ray meets behind it), the point, its depth and its discriminant are 0
too.

Not reproduced, on purpose: the fork's depth kernel builds each ray towards a point it does not
divide by its homogeneous coordinate, with a near and far plane of its own (0.01, 100), which
tilts its rays by a little that grows with the camera's distance from the origin; here the rays
are the rasterizer's own, through the pixel centres. It also reads the Gaussians' scales
without `scale_modifier` and cannot take `cov3D_precomp`; here both are taken as the render
takes them.
"""
import torch

from . import GaussianRasterizationSettings
from . import rasterize_gaussians as _rasterize
from ._forks import ForkRasterizer
from ._precision import full_precision
from .reference import _covariance_3d
from .surface import _matrix, dominant_points

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "rasterize_gaussians_depth"]


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """The fork's functional form and argument order; returns (color, radii, accum_weights,
    accum_weights_count, accum_max_count)."""
    color, radii, _, _, contribution = _rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings, contributions=True)
    return (color, radii, contribution[:, 0], contribution[:, 2].to(torch.int32),
            contribution[:, 3])


def _discriminants(points, valid, dominant, means3D, settings, scales, rotations,
                   cov3D_precomp):
    """(H, W): b^2 - 4ac of |o + t d - mu|^2_Sigma / 9 = 1 along each pixel's unit ray d, for
    its dominant Gaussian. The quadratic is a (t - t*)^2 + m^2 / 9 - 1 with a = d^T Sigma^-1 d / 9
    and m^2 the Mahalanobis distance at the densest point t*, so b^2 - 4ac = 4 a (1 - m^2 / 9).
    In float64, with Sigma + 1e-12 tr(Sigma) I: a flat Gaussian (a scale of 0), whose limit is
    +-infinity, gets a large finite value of the right sign (its ellipse met or missed: m^2 is
    taken at the point on its plane, where the flat axis adds nothing)."""
    H, W = dominant.shape
    out = torch.zeros(H * W, dtype=means3D.dtype, device=means3D.device)
    ids = dominant.reshape(-1).long()[valid.reshape(-1)]
    if ids.numel() == 0:
        return out.reshape(H, W)
    pick = (lambda t: None if t is None else t[ids])  # noqa: E731
    covariance = _covariance_3d(pick(scales), pick(rotations), pick(cov3D_precomp),
                                float(settings.scale_modifier)).double()
    trace = covariance.diagonal(dim1=1, dim2=2).sum(1)
    covariance = covariance + (1e-12 * trace)[:, None, None] * torch.eye(
        3, dtype=covariance.dtype, device=covariance.device)
    view = _matrix(settings.viewmatrix, means3D).double()
    centre = -view[3, :3] @ torch.linalg.inv(view[:3, :3])
    point = points.reshape(3, -1).T[valid.reshape(-1)].double()
    direction = point - centre
    direction = direction / direction.norm(dim=1, keepdim=True)
    offset = point - means3D[ids].double()
    both = torch.stack([direction, offset], 2)                                     # (N, 3, 2)
    solved = torch.linalg.solve(covariance, both)
    a = (direction * solved[:, :, 0]).sum(1) / 9
    m2 = (offset * solved[:, :, 1]).sum(1)
    out[valid.reshape(-1)] = (4 * a * (1 - m2 / 9)).to(out.dtype)
    return out.reshape(H, W)


@torch.no_grad()
@full_precision
def rasterize_gaussians_depth(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                              cov3Ds_precomp, raster_settings):
    """The fork's depth call (module docstring): a dict of render, out_pts, rendered_depth,
    discriminants, gidx and accum_alpha, without gradient."""
    color, _, _, weight, dominant = _rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        raster_settings, dominant=True)
    points, valid = dominant_points(dominant, means3D, raster_settings, scales=scales,
                                    rotations=rotations, cov3D_precomp=cov3Ds_precomp)
    points = torch.where(valid, points, torch.zeros_like(points))
    view = _matrix(raster_settings.viewmatrix, means3D)
    depth = points.permute(1, 2, 0) @ view[:3, 2] + view[3, 2]
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    discriminants = _discriminants(points, valid, dominant, means3D, raster_settings, scales,
                                   rotations, cov3Ds_precomp)
    return {"render": color, "out_pts": points, "rendered_depth": depth[None],
            "discriminants": discriminants[None], "gidx": dominant[None],
            "accum_alpha": (1 - weight)[None]}


class GaussianRasterizer(ForkRasterizer):
    """The fork's module: `markVisible` as the package's, `forward` returning the colour, the
    radii and the three statistics, `render_depth` the depth call's dict."""

    functional = staticmethod(rasterize_gaussians)

    def render_depth(self, means3D, means2D, opacities, shs=None, colors_precomp=None,
                     scales=None, rotations=None, cov3D_precomp=None):
        return rasterize_gaussians_depth(means3D, means2D, shs, colors_precomp, opacities,
                                         scales, rotations, cov3D_precomp, self.raster_settings)
