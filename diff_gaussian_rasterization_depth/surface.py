"""Surface-reconstruction terms for 3D Gaussians, in plain PyTorch on the rasterizer's outputs.

Methods that pull 3D Gaussians onto surfaces (2DGS's and Gaussian Opacity Fields' depth
distortion, the normal-consistency and depth-normal losses of 2DGS, PGSR, DN-Splatter) need,
besides the colour: a normal per Gaussian, blended into a normal map; the spread of the blended
depths along each ray; a depth map and its normals. All of them come from the rasterizer's
feature channels and depth map with exact gradients, so they live here as small differentiable
functions rather than as more kernels:

    maps = render_surface(rasterizer, settings, means3D=means3D, means2D=means2D, ...)
    depth_normals = depth_to_normal(maps.plane_depth, settings)   # (3, H, W) (or of maps.depth)
    loss_normal = (maps.weight * (1 - (maps.normal_map * depth_normals).sum(0))).mean()
    loss_distortion = maps.distortion.mean()

where `render_surface` is one call with 6 feature channels: the Gaussians' normals
(`gaussian_normals`), their planes' offsets (`plane_distances`) and the distortion's moments
(`distortion_features`), turned into the normal map (`normalized`), PGSR's plane depth
(`plane_depth`) and 2DGS's distortion (`depth_distortion`).

Frames: everything is in view space (x right, y down, z forward; SPEC 4), where the rendered
normals and the depth map's normals can be compared directly.
"""
import math
from typing import NamedTuple, Optional

import torch

from ._precision import full_precision
from ._validation import check_fisheye_distortion, check_pinhole_distortion, require_pinhole
from .reference import (HOM_EPS, NEAR_PLANE, _covariance_3d, _distortion_factor,
                        _lens_centre, _ndc2pix, _pinhole_terms, _rotation_matrix)

__all__ = ["view_points", "gaussian_normals", "distortion_features", "ndc_depth",
           "depth_distortion", "depth_to_points", "depth_to_normal", "plane_distances",
           "plane_depth", "normalized", "render_surface", "SurfaceMaps", "dominant_points",
           "intersection_planes", "intersection_depth", "DepthPlanes"]

# 2DGS's and GOF's planes for the distortion's depth mapping (their NEAR_PLANE and FAR_PLANE).
DISTORTION_NEAR = 0.2
DISTORTION_FAR = 100.0


def _check_shape(name: str, t: torch.Tensor, shape) -> None:
    """A ValueError naming the argument where `t` is not of `shape` (None: any size there); a
    map passed with the wrong channels would otherwise broadcast into a wrong answer."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")


def _matrix(m, like: torch.Tensor) -> torch.Tensor:
    """A settings matrix (any 16-element layout, transposed as the rasterizer takes it) as 4x4."""
    return torch.as_tensor(m).reshape(4, 4).to(like)


@full_precision
def view_points(means3D: torch.Tensor, settings) -> torch.Tensor:
    """(P, 3) view-space positions `[p, 1] @ viewmatrix`; column 2 is the depth z the depth map
    blends."""
    _check_shape("means3D", means3D, (None, 3))
    view = _matrix(settings.viewmatrix, means3D)
    return means3D @ view[:3, :3] + view[3, :3]


@full_precision
def gaussian_normals(scales: torch.Tensor, rotations: torch.Tensor, view_t: torch.Tensor,
                     settings) -> torch.Tensor:
    """(P, 3) unit normals in view space: each Gaussian's shortest axis (the rotation's column of
    the smallest scale), turned to face the camera (n . t <= 0 for its view position t).

    `rotations` are quaternions (w, x, y, z), normalized here (3DGS hands the rasterizer
    normalized ones; it uses them as given). A flat Gaussian's normal is its surface's; a round
    one's is arbitrary, which is why the losses that use it also flatten the Gaussians (a loss
    on the smallest scale). The gradient reaches the rotations (and the view matrix where it
    requires grad); the choice of axis is discrete, so the scales get none from here.
    """
    _check_shape("scales", scales, (None, 3))
    _check_shape("rotations", rotations, (len(scales), 4))
    _check_shape("view_t", view_t, (len(scales), 3))
    rotation = _rotation_matrix(torch.nn.functional.normalize(rotations, dim=1))
    shortest = scales.argmin(dim=1)
    rows = torch.arange(len(rotation), device=rotation.device)
    axis = rotation[rows, :, shortest]                         # column: a world direction
    n = axis @ _matrix(settings.viewmatrix, axis)[:3, :3]      # into view space
    away = (n * view_t).sum(1, keepdim=True) > 0
    return torch.where(away, -n, n)


def ndc_depth(z: torch.Tensor, near: float = DISTORTION_NEAR,
              far: float = DISTORTION_FAR) -> torch.Tensor:
    """2DGS's mapping of view depth for the distortion, `far / (far - near) * (1 - near / z)`:
    0 at `near`, 1 at `far`, so distances between depths count less far away."""
    return far / (far - near) * (1 - near / z)


def distortion_features(z: torch.Tensor, near: float = DISTORTION_NEAR,
                        far: float = DISTORTION_FAR) -> torch.Tensor:
    """(P, 2) feature channels `[m, m^2]` with `m = ndc_depth(z)`, for `depth_distortion`.

    z <= 0 (Gaussians behind the camera, which are culled and never blended) is clamped to
    `near` first so that no infinity enters the backward's products.
    """
    _check_shape("z", z, (None,))
    m = ndc_depth(z.clamp_min(near), near, far)
    return torch.stack([m, m * m], 1)


def depth_distortion(weight: torch.Tensor, moments: torch.Tensor) -> torch.Tensor:
    """(H, W) depth distortion `sum_i sum_{j<i} w_i w_j (m_i - m_j)^2` from the weight map and
    the feature map of `distortion_features` (2, H, W).

    Summed over ordered pairs the spread is symmetric, so with W = sum w, M1 = sum w m and
    M2 = sum w m^2 it is W M2 - M1^2 exactly: the map 2DGS and GOF accumulate front to back
    (`m^2 A + M2 - 2 m M1` times w, with A = 1 - T = the weight in front), without a kernel of
    its own. Rounding can make the difference slightly negative; it is clamped at 0.
    """
    _check_shape("weight", weight, (None, None))
    _check_shape("moments", moments, (2, *weight.shape))
    return (weight * moments[1] - moments[0] * moments[0]).clamp_min(0)


def _pixel_to_view(ndc_x, ndc_y, z, projection):
    """View points on the rays of NDC positions (ndc_x, ndc_y) at view depths z: solves
    `[X, Y, z, 1] @ projection` = w (ndc_x, ndc_y, ., 1) for X and Y (two linear equations in
    them, a 2x2 system per pixel), so any projective camera works (shifted principal points,
    skew), not only the symmetric frustum."""
    K = projection
    a = K[0, 0] - ndc_x * K[0, 3]
    b = K[1, 0] - ndc_x * K[1, 3]
    c = K[0, 1] - ndc_y * K[0, 3]
    d = K[1, 1] - ndc_y * K[1, 3]
    e = ndc_x * (z * K[2, 3] + K[3, 3]) - z * K[2, 0] - K[3, 0]
    f = ndc_y * (z * K[2, 3] + K[3, 3]) - z * K[2, 1] - K[3, 1]
    det = a * d - b * c
    return (e * d - b * f) / det, (a * f - e * c) / det


def _pixel_offsets(depth: torch.Tensor, settings):
    """((1, W), (H, 1)): each pixel column's and row's offset from a lens's principal point c
    (where projmatrix puts the axis), over the focal lengths W / (2 tanfovx), H / (2 tanfovy);
    tensors that require grad pass theirs on."""
    H, W = depth.shape
    cx, cy = (c.to(depth) for c in _lens_centre(settings))
    fx = W / (2.0 * settings.tanfovx)
    fy = H / (2.0 * settings.tanfovy)
    return (((torch.arange(W, device=depth.device, dtype=depth.dtype) - cx) / fx)[None, :],
            ((torch.arange(H, device=depth.device, dtype=depth.dtype) - cy) / fy)[:, None])


def _fisheye_rays(depth: torch.Tensor, settings):
    """(x, y) of `depth_to_points` through a fisheye (settings `fisheye=True`): pixel p lies
    theta = |(p - c) / focal| off the axis, c where projmatrix puts the axis, and its ray is
    (a, b, 1) with (a, b) = (p - c) / focal * tan(theta) / theta. A pixel 90 degrees off the
    axis or more, which nothing in front of the camera reaches (its depth is 0), gets a = b = 0.
    With `fisheye_distortion`, |(p - c) / focal| is OpenCV's distorted angle theta_d
    (`_undistorted_angle` inverts it), and pixels past the fold get a = b = 0 as well."""
    dx, dy = _pixel_offsets(depth, settings)
    theta = torch.sqrt(dx * dx + dy * dy)
    given = getattr(settings, "fisheye_distortion", None)
    k, fold = check_fisheye_distortion(given, True)
    undistort = 1.0   # theta / theta_d
    wide = theta >= math.pi / 2
    if k is not None:
        k = _coefficients(given, k, depth)
        theta, undistort, folded = _undistorted_angle(theta, k, fold)
        wide = (theta >= math.pi / 2) | folded
    # tan(theta) / theta, 1 + theta^2 / 3 near the axis (where the ratio is 0 / 0 in the limit)
    near = theta < 1e-4
    safe = torch.where(near | wide, torch.ones_like(theta), theta)
    scale = torch.where(near, 1.0 + theta * theta / 3.0, torch.tan(safe) / safe) * undistort
    scale = torch.where(wide, torch.zeros_like(scale), scale)
    return depth * dx * scale, depth * dy * scale


def _undistorted_angle(theta_d: torch.Tensor, k, fold: float):
    """(theta, theta / theta_d, folded) for OpenCV's distorted fisheye angles theta_d =
    theta D(theta^2), D(w) = 1 + k1 w + k2 w^2 + k3 w^3 + k4 w^4: theta by Newton's method from
    theta_d, within [0, fold] where theta_d grows; folded where theta_d lies past the fold's
    (no ray there). The last Newton step runs with autograd, so that the gradient is
    d theta_d / (d theta_d / d theta), the implicit function's."""
    def distorted(t):   # (theta_d, d theta_d / d theta, D)
        D, dD = _distortion_factor(t * t, k)
        return t * D, D + 2.0 * t * t * dD, D

    with torch.no_grad():
        folded = theta_d >= distorted(torch.tensor(fold, dtype=theta_d.dtype))[0]
    theta_d = torch.where(folded, torch.zeros_like(theta_d), theta_d)  # the fold's slope is 0
    with torch.no_grad():
        theta = torch.clamp(theta_d, 0.0, fold)
        for _ in range(30):   # quadratic once close; 30 covers a poor start
            value, slope, _ = distorted(theta)
            theta = torch.clamp(theta - (value - theta_d) / slope, 0.0, fold)
    value, slope, _ = distorted(theta)
    theta = theta - (value - theta_d) / slope
    return theta, 1.0 / distorted(theta)[2], folded


def _coefficients(given, checked, like):
    """The lens coefficients as the gradient flows through them: the settings' tensor as 0-dim
    views on `like`'s device and dtype (0 for the pinhole's coefficients not given), else the
    checked numbers."""
    if not isinstance(given, torch.Tensor):
        return checked
    k = tuple(given.reshape(-1).to(like).unbind())
    return k + (0.0,) * (len(checked) - len(k))


def _distorted_pinhole_rays(depth: torch.Tensor, settings):
    """(x, y) of `depth_to_points` through OpenCV's distorted pinhole (settings
    `pinhole_distortion`): pixel p's distorted normalized point (p - c) / focal, c where
    projmatrix puts the axis, undistorted into the ray (a, b, 1) (`_undistorted_point`); pixels
    no point within the fold reaches (nothing lands there: depth 0) get a = b = 0."""
    H, W = depth.shape
    xd, yd = _pixel_offsets(depth, settings)
    given = settings.pinhole_distortion
    k, fold_u = check_pinhole_distortion(given, False, keep_zeros=True)
    a, b, reached = _undistorted_point(xd.expand(H, W), yd.expand(H, W),
                                       _coefficients(given, k, depth), fold_u)
    zero = torch.zeros_like(a)
    return depth * torch.where(reached, a, zero), depth * torch.where(reached, b, zero)


def _undistorted_point(xd, yd, k, fold_u: float):
    """((a, b), reached) with OpenCV's distortion of (a, b) (coefficients k = (k1, k2, p1, p2,
    k3, k4, k5, k6)) equal to (xd, yd): Newton's method on the 2x2 system from (xd, yd), each
    step held within u = a^2 + b^2 <= fold_u where the radial part grows; reached where the
    residual is below 1e-5 (normalized units: a hundredth of a pixel at a focal of 1000) within
    the fold. The last step runs with autograd, so that the gradient is the implicit
    function's, J^-1 d(xd, yd) (and -J^-1 d(distortion)/dk for coefficients that require
    grad)."""
    def distorted(a, b, k):   # the distorted point and its Jacobian's entries (J01 = J10)
        L, M, _, tau_x, tau_y, T00, T01, T11 = _pinhole_terms(a, b, k)
        return (a * L + tau_x, b * L + tau_y, L + a * a * M + T00, a * b * M + T01,
                L + b * b * M + T11)

    def step(a, b, k):
        x, y, j00, j01, j11 = distorted(a, b, k)
        ex, ey = x - xd, y - yd
        det = j00 * j11 - j01 * j01
        det = torch.where(det.abs() > 1e-12, det, torch.full_like(det, 1e-12))
        return a - (j11 * ex - j01 * ey) / det, b - (j00 * ey - j01 * ex) / det

    numbers = tuple(float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in k)
    with torch.no_grad():
        a, b = xd.detach().clone(), yd.detach().clone()
        for _ in range(30):   # quadratic once close; 30 covers a poor start
            a, b = step(a, b, numbers)
            u = a * a + b * b
            shrink = torch.where(u > fold_u, torch.sqrt(fold_u / u.clamp_min(1e-30)),
                                 torch.ones_like(u))
            a, b = a * shrink, b * shrink
        x, y = distorted(a, b, numbers)[:2]
        reached = (torch.hypot(x - xd, y - yd) < 1e-5) & (a * a + b * b <= fold_u)
    a, b = step(a, b, k)
    return a, b, reached


@full_precision
def depth_to_points(depth: torch.Tensor, settings) -> torch.Tensor:
    """(3, H, W) view-space points of a depth map (H, W) of view depths z, each on its pixel's
    ray: pixel (col, row) at NDC ((2 col + 1) / W - 1, (2 row + 1) / H - 1), the inverse of the
    rasterizer's pixel mapping, through the projection the settings imply
    (`viewmatrix^-1 @ projmatrix`); with `fisheye=True`, through the fisheye's (`_fisheye_rays`),
    with a `pinhole_distortion`, through the distorted pinhole's (`_distorted_pinhole_rays`).
    Differentiable in depth (and in the matrices and the lens coefficients)."""
    _check_shape("depth", depth, (None, None))
    if bool(getattr(settings, "fisheye", False)):
        x, y = _fisheye_rays(depth, settings)
        return torch.stack([x, y, depth], 0)
    if getattr(settings, "pinhole_distortion", None) is not None:
        x, y = _distorted_pinhole_rays(depth, settings)
        return torch.stack([x, y, depth], 0)
    H, W = depth.shape
    view = _matrix(settings.viewmatrix, depth)
    projection = torch.linalg.solve(view, _matrix(settings.projmatrix, depth))
    cols = torch.arange(W, device=depth.device, dtype=depth.dtype)
    rows = torch.arange(H, device=depth.device, dtype=depth.dtype)
    ndc_x = ((2 * cols + 1) / W - 1)[None, :].expand(H, W)
    ndc_y = ((2 * rows + 1) / H - 1)[:, None].expand(H, W)
    x, y = _pixel_to_view(ndc_x, ndc_y, depth, projection)
    return torch.stack([x, y, depth], 0)


def _adjugate_covariance_times(vectors, scales, rotations, cov3D_precomp, scale_modifier):
    """(P, 3) adj(Sigma) v = det(Sigma) Sigma^-1 v for the world covariance of each Gaussian
    and a vector v (P, 3) each (or (P, 3, k): k vectors each), without a division: where a ratio
    of two such products is wanted, flat Gaussians, whose Sigma a solve finds singular in
    float32, keep exact values. From scales and rotations, Sigma = M M^T
    with M = R S (the quaternion's matrix as the rasterizer uses it, unnormalized included):
    adj(Sigma) = adj(M)^T adj(M), whose factor's rows c_k are the cross products of M's
    columns, so adj(Sigma) v = sum_k c_k (c_k . v) and a flat Gaussian (one scale 0) keeps its
    exact flat axis. From cov3D_precomp: its cofactors (its rows' cross products), times v."""
    if cov3D_precomp is None:
        m = _rotation_matrix(rotations) * (scale_modifier * scales)[:, None, :]
        columns = m.unbind(2)
    else:
        columns = _covariance_3d(None, None, cov3D_precomp, scale_modifier).unbind(2)
    cofactors = (torch.linalg.cross(columns[1], columns[2]),
                 torch.linalg.cross(columns[2], columns[0]),
                 torch.linalg.cross(columns[0], columns[1]))       # adj(M)'s rows
    if vectors.dim() == 3:
        cofactors = tuple(c[:, :, None] for c in cofactors)
    dots = [(c * vectors).sum(1, keepdim=True) for c in cofactors]
    if cov3D_precomp is not None:        # symmetric Sigma: the cofactors are adj(Sigma)'s rows
        return torch.cat(dots, 1)
    return cofactors[0] * dots[0] + cofactors[1] * dots[1] + cofactors[2] * dots[2]


@full_precision
def dominant_points(dominant: torch.Tensor, means3D: torch.Tensor, settings, scales=None,
                    rotations=None, cov3D_precomp=None):
    """((3, H, W) world points, (H, W) bool): on each pixel's ray, the point where its dominant
    Gaussian (the rasterizer's `dominant=True` map) is densest, as Mini-Splatting's depth
    reinitialization places new points. Along the ray o + s d the density
    exp(-(x - mu)^T Sigma^-1 (x - mu) / 2) peaks at s = -d^T Sigma^-1 (o - mu) / d^T Sigma^-1 d,
    with Sigma the Gaussian's covariance as the rasterizer builds it (scales and rotations, or
    cov3D_precomp, times settings.scale_modifier), taken as adj(Sigma) (the same ratio, without
    an inverse: flat Gaussians, singular in float32, keep exact points). Valid where a Gaussian
    dominates, is not a needle (rank 1, densest along a whole segment) and the point lies in
    front of the camera (s > 0); elsewhere the point is the camera centre. The rays are the
    rasterizer's: pixel centres through the camera centre (`depth_to_points`)."""
    _check_shape("dominant", dominant, (None, None))
    _check_covariance_inputs("dominant_points", means3D, scales, rotations, cov3D_precomp)
    require_pinhole("dominant_points", settings, refused=("orthographic",))
    if dominant.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"dominant: expected the rasterizer's int32 map, got {dominant.dtype}")
    H, W = dominant.shape
    if (H, W) != (int(settings.image_height), int(settings.image_width)):
        raise ValueError(f"dominant: expected the settings' image, ({settings.image_height}, "
                         f"{settings.image_width}), got {(H, W)}")
    if dominant.device != means3D.device:
        raise ValueError(f"dominant: expected a tensor on {means3D.device} (means3D's device), "
                         f"got one on {dominant.device}")
    dtype = means3D.dtype
    view = _matrix(settings.viewmatrix, means3D)
    rotation_inverse = torch.linalg.inv(view[:3, :3])
    origin = -view[3, :3] @ rotation_inverse                            # the camera centre
    ray_view = depth_to_points(torch.ones(H, W, dtype=dtype, device=means3D.device), settings)
    direction = ray_view.reshape(3, -1).T @ rotation_inverse            # (H W, 3), world
    ids = dominant.reshape(-1).long()
    valid = ids >= 0
    picked = ids.clamp(min=0)[valid]
    pick = (lambda t: None if t is None else t[picked])  # noqa: E731
    d = direction[valid]
    to_origin = origin - means3D[picked]
    # adj(Sigma) d for Sigma^-1 d: the ratio is the same, and a flat Gaussian's is exact.
    adjugate_d = _adjugate_covariance_times(d, pick(scales), pick(rotations),
                                            pick(cov3D_precomp), float(settings.scale_modifier))
    denominator = (adjugate_d * d).sum(1)
    meets = denominator > 0              # 0 for a needle (rank 1): no point of densest approach
    s = -(adjugate_d * to_origin).sum(1) / torch.where(meets, denominator,
                                                        torch.ones_like(denominator))
    points = origin.expand(H * W, 3).clone()
    points[valid] = origin + s[:, None] * d
    in_front = torch.zeros(H * W, dtype=torch.bool, device=means3D.device)
    in_front[valid] = (s > 0) & meets
    return points.T.reshape(3, H, W), in_front.reshape(H, W)


def plane_distances(normals: torch.Tensor, view_t: torch.Tensor) -> torch.Tensor:
    """(P, 1) the feature channel for `plane_depth`: each Gaussian's tangent plane (through its
    centre t, normal n from `gaussian_normals`) as its offset n . t (<= 0 where n faces the
    camera)."""
    _check_shape("normals", normals, (None, 3))
    _check_shape("view_t", view_t, (len(normals), 3))
    return (normals * view_t).sum(1, keepdim=True)


@full_precision
def plane_depth(normal_sum: torch.Tensor, distance_sum: torch.Tensor, settings) -> torch.Tensor:
    """(H, W) PGSR's unbiased depth: where each pixel's ray meets the blended plane,
    `z = D / (N . r)`, with N (3, H, W) the feature map of the normals (not normalized), D
    (H, W) that of `plane_distances` and r = (x, y, 1) the pixel's ray (`depth_to_points` at
    z = 1; rays through the camera centre, as a pinhole's or a fisheye's).

    Where the splats of a pixel lie on one plane the depth is that plane's, exactly, whatever
    the weights: no bias towards the splats' centres, which is what the expected depth has on a
    slanted surface. The ratio is invariant to the weights' scale, so the maps are used as
    rendered. 0 where nothing is blended or the plane is seen edge-on (N . r >= 0)."""
    _check_shape("distance_sum", distance_sum, (None, None))
    _check_shape("normal_sum", normal_sum, (3, *distance_sum.shape))
    require_pinhole("plane_depth", settings, refused=("orthographic",))
    ray = depth_to_points(torch.ones_like(distance_sum), settings)
    facing = (normal_sum * ray).sum(0)
    seen = facing < -1e-12
    z = distance_sum / torch.where(seen, facing, -torch.ones_like(facing))
    return torch.where(seen, z, torch.zeros_like(z))


def normalized(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """A map of vectors (3, H, W) as unit vectors, and 0 where |v| <= eps (nothing blended),
    with a zero gradient there where `torch.nn.functional.normalize(v, dim=0)` has one of 1/eps.
    Elsewhere the same values, from three planes rather than a reduction across them (about 30x
    faster on a CPU at 648x420)."""
    _check_shape("vectors", vectors, (3, None, None))
    x, y, z = vectors.unbind(0)
    length_sq = x * x + y * y + z * z
    seen = length_sq > eps * eps
    length = torch.where(seen, length_sq, torch.ones_like(length_sq)).sqrt()
    return torch.where(seen, vectors / length, torch.zeros_like(vectors))


@full_precision
def depth_to_normal(depth: torch.Tensor, settings) -> torch.Tensor:
    """(3, H, W) unit normals of a depth map in view space, facing the camera, from the cross
    product of central differences of `depth_to_points` (as 2DGS's depth-normal term). Zero on
    the image border and wherever the pixel or one of its four neighbours has depth <= 0 (no
    Gaussian blended there: the depth map is 0), so a loss weighted by the normal map sees no
    normal across the edge of the scene."""
    points = depth_to_points(depth, settings)
    ax, ay, az = (points[:, 1:-1, 2:] - points[:, 1:-1, :-2]).unbind(0)    # along x
    bx, by, bz = (points[:, 2:, 1:-1] - points[:, :-2, 1:-1]).unbind(0)    # along y
    # x right, y down: x cross y points away from the camera (+z); y cross x faces it.
    n = normalized(torch.stack([by * az - bz * ay, bz * ax - bx * az, bx * ay - by * ax]))
    solid = depth > 0
    valid = (solid[1:-1, 1:-1] & solid[1:-1, 2:] & solid[1:-1, :-2]
             & solid[2:, 1:-1] & solid[:-2, 1:-1])
    out = torch.zeros_like(points)
    out[:, 1:-1, 1:-1] = torch.where(valid, n, torch.zeros_like(n))
    return out


class DepthPlanes(NamedTuple):
    features: torch.Tensor       # (P, 3) the channels `intersection_depth` reads
    normals: torch.Tensor        # (P, 3) unit normals of the depth planes, view space


def _check_covariance_inputs(caller, means3D, scales, rotations, cov3D_precomp):
    """means3D (P, 3), and either scales (P, 3) and rotations (P, 4) or cov3D_precomp (P, 6), of
    means3D's dtype and device; errors name the argument."""
    _check_shape("means3D", means3D, (None, 3))
    if (cov3D_precomp is None) == (scales is None or rotations is None):
        raise ValueError(f"{caller}: give either scales and rotations or cov3D_precomp")
    P = len(means3D)
    for name, t, columns in (("scales", scales, 3), ("rotations", rotations, 4),
                             ("cov3D_precomp", cov3D_precomp, 6)):
        if t is not None:
            _check_shape(name, t, (P, columns))
            if t.device != means3D.device or t.dtype != means3D.dtype:
                raise ValueError(f"{name}: expected {means3D.dtype} on {means3D.device} "
                                 f"(means3D's), got {t.dtype} on {t.device}")


def _image_centre(settings):
    """(x, y) of the image's centre in the rasterizer's pixel coordinates (pixel (col, row)'s
    centre at (col, row)); the depth planes are written about it so that the map's sum of
    offset and slopes does not cancel digits far from pixel 0."""
    return (int(settings.image_width) - 1) / 2.0, (int(settings.image_height) - 1) / 2.0


def _centres_on_screen(means3D: torch.Tensor, settings):
    """(t (P, 3) the centres in view space, in_front (P,) past the near plane, z (P,) their
    depth with 1 standing in where not in front, mean2d (P, 2) their pixels as the rasterizer
    projects them): culled rows get harmless stand-ins, so no infinity reaches a backward
    through them."""
    H, W = int(settings.image_height), int(settings.image_width)
    view = _matrix(settings.viewmatrix, means3D)
    projection = _matrix(settings.projmatrix, means3D)
    t = means3D @ view[:3, :3] + view[3, :3]
    in_front = t[:, 2] > NEAR_PLANE
    z = torch.where(in_front, t[:, 2], torch.ones_like(t[:, 2]))
    clip = means3D @ projection[:3] + projection[3]
    inv_w = 1.0 / (torch.where(in_front, clip[:, 3], torch.ones_like(z)) + HOM_EPS)
    mean2d = torch.stack([_ndc2pix(clip[:, 0] * inv_w, W), _ndc2pix(clip[:, 1] * inv_w, H)], 1)
    return t, in_front, z, mean2d


@full_precision
def intersection_planes(means3D: torch.Tensor, settings, scales=None, rotations=None,
                        cov3D_precomp=None) -> DepthPlanes:
    """Each Gaussian's depth as a plane over the screen, as RaDe-GS rasterizes depth: along the
    ray of pixel p the Gaussian is densest at some depth z(p); on its plane through the centre
    t (view space) with normal n = Sigma^-1 t (the densest points of rays parallel to t; RaDe-GS's
    plane) that depth is linear in p to first order,

        z(p) = z_c + a . (p - mu2D),   a = -z_c^2 (n_x / f_x, n_y / f_y) / (n . t),

    the tangent at mu2D of the ray-plane depth (n . t) / (n . r(p)) (f_x, f_y: the rasterizer's
    focal lengths from tanfovx, tanfovy; mu2D its screen position of the centre). Exact at the
    centre pixel, within second order of the densest point on the true rays elsewhere. Sigma is
    the covariance the rasterizer builds (scales and rotations, or cov3D_precomp, times the
    settings' scale_modifier), without the screen-space dilation: this is the Gaussian's own
    geometry. n is taken as adj(Sigma) t, which needs no inverse and stays exact for flat
    Gaussians (n then their flat axis); n . t = t^T adj(Sigma) t > 0 unless the camera lies on
    a degenerate Gaussian's own line or plane, where the plane is fronto-parallel (a = 0).

    Returns `features` (P, 3), the feature channels for `intersection_depth` (the plane about
    the image centre c: [z_c + a . (c - mu2D), a_x, a_y]), and `normals` (P, 3): the unit
    normal -n / |n| of that plane in view space, facing the camera, which RaDe-GS blends into
    its normal map. Differentiable in every input (plain PyTorch); the rows of Gaussians the
    rasterizer culls at the near plane are finite and unused.
    """
    _check_covariance_inputs("intersection_planes", means3D, scales, rotations, cov3D_precomp)
    require_pinhole("intersection_planes", settings)
    H, W = int(settings.image_height), int(settings.image_width)
    view = _matrix(settings.viewmatrix, means3D)
    t, in_front, z_safe, mean2d = _centres_on_screen(means3D, settings)
    z = t[:, 2]
    # adj(Sigma_view) t = rotation^T adj(Sigma) (rotation t), Sigma_view = rotation^T Sigma
    # rotation (t = p @ rotation: rotation t is the centre's offset from the camera, world axes).
    rotation = view[:3, :3]
    n = _adjugate_covariance_times(t @ rotation.T, scales, rotations, cov3D_precomp,
                                   float(settings.scale_modifier)) @ rotation
    length = n.norm(dim=1, keepdim=True)
    unit = n / torch.where(length > 0, length, torch.ones_like(length))
    facing = (unit * t).sum(1)
    plane = (facing > 0) & in_front
    facing = torch.where(plane, facing, torch.ones_like(facing))
    # The focal lengths, differentiable where the fields of view are tensors that require grad.
    focal = torch.stack([torch.as_tensor(size / (2.0 * tan_half), dtype=t.dtype, device=t.device)
                         for size, tan_half in ((W, settings.tanfovx), (H, settings.tanfovy))])
    slope = -(z_safe * z_safe / facing)[:, None] * unit[:, :2] / focal
    slope = torch.where(plane[:, None], slope, torch.zeros_like(slope))
    cx, cy = _image_centre(settings)
    offset = z + slope[:, 0] * (cx - mean2d[:, 0]) + slope[:, 1] * (cy - mean2d[:, 1])
    features = torch.cat([offset[:, None], slope], 1)
    toward_camera = torch.zeros_like(unit)
    toward_camera[:, 2] = -1.0
    normals = torch.where(plane[:, None], -unit, toward_camera)
    return DepthPlanes(features, normals)


@full_precision
def intersection_depth(feature_map: torch.Tensor, weight: torch.Tensor, settings) -> torch.Tensor:
    """(H, W) RaDe-GS's depth map: the blended depth planes of `intersection_planes`,
    sum_i w_i z_i(p) / weight, evaluated at each pixel (feature_map (3, H, W): the rendered
    `features` channels; weight: the rasterizer's weight map). Normalized by the weight as the
    package's depth map is, 0 where nothing is blended. Unlike the expected depth, which blends
    each splat's centre depth, a slanted surface made of flat Gaussians gets its own depth at
    every pixel, not the staircase of its splats' centres."""
    _check_shape("weight", weight, (None, None))
    _check_shape("feature_map", feature_map, (3, *weight.shape))
    H, W = weight.shape
    cx, cy = _image_centre(settings)
    cols = torch.arange(W, device=weight.device, dtype=weight.dtype) - cx
    rows = torch.arange(H, device=weight.device, dtype=weight.dtype) - cy
    total = feature_map[0] + cols[None, :] * feature_map[1] + rows[:, None] * feature_map[2]
    seen = weight > 0
    return torch.where(seen, total / torch.where(seen, weight, torch.ones_like(weight)),
                       torch.zeros_like(total))


class SurfaceMaps(NamedTuple):
    color: torch.Tensor          # (3, H, W), the rasterizer's
    radii: torch.Tensor          # (P,)
    depth: torch.Tensor          # (H, W), the expected depth
    weight: torch.Tensor         # (H, W)
    normal_map: torch.Tensor     # (3, H, W), view space, unit where weight > 0
    plane_depth: torch.Tensor    # (H, W), PGSR's
    distortion: torch.Tensor     # (H, W), 2DGS's
    rade_depth: Optional[torch.Tensor] = None        # (H, W), RaDe-GS's (intersection=True)
    rade_normal_map: Optional[torch.Tensor] = None   # (3, H, W), its planes' normals blended


def render_surface(rasterize, settings, intersection: bool = False, **inputs) -> SurfaceMaps:
    """The surface maps in one call of `rasterize` (a `GaussianRasterizer` with `settings`, or
    any callable taking its keyword inputs and `features=`): the Gaussians' normals, their
    planes' offsets and the distortion's two moments as 6 feature channels; with
    `intersection`, RaDe-GS's depth planes and their normals as 6 more in the same call
    (`intersection_planes`), for `rade_depth` and `rade_normal_map`. `inputs` are the
    rasterizer's keyword arguments, with `scales` and `rotations` (the normals need them)."""
    t = view_points(inputs["means3D"], settings)
    normals = gaussian_normals(inputs["scales"], inputs["rotations"], t, settings)
    features = [normals, plane_distances(normals, t), distortion_features(t[:, 2])]
    if intersection:
        planes = intersection_planes(inputs["means3D"], settings, inputs["scales"],
                                     inputs["rotations"])
        features += [planes.features, planes.normals]
    color, radii, depth, weight, fmap = rasterize(**inputs, features=torch.cat(features, 1))
    rade = ((intersection_depth(fmap[6:9], weight, settings), normalized(fmap[9:]))
            if intersection else (None, None))
    return SurfaceMaps(color, radii, depth, weight, normalized(fmap[:3]),
                       plane_depth(fmap[:3], fmap[3], settings),
                       depth_distortion(weight, fmap[4:6]), *rade)
