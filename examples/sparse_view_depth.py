"""Sparse-view 3DGS with a monocular-like depth prior: does supervising the depth map help?

An analytic scene (textured planes and spheres, ray-cast exactly in PyTorch) is seen by 24
cameras; every 8th camera is held out for testing and 3 of the rest (--train-views) are the
training views.
Each training view gets a "monocular" depth prior like a depth network's: the true inverse depth
under an unknown per-view scale and shift plus smooth noise. Gaussians start from a random
initialization and are fitted twice, with the same seed, views and iteration count:

  photometric   0.8 L1 + 0.2 (1 - SSIM)
  + depth       the same plus  lambda * (1 - Pearson(1 / rendered depth, prior))  over the
                pixels whose rendered weight exceeds 0.5

and both are scored on the held-out views: PSNR of the colour and AbsRel of the rendered depth
against the true view-space z (where weight > 0.5). With --inverse-depth a third fit correlates
the prior with the mean inverse depth sum(w / z) / weight instead (`inverse_depth=True`, the
2024 upstream's quantity) and is scored the same way. With --depth-losses the "+ depth" fit is
made once with each loss named, from the package's depth_losses (pearson, the above; patch,
the Pearson per patch; ranking, the order of pixel pairs; ssi, MiDaS's scale- and
shift-invariant L1; ssi_patch, that per patch). With --pose-noise DEGREES DISTANCE two
more "+ depth" fits are given training poses turned and moved by that much (as poses estimated
from few photos are): one keeps them, one refines them with the Gaussians (an SE(3) correction
per view but the first, which anchors the frame; the rasterizer's camera gradients reach it).
Both are scored through the similarity that maps their frame onto the true one (the first
camera, and the scale of the camera centres), with the training poses' remaining error; every
fit of such a run is also scored after test-time poses (each held-out camera's pose corrected
against the fixed model, the pose-free methods' protocol). Run:

    python examples/sparse_view_depth.py                       # one seed, a minute or two on a CPU
    python examples/sparse_view_depth.py --seeds 0 1 2         # the table of doc/sparse_view.md
    python examples/sparse_view_depth.py --seeds 0 1 2 --inverse-depth
    python examples/sparse_view_depth.py --seeds 0 1 2 --depth-losses pearson patch ranking ssi
    python examples/sparse_view_depth.py --seeds 0 1 2 --pose-noise 2 0.1 --train-views 8 \
        --iterations 800

Writes OUT/comparison_seed{S}.png, OUT/results.md and OUT/results.json (default OUT:
out/sparse_view). Needs the package's [demo] extra (matplotlib, tqdm).

The reusable parts (scene, cameras, prior, losses, metrics, model, fitting, pose noise and
alignment) are plain functions, imported by tests/test_sparse_view_example.py.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from diff_gaussian_rasterization_depth import depth_losses, scenes
from diff_gaussian_rasterization_depth.cameras import (Camera, camera_centre, choose_device,
                                                       perturbed_pose, pose_errors,
                                                       pose_settings, se3_exp)

# =============================================================================================
# The analytic scene: planes and spheres with procedural textures, exact ray casting
# =============================================================================================

LIGHT = torch.tensor([0.35, -0.55, 0.76], dtype=torch.float64)
LIGHT = LIGHT / LIGHT.norm()


@dataclass
class Plane:
    point: Sequence[float]
    normal: Sequence[float]
    texture: str            # "floor" or "wall"


@dataclass
class Sphere:
    center: Sequence[float]
    radius: float
    texture: str            # "segments", "bands" or "dots"


@dataclass
class AnalyticScene:
    planes: List[Plane]
    spheres: List[Sphere]


def default_scene() -> AnalyticScene:
    """A checkered floor (z = 0), a patterned back wall (y = 3) and three textured spheres."""
    return AnalyticScene(
        planes=[Plane((0, 0, 0), (0, 0, 1), "floor"), Plane((0, 3, 0), (0, -1, 0), "wall")],
        spheres=[Sphere((-0.95, 0.55, 0.6), 0.6, "segments"),
                 Sphere((0.85, -0.25, 0.45), 0.45, "bands"),
                 Sphere((0.35, 1.55, 0.95), 0.75, "dots")])


def _as64(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def intersect_plane(origin, dirs, plane: Plane) -> torch.Tensor:
    """Ray parameter t of the hit with `plane` (inf where missed or behind)."""
    n, p0 = _as64(plane.normal), _as64(plane.point)
    denom = dirs @ n
    t = ((p0 - origin) @ n) / torch.where(denom.abs() > 1e-12, denom, torch.ones_like(denom))
    return torch.where((denom.abs() > 1e-12) & (t > 1e-9), t, torch.full_like(t, math.inf))


def intersect_sphere(origin, dirs, sphere: Sphere) -> torch.Tensor:
    """Ray parameter t of the first hit with `sphere` from outside (inf where missed)."""
    c = _as64(sphere.center)
    oc = origin - c
    a = (dirs * dirs).sum(-1)
    b = dirs @ oc
    k = oc @ oc - sphere.radius ** 2
    disc = b * b - a * k
    root = torch.sqrt(torch.clamp(disc, min=0.0))
    t = (-b - root) / a
    return torch.where((disc >= 0) & (t > 1e-9), t, torch.full_like(t, math.inf))


def _checker(u, v, size):
    return torch.remainder(torch.floor(u / size) + torch.floor(v / size), 2.0)


def _mix(a, b, t):
    return _as64(a) * (1 - t)[..., None] + _as64(b) * t[..., None]


def _texture(kind: str, p: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Albedo (N,3) at world points p; `local` is p minus the object's centre (spheres)."""
    x, y, z = p.unbind(-1)
    if kind == "floor":
        base = _mix((0.85, 0.78, 0.62), (0.20, 0.42, 0.48), _checker(x, y, 0.45))
        return base * (0.85 + 0.15 * torch.cos(1.7 * x + 0.6 * y))[..., None]
    if kind == "wall":
        r = 0.55 + 0.30 * torch.sin(2.1 * x + 0.4 * z)
        g = 0.50 + 0.30 * torch.sin(1.3 * z - 0.9 * x + 1.0)
        b = 0.55 + 0.25 * torch.cos(2.7 * x * 0.5 + 1.9 * z)
        tiles = 0.75 + 0.25 * _checker(x, z, 0.3)
        return torch.stack([r, g, b], -1) * tiles[..., None]
    n = local / local.norm(dim=-1, keepdim=True)
    lon = torch.atan2(n[..., 1], n[..., 0])
    lat = torch.asin(torch.clamp(n[..., 2], -1.0, 1.0))
    if kind == "segments":
        seg = torch.remainder(torch.floor(lon / (math.pi / 4)), 2.0)
        return _mix((0.90, 0.30, 0.25), (0.95, 0.90, 0.80), seg)
    if kind == "bands":
        band = torch.remainder(torch.floor(lat / (math.pi / 10)), 2.0)
        return _mix((0.25, 0.35, 0.85), (0.95, 0.80, 0.30), band)
    if kind == "dots":
        dots = _checker(lon, lat, math.pi / 8)
        return _mix((0.30, 0.70, 0.35), (0.90, 0.95, 0.85), dots)
    raise ValueError(f"unknown texture {kind!r}")


def raycast(scene: AnalyticScene, camera: Camera, supersample: int = 1
            ) -> Dict[str, torch.Tensor]:
    """Exact ray casting of `scene` from `camera` (float64, CPU), one ray per pixel centre.

    Returns depth (H,W): view-space z of the first hit (the ray parameter, since the camera-space
    ray directions have z = 1); distance (H,W): the Euclidean ray length; color (3,H,W) in [0,1];
    object (H,W): index of the hit object (planes first, then spheres; -1 = nothing);
    normal (3,H,W): the surface's unit normal at the hit in world space (0 where nothing).
    With supersample = k > 1 the colour is the mean of k x k rays per pixel (antialiased, so
    that all views see the same blurred texture); depth and object stay the centre ray's.
    """
    if supersample > 1:
        k = supersample
        fine = raycast(scene, camera.scaled(camera.width * k, camera.height * k))
        centre = raycast(scene, camera)
        centre["color"] = F.avg_pool2d(fine["color"][None], k)[0]
        return centre
    origin, dirs = camera.world_rays()
    return raycast_rays(scene, _as64(origin), _as64(dirs))


def raycast_rays(scene: AnalyticScene, origin: torch.Tensor, dirs: torch.Tensor
                 ) -> Dict[str, torch.Tensor]:
    """`raycast` along given rays: from `origin` (3,) along `dirs` (H, W, 3) (world space,
    float64), whose ray parameter is the view depth where their view-space z is 1 (any central
    camera's: a fisheye's too). A zero direction hits nothing."""
    objects = list(scene.planes) + list(scene.spheres)
    ts = torch.stack([intersect_plane(origin, dirs, o) if isinstance(o, Plane)
                      else intersect_sphere(origin, dirs, o) for o in objects])
    t, which = ts.min(dim=0)
    hit = torch.isfinite(t)
    which = torch.where(hit, which, torch.full_like(which, -1))
    p = origin + dirs * torch.where(hit, t, torch.zeros_like(t))[..., None]
    color = torch.zeros(p.shape, dtype=torch.float64)
    normals = torch.zeros(p.shape, dtype=torch.float64)
    for i, o in enumerate(objects):
        sel = which == i
        if not sel.any():
            continue
        if isinstance(o, Plane):
            normal = _as64(o.normal).expand(int(sel.sum()), 3)
            local = p[sel]
        else:
            local = p[sel] - _as64(o.center)
            normal = local / local.norm(dim=-1, keepdim=True)
        shade = 0.55 + 0.45 * torch.clamp(normal @ LIGHT, min=0.0)
        color[sel] = _texture(o.texture, p[sel], local) * shade[:, None]
        normals[sel] = normal
    depth = torch.where(hit, t, torch.zeros_like(t))
    return dict(depth=depth, distance=depth * dirs.norm(dim=-1),
                color=color.clamp(0.0, 1.0).permute(2, 0, 1).contiguous(), object=which,
                normal=normals.permute(2, 0, 1).contiguous())


# =============================================================================================
# Cameras: 24 facing the scene, every 8th held out, 3 of the rest for training
# =============================================================================================

SCENE_TARGET = (0.0, 0.7, 0.55)


def make_cameras(width: int, height: int, n: int = 24, fov_x_deg: float = 60.0,
                 radius: float = 5.0, arc_deg: float = 80.0) -> List[Camera]:
    """`n` cameras on an arc in front of the scene, all looking at its middle."""
    cams = []
    for k in range(n):
        s = k / (n - 1)
        az = math.radians(-arc_deg / 2 + arc_deg * s)
        elev = math.radians(18.0 + 6.0 * math.sin(2 * math.pi * s))
        eye = (SCENE_TARGET[0] + radius * math.cos(elev) * math.sin(az),
               SCENE_TARGET[1] - radius * math.cos(elev) * math.cos(az),
               SCENE_TARGET[2] + radius * math.sin(elev))
        cams.append(Camera.looking_at(eye, SCENE_TARGET, width, height, fov_x_deg,
                                      up=(0.0, 0.0, 1.0)))
    return cams


def split_views(n: int = 24, n_train: int = 3, test_every: int = 8):
    """(train ids, test ids): every `test_every`-th view is a test view; the training views are
    `n_train` evenly spaced among the others (the usual LLFF sparse-view protocol)."""
    test = list(range(0, n, test_every))
    rest = [i for i in range(n) if i not in test]
    pick = np.linspace(0, len(rest) - 1, n_train).round().astype(int)
    return [rest[i] for i in pick], test


# =============================================================================================
# The monocular-like depth prior
# =============================================================================================

def smooth_noise(height: int, width: int, generator: torch.Generator, waves: int = 4,
                 max_cycles: float = 2.0) -> torch.Tensor:
    """Smooth random field in [-1, 1]: the mean of `waves` random plane waves of at most
    `max_cycles` cycles across the image (so its slope is at most 2 pi max_cycles / size)."""
    ys = torch.arange(height, dtype=torch.float64)[:, None] / max(height, 1)
    xs = torch.arange(width, dtype=torch.float64)[None, :] / max(width, 1)
    out = torch.zeros(height, width, dtype=torch.float64)
    for _ in range(waves):
        fx, fy = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1) * max_cycles
        phase = torch.rand((), generator=generator, dtype=torch.float64) * 2 * math.pi
        out += torch.cos(2 * math.pi * (fx * xs + fy * ys) + phase)
    return out / waves


def monocular_prior(depth: torch.Tensor, generator: torch.Generator, noise: float = 0.05):
    """A depth network's kind of output: affine in the true inverse depth, plus smooth noise.

    prior = s / depth + b + noise * s * (range of 1/depth) * n(x, y), with an unknown scale
    s in [0.5, 2], shift b in [-1, 1] * s * mean(1/depth) and n a smooth field in [-1, 1].
    Returns (prior (H,W), dict(scale, shift, noise_field)).
    """
    inv = 1.0 / depth
    s = 0.5 + 1.5 * torch.rand((), generator=generator, dtype=torch.float64)
    b = (torch.rand((), generator=generator, dtype=torch.float64) * 2 - 1) * s * inv.mean()
    field = smooth_noise(depth.shape[0], depth.shape[1], generator)
    amplitude = noise * s * (inv.max() - inv.min())
    prior = s * inv + b + amplitude * field
    return prior, dict(scale=float(s), shift=float(b), amplitude=float(amplitude), field=field)


# =============================================================================================
# Losses and metrics
# =============================================================================================

def l1_loss(a, b):
    return (a - b).abs().mean()


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor):
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel structural similarity (C,H,W) of two (C,H,W) images in [0,1]: Gaussian
    11x11 window with sigma 1.5, zero padding, the constants of Wang et al. (2004)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    C = a.shape[0]
    w = _gaussian_window(window, sigma, C, a)
    blur = lambda x: F.conv2d(x[None], w, padding=window // 2, groups=C)[0]  # noqa: E731
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                       * (var_a + var_b + c2))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two (C,H,W) images; 1 for identical images."""
    return ssim_map(a, b).mean()


def photometric_loss(render, target, lambda_ssim: float = 0.2):
    return (1 - lambda_ssim) * l1_loss(render, target) + lambda_ssim * (1 - ssim(render, target))


# The depth losses a fit can take (--depth-losses), the package's (depth_losses): each compares
# the rendered inverse depth with the prior over the pixels the render covers, in a way the
# prior's unknown scale and shift cannot disturb.
DEPTH_LOSSES = ("pearson", "patch", "ranking", "ssi", "ssi_patch")
PATCH_SIZE = 24      # the patch Pearson's squares: 4 x 3 of them on a 96x72 view
RANKING_RADIUS = 8   # the ranking's pairs: neighbours within 8 px, where the prior's order holds


def depth_prior_loss(depth: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor,
                     min_weight: float = 0.5, inverse: bool = False, kind: str = "pearson",
                     step: int = 0) -> torch.Tensor:
    """The depth loss `kind` of DEPTH_LOSSES between the rendered depth (or, with `inverse`, the
    rendered mean inverse depth, a render with inverse_depth=True) and the inverse-depth-like
    prior, over pixels with rendered weight > min_weight. At the true geometry each is 0
    whatever the prior's scale and shift. `step` seeds what the patch grid's offset and the
    ranking's pairs draw, so that a fit is reproducible."""
    common = dict(min_weight=min_weight, inverse_depth=inverse)
    if kind == "pearson":
        return depth_losses.pearson_depth_loss(depth, weight, prior, **common)
    if kind == "ssi":
        return depth_losses.scale_shift_invariant_depth_loss(depth, weight, prior, **common)
    gen = torch.Generator().manual_seed(step)
    if kind in ("patch", "ssi_patch"):
        offset = tuple(int(v) for v in torch.randint(PATCH_SIZE, (2,), generator=gen))
        if kind == "ssi_patch":
            return depth_losses.scale_shift_invariant_depth_loss(
                depth, weight, prior, patch_size=PATCH_SIZE, offset=offset, **common)
        return depth_losses.patch_pearson_depth_loss(depth, weight, prior, PATCH_SIZE,
                                                     offset=offset, **common)
    if kind == "ranking":
        return depth_losses.ranking_depth_loss(depth, weight, prior, radius=RANKING_RADIUS,
                                               generator=gen, **common)
    raise ValueError(f"depth loss: expected one of {DEPTH_LOSSES}, got {kind!r}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def abs_rel(depth: torch.Tensor, true_depth: torch.Tensor, weight: torch.Tensor,
            min_weight: float = 0.5) -> float:
    """mean |d - d*| / d* over pixels with weight > min_weight and a true hit (d* > 0)."""
    m = (weight > min_weight) & (true_depth > 0)
    if not m.any():
        return float("nan")
    return float(((depth[m] - true_depth[m]).abs() / true_depth[m]).mean())


# =============================================================================================
# The Gaussian model: 3DGS's parameterisation (SH degree 0), random initialization
# =============================================================================================

class GaussianModel(torch.nn.Module):
    """Positions, log scales, raw quaternions, opacity logits and degree-0 SH coefficients."""

    def __init__(self, means, log_scales, quats, opacity_logits, sh_dc):
        super().__init__()
        self.means = torch.nn.Parameter(means)
        self.log_scales = torch.nn.Parameter(log_scales)
        self.quats = torch.nn.Parameter(quats)
        self.opacity_logits = torch.nn.Parameter(opacity_logits)
        self.sh_dc = torch.nn.Parameter(sh_dc)

    def activated(self) -> scenes.Gaussians:
        return scenes.Gaussians(
            means=self.means, sh=self.sh_dc, opacities=torch.sigmoid(self.opacity_logits),
            scales=torch.exp(self.log_scales), rotations=F.normalize(self.quats, dim=-1))


def random_init(cameras: Sequence[Camera], n: int, generator: torch.Generator,
                depth_range=(2.0, 10.0), opacity: float = 0.1,
                footprint_px: float = 2.0) -> GaussianModel:
    """Gaussians at random points of the training cameras' frusta (a random camera, pixel and
    depth each), grey with a little colour noise, isotropic with a standard deviation of
    `footprint_px` pixels in the camera they were drawn for, all with the same low opacity."""
    g = generator
    cam_ids = torch.randint(len(cameras), (n,), generator=g)
    pts = torch.empty(n, 3, dtype=torch.float64)
    sigma = torch.empty(n, dtype=torch.float64)
    for k, cam in enumerate(cameras):
        sel = cam_ids == k
        m = int(sel.sum())
        u = torch.rand(m, generator=g, dtype=torch.float64) * cam.width - 0.5
        v = torch.rand(m, generator=g, dtype=torch.float64) * cam.height - 0.5
        z = depth_range[0] + (depth_range[1] - depth_range[0]) * torch.rand(
            m, generator=g, dtype=torch.float64)
        d_cam = torch.stack([(u - (cam.width - 1) / 2) / cam.fx,
                             (v - (cam.height - 1) / 2) / cam.fy,
                             torch.ones(m, dtype=torch.float64)], dim=1)
        pts[sel] = _as64(cam.center) + (d_cam * z[:, None]) @ _as64(cam.rotation)
        sigma[sel] = footprint_px * z / cam.fx
    log_scales = torch.log(sigma)[:, None].repeat(1, 3)
    quats = torch.zeros(n, 4, dtype=torch.float64)
    quats[:, 0] = 1.0
    logits = torch.full((n, 1), math.log(opacity / (1 - opacity)), dtype=torch.float64)
    rgb = 0.5 + 0.1 * (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1)
    sh_dc = scenes.rgb_to_sh_dc(rgb)[:, None, :]
    f32 = lambda t: t.to(torch.float32)  # noqa: E731
    return GaussianModel(f32(pts), f32(log_scales), f32(quats), f32(logits), f32(sh_dc))


# =============================================================================================
# Fitting and evaluation
# =============================================================================================

@dataclass
class View:
    camera: Camera
    color: torch.Tensor          # (3,H,W) float32
    depth: torch.Tensor          # (H,W) true view-space z
    prior: Optional[torch.Tensor] = None
    pose: Optional[np.ndarray] = None  # the world-to-camera the fit is given (None: the true one)


@dataclass
class FitConfig:
    iterations: int = 400
    lr_means: float = 2e-3       # decays exponentially to lr_means * lr_means_final_ratio
    lr_means_final_ratio: float = 0.01
    lr_scales: float = 1e-2
    lr_quats: float = 2e-3
    lr_opacity: float = 5e-2
    lr_sh: float = 1e-2
    lambda_ssim: float = 0.2
    depth_weight: float = 0.0    # 0: photometric only
    min_weight: float = 0.5
    inverse_depth: bool = False  # the depth loss on the mean inverse depth (inverse_depth=True)
    depth_loss: str = "pearson"  # which of DEPTH_LOSSES
    refine_poses: bool = False   # optimize the given poses (all views but the first) too
    lr_pose: float = 3e-3        # Adam on the SE(3) corrections, decaying exponentially to
    lr_pose_final_ratio: float = 0.01  # lr_pose times this


def make_views(scene: AnalyticScene, cameras: Sequence[Camera], ids: Sequence[int],
               device, prior_generator: Optional[torch.Generator] = None,
               prior_noise: float = 0.05, supersample: int = 3) -> List[View]:
    views = []
    for i in ids:
        rc = raycast(scene, cameras[i], supersample=supersample)
        prior = None
        if prior_generator is not None:
            prior = monocular_prior(rc["depth"], prior_generator, prior_noise)[0]
            prior = prior.to(device=device, dtype=torch.float32)
        views.append(View(cameras[i], rc["color"].to(device, torch.float32),
                          rc["depth"].to(device, torch.float32), prior))
    return views


def make_optimizer(model: GaussianModel, cfg: FitConfig) -> torch.optim.Adam:
    """Adam with a learning rate per parameter group (the means' group first: `fit` decays it)."""
    return torch.optim.Adam([
        {"params": [model.means], "lr": cfg.lr_means},
        {"params": [model.log_scales], "lr": cfg.lr_scales},
        {"params": [model.quats], "lr": cfg.lr_quats},
        {"params": [model.opacity_logits], "lr": cfg.lr_opacity},
        {"params": [model.sh_dc], "lr": cfg.lr_sh},
    ], eps=1e-15)


class PoseCorrections(torch.nn.Module):
    """One SE(3) correction xi (6,) per training view but the first, applied in camera
    coordinates: the pose used is se3_exp(xi) @ given pose. The first view's pose stays as given:
    images alone do not fix the world frame, so one camera anchors it (the scale stays free; the
    evaluation aligns it, `FrameAlignment`)."""

    def __init__(self, n_views: int, device=None):
        super().__init__()
        self.xi = torch.nn.Parameter(torch.zeros(max(n_views - 1, 0), 6, device=device))

    def world_to_camera(self, k: int, given: torch.Tensor) -> torch.Tensor:
        return given if k == 0 else se3_exp(self.xi[k - 1]) @ given

    @torch.no_grad()
    def refined(self, train: Sequence["View"]) -> List[np.ndarray]:
        """The poses the fit ended with (float64 4x4 arrays), from the views' given ones."""
        xi = self.xi.detach().double().cpu()
        return [np.asarray(v.pose) if k == 0 else se3_exp(xi[k - 1]).numpy() @ v.pose
                for k, v in enumerate(train)]


def render_at(gaussians: scenes.Gaussians, w2c: torch.Tensor, camera: Camera,
              inverse_depth: bool = False) -> scenes.Render:
    """Render from `camera`'s intrinsics at the pose w2c (a 4x4 tensor), differentiable in it."""
    g = gaussians
    color, radii, depth, weight = scenes.rasterize(
        pose_settings(w2c, camera, g.sh_degree), means3D=g.means, means2D=None,
        opacities=g.opacities, shs=g.sh, scales=g.scales, rotations=g.rotations,
        inverse_depth=inverse_depth)
    return scenes.Render(color, depth, weight, radii, None)


def render_view(model: GaussianModel, view: View, k: int = 0,
                poses: Optional[PoseCorrections] = None, inverse_depth: bool = False):
    """Render `model` from training view k at the pose the fit has for it: the camera's own
    where the view has no given pose, else the given one (corrected by `poses`)."""
    g = model.activated()
    if view.pose is None:
        return scenes.render(g, view.camera, inverse_depth=inverse_depth)
    w2c = torch.as_tensor(view.pose, dtype=g.means.dtype, device=g.means.device)
    if poses is not None:
        w2c = poses.world_to_camera(k, w2c)
    return render_at(g, w2c, view.camera, inverse_depth)


def fit(model: GaussianModel, train: Sequence[View], cfg: FitConfig, seed: int,
        progress: Optional[str] = None, poses: Optional[PoseCorrections] = None
        ) -> GaussianModel:
    """Adam on all parameters; the views are visited in a seeded random order. With `poses`
    and cfg.refine_poses, their corrections are optimized too (in place)."""
    model = copy.deepcopy(model)
    opt = make_optimizer(model, cfg)
    pose_group = None
    if poses is not None and cfg.refine_poses:
        opt.add_param_group({"params": [poses.xi], "lr": cfg.lr_pose})
        pose_group = opt.param_groups[-1]
    order = np.random.default_rng(seed).integers(0, len(train), size=cfg.iterations)
    steps = range(cfg.iterations)
    bar = None
    if progress is not None:
        from tqdm import tqdm
        bar = tqdm(steps, desc=progress, leave=False, dynamic_ncols=True)
        steps = bar
    for it in steps:
        frac = it / max(cfg.iterations - 1, 1)
        opt.param_groups[0]["lr"] = cfg.lr_means * cfg.lr_means_final_ratio ** frac
        if pose_group is not None:
            pose_group["lr"] = cfg.lr_pose * cfg.lr_pose_final_ratio ** frac
        k = int(order[it])
        view = train[k]
        r = render_view(model, view, k, poses, cfg.inverse_depth)
        loss = photometric_loss(r.color, view.color, cfg.lambda_ssim)
        if cfg.depth_weight > 0:
            depth_term = depth_prior_loss(r.depth, r.weight, view.prior, cfg.min_weight,
                                          cfg.inverse_depth, cfg.depth_loss, seed * 100003 + it)
            loss = loss + cfg.depth_weight * depth_term
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None and it % 20 == 0:
            bar.set_postfix(loss=f"{loss.detach().item():.4f}")
    if bar is not None:
        bar.close()
    return model


# =============================================================================================
# Noisy poses: perturbation, and the alignment of a fit's frame to the true one for scoring
# =============================================================================================

def with_pose_noise(views: Sequence[View], degrees: float, translation: float,
                    seed: int) -> List[View]:
    """Copies of `views` given poses turned by `degrees` and moved by `translation` (scene
    units) about and along random directions, as poses estimated from few images are."""
    rng = np.random.default_rng([seed, 1])
    return [View(v.camera, v.color, v.depth, v.prior,
                 perturbed_pose(v.camera.world_to_camera, translation, degrees, rng))
            for v in views]


@dataclass
class FrameAlignment:
    """The similarity from a fit's frame to the true one: the fit's frame is the first training
    pose's (that camera's coordinates are taken as right), scaled about that camera by `scale`,
    the least-squares ratio of the other cameras' centres (true over fitted, in its
    coordinates). A point x of the fit is at V0^-1 (scale * B0 x) in the true frame (V0, B0:
    the first camera's true and fitted world-to-camera)."""
    true_first: np.ndarray      # V0
    fitted_first: np.ndarray    # B0
    scale: float

    @classmethod
    def of(cls, true_poses: Sequence[np.ndarray], fitted_poses: Sequence[np.ndarray]):
        V0, B0 = true_poses[0], fitted_poses[0]
        num = den = 0.0
        for V, B in zip(true_poses[1:], fitted_poses[1:]):
            y = _apply(B0, camera_centre(B))  # fitted centre, first camera's coordinates
            y_true = _apply(V0, camera_centre(V))
            num, den = num + float(y @ y_true), den + float(y @ y)
        return cls(V0, B0, num / den if den > 0 else 1.0)

    def camera(self, camera: Camera) -> Camera:
        """A rigid camera that renders the fit as `camera` (true pose) sees the aligned fit; its
        depth is the true-frame depth divided by `scale`. With G = V V0^-1, the view coordinates
        of the aligned point are G (s B0 x) = s (G_R B0 x + G_t / s)."""
        G = camera.world_to_camera @ np.linalg.inv(self.true_first)
        E = np.eye(4)
        E[:3, :3] = G[:3, :3] @ self.fitted_first[:3, :3]
        E[:3, 3] = G[:3, :3] @ self.fitted_first[:3, 3] + G[:3, 3] / self.scale
        return Camera(E, camera.width, camera.height, camera.fx, camera.fy)

    def pose(self, fitted: np.ndarray) -> np.ndarray:
        """A fitted training pose carried into the true frame (centre and orientation)."""
        V0, B0 = self.true_first, self.fitted_first
        center = camera_centre(V0) + V0[:3, :3].T @ (
            self.scale * _apply(B0, camera_centre(fitted)))
        out = np.eye(4)
        out[:3, :3] = fitted[:3, :3] @ B0[:3, :3].T @ V0[:3, :3]
        out[:3, 3] = -out[:3, :3] @ center
        return out


def _apply(w2c: np.ndarray, x: np.ndarray) -> np.ndarray:
    return w2c[:3, :3] @ x + w2c[:3, 3]


def pose_error(alignment: FrameAlignment, fitted: Sequence[np.ndarray],
               true_poses: Sequence[np.ndarray]) -> Tuple[float, float]:
    """Mean (rotation error in degrees, centre error in scene units) of the training poses but
    the first (which anchors the frame), after the alignment."""
    errs = [pose_errors(alignment.pose(B), V) for B, V in zip(fitted[1:], true_poses[1:])]
    return (float(np.mean([e[1] for e in errs])) if errs else 0.0,
            float(np.mean([e[0] for e in errs])) if errs else 0.0)


def test_time_pose(gaussians: scenes.Gaussians, view: View, camera: Camera, steps: int = 150,
                   lr: float = 2e-3) -> Camera:
    """`camera` corrected to best explain `view`'s image with the model fixed: Adam on an SE(3)
    correction (the pose-free methods' protocol for scoring new views: a held-out camera's pose
    is not known in the frame of a fit that estimated its training poses)."""
    w2c = torch.as_tensor(camera.world_to_camera, dtype=gaussians.means.dtype,
                          device=gaussians.means.device)
    xi = torch.zeros(6, dtype=w2c.dtype, device=w2c.device, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=lr)
    for _ in range(steps):
        loss = photometric_loss(render_at(gaussians, se3_exp(xi) @ w2c, camera).color,
                                 view.color)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    corrected = (se3_exp(xi.detach().double().cpu()).numpy() @ camera.world_to_camera)
    return Camera(corrected, camera.width, camera.height, camera.fx, camera.fy)


def evaluate(model: GaussianModel, views: Sequence[View], min_weight: float = 0.5,
             alignment: Optional[FrameAlignment] = None, test_time_steps: int = 0):
    """Mean held-out PSNR, AbsRel and coverage (fraction of pixels with weight > min_weight),
    plus the renders. With `alignment` (a fit given noisy poses), the fit is seen through it.
    With test_time_steps > 0, also `psnr_test_time_pose`: the PSNR once each held-out camera's
    pose is corrected by `test_time_pose` (renders and the other figures stay the uncorrected
    ones)."""
    with torch.no_grad():  # the model stays fixed: gradients reach the held-out poses only
        g = model.activated()
        g = scenes.Gaussians(*(t.detach() for t in (g.means, g.sh, g.opacities, g.scales,
                                                     g.rotations)))
    rows, renders, corrected = [], [], []
    for v in views:
        camera = v.camera if alignment is None else alignment.camera(v.camera)
        with torch.no_grad():
            r = scenes.render(g, camera)
        if alignment is not None:
            r.depth = r.depth * alignment.scale
        rows.append((psnr(r.color, v.color), abs_rel(r.depth, v.depth, r.weight, min_weight),
                     float((r.weight > min_weight).float().mean())))
        renders.append(r)
        if test_time_steps > 0:
            moved = test_time_pose(g, v, camera, test_time_steps)
            with torch.no_grad():
                corrected.append(psnr(scenes.render(g, moved).color, v.color))
    a = np.array(rows)
    metrics = dict(psnr=float(a[:, 0].mean()), abs_rel=float(np.nanmean(a[:, 1])),
                   coverage=float(a[:, 2].mean()))
    if corrected:
        metrics["psnr_test_time_pose"] = float(np.mean(corrected))
    return metrics, renders


@dataclass
class ExperimentConfig:
    width: int = 96
    height: int = 72
    gaussians: int = 3000
    iterations: int = 400
    depth_weight: float = 0.5
    prior_noise: float = 0.05
    n_cameras: int = 24
    n_train: int = 3
    test_every: int = 8
    inverse_depth_variant: bool = False  # also fit "+ inverse depth"
    depth_losses: Tuple[str, ...] = ("pearson",)  # a "+ depth" fit with each (DEPTH_LOSSES)
    # (degrees, scene units): also fit from training poses off by this much, as given and
    # refined
    pose_noise: Optional[Tuple[float, float]] = None
    test_time_steps: int = 150  # with pose_noise: the held-out poses' correction, every fit


def depth_variant(loss: str) -> str:
    """The results' name of the "+ depth" fit with `loss` (the Pearson one plain)."""
    return "+ depth" if loss == "pearson" else f"+ depth ({loss})"


def run_seed(seed: int, cfg: ExperimentConfig, device, out_dir: Optional[str] = None,
             progress: bool = True):
    """The fits for one seed; returns {variant: metrics} (and writes a figure to out_dir)."""
    scene = default_scene()
    cams = make_cameras(cfg.width, cfg.height, cfg.n_cameras)
    train_ids, test_ids = split_views(cfg.n_cameras, cfg.n_train, cfg.test_every)
    gen = torch.Generator().manual_seed(seed)
    train = make_views(scene, cams, train_ids, device, prior_generator=gen,
                       prior_noise=cfg.prior_noise)
    test = make_views(scene, cams, test_ids, device)
    init_state = gen.get_state()
    init = random_init([v.camera for v in train], cfg.gaussians, gen).to(device)
    # (name, depth weight, inverse depth, training views, initialization, refine poses, loss)
    variants = [("photometric", 0.0, False, train, init, False, "pearson")]
    variants += [(depth_variant(loss), cfg.depth_weight, False, train, init, False, loss)
                 for loss in cfg.depth_losses]
    if cfg.inverse_depth_variant:
        variants.append(("+ inverse depth", cfg.depth_weight, True, train, init, False,
                         "pearson"))
    if cfg.pose_noise is not None:
        noisy = with_pose_noise(train, *cfg.pose_noise, seed)
        # The same random draws, in the frusta of the poses the fit is given.
        noisy_init = random_init([Camera(v.pose, v.camera.width, v.camera.height,
                                         v.camera.fx, v.camera.fy) for v in noisy],
                                 cfg.gaussians, torch.Generator().set_state(init_state))
        noisy_init = noisy_init.to(device)
        variants += [("+ depth, noisy poses", cfg.depth_weight, False, noisy, noisy_init,
                      False, "pearson"),
                     ("+ depth, poses refined", cfg.depth_weight, False, noisy, noisy_init,
                      True, "pearson")]
    results, models = {}, {}
    true_poses = [v.camera.world_to_camera for v in train]
    for name, weight, inverse, views, start, refine, loss in variants:
        fc = FitConfig(iterations=cfg.iterations, depth_weight=weight, inverse_depth=inverse,
                       refine_poses=refine, depth_loss=loss)
        poses = PoseCorrections(len(views), device) if views[0].pose is not None else None
        t0 = time.perf_counter()
        model = fit(start, views, fc, seed, progress=f"seed {seed} {name}" if progress else None,
                    poses=poses)
        seconds = time.perf_counter() - t0
        alignment = None
        if poses is not None:
            fitted = poses.refined(views)
            alignment = FrameAlignment.of(true_poses, fitted)
        metrics, renders = evaluate(model, test, alignment=alignment,
                                    test_time_steps=cfg.test_time_steps
                                    if cfg.pose_noise is not None else 0)
        metrics["seconds"] = seconds
        if poses is not None:
            given = [v.pose for v in views]
            metrics["pose_error_given"] = pose_error(FrameAlignment.of(true_poses, given),
                                                     given, true_poses)
            metrics["pose_error"] = pose_error(alignment, fitted, true_poses)
        results[name] = metrics
        models[name] = renders
    if out_dir is not None:
        write_comparison(os.path.join(out_dir, f"comparison_seed{seed}.png"), train[0], test,
                         models, results, seed)
    return results


def write_comparison(path, train_view: View, test: Sequence[View], renders, results, seed):
    """A figure: a training view and its prior, then for one held-out view the truth and both
    fits (colour, depth, weight)."""
    from diff_gaussian_rasterization_depth import viz
    k = len(test) // 2
    v = test[k]
    ones = torch.ones_like(v.depth)
    vmin, vmax = viz.depth_range(v.depth, ones)
    rows = [[viz.Panel("rgb", train_view.color, "training view"),
             viz.Panel("scalar", train_view.prior, "its depth prior",
                       label="inverse depth, unknown scale/shift"),
             viz.Panel("depth", train_view.depth, "its true depth", weight=ones)],
            [viz.Panel("rgb", v.color, "held-out view: truth"),
             viz.Panel("depth", v.depth, "true depth", weight=ones, vmin=vmin, vmax=vmax),
             None]]
    for name, rs in renders.items():
        r = rs[k]
        m = results[name]
        rows.append([viz.Panel("rgb", r.color, f"{name}: PSNR {m['psnr']:.2f} dB"),
                     viz.Panel("depth", r.depth, f"{name}: AbsRel {m['abs_rel']:.3f}",
                               weight=r.weight, vmin=vmin, vmax=vmax),
                     viz.Panel("weight", r.weight, f"{name}: weight")])
    viz.save_figure(path, rows, suptitle=f"sparse-view fit, seed {seed} (metrics: mean over "
                                         f"the held-out views)", panel_width_in=2.6)


def _pose_cell(m: dict) -> str:
    """'given -> fitted' training pose error (rotation degrees / centre distance), '' for a fit
    given the true poses."""
    if "pose_error" not in m:
        return ""
    (r0, t0), (r1, t1) = m["pose_error_given"], m["pose_error"]
    return f"{r0:.2f} / {t0:.3f} -> {r1:.2f} / {t1:.3f}"


def format_table(per_seed: Dict[int, Dict[str, dict]]) -> str:
    """The markdown table of doc/sparse_view.md; where a fit was given noisy poses, two more
    columns: the PSNR after test-time poses, and the training pose error."""
    poses = any("pose_error" in m for res in per_seed.values() for m in res.values())
    extra = (" PSNR, test-time poses (dB) | training pose error, deg / units (given -> fitted) |"
             if poses else "")
    lines = ["| seed | variant | held-out PSNR (dB) | held-out AbsRel | coverage (w > 0.5) "
             "| fit time (s) |" + extra,
             "|---|---|---|---|---|---|" + ("---|---|" if poses else "")]

    def cells(m: dict) -> str:
        if not poses:
            return ""
        tta = m.get("psnr_test_time_pose")
        return f" {'' if tta is None else f'{tta:.2f}'} | {_pose_cell(m)} |"

    for seed, res in per_seed.items():
        for name, m in res.items():
            lines.append(f"| {seed} | {name} | {m['psnr']:.2f} | {m['abs_rel']:.4f} | "
                         f"{100 * m['coverage']:.1f}% | {m['seconds']:.0f} |" + cells(m))
    names = list(next(iter(per_seed.values())).keys())
    for name in names:
        runs = [per_seed[s][name] for s in per_seed]

        def mean(key):
            return np.mean([m[key] for m in runs], axis=0) if key in runs[0] else None

        summary = {k: mean(k) for k in ("psnr_test_time_pose", "pose_error_given",
                                        "pose_error")}
        lines.append(f"| mean | {name} | {mean('psnr'):.2f} | {mean('abs_rel'):.4f} | "
                     f"{100 * mean('coverage'):.1f}% | |"
                     + cells({k: v for k, v in summary.items() if v is not None}))
    return "\n".join(lines)


def common_arguments(p: argparse.ArgumentParser, iterations: int, gaussians: int, width: int,
                     height: int, out: str) -> None:
    """The options both examples take (this one's and surface_regularization.py's)."""
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--iterations", type=int, default=iterations)
    p.add_argument("--gaussians", type=int, default=gaussians)
    p.add_argument("--width", type=int, default=width)
    p.add_argument("--height", type=int, default=height)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", default=out)
    p.add_argument("--no-progress", action="store_true")


def write_results(out: str, table: str, config: dict, per_seed: dict, figures: str,
                  t0: float) -> None:
    """Prints the table and writes OUT/results.md and OUT/results.json."""
    print()
    print(table)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": config, "results": per_seed}, f, indent=1)
    print(f"\nwrote {out}/results.md, results.json and {figures} "
          f"in {time.perf_counter() - t0:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p, ExperimentConfig.iterations, ExperimentConfig.gaussians,
                     ExperimentConfig.width, ExperimentConfig.height,
                     os.path.join("out", "sparse_view"))
    p.add_argument("--depth-weight", type=float, default=ExperimentConfig.depth_weight)
    p.add_argument("--prior-noise", type=float, default=ExperimentConfig.prior_noise)
    p.add_argument("--train-views", type=int, default=ExperimentConfig.n_train,
                   help="training views, evenly spread over the non-held-out cameras")
    p.add_argument("--depth-losses", nargs="+", choices=DEPTH_LOSSES, default=["pearson"],
                   help="a '+ depth' fit with each of these depth losses (pearson: global "
                        "Pearson; patch: Pearson per 24-px patch; ranking: the order of "
                        "neighbouring pixel pairs; ssi: MiDaS's L1, each map shifted by its "
                        "median and scaled by its mean absolute deviation; ssi_patch: the same "
                        "per 24-px patch)")
    p.add_argument("--inverse-depth", action="store_true",
                   help="also fit with the loss on the mean inverse depth (inverse_depth=True)")
    p.add_argument("--pose-noise", type=float, nargs=2, metavar=("DEGREES", "DISTANCE"),
                   help="also fit from training poses turned and moved by this much, as given "
                        "and refined with the Gaussians (camera gradients)")
    args = p.parse_args(argv)
    candidates = ExperimentConfig.n_cameras - len(split_views(ExperimentConfig.n_cameras, 1,
                                                              ExperimentConfig.test_every)[1])
    if not 1 <= args.train_views <= candidates:
        p.error(f"--train-views: expected 1 to {candidates}, got {args.train_views}")
    if args.pose_noise is not None and min(args.pose_noise) < 0:
        p.error(f"--pose-noise: expected an angle and a distance >= 0, got {args.pose_noise}")
    device = choose_device(args.device)
    cfg = ExperimentConfig(width=args.width, height=args.height, gaussians=args.gaussians,
                           iterations=args.iterations, depth_weight=args.depth_weight,
                           prior_noise=args.prior_noise, n_train=args.train_views,
                           inverse_depth_variant=args.inverse_depth,
                           depth_losses=tuple(dict.fromkeys(args.depth_losses)),
                           pose_noise=tuple(args.pose_noise) if args.pose_noise else None)
    os.makedirs(args.out, exist_ok=True)
    train_ids, test_ids = split_views(cfg.n_cameras, cfg.n_train, cfg.test_every)
    print(f"{cfg.n_cameras} cameras; training views {train_ids}, held-out views {test_ids}; "
          f"{cfg.gaussians} Gaussians, {cfg.iterations} iterations, {cfg.width}x{cfg.height}, "
          f"depth weight {cfg.depth_weight}, device {device}")
    t0 = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, cfg, device, args.out, progress=not args.no_progress)
        for name, m in per_seed[seed].items():
            pose = f"  pose error {_pose_cell(m)}" if "pose_error" in m else ""
            print(f"seed {seed} {name:15s} PSNR {m['psnr']:6.2f} dB  AbsRel {m['abs_rel']:.4f}  "
                  f"coverage {100 * m['coverage']:5.1f}%  ({m['seconds']:.1f} s){pose}")
    write_results(args.out, format_table(per_seed), cfg.__dict__, per_seed,
                  "comparison_seed*.png", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
