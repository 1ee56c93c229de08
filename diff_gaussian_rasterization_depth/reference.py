"""Pure-PyTorch reference rasterizer: the SPEC's forward written densely, differentiated by autograd.

It is the test oracle of the compiled backends, so it favours being obviously right over being
fast: every Gaussian is tested against every pixel (P x H x W tensors), with no tiles, no sorting
per tile and no hand-written backward. Each float expression is evaluated in the order SPEC.md
writes it, and rounded where the original rasterizer rounds (ndc2pix in double, one reciprocal
for the perspective divide and for the conic), so that float32 results agree with the compiled
backends to a few float32 roundings.

    color, radii, depth, weight = rasterize_reference(means3D, means2D, opacities, shs=...,
                                                      scales=..., rotations=...,
                                                      raster_settings=settings)

Gradient conventions (SPEC 6) come out of autograd once the forward is set up right:
- `means2D` is a carrier: its values are ignored, its gradient is dL/d(ndc.x, ndc.y); a (P,4)
  carrier's columns 2-3 take the sum over pixels of |each pixel's part| of it (AbsGS);
- the 0.99 clamp of alpha is straight-through;
- culled and non-finite Gaussians get exactly zero gradient and never put NaN into anyone else's;
- `viewmatrix`, `projmatrix` and `campos` that require grad stay attached (the validation keeps
  them in the graph), so autograd gives the camera gradients the backends are tested against.

Non-finite safety: the preprocess runs twice. A first pass without autograd over all Gaussians
decides which ones survive culling; the second pass, with autograd, sees only the survivors
(selected by indexing, whose backward scatters zeros to the others). The preprocess uses only
+, -, *, /, sqrt, floor and ceil, which IEEE arithmetic rounds the same way in both passes, so the
two passes agree bit for bit on the survivors.
"""
from typing import Dict

import torch

from ._validation import check_gaussians, check_optional_outputs

__all__ = ["rasterize_reference", "sparse_adam_step_reference", "compute_relocation_reference",
           "ssim_map_reference"]

TILE_SIZE = 16
NEAR_PLANE = 0.2
HOM_EPS = 1e-7
FRUSTUM_CLAMP = 1.3
ANTIALIAS_MIN_RATIO = 2.5e-5
MIN_EIGEN_SLACK = 0.1
SIGMA_EXTENT = 3.0
MAX_RADIUS = 2147483520.0   # the last float below 2^31: radii are int32
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
# The fisheye's angle terms come from their series below this (rho / z)^2: the reference's own
# switch and term count, apart from the compiled code's (config.h, 0.1 and 17 terms).
FISHEYE_SERIES_BOUND = 0.01
FISHEYE_SERIES_TERMS = 10

# Real spherical-harmonics constants of the original 3DGS rasterizer.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched a @ b with each entry summed left to right (k = 0, 1, 2, ...).

    torch.matmul may reorder or fuse the sums; writing them out keeps the rounding the same as
    a plain C++ loop.
    """
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k, None] * b[..., None, k, :]
    return out


def _transform_point(p: torch.Tensor, m: torch.Tensor, column: int) -> torch.Tensor:
    """Component `column` of [p, 1] @ M, with M the flat 16-element matrix (row-major 4x4)."""
    return (p[:, 0] * m[column] + p[:, 1] * m[4 + column] + p[:, 2] * m[8 + column]
            + m[12 + column])


def _ndc2pix(v: torch.Tensor, size: int) -> torch.Tensor:
    # In double, then rounded once, as the original rasterizer (and our backends) round it.
    return (((v.double() + 1.0) * size - 1.0) / 2.0).to(v.dtype)


def _all_finite(t: torch.Tensor) -> torch.Tensor:
    """(P,) bool: every value in the Gaussian's row of t (P, ...) is finite."""
    finite = torch.isfinite(t)
    return finite.flatten(1).all(dim=1) if finite.dim() > 1 else finite


def _rotation_matrix(q: torch.Tensor) -> torch.Tensor:
    """(P,3,3) rotation polynomial of the quaternion (w, x, y, z), used as given."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rows = [
        [1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
        [2.0 * (x * y + w * z), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - w * x)],
        [2.0 * (x * z - w * y), 2.0 * (y * z + w * x), 1.0 - 2.0 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def _covariance_3d(scales, rotations, cov3D_precomp, scale_modifier) -> torch.Tensor:
    """(P,3,3) world-space covariance: R S S^T R^T, or the given upper triangle mirrored."""
    if cov3D_precomp is not None:
        xx, xy, xz, yy, yz, zz = cov3D_precomp.unbind(dim=1)
        rows = [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)
    s = scale_modifier * scales                       # diagonal of S
    rs = _rotation_matrix(rotations) * s[:, None, :]  # R S: column j of R times s_j
    return _matmul(rs, rs.transpose(-1, -2))


def _sh_to_color(sh: torch.Tensor, degree: int, means3D: torch.Tensor,
                 campos: torch.Tensor) -> torch.Tensor:
    """(P,3) colour of SH coefficients sh (P,M,3) seen from campos, +0.5, before the clamp."""
    d = means3D - campos
    d = d / torch.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])[:, None]
    x, y, z = d[:, 0, None], d[:, 1, None], d[:, 2, None]
    result = SH_C0 * sh[:, 0]
    if degree > 0:
        result = result - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        result = (result
                  + SH_C2[0] * xy * sh[:, 4]
                  + SH_C2[1] * yz * sh[:, 5]
                  + SH_C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
                  + SH_C2[3] * xz * sh[:, 7]
                  + SH_C2[4] * (xx - yy) * sh[:, 8])
        if degree > 2:
            result = (result
                      + SH_C3[0] * y * (3.0 * xx - yy) * sh[:, 9]
                      + SH_C3[1] * xy * z * sh[:, 10]
                      + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[:, 11]
                      + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[:, 12]
                      + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[:, 13]
                      + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                      + SH_C3[6] * x * (xx - 3.0 * yy) * sh[:, 15])
    return result + 0.5


# ----------------------------------------------------------------------------------------------
# Per Gaussian: SPEC 4, steps 1-8
# ----------------------------------------------------------------------------------------------

def _fields_of_view(settings):
    """(tanfovx, tanfovy) as the focal lengths' gradient flows through them: checked settings'
    `fields_of_view` (0-dim tensors where the camera takes a gradient), else the fields."""
    return getattr(settings, "fields_of_view", (settings.tanfovx, settings.tanfovy))


def _projection_jacobian(tx, ty, tz, settings):
    """(clamped tx, clamped ty, (P,2,3) Jacobian of the pixel position by the view-space
    position): the perspective projection's, at the mean moved in x / z and y / z to within
    1.3 tan(fov) of the axis (SPEC 4, step 4); with `orthographic`, the constant
    diag(focal_x, focal_y)."""
    tanfovx, tanfovy = _fields_of_view(settings)
    focal_x = settings.image_width / (2.0 * tanfovx)
    focal_y = settings.image_height / (2.0 * tanfovy)
    if _lens(settings):  # unclamped: the fisheye's disc is bounded, the pinhole's folds culled
        a, b = tx / tz, ty / tz
        K, M, N, tau_x, tau_y, T00, T01, T11 = _lens_terms(a, b, settings)
        jac = torch.stack([
            torch.stack([focal_x / tz * (K + a * a * M + T00), focal_x / tz * (a * b * M + T01),
                         focal_x / tz * (a * N - 2.0 * tau_x)], dim=-1),
            torch.stack([focal_y / tz * (a * b * M + T01), focal_y / tz * (K + b * b * M + T11),
                         focal_y / tz * (b * N - 2.0 * tau_y)], dim=-1),
        ], dim=-2)
        return tx, ty, jac
    if getattr(settings, "orthographic", False):
        zero, one = torch.zeros_like(tz), torch.ones_like(tz)
        jac = torch.stack([torch.stack([focal_x * one, zero, zero], dim=-1),
                           torch.stack([zero, focal_y * one, zero], dim=-1)], dim=-2)
        return tx, ty, jac
    lim_x = FRUSTUM_CLAMP * tanfovx
    lim_y = FRUSTUM_CLAMP * tanfovy
    tx = torch.clamp(tx / tz, -lim_x, lim_x) * tz
    ty = torch.clamp(ty / tz, -lim_y, lim_y) * tz
    zero = torch.zeros_like(tz)
    jac = torch.stack([
        torch.stack([focal_x / tz, zero, -(focal_x * tx) / (tz * tz)], dim=-1),
        torch.stack([zero, focal_y / tz, -(focal_y * ty) / (tz * tz)], dim=-1),
    ], dim=-2)
    return tx, ty, jac


def _lens(settings):
    """Whether a point lands at the principal point plus focal times a function of its direction
    (`_lens_pixels`): the fisheye, and the pinhole with OpenCV's distortion."""
    return bool(getattr(settings, "fisheye", False)) or \
        getattr(settings, "pinhole_distortion", None) is not None


def _lens_terms(a, b, settings):
    """(K, M, N, tau_x, tau_y, T00, T01, T11) of the lens at view direction (a, b, 1): a point
    lands at c + focal (a K + tau_x, b K + tau_y), and the projection's Jacobian is
    (focal / z) [[K + a^2 M + T00, a b M + T01, a N - 2 tau_x],
                 [a b M + T01, K + b^2 M + T11, b N - 2 tau_y]],
    K radial (M = 2 dK/du, N = -(K + u M), u = a^2 + b^2), tau the distorted pinhole's
    tangential offset and T its derivatives by (a, b) (T01 = d tau_x / db = d tau_y / da);
    tau = T = 0 for the fisheye (`_fisheye_terms`)."""
    if getattr(settings, "fisheye", False):
        K, M, N = _fisheye_terms(a, b, _distortion(settings))
        return (K, M, N) + (0.0,) * 5
    return _pinhole_terms(a, b, _pinhole_coefficients(settings))


def _pinhole_terms(a, b, k):
    """`_lens_terms` of OpenCV's distorted pinhole, coefficients k = (k1, k2, p1, p2, k3, k4,
    k5, k6): K = L(u) = (1 + k1 u + k2 u^2 + k3 u^3) / (1 + k4 u + k5 u^2 + k6 u^3),
    tau = (2 p1 a b + p2 (u + 2 a^2), p1 (u + 2 b^2) + 2 p2 a b)."""
    k1, k2, p1, p2, k3, k4, k5, k6 = k
    u = a * a + b * b
    d = 1.0 + u * (k4 + u * (k5 + u * k6))
    K = (1.0 + u * (k1 + u * (k2 + u * k3))) / d
    dK = (k1 + u * (2.0 * k2 + u * 3.0 * k3) - K * (k4 + u * (2.0 * k5 + u * 3.0 * k6))) / d
    M = 2.0 * dK
    return (K, M, -(K + u * M),
            2.0 * p1 * a * b + p2 * (u + 2.0 * a * a), p1 * (u + 2.0 * b * b) + 2.0 * p2 * a * b,
            2.0 * p1 * b + 6.0 * p2 * a, 2.0 * (p1 * a + p2 * b), 6.0 * p1 * b + 2.0 * p2 * a)


def _pinhole_coefficients(settings):
    """OpenCV's pinhole coefficients (k1, k2, p1, p2, k3, k4, k5, k6) as the gradient flows
    through them: checked settings' `distortion_leaf` (0-dim views; 0 for those not given),
    else the checked numbers."""
    leaf = getattr(settings, "distortion_leaf", None)
    if leaf is not None:
        k = tuple(leaf.unbind())
        return k + (0.0,) * (8 - len(k))
    return settings.pinhole_distortion


def _distortion(settings):
    """OpenCV's fisheye coefficients as the gradient flows through them: checked settings'
    `distortion_leaf` (0-dim views of the tensor that takes one), else the numbers, or None."""
    leaf = getattr(settings, "distortion_leaf", None)
    if leaf is not None:
        return tuple(leaf.unbind())
    return getattr(settings, "fisheye_distortion", None)


def _fisheye_terms(a, b, distortion=None):
    """(K, M, N) of the equidistant fisheye at view direction (a, b, 1) = t / t.z, with
    u = a^2 + b^2 = tan(theta)^2: K = theta / tan(theta), M = (1 / (1 + u) - K) / u,
    N = -1 / (1 + u). A point lands at c + focal (a, b) K, and the projection's Jacobian is
    (focal / z) [[K + a^2 M, a b M, a N], [a b M, K + b^2 M, b N]]. K and M from their series in
    u near the axis, where the closed forms cancel (autograd differentiates either branch).
    With OpenCV's `distortion` (k1, k2, k3, k4), theta becomes theta_d = theta D(theta^2),
    D(w) = 1 + k1 w + k2 w^2 + k3 w^3 + k4 w^4, and K = theta_d / s, M = 2 dK/du and
    N = -(d theta_d / d theta) / (1 + u) follow from the undistorted K0, M0 by the chain rule
    (w = u K0^2, dw/du = K0 / (1 + u))."""
    u = a * a + b * b
    small = u < FISHEYE_SERIES_BOUND
    u_far = torch.where(small, torch.ones_like(u), u)  # keeps the unused branch finite
    s = torch.sqrt(u_far)
    K_far = torch.atan(s) / s
    M_far = (1.0 / (1.0 + u_far) - K_far) / u_far
    u_near = torch.where(small, u, torch.zeros_like(u))
    K_near = torch.zeros_like(u)
    M_near = torch.zeros_like(u)
    power = torch.ones_like(u)
    for i in range(FISHEYE_SERIES_TERMS):   # atan(s) / s = sum (-1)^i u^i / (2i + 1)
        K_near = K_near + (-1) ** i / (2 * i + 1) * power
        M_near = M_near + (-1) ** (i + 1) * 2 * (i + 1) / (2 * i + 3) * power
        power = power * u_near
    K0, M0 = torch.where(small, K_near, K_far), torch.where(small, M_near, M_far)
    if distortion is None:
        return K0, M0, -1.0 / (1.0 + u)
    w = u * K0 * K0                                              # theta^2
    D, dD = _distortion_factor(w, distortion)
    return (D * K0, D * M0 + 2.0 * K0 * K0 * dD / (1.0 + u),
            -(D + 2.0 * w * dD) / (1.0 + u))


def _distortion_factor(w, k):
    """(D, dD/dw) of OpenCV's fisheye distortion at w = theta^2: theta_d = theta D(w),
    D(w) = 1 + k1 w + k2 w^2 + k3 w^3 + k4 w^4."""
    k1, k2, k3, k4 = k
    return (1.0 + w * (k1 + w * (k2 + w * (k3 + w * k4))),
            k1 + w * (2.0 * k2 + w * (3.0 * k3 + w * 4.0 * k4)))


def _lens_unfolded(tx, ty, tz, settings):
    """(P,) bool: the points within the distorted lens's fold (the settings'
    `fisheye_max_angle` or `pinhole_max_u`, past which the image folds back on itself); all of
    them without distortion."""
    if getattr(settings, "pinhole_distortion", None) is not None:
        return (tx / tz) ** 2 + (ty / tz) ** 2 <= settings.pinhole_max_u
    if getattr(settings, "fisheye_distortion", None) is None:
        return torch.ones_like(tz, dtype=torch.bool)
    return torch.atan(torch.sqrt((tx / tz) ** 2 + (ty / tz) ** 2)) <= settings.fisheye_max_angle


def _lens_centre(settings):
    """The lens's principal point in pixels: where the pinhole projection (projmatrix) puts
    the optical axis, the world point at view-space (0, 0, 1)."""
    view, proj = settings.viewmatrix.reshape(16), settings.projmatrix.reshape(16)
    world_to_view = view.reshape(4, 4)[:3, :3].transpose(0, 1)
    axis = torch.linalg.solve(world_to_view, torch.stack([-view[12], -view[13], 1.0 - view[14]]))
    hx, hy, hw = (_transform_point(axis[None], proj, c) for c in (0, 1, 3))
    inv_w = 1.0 / (hw + HOM_EPS)
    return (_ndc2pix(hx * inv_w, settings.image_width)[0],
            _ndc2pix(hy * inv_w, settings.image_height)[0])


def _lens_pixels(tx, ty, tz, settings):
    """(x, y) pixels of view-space points through the lens: c + focal (a K + tau_x,
    b K + tau_y) with (a, b) = (tx, ty) / tz (`_lens_terms`)."""
    cx, cy = _lens_centre(settings)
    a, b = tx / tz, ty / tz
    K, _, _, tau_x, tau_y, _, _, _ = _lens_terms(a, b, settings)
    tanfovx, tanfovy = _fields_of_view(settings)
    return (cx + settings.image_width / (2.0 * tanfovx) * (a * K + tau_x),
            cy + settings.image_height / (2.0 * tanfovy) * (b * K + tau_y))


def _preprocess(means3D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp,
                settings, ndc_offset=None) -> Dict[str, torch.Tensor]:
    """Project every Gaussian; returns per-Gaussian tensors and the (P,) bool `visible`.

    Values of Gaussians that are not visible are meaningless (possibly NaN).
    """
    H, W = settings.image_height, settings.image_width
    view, proj = settings.viewmatrix, settings.projmatrix

    # 1. View space; the depth of the Gaussian is t.z.
    tx, ty, tz = (_transform_point(means3D, view, c) for c in range(3))
    visible = tz > NEAR_PLANE

    # 2. Clip space, NDC, pixels.
    hx, hy, hw = (_transform_point(means3D, proj, c) for c in (0, 1, 3))
    inv_w = 1.0 / (hw + HOM_EPS)      # hom.xyz / (hom.w + eps), via one reciprocal
    ndc_x = hx * inv_w
    ndc_y = hy * inv_w
    if ndc_offset is not None:
        # The means2D carrier: adds zero, collects dL/d(ndc.x, ndc.y) (SPEC 6).
        ndc_x = ndc_x + ndc_offset[:, 0]
        ndc_y = ndc_y + ndc_offset[:, 1]
    mean2d = torch.stack([_ndc2pix(ndc_x, W), _ndc2pix(ndc_y, H)], dim=1)
    if _lens(settings):
        # the carrier's NDC units times size / 2
        lens_x, lens_y = _lens_pixels(tx, ty, tz, settings)
        if ndc_offset is not None:
            lens_x = lens_x + ndc_offset[:, 0] * (W / 2.0)
            lens_y = lens_y + ndc_offset[:, 1] * (H / 2.0)
        mean2d = torch.stack([lens_x, lens_y], dim=1)
        visible = visible & _lens_unfolded(tx, ty, tz, settings)

    # 3. World-space covariance.
    cov3d = _covariance_3d(scales, rotations, cov3D_precomp, settings.scale_modifier)

    # 4. EWA splatting: Jacobian of the perspective projection at the clamped mean.
    tx, ty, jac = _projection_jacobian(tx, ty, tz, settings)
    world_to_view = view.reshape(4, 4)[:3, :3].transpose(0, 1)  # Wr[j][i] = view[i*4+j]
    t_mat = _matmul(jac, world_to_view.expand(jac.shape[0], 3, 3))
    cov2d = _matmul(_matmul(t_mat, cov3d), t_mat.transpose(-1, -2))
    a = cov2d[:, 0, 0]
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1]

    # 5. Low-pass dilation (kernel_size px^2, 0.3 by default), and the antialiasing opacity
    # compensation.
    det_before = a * c - b * b
    a = a + settings.kernel_size
    c = c + settings.kernel_size
    det = a * c - b * b
    opacity = opacities[:, 0]
    if settings.antialiasing:
        h = torch.sqrt(torch.clamp_min(det_before / det, ANTIALIAS_MIN_RATIO))
        opacity = h * opacity

    # 6. Conic (inverse 2D covariance).
    visible = visible & (det != 0)
    inv_det = 1.0 / det                # (c, -b, a) / det, via one reciprocal
    conic = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=1)

    # 7. Screen radius and the rectangle of 16x16 tiles it touches.
    mid = (a + c) / 2.0
    lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, MIN_EIGEN_SLACK))
    extent = torch.ceil(SIGMA_EXTENT * torch.sqrt(lam))
    # radii are int32: capped at the last float below 2^31, and the rectangle uses the cap.
    radius = torch.clamp_max(extent, MAX_RADIUS)
    tiles = torch.tensor([(W + TILE_SIZE - 1) // TILE_SIZE, (H + TILE_SIZE - 1) // TILE_SIZE],
                         dtype=mean2d.dtype, device=mean2d.device)
    rect_min = torch.minimum(torch.floor((mean2d - radius[:, None]) / TILE_SIZE).clamp_min(0),
                             tiles)
    rect_max = torch.minimum(
        torch.floor((mean2d + radius[:, None] + (TILE_SIZE - 1)) / TILE_SIZE).clamp_min(0), tiles)
    rect_nonempty = (rect_max - rect_min).prod(dim=1) != 0

    # 8. Colour.
    if colors_precomp is not None:
        color = colors_precomp
    else:
        raw = _sh_to_color(shs, settings.sh_degree, means3D, settings.campos)
        # A non-finite colour (-inf included) culls the Gaussian rather than vanishing at 0.
        color = torch.where(torch.isfinite(raw), torch.clamp_min(raw, 0.0), raw)

    # Non-finite inputs or derived values: culled (SPEC 4).
    derived = [means3D, opacities, color, cov3d, mean2d, conic, extent, opacity,
               torch.stack([tx, ty, tz], dim=1)]
    for t in derived:
        visible = visible & _all_finite(t)

    # `projectable`: everything but the empty-rectangle test (the tests use it to find
    # Gaussians at the edge of being culled).
    return dict(depth=tz, mean2d=mean2d, conic=conic, opacity=opacity, radius=radius,
                rect_min=rect_min, rect_max=rect_max, color=color, lam=lam,
                projectable=visible, visible=visible & rect_nonempty)


# ----------------------------------------------------------------------------------------------
# Per pixel: the front-to-back blend of SPEC 4, and the outputs of SPEC 5
# ----------------------------------------------------------------------------------------------

def _straight_through_clamp_max(x: torch.Tensor, bound: float) -> torch.Tensor:
    """min(x, bound) in the forward, identity in the backward."""
    return x.detach().clamp_max(bound) + (x - x.detach())


class _AbsoluteGradient(torch.autograd.Function):
    """Identity forward; the backward hands on the absolute value of each element's gradient.
    Applied to the per-pixel copies of a carrier, it makes autograd sum |each pixel's
    gradient| (AbsGS's densification statistic) where it would sum the signed gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.abs()


def _weights(g, power, in_rect, ones):
    """The blend's alphas, transmittances and weights w (P,H,W) from each Gaussian's power at
    each pixel, with the masks of SPEC 4 (considered, blendable, stopped)."""
    unmasked_power = power.detach()
    considered = in_rect & (power <= 0)
    # exp of a skipped (possibly large positive) power would overflow, and its zero gradient
    # times inf is NaN: evaluate exp only where the pixel is considered.
    power = torch.where(considered, power, torch.zeros_like(power))
    raw_alpha = g["opacity"][:, None, None] * torch.exp(power)
    alpha = _straight_through_clamp_max(raw_alpha, ALPHA_MAX)
    blendable = considered & ~(alpha < ALPHA_MIN)
    alpha = torch.where(blendable, alpha, torch.zeros_like(alpha))

    # Early stop: the transmittance after blending Gaussian i, in blending order. It only
    # decreases, so "T (1 - alpha_i) < 1e-4" marks the stopping Gaussian and all behind it.
    with torch.no_grad():
        test_T = torch.cumprod(torch.cat([ones, 1.0 - alpha]), dim=0)[1:]
        stopped = test_T < TRANSMITTANCE_MIN
    blended = blendable & ~stopped
    alpha = torch.where(blended, alpha, torch.zeros_like(alpha))

    transmittance = torch.cumprod(torch.cat([ones, 1.0 - alpha]), dim=0)  # (P+1,H,W)
    return dict(w=alpha * transmittance[:-1], transmittance=transmittance, power=unmasked_power,
                raw_alpha=raw_alpha.detach(), considered=considered, blendable=blendable,
                blended=blended, test_T=test_T)


def _blend(g: Dict[str, torch.Tensor], settings, inverse_depth=False) -> Dict[str, torch.Tensor]:
    """Blend the (already visible-only) Gaussians of g into every pixel (and their `features`
    (P,C), when g has them, into a feature map). The depth channel blends z, or 1/z with
    `inverse_depth`; the order is by z either way. With g["abs_offset"] (P,2), the absolute
    gradient's carrier (zero in value), every map sees each Gaussian's mean through a copy per
    pixel, so that the carrier's gradient sums |each pixel's gradient| of the whole loss (the
    median's reaches z alone: doc/api.md)."""
    H, W = settings.image_height, settings.image_width
    dtype, device = g["mean2d"].dtype, g["mean2d"].device

    # Front to back; a stable sort keeps ties in index order.
    order = torch.sort(g["depth"].detach(), stable=True).indices
    g = {k: v[order] for k, v in g.items()}

    xs = torch.arange(W, dtype=dtype, device=device)
    ys = torch.arange(H, dtype=dtype, device=device)
    tile_x = torch.div(torch.arange(W, device=device), TILE_SIZE, rounding_mode="floor")
    tile_y = torch.div(torch.arange(H, device=device), TILE_SIZE, rounding_mode="floor")
    rmin = g["rect_min"].to(torch.int64)
    rmax = g["rect_max"].to(torch.int64)
    in_rect_x = (rmin[:, 0, None] <= tile_x) & (tile_x < rmax[:, 0, None])   # (P,W)
    in_rect_y = (rmin[:, 1, None] <= tile_y) & (tile_y < rmax[:, 1, None])   # (P,H)
    in_rect = in_rect_y[:, :, None] & in_rect_x[:, None, :]                  # (P,H,W)
    ones = torch.ones((1, H, W), dtype=dtype, device=device)

    def power_at(dx, dy):
        con_a = g["conic"][:, 0, None, None]
        con_b = g["conic"][:, 1, None, None]
        con_c = g["conic"][:, 2, None, None]
        return -0.5 * (con_a * dx * dx + con_c * dy * dy) - con_b * dx * dy    # (P,H,W)

    offset = getattr(settings, "subpixel_offset", None)
    if offset is None:
        dx = g["mean2d"][:, 0, None, None] - xs[None, None, :]                # (P,1,W)
        dy = g["mean2d"][:, 1, None, None] - ys[None, :, None]                # (P,H,1)
    else:  # each pixel's own sample point (Camera::sample_point), no gradient to it
        dx = g["mean2d"][:, 0, None, None] - (xs[None, :] + offset[..., 0])[None]  # (P,H,W)
        dy = g["mean2d"][:, 1, None, None] - (ys[:, None] + offset[..., 1])[None]  # (P,H,W)
    if "abs_offset" in g:
        # d pixel / d ndc = size / 2 (_ndc2pix), so the carrier collects NDC units as means2D.
        per_pixel = _AbsoluteGradient.apply(g["abs_offset"][:, :, None, None].expand(-1, -1, H, W))
        dx = dx + per_pixel[:, 0] * (0.5 * W)
        dy = dy + per_pixel[:, 1] * (0.5 * H)
    chain = _weights(g, power_at(dx, dy), in_rect, ones)
    blended = chain["blended"]
    transmittance = chain["transmittance"]
    T_final = transmittance[-1]
    w = chain["w"]                                                          # (P,H,W)

    color = (w[:, None] * g["color"][:, :, None, None]).sum(dim=0)          # (3,H,W)
    color = color + T_final[None] * settings.bg[:, None, None]
    weight = w.sum(dim=0)
    depth_value = 1.0 / g["depth"] if inverse_depth else g["depth"]
    depth_sum = (w * depth_value[:, None, None]).sum(dim=0)
    has_weight = weight > 0
    safe_weight = torch.where(has_weight, weight, torch.ones_like(weight))
    depth = torch.where(has_weight, depth_sum / safe_weight, torch.zeros_like(weight))

    # SPEC 8: feature channels with the colour's weights, no background; the median depth is
    # the depth of the blended Gaussian after which T is first <= 0.5 (T_before > 0.5 there).
    feature_map = None
    if "features" in g:
        feature_map = (chain["w"][:, None] * g["features"][:, :, None, None]).sum(dim=0)  # (C,H,W)
    T_before, T_after = chain["transmittance"][:-1], chain["transmittance"][1:]
    crossing = (blended & (T_before > 0.5) & (T_after <= 0.5)).detach()
    median = torch.where(crossing, depth_value[:, None, None], torch.zeros_like(w)).sum(dim=0)
    # Each pixel's median splat, as a position in this order: the last blended one with T above
    # 0.5 in front of it (the crossing one where T reaches 0.5), -1 where nothing is blended.
    in_front_of_median = (blended & (T_before > 0.5)).detach()
    positions = torch.arange(w.shape[0], device=device)[:, None, None]
    median_position = (torch.where(in_front_of_median, positions, torch.full_like(positions, -1))
                       .amax(dim=0) if w.shape[0] > 0
                       else torch.full((H, W), -1, dtype=torch.int64, device=device))
    # The touch count: the pixels where a Gaussian is blended with T behind it above 0.5.
    touch_count = (blended & (T_after > 0.5)).detach().flatten(1).sum(dim=1)
    # The contribution statistics: each Gaussian's weight sum and largest weight over the pixels,
    # the pixels where it is blended, and those where its weight is the largest (the first, in
    # depth order, of equal ones: argmax's pick).
    w_flat = w.detach().flatten(1)                                          # (P, H W)
    any_blended = blended.flatten(1).any(dim=0)
    dominant = torch.zeros_like(w_flat)
    if w_flat.shape[0] > 0:
        dominant[w_flat.argmax(dim=0), torch.arange(H * W, device=device)] = 1.0
    # LightGaussian's global significance: the opacity (as the render uses it) times the
    # transmittance in front, summed over the pixels where the Gaussian is blended.
    opacity_transmittance = torch.where(blended, g["opacity"][:, None, None] * T_before,
                                        torch.zeros_like(T_before)).detach().flatten(1)
    # Each pixel's dominant splat, as a position in this order (-1: nothing blended).
    dominant_position = torch.full((H, W), -1, dtype=torch.int64, device=device)
    if w_flat.shape[0] > 0:
        dominant_position = torch.where(any_blended, w_flat.argmax(dim=0),
                                        torch.full_like(any_blended, -1, dtype=torch.int64)
                                        ).reshape(H, W)
    contribution = torch.stack([w_flat.sum(dim=1),
                                w_flat.amax(dim=1),
                                blended.flatten(1).to(dtype).sum(dim=1),
                                (dominant * any_blended.to(dtype)).sum(dim=1),
                                opacity_transmittance.sum(dim=1)], dim=1)

    return dict(color=color, depth=depth, weight=weight, T_final=T_final, order=order,
                feature_map=feature_map, median=median, median_crossing=crossing,
                touch_count=touch_count, contribution=contribution,
                dominant_position=dominant_position, median_position=median_position,
                T_after=T_after.detach(), power=chain["power"], raw_alpha=chain["raw_alpha"],
                considered=chain["considered"], blendable=chain["blendable"], blended=blended,
                test_T=chain["test_T"], in_rect=in_rect)


# ----------------------------------------------------------------------------------------------
# The opacity field at 3D points (opacity_field.h)
# ----------------------------------------------------------------------------------------------

def _point_opacity(points, g, cov3d, means3D, settings):
    """(N,) opacity of each point in the view: 1 - its transmittance through the visible
    Gaussians g (the blend's per-Gaussian tensors, in index order), in depth order, each at the
    point's screen position faded in front of its peak along the point's ray (the inverse of
    its view-space covariance, where the backends take the adjugate); 1 where no pixel sees
    the point. Dense: every Gaussian against every point."""
    H, W = settings.image_height, settings.image_width
    view, proj = settings.viewmatrix, settings.projmatrix
    dtype = points.dtype
    tx, ty, tz = (_transform_point(points, view, c) for c in range(3))
    hx, hy, hw = (_transform_point(points, proj, c) for c in (0, 1, 3))
    inv_w = 1.0 / (hw + HOM_EPS)
    px, py = _ndc2pix(hx * inv_w, W), _ndc2pix(hy * inv_w, H)
    if _lens(settings):   # the ray through the point is the pinhole's
        px, py = _lens_pixels(tx, ty, tz, settings)
    col, row = torch.floor(px + 0.5), torch.floor(py + 0.5)
    seen = ((tz > NEAR_PLANE) & _all_finite(points) & (col >= 0) & (col < W) & (row >= 0)
            & (row < H))
    if _lens(settings):
        seen = seen & _lens_unfolded(tx, ty, tz, settings)
    tile_x = torch.div(col, TILE_SIZE, rounding_mode="floor")
    tile_y = torch.div(row, TILE_SIZE, rounding_mode="floor")
    in_rect = ((g["rect_min"][:, 0, None] <= tile_x) & (tile_x < g["rect_max"][:, 0, None])
               & (g["rect_min"][:, 1, None] <= tile_y) & (tile_y < g["rect_max"][:, 1, None]))
    dx = g["mean2d"][:, 0, None] - px[None]
    dy = g["mean2d"][:, 1, None] - py[None]
    con = g["conic"]
    power = -0.5 * (con[:, 0, None] * dx * dx + con[:, 2, None] * dy * dy) - con[:, 1, None] * dx * dy
    considered = in_rect & (power <= 0)
    alpha = torch.clamp_max(g["opacity"][:, None] * torch.exp(torch.where(
        considered, power, torch.zeros_like(power))), ALPHA_MAX)
    # The fade: along the ray z d (d = (x/z, y/z, 1)), the Gaussian's exponent is least at
    # z* = d^T S mu / d^T S d (S its inverse view-space covariance, mu its view-space mean).
    rotation = view.reshape(4, 4)[:3, :3].transpose(0, 1)
    precision = torch.linalg.inv(rotation @ cov3d @ rotation.transpose(0, 1))      # (G, 3, 3)
    mean_view = torch.stack([_transform_point(means3D, view, c) for c in range(3)], dim=1)
    ray = torch.stack([tx / tz, ty / tz, torch.ones_like(tz)], dim=1)               # (N, 3)
    s_ray = torch.einsum("gij,nj->gni", precision, ray)
    curvature = (s_ray * ray[None]).sum(-1)                                           # (G, N)
    peak = (s_ray * mean_view[:, None, :]).sum(-1) / curvature
    fade = torch.where(tz[None] < peak, torch.exp(-0.5 * curvature * (tz[None] - peak) ** 2),
                       torch.ones_like(peak))
    alpha = alpha * fade
    alpha = torch.where(considered & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    order = torch.sort(g["depth"], stable=True).indices
    alpha = alpha[order]
    test_T = torch.cumprod(1.0 - alpha, dim=0)
    alpha = torch.where(test_T < TRANSMITTANCE_MIN, torch.zeros_like(alpha), alpha)
    transmittance = torch.prod(1.0 - alpha, dim=0) if alpha.shape[0] else torch.ones_like(tz)
    return torch.where(seen, 1.0 - transmittance, torch.ones_like(tz)).to(dtype)


# ----------------------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------------------

def _forward(means3D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp, settings,
             ndc_offset=None, features=None, inverse_depth=False, abs_offset=None):
    """The whole forward on checked inputs.

    Returns (outputs, everyone, survivors, blend, idx): the outputs dict (color, radii, depth,
    weight, feature_map (None without features), median); the preprocess of all Gaussians (no
    autograd); that of the visible ones, whose indices are idx (with autograd); and the
    per-pixel tensors of the blend, in its order.
    """
    P = means3D.shape[0]
    with torch.no_grad():
        everyone = _preprocess(means3D, opacities, shs, colors_precomp, scales, rotations,
                               cov3D_precomp, settings)
    idx = torch.nonzero(everyone["visible"]).reshape(-1)

    def pick(t):
        return None if t is None else t[idx]

    survivors = _preprocess(pick(means3D), pick(opacities), pick(shs), pick(colors_precomp),
                            pick(scales), pick(rotations), pick(cov3D_precomp), settings,
                            ndc_offset=pick(ndc_offset))
    survivors.pop("visible")
    survivors.pop("projectable")
    blended = {k: survivors[k] for k in ("depth", "mean2d", "conic", "opacity", "rect_min",
                                         "rect_max", "color")}
    if features is not None:
        blended["features"] = features[idx]
    if abs_offset is not None:
        blended["abs_offset"] = abs_offset[idx]
    blend = _blend(blended, settings, inverse_depth)

    radii = torch.zeros(P, dtype=torch.int32, device=means3D.device)
    radii[idx] = everyone["radius"][idx].to(torch.int32)
    touch_count = torch.zeros(P, dtype=torch.int32, device=means3D.device)
    touch_count[idx[blend["order"]]] = blend["touch_count"].to(torch.int32)
    contribution = torch.zeros((P, 5), dtype=means3D.dtype, device=means3D.device)
    contribution[idx[blend["order"]]] = blend["contribution"]
    position = blend["dominant_position"]
    dominant = torch.where(position >= 0, idx[blend["order"]][position.clamp(min=0)]
                           if idx.numel() else position, position).to(torch.int32)
    position = blend["median_position"]
    median_gaussian = torch.where(position >= 0, idx[blend["order"]][position.clamp(min=0)]
                                  if idx.numel() else position, position).to(torch.int32)
    return dict(color=blend["color"], radii=radii, depth=blend["depth"], weight=blend["weight"],
                feature_map=blend["feature_map"], median=blend["median"],
                touch_count=touch_count, contribution=contribution, dominant=dominant,
                median_gaussian=median_gaussian), \
        everyone, survivors, blend, idx


def rasterize_reference(means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                        rotations=None, cov3D_precomp=None, raster_settings=None, dc=None,
                        features=None, median_depth=False, inverse_depth=False,
                        touch_count=False, contributions=False, dominant=False,
                        points3D=None, median_gaussian=False):
    """The SPEC's rasterizer in plain PyTorch.

    Same inputs as `GaussianRasterizer.forward` (plus the settings), float32 or float64,
    computed in the input dtype. Returns (color (3,H,W), radii int32 (P,), depth (H,W),
    weight (H,W)), then feature_map (C,H,W) when `features` (P,C) is given and median (H,W)
    when `median_depth` is True (SPEC 8), then touch_count (P,) int32 when `touch_count` is
    True, then contribution (P, 5) when `contributions` is True (weight sum, weight max,
    pixels, dominated pixels, opacity-transmittance sum: `rasterize_gaussians`), then dominant
    (H, W) int32 when `dominant` is True, then point_opacity (N,) at `points3D` (N, 3) when
    given (no gradient), then median_gaussian (H, W) int32 when `median_gaussian` is True (no
    gradient: `rasterize_gaussians`); gradients by autograd, with the conventions of SPEC 6.
    `inverse_depth`: the depth channel blends 1/z (see `rasterize_gaussians`).
    """
    if raster_settings is None:
        raise ValueError("raster_settings: expected a GaussianRasterizationSettings, got None")
    (means3D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp,
     settings) = check_gaussians(means3D, means2D, opacities, shs, colors_precomp, scales,
                                 rotations, cov3D_precomp, dc, raster_settings)
    features, median_depth, inverse_depth = check_optional_outputs(features, median_depth,
                                                                   means3D, inverse_depth)
    def zero_valued(carrier):
        # Value exactly zero (a non-finite carrier value is ignored too), gradient identity.
        return torch.where(torch.isfinite(carrier.detach()), carrier - carrier.detach(),
                           torch.zeros_like(carrier))

    ndc_offset = abs_offset = None
    if means2D is not None:
        ndc_offset = zero_valued(means2D[:, :2])
        if means2D.shape[1] == 4:  # columns 2-3: the absolute gradient (AbsGS)
            abs_offset = zero_valued(means2D[:, 2:])
    out, _, survivors, _, idx = _forward(means3D, opacities, shs, colors_precomp, scales,
                                         rotations, cov3D_precomp, settings, ndc_offset,
                                         features, inverse_depth, abs_offset)
    result = (out["color"], out["radii"], out["depth"], out["weight"])
    if features is not None:
        result += (out["feature_map"],)
    if median_depth:
        result += (out["median"],)
    if touch_count:
        result += (out["touch_count"],)
    if contributions:
        result += (out["contribution"],)
    if dominant:
        result += (out["dominant"],)
    if points3D is not None:
        with torch.no_grad():
            def pick(t):
                return None if t is None else t[idx].detach()
            cov3d = _covariance_3d(pick(scales), pick(rotations), pick(cov3D_precomp),
                                   settings.scale_modifier)
            g = {k: v.detach() for k, v in survivors.items()}
            result += (_point_opacity(points3D.detach(), g, cov3d, pick(means3D), settings),)
    if median_gaussian:
        result += (out["median_gaussian"],)
    return result


def sparse_adam_step_reference(param, grad, exp_avg, exp_avg_sq, visibility, lr, eps,
                               beta1=0.9, beta2=0.999):
    """SparseGaussianAdam's update in plain PyTorch, in place: the visible rows (Gaussians) of
    param, exp_avg and exp_avg_sq take one Adam step without bias correction; the others keep
    their bits. Each expression in the order of the compiled kernel."""
    rows = visibility.shape[0]
    # Coefficients rounded once from double, as the kernel does (1 - beta is not 1 - T(beta)).
    b1, c1, b2, c2 = (torch.tensor(v, dtype=param.dtype) for v in
                      (beta1, 1.0 - beta1, beta2, 1.0 - beta2))
    lr_t, eps_t = torch.tensor(lr, dtype=param.dtype), torch.tensor(eps, dtype=param.dtype)
    p, g = param.view(rows, -1), grad.reshape(rows, -1)
    m, v = exp_avg.view(rows, -1), exp_avg_sq.view(rows, -1)
    new_m = b1 * m[visibility] + c1 * g[visibility]
    new_v = b2 * v[visibility] + c2 * g[visibility] * g[visibility]
    p[visibility] = p[visibility] - lr_t * new_m / (torch.sqrt(new_v) + eps_t)
    m[visibility] = new_m
    v[visibility] = new_v


def binomial_table(n_max, dtype=torch.float64):
    """C(n, k) at [n, k] for n, k < n_max (0 above the diagonal): 3DGS-MCMC's `binoms`, by
    Pascal's rule (exact in float64 to n_max = 57)."""
    table = torch.zeros(n_max, n_max, dtype=torch.float64)
    table[:, 0] = 1
    for n in range(1, n_max):
        table[n, 1:] = table[n - 1, 1:] + table[n - 1, :-1]
    return table.to(dtype)


def compute_relocation_reference(opacity_old, scale_old, N):
    """3DGS-MCMC's eq. 9 as the paper writes it, in float64: o_N = 1 - (1 - o)^(1/N) and
    s_N = s o / sum_{i=1..N} sum_{k=0..i-1} C(i-1, k) (-1)^k o_N^(k+1) / sqrt(k+1), one term
    at a time (O(N^2) operations on (P,) tensors). Its alternating sums are exact to about
    1e-16 (1 + o_N)^N of their value: the oracle where that is small; the compiled operation
    also holds where it is not (relocation.h, tested against 80-digit sums).
    Returns (new_opacity, new_scale) of the inputs' shapes and dtype."""
    o = opacity_old.reshape(-1).to(torch.float64)
    n = N.reshape(-1).to(torch.int64)
    o_n = 1 - (1 - o) ** (1.0 / n.to(torch.float64))
    largest = int(n.max()) if n.numel() else 0
    binoms = binomial_table(max(largest, 1))
    denominator = torch.zeros_like(o)
    for i in range(1, largest + 1):
        taking = n >= i
        for k in range(i):
            term = binoms[i - 1, k] * (-1) ** k * o_n ** (k + 1) / (k + 1) ** 0.5
            denominator = denominator + torch.where(taking, term, torch.zeros_like(term))
    factor = torch.where(o > 0, o / torch.where(o > 0, denominator, torch.ones_like(o)),
                         torch.ones_like(o))
    scale = scale_old.to(torch.float64).reshape(o.shape[0], -1) * factor[:, None]
    return (o_n.to(opacity_old.dtype).reshape(opacity_old.shape),
            scale.to(scale_old.dtype).reshape(scale_old.shape))


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def ssim_map_reference(img1, img2, padding="same", C1=0.01 ** 2, C2=0.03 ** 2):
    """The SSIM map as 3DGS's loss_utils computes it, the fused SSIM's twin: each plane of
    img1 and img2 (..., H, W) blurred by the 11 x 11 Gaussian window (sigma 1.5, normalized)
    with F.conv2d and zero padding, then the per-pixel formula of Wang et al. (2004) on the
    means, variances and covariance. padding "valid" keeps the pixels whose window lies inside
    the image (5 fewer on each side). Differentiable in both images by autograd."""
    shape = img1.shape
    x = img1.reshape(1, -1, shape[-2], shape[-1])  # the planes as channels, as loss_utils
    y = img2.reshape(1, -1, shape[-2], shape[-1])
    d = torch.arange(SSIM_WINDOW, dtype=img1.dtype, device=img1.device) - SSIM_WINDOW // 2
    g = torch.exp(-d * d / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(x.shape[1], 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(t):
        return torch.nn.functional.conv2d(t, window.contiguous(), padding=SSIM_WINDOW // 2,
                                          groups=t.shape[1])

    mu1, mu2 = blur(x), blur(y)
    var1 = blur(x * x) - mu1 * mu1
    var2 = blur(y * y) - mu2 * mu2
    cov = blur(x * y) - mu1 * mu2
    ssim = ((2 * mu1 * mu2 + C1) * (2 * cov + C2)) / ((mu1 * mu1 + mu2 * mu2 + C1)
                                                        * (var1 + var2 + C2))
    ssim = ssim.reshape(shape)
    if padding == "valid":
        r = SSIM_WINDOW // 2
        ssim = ssim[..., r:shape[-2] - r, r:shape[-1] - r]
    return ssim
