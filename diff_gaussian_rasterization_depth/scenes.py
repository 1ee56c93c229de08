"""Gaussian scenes: the activated-parameter container, the demo's procedural object, `render`.

`render` is the one place in the demo, the `render` command and the examples that calls the
rasterizer. Only torch and numpy are needed here.
"""
import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch

from ._validation import KERNEL_SIZE_DEFAULT
from .cameras import Camera

SH_C0 = 0.28209479177387814   # the degree-0 real SH constant: colour = SH_C0 * dc + 0.5


def rgb_to_sh_dc(rgb):
    """Degree-0 SH coefficient that the rasterizer turns back into `rgb`."""
    return (rgb - 0.5) / SH_C0


@dataclass
class Gaussians:
    """Gaussians with activated parameters, as the rasterizer takes them.

    means (P,3); sh (P,M,3) with M = (degree+1)^2; opacities (P,1) in [0,1]; scales (P,3) > 0;
    rotations (P,4) unit quaternions (w,x,y,z).
    """
    means: torch.Tensor
    sh: torch.Tensor
    opacities: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.sh.shape[1]))) - 1

    def to(self, device=None, dtype=None) -> "Gaussians":
        return Gaussians(*(t.to(device=device, dtype=dtype) for t in
                           (self.means, self.sh, self.opacities, self.scales, self.rotations)))

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Keep only the SH coefficients up to `degree` (never adds any)."""
        if not 0 <= degree <= self.sh_degree:
            raise ValueError(f"sh degree: expected 0..{self.sh_degree} for this scene, "
                             f"got {degree}")
        return replace(self, sh=self.sh[:, :(degree + 1) ** 2].contiguous())


@dataclass
class Render:
    """One rendered view: color (3,H,W), depth (H,W), weight (H,W), radii (P,), and the
    screen-space carrier `means2D` whose `.grad` receives the densification gradient."""
    color: torch.Tensor
    depth: torch.Tensor
    weight: torch.Tensor
    radii: torch.Tensor
    means2D: torch.Tensor


def rasterize(settings, **inputs):
    """The single call into the rasterizer for this package's tools."""
    from . import GaussianRasterizer
    return GaussianRasterizer(raster_settings=settings)(**inputs)


def render(gaussians: Gaussians, camera: Camera, bg=(0.0, 0.0, 0.0),
           sh_degree: Optional[int] = None, scale_modifier: float = 1.0,
           antialiasing: bool = False, inverse_depth: bool = False,
           kernel_size: float = KERNEL_SIZE_DEFAULT) -> Render:
    """Render `gaussians` (any device; differentiable) from `camera`; with `inverse_depth`,
    Render.depth is the mean inverse depth sum(w / z) / weight."""
    means = gaussians.means
    settings = camera.raster_settings(
        bg=bg, sh_degree=gaussians.sh_degree if sh_degree is None else sh_degree,
        scale_modifier=scale_modifier, device=means.device, dtype=means.dtype,
        antialiasing=antialiasing, kernel_size=kernel_size)
    means2D = torch.zeros_like(means, requires_grad=torch.is_grad_enabled())
    color, radii, depth, weight = rasterize(
        settings, means3D=means, means2D=means2D, opacities=gaussians.opacities,
        shs=gaussians.sh, scales=gaussians.scales, rotations=gaussians.rotations,
        inverse_depth=inverse_depth)
    return Render(color, depth, weight, radii, means2D)


# --------------------------------------------------------------------------------------------
# Scene statistics
# --------------------------------------------------------------------------------------------

def robust_center(means: torch.Tensor) -> np.ndarray:
    """Median of the positions: ignores the far background Gaussians trained scenes have."""
    return means.detach().double().median(dim=0).values.cpu().numpy()


# --------------------------------------------------------------------------------------------
# The demo's procedural scene
# --------------------------------------------------------------------------------------------

# The scene is modelled with z up and then turned so that world "up" is -y, as in camera
# coordinates and in reconstructions whose world frame is an upright camera's (a common case
# for COLMAP scenes).
DEMO_UP = (0.0, -1.0, 0.0)
_Z_UP_TO_Y_DOWN = np.array([[1.0, 0.0, 0.0],
                            [0.0, 0.0, -1.0],
                            [0.0, 1.0, 0.0]])


def _quaternion_z_to(normals: np.ndarray) -> np.ndarray:
    """Unit quaternions (w,x,y,z) of the shortest rotations taking +z to each normal."""
    n = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    # q = (1 + z.n, z x n) normalized is the half-angle rotation from z to n.
    axis = np.stack([-n[:, 1], n[:, 0], np.zeros(len(n))], axis=1)
    q = np.concatenate([1.0 + n[:, 2:3], axis], axis=1)
    flipped = q[:, 0] < 1e-6                 # n = -z: any half turn about a horizontal axis
    q[flipped] = np.array([0.0, 1.0, 0.0, 0.0])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _hue(h: np.ndarray, s: float = 0.65, v: float = 0.9) -> np.ndarray:
    """HSV -> RGB for hue in [0, 1), vectorised."""
    k = (np.stack([5.0, 3.0, 1.0])[None, :] + 6.0 * h[:, None]) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _surface_samples(rng: np.random.Generator, n: int):
    """Points, normals and colours on the demo object, modelled with z up. Returns lists."""
    parts = []
    light = np.array([0.45, -0.35, 0.82])
    light /= np.linalg.norm(light)

    # (name, area) decides how many of the n Gaussians each surface gets.
    ground_r, ball_c, ball_r = 2.6, np.array([0.75, -0.35, 0.72]), 0.72
    torus_c, torus_R, torus_r = np.array([-0.85, 0.45, 0.0]), 0.62, 0.24
    pillar_c, pillar_r, pillar_h = np.array([0.35, 1.25, 0.0]), 0.32, 1.7
    areas = {
        "ground": math.pi * ground_r ** 2,
        "ball": 4 * math.pi * ball_r ** 2,
        "torus": 4 * math.pi ** 2 * torus_R * torus_r,
        "pillar": 2 * math.pi * pillar_r * pillar_h + math.pi * pillar_r ** 2,
    }
    total = sum(areas.values())
    counts = {k: max(16, int(round(n * a / total))) for k, a in areas.items()}

    # Ground disk: a checkerboard that fades towards the rim.
    m = counts["ground"]
    r = ground_r * np.sqrt(rng.random(m))
    th = 2 * math.pi * rng.random(m)
    p = np.stack([r * np.cos(th), r * np.sin(th), np.zeros(m)], axis=1)
    nrm = np.tile([0.0, 0.0, 1.0], (m, 1))
    checker = (np.floor(p[:, 0] / 0.5) + np.floor(p[:, 1] / 0.5)) % 2
    col = np.where(checker[:, None] > 0, [0.86, 0.82, 0.72], [0.30, 0.36, 0.46])
    col = col * (1.0 - 0.35 * (r / ground_r) ** 2)[:, None]
    parts.append((p, nrm, col, areas["ground"] / m))

    # Ball: six coloured segments by longitude, a darker band at the equator.
    m = counts["ball"]
    nrm = rng.normal(size=(m, 3))
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    p = ball_c + ball_r * nrm
    lon = (np.arctan2(nrm[:, 1], nrm[:, 0]) / (2 * math.pi)) % 1.0
    col = _hue(np.floor(lon * 6) / 6 + 0.02)
    col = np.where(np.abs(nrm[:, 2:3]) < 0.12, col * 0.35, col)
    parts.append((p, nrm, col, areas["ball"] / m))

    # Torus standing upright (its axis along y), hue running around it.
    m = counts["torus"]
    u = 2 * math.pi * rng.random(4 * m)
    v = 2 * math.pi * rng.random(4 * m)
    keep = rng.random(4 * m) < (torus_R + torus_r * np.cos(v)) / (torus_R + torus_r)
    u, v = u[keep][:m], v[keep][:m]
    ring = np.stack([np.cos(u), np.zeros_like(u), np.sin(u)], axis=1)
    nrm = np.cos(v)[:, None] * ring + np.sin(v)[:, None] * np.array([0.0, 1.0, 0.0])
    p = torus_c + np.array([0.0, 0.0, torus_R + torus_r]) + torus_R * ring + torus_r * nrm
    col = _hue(u / (2 * math.pi), s=0.7, v=0.95)
    parts.append((p, nrm, col, areas["torus"] / len(p)))

    # Pillar: a cylinder with horizontal stripes and a lid.
    m = counts["pillar"]
    side = int(m * (2 * pillar_h) / (2 * pillar_h + pillar_r))
    th = 2 * math.pi * rng.random(side)
    h = pillar_h * rng.random(side)
    nrm_s = np.stack([np.cos(th), np.sin(th), np.zeros(side)], axis=1)
    p_s = pillar_c + pillar_r * nrm_s + np.stack([0 * h, 0 * h, h], axis=1)
    stripe = (np.floor(h / 0.17) % 2)[:, None]
    col_s = np.where(stripe > 0, [0.95, 0.93, 0.88], [0.80, 0.25, 0.20])
    lid = m - side
    r = pillar_r * np.sqrt(rng.random(lid))
    th = 2 * math.pi * rng.random(lid)
    p_l = pillar_c + np.stack([r * np.cos(th), r * np.sin(th), np.full(lid, pillar_h)], axis=1)
    nrm_l = np.tile([0.0, 0.0, 1.0], (lid, 1))
    col_l = np.tile([0.95, 0.80, 0.30], (lid, 1))
    parts.append((np.concatenate([p_s, p_l]), np.concatenate([nrm_s, nrm_l]),
                  np.concatenate([col_s, col_l]), areas["pillar"] / m))

    # Baked diffuse light, so the shapes read as 3D in the colour image as well.
    out = []
    for p, nrm, col, area_each in parts:
        shade = 0.45 + 0.55 * np.clip(nrm @ light, 0.0, 1.0)
        out.append((p, nrm, col * shade[:, None], area_each))
    return out


def demo_scene(n_gaussians: int = 40000, seed: int = 0, sh_degree: int = 1) -> Gaussians:
    """A small still life (checkered ground, ball, torus, striped pillar) as surface Gaussians.

    Each Gaussian is a flat disk in the surface's tangent plane; a faint view-dependent term in
    the degree-1 SH exercises the rasterizer's SH evaluation. World up is `DEMO_UP` (-y);
    the object sits around the origin within a radius of about 2.6 scene units.
    """
    return _demo_scene_and_parts(n_gaussians, seed, sh_degree)[0]


def demo_part_labels(n_gaussians: int = 40000, seed: int = 0) -> torch.Tensor:
    """(P,) int64: which part of `demo_scene(n_gaussians, seed)` each Gaussian samples: 0 the
    ground, 1 the ball, 2 the torus, 3 the pillar (object labels for segmentation checks)."""
    return _demo_scene_and_parts(n_gaussians, seed, 0)[1]


def _demo_scene_and_parts(n_gaussians: int, seed: int, sh_degree: int):
    if n_gaussians < 100:
        raise ValueError(f"n_gaussians: expected >= 100, got {n_gaussians}")
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree: expected 0..3, got {sh_degree}")
    rng = np.random.default_rng(seed)
    pts, nrms, cols, scs, parts = [], [], [], [], []
    for part, (p, nrm, col, area_each) in enumerate(_surface_samples(rng, n_gaussians)):
        parts.append(np.full(len(p), part))
        tangent = 1.0 * math.sqrt(area_each)           # overlap neighbours: a closed surface
        sc = np.tile([tangent, tangent, 0.12 * tangent], (len(p), 1))
        sc *= np.exp(rng.normal(scale=0.15, size=(len(p), 1)))
        pts.append(p), nrms.append(nrm), cols.append(col), scs.append(sc)
    p = np.concatenate(pts) @ _Z_UP_TO_Y_DOWN.T
    nrm = np.concatenate(nrms) @ _Z_UP_TO_Y_DOWN.T
    col = np.clip(np.concatenate(cols), 0.0, 1.0)
    M = (sh_degree + 1) ** 2
    sh = np.zeros((len(p), M, 3))
    sh[:, 0, :] = rgb_to_sh_dc(col)
    if sh_degree >= 1:
        # Slightly brighter when seen looking towards +x (the degree-1 x term is index 3).
        sh[:, 3, :] = -0.15
    P = len(p)
    f32 = dict(dtype=torch.float32)
    return Gaussians(
        means=torch.tensor(p, **f32),
        sh=torch.tensor(sh, **f32),
        opacities=torch.full((P, 1), 0.95, **f32),
        scales=torch.tensor(np.concatenate(scs), **f32),
        rotations=torch.tensor(_quaternion_z_to(nrm), **f32)), torch.tensor(np.concatenate(parts))


def demo_cameras(n_views: int, width: int, height: int) -> Sequence[Camera]:
    """Views of the demo scene: an orbit at 30 degrees elevation that frames the object."""
    from .cameras import orbit_cameras
    return orbit_cameras(center=(0.0, -0.45, 0.0), radius=6.2, n_views=n_views, width=width,
                         height=height, elevation_deg=30.0, fov_x_deg=50.0, up=DEMO_UP,
                         start_azimuth_deg=-60.0)
