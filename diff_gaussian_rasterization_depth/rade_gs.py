"""RaDe-GS's rasterizer API (the `diff-gaussian-rasterization` submodule of BaowenZ/RaDe-GS,
Zhang et al., 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.rade_gs import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., tanfovy=..., kernel_size=0.0, bg=..., ...,
                                             prefiltered=False, require_depth=True,
                                             require_coord=True, debug=False)
    (color, radii, expected_coord, median_coord, expected_depth, median_depth, alpha,
     normal) = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

What RaDe-GS rasterizes, besides the colour: each splat's geometry as a plane over the screen.
Its ray-space linearization (ray_planes below) gives, at pixel p = (x, y) (integers, as the
render's) and with d = mu2D - p (mu2D the splat's centre on screen),

    distance along the ray  t(p) = |t_c| + s . d          (s: `ray_slope`, 2 per splat)
    view-space point    coord(p) = t_c + A d              (A: `coord_slopes`, 3 x 2)
    normal                       = the plane's, facing the camera

(t_c the centre in view space). Blended with the render's weights w = alpha T:

    expected_depth = sum w t(p) / (weight ln(p)),  ln(p) = |((x - W/2) / f_x, (y - H/2) / f_y, 1)|
    expected_coord = sum w coord(p) / weight,      normal = sum w n / |sum w n|
    median_depth   = t_m(p) / ln(p),               median_coord = coord_m(p)

with m the pixel's median Gaussian (the last blended one with the transmittance above 0.5 in
front of it: the package's `median_gaussian`), all 0 where nothing is blended, and alpha the
weight map (1, H, W). RaDe-GS renders those in its own kernel; here the planes are computed in
PyTorch and blended as the package's feature channels (3 for the normal, 3 for the depth's
plane, 9 for the coordinates', about the image centre so that the sums keep their digits), so
every output has the exact gradient of its values, to means3D, scales and rotations (or
cov3D_precomp) through the planes and to opacities through the weights; the median's values
have none to the opacities (a selection, as RaDe-GS's). `require_depth` and `require_coord`
pick the maps as RaDe-GS's do (the normal with either; what is not asked for is zeros, and costs
nothing).

The 2D filter is RaDe-GS's (Mip-Splatting's): each projected covariance dilated by
`kernel_size` px^2 (0.0 in its training: its 3D filter bounds the scales) and the opacity
scaled by sqrt(det / det_dilated), the package's `kernel_size` with `antialiasing=True`.
`means2D` (P, 3): `.grad[:, :2]` is dL/d NDC of every map (the planes' offsets d included, as
RaDe-GS's), `.grad[:, 2]` the absolute gradient its densification reads (GOF's: over pixels,
|x| + |y| of each pixel's part through alpha), of every map's loss (its coordinate, depth and
normal maps' included, as RaDe-GS's).

RaDe-GS's `integrate` (its mesh extraction's opacity at points, after Gaussian Opacity Fields)
is the package's `points3D=` with `mesh.OpacityField` (doc/surface.md, "The opacity field").
"""
from typing import NamedTuple

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import rasterize_gaussians as _rasterize
from ._forks import ORIGINAL_FIELDS, ForkRasterizer, centred_rays, focal_lengths, fork_settings
from ._precision import full_precision
from ._validation import real_value
from .surface import (_adjugate_covariance_times, _centres_on_screen, _check_covariance_inputs,
                      _image_centre, _matrix, normalized)

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "package_settings", "ray_planes", "RayPlanes"]

# RaDe-GS floors n . t_hat (n unit, t_hat = (u, v, 1)) so that a splat seen nearly edge-on gets
# a steep plane rather than an infinite one.
MIN_FACING = 1e-7
# Its normal map's floor under the blended normal's length.
NORMALIZE_EPS = 1e-12


# RaDe-GS's fields: the original's, kernel_size fifth, its two switches before debug.
GaussianRasterizationSettings = fork_settings(
    __name__, ORIGINAL_FIELDS[:4] + ("kernel_size",) + ORIGINAL_FIELDS[4:11]
    + ("require_depth", "require_coord", "debug"),
    {"require_depth": bool, "require_coord": bool},
    {"prefiltered": False, "require_depth": True, "require_coord": True, "debug": False})


def package_settings(settings: GaussianRasterizationSettings) -> _PackageSettings:
    """The package's settings of RaDe-GS's: its 2D filter as `kernel_size` with the opacity
    compensation of `antialiasing=True`, for the package's own call with the same footprints."""
    return _PackageSettings(
        image_height=settings.image_height, image_width=settings.image_width,
        tanfovx=settings.tanfovx, tanfovy=settings.tanfovy, bg=settings.bg,
        scale_modifier=settings.scale_modifier, viewmatrix=settings.viewmatrix,
        projmatrix=settings.projmatrix, sh_degree=settings.sh_degree, campos=settings.campos,
        prefiltered=settings.prefiltered, debug=settings.debug, antialiasing=True,
        kernel_size=settings.kernel_size)


class RayPlanes(NamedTuple):
    view_points: torch.Tensor   # (P, 3) t_c, the centres in view space
    distance: torch.Tensor      # (P,) |t_c|, the distance along the centre's ray
    ray_slope: torch.Tensor     # (P, 2) s: t(p) = distance + s . (mu2D - p)
    coord_slopes: torch.Tensor  # (P, 3, 2) A: coord(p) = view_points + A (mu2D - p)
    normals: torch.Tensor       # (P, 3) unit, view space, facing the camera; 0 where degenerate
    mean2d: torch.Tensor        # (P, 2) mu2D in pixels, as the rasterizer projects it


@full_precision
def ray_planes(means3D: torch.Tensor, settings, scales=None, rotations=None,
               cov3D_precomp=None) -> RayPlanes:
    """RaDe-GS's plane of each Gaussian. In ray space (u, v, r) = (x / z, y / z, |x|) about the
    centre t_c, where the Jacobian J of that map linearizes the Gaussian, the densest point
    along each ray (u, v) lies on the plane r(u, v) = |t_c| + r_u du + r_v dv with
    (r_u, r_v, -1) normal to it in ray space, i.e. J^T (r_u, r_v, -1) ~ -Sigma^-1 t_c in view
    space (Sigma the Gaussian's view-space covariance, without the screen's dilation). With
    n = Sigma^-1 t_hat (t_hat = t_c / z_c = (u, v, 1)), m = n / (n . t_hat) and
    l = |t_c|, L2 = u^2 + v^2 + 1:

        r_u = -(l / L2) [(v^2 + 1) m_x - u v m_y - u m_z]
        r_v = -(l / L2) [-u v m_x + (u^2 + 1) m_y - v m_z]

    and the point on the plane at (u, v) moves by dP/du = (z_c / L2) [(v^2 + 1, -u v, -u) -
    t_hat (-r_u L2 / l)] (likewise for v). Per pixel (du = dx / f_x) and towards d = mu2D - p,
    the slopes are s = -(r_u / f_x, r_v / f_y) and A = -(dP/du / f_x, dP/dv / f_y). As
    RaDe-GS: u and v are clamped to 1.3 tan(fov / 2) for the slopes (as the projection's
    Jacobian), n is taken as a unit vector and n . t_hat floored at 1e-7, and n comes from
    adj(Sigma) t_hat (same direction, no inverse: a flat Gaussian keeps its flat axis, where
    RaDe-GS takes its smallest eigenvector below eigenvalue 1e-8); where n = 0 (a Gaussian flat
    in two axes, or flat and seen edge-on) the slopes and the normal are 0, as RaDe-GS's. Plain
    PyTorch, differentiable in every input."""
    _check_covariance_inputs("ray_planes", means3D, scales, rotations, cov3D_precomp)
    view = _matrix(settings.viewmatrix, means3D)
    t, in_front, z, mean2d = _centres_on_screen(means3D, settings)
    limit_x, limit_y = 1.3 * real_value(settings.tanfovx), 1.3 * real_value(settings.tanfovy)
    u = (t[:, 0] / z).clamp(-limit_x, limit_x)
    v = (t[:, 1] / z).clamp(-limit_y, limit_y)
    one = torch.ones_like(u)
    t_hat = torch.stack([u, v, one], 1)
    rotation = view[:3, :3]
    n = _adjugate_covariance_times(t_hat @ rotation.T, scales, rotations, cov3D_precomp,
                                   float(settings.scale_modifier)) @ rotation
    length = n.norm(dim=1, keepdim=True)
    planar = (length[:, 0] > 0) & in_front
    n_unit = n / torch.where(planar[:, None], length, torch.ones_like(length))
    # RaDe-GS divides the unit n by n . t_hat with t_hat = (u, v, 1) as it is (not unit).
    facing = (n_unit * t_hat).sum(1)
    m = n_unit / facing.clamp_min(MIN_FACING)[:, None]
    uu, vv, uv = u * u, v * v, u * v
    L2 = uu + vv + 1.0
    l = z * L2.sqrt()                                     # |t| at the clamped (u, v)
    plane_u = (vv + 1.0) * m[:, 0] - uv * m[:, 1] - u * m[:, 2]    # = -r_u L2 / l
    plane_v = -uv * m[:, 0] + (uu + 1.0) * m[:, 1] - v * m[:, 2]   # = -r_v L2 / l
    fx, fy = focal_lengths(settings)
    ray_slope = torch.stack([plane_u * l / L2 / fx, plane_v * l / L2 / fy], 1)
    # dP/du and dP/dv at the plane, times -1 / f: columns of A for d = mu2D - p.
    along_u = torch.stack([vv + 1.0 - u * plane_u, -uv - v * plane_u, -u - plane_u], 1)
    along_v = torch.stack([-uv - u * plane_v, uu + 1.0 - v * plane_v, -v - plane_v], 1)
    coord_slopes = -torch.stack([along_u / fx, along_v / fy], 2) * (z / L2)[:, None, None]
    # The normal: J^T (r_u, r_v, -1), J the Jacobian of (x / z, y / z, |x|) at the clamped t.
    r_u, r_v = -plane_u * l / L2, -plane_v * l / L2
    tx, ty = u * z, v * z
    normal = torch.stack([r_u / z - tx / l,
                          r_v / z - ty / l,
                          -(r_u * tx + r_v * ty) / (z * z) - z / l], 1)
    normal = normal / normal.norm(dim=1, keepdim=True)
    keep = planar[:, None]
    zero = torch.zeros_like(ray_slope)
    return RayPlanes(view_points=t, distance=t.norm(dim=1),
                     ray_slope=torch.where(keep, ray_slope, zero),
                     coord_slopes=torch.where(keep[:, :, None], coord_slopes,
                                              torch.zeros_like(coord_slopes)),
                     normals=torch.where(keep, normal, torch.zeros_like(normal)),
                     mean2d=mean2d)


def _plane_channels(offset, slope, mean2d, centre):
    """Feature channels of per-Gaussian linear functions f(p) = offset + slope . (mu2D - p),
    written about the image centre c: [offset + slope . (mu2D - c), slope_x, slope_y] each
    (offset (P, k), slope (P, k, 2) -> (P, 3 k)), so that sum w f(p) = F_0 - (p - c) . (F_1,
    F_2) (`_plane_maps`)."""
    at_centre = offset + (slope * (mean2d - centre)[:, None, :]).sum(2)
    return torch.cat([at_centre[:, :, None], slope], 2).reshape(len(offset), -1)


def _plane_maps(feature_map, centre):
    """(k, H, W) sum w f(p) of the k functions of `_plane_channels`, from their (3 k, H, W)
    feature map."""
    k3, H, W = feature_map.shape
    maps = feature_map.reshape(k3 // 3, 3, H, W)
    cols = torch.arange(W, dtype=maps.dtype, device=maps.device) - centre[0]
    rows = torch.arange(H, dtype=maps.dtype, device=maps.device) - centre[1]
    return maps[:, 0] - cols * maps[:, 1] - rows[:, None] * maps[:, 2]


def _ray_length(settings, like):
    """(H, W) |((x - W/2) / f_x, (y - H/2) / f_y, 1)|: a ray's distance per unit of depth (W/2
    and H/2 the principal point as RaDe-GS takes it)."""
    x, y = centred_rays(settings, like)
    return (x[None, :] ** 2 + y[:, None] ** 2 + 1.0).sqrt()


def _carrier(means2D):
    """The package's (P, 4) carrier of a (P, 3) means2D: columns 0-1 its own, 2-3 both its
    column 2 (AbsGS's |x| and |y| sums, which add up into it as RaDe-GS's |x| + |y|)."""
    if means2D is None or not isinstance(means2D, torch.Tensor) or means2D.dim() != 2 \
            or means2D.shape[1] != 3:
        return means2D  # (P, 2), (P, 4) or wrong: the package takes or names it
    return torch.cat([means2D[:, :2], means2D[:, 2:3].expand(-1, 2)], 1)


@full_precision
def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """RaDe-GS's functional form: (color (3, H, W), radii (P,), expected_coord (3, H, W),
    median_coord (3, H, W), expected_depth (1, H, W), median_depth (1, H, W), alpha (1, H, W),
    normal (3, H, W)); see the module's docstring."""
    settings = raster_settings
    package = package_settings(settings)
    want_depth, want_coord = bool(settings.require_depth), bool(settings.require_coord)
    carrier = _carrier(means2D)
    if not (want_depth or want_coord):
        color, radii, _, weight = _rasterize(means3D, carrier, sh, colors_precomp, opacities,
                                             scales, rotations, cov3Ds_precomp, package)
        zeros3 = color.new_zeros(color.shape)
        zeros1 = weight.new_zeros((1,) + tuple(weight.shape))
        return color, radii, zeros3, zeros3.clone(), zeros1, zeros1.clone(), weight[None], \
            zeros3.clone()
    planes = ray_planes(means3D, settings, scales, rotations, cov3Ds_precomp)
    H, W = int(settings.image_height), int(settings.image_width)
    mean2d = planes.mean2d
    if isinstance(carrier, torch.Tensor) and carrier.requires_grad and carrier.dim() == 2 \
            and carrier.shape[0] == len(mean2d) and carrier.shape[1] in (2, 4):  # else: the
        # package names what is wrong with it
        # The planes' part of dL/d mu2D (their offsets d = mu2D - p) goes into means2D.grad as
        # RaDe-GS's, in NDC units as the rasterizer's part: a term of value 0 (the carrier's
        # values are ignored, as the rasterizer ignores them) whose gradient is the carrier's.
        shift = carrier[:, :2]
        shift = torch.where(torch.isfinite(shift.detach()), shift - shift.detach(),
                            torch.zeros_like(shift))
        mean2d = mean2d + shift * mean2d.new_tensor([0.5 * W, 0.5 * H])
    centre = mean2d.new_tensor(_image_centre(settings))
    channels = [planes.normals]
    if want_depth:
        channels.append(_plane_channels(planes.distance[:, None], planes.ray_slope[:, None],
                                        mean2d, centre))
    if want_coord:
        channels.append(_plane_channels(planes.view_points, planes.coord_slopes, mean2d,
                                        centre))
    planes_table = torch.cat(channels[1:], 1)
    features = torch.cat([channels[0], planes_table], 1)
    color, radii, _, weight, feature_map, median_gaussian = _rasterize(
        means3D, carrier, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        package, features=features, median_gaussian=True)

    seen = weight > 0
    safe_weight = torch.where(seen, weight, torch.ones_like(weight))
    zero = torch.zeros_like(weight)
    # RaDe-GS divides by max(|sum|, 1e-12) where something is blended: the same but where
    # 0 < |sum| <= 1e-12, which `normalized` sends to 0 (and faster than a reduction on a CPU).
    normal = normalized(feature_map[:3], NORMALIZE_EPS)
    # The median Gaussian's own functions at each pixel: its rows of the same channels,
    # gathered per pixel (autograd takes the gradient back to that Gaussian) and evaluated as
    # the blended maps are.
    plane_channels = feature_map.shape[0] - 3
    median_gaussian = median_gaussian.reshape(-1)
    has_median = (median_gaussian >= 0).reshape(H, W)
    rows = planes_table[median_gaussian.clamp_min(0).long()]                   # (H W, k)
    # A contiguous copy of the transposed rows: without it, torch.compile's CPU code (inductor,
    # torch 2.13) corrupted the heap in the backward of the median points (tests/test_compile.py).
    medians = _plane_maps(rows.T.contiguous().reshape(plane_channels, H, W), centre)
    medians = torch.where(has_median, medians, torch.zeros_like(medians))
    blended = _plane_maps(feature_map[3:], centre)
    blended = torch.where(seen, blended / safe_weight, torch.zeros_like(blended))
    zeros3 = color.new_zeros(color.shape)
    if want_depth:
        ray_length = _ray_length(settings, weight)
        expected_depth, median_depth = (blended[:1] / ray_length), (medians[:1] / ray_length)
    else:
        expected_depth, median_depth = zero[None], zero[None].clone()
    if want_coord:
        expected_coord, median_coord = blended[-3:], medians[-3:]
    else:
        expected_coord, median_coord = zeros3, zeros3.clone()
    return (color, radii, expected_coord, median_coord, expected_depth, median_depth,
            weight[None], normal)


class GaussianRasterizer(ForkRasterizer):
    """RaDe-GS's GaussianRasterizer: eight outputs (see the module's docstring)."""

    to_package = staticmethod(package_settings)
    functional = staticmethod(rasterize_gaussians)

    def integrate(self, *args, **kwargs):
        raise NotImplementedError(
            "rade_gs: RaDe-GS's integrate (the opacity of points for its mesh extraction) is "
            "the package's points3D= output with mesh.OpacityField and "
            "mesh.extract_opacity_mesh (doc/surface.md, 'The opacity field')")
