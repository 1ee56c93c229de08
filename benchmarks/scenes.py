"""Benchmark scenes from the garden points of data/garden_points.npz (see data/README.md).

    from benchmarks.scenes import garden_scene
    scene = garden_scene("112k", camera=0, scale=1, seed=0, device="cuda")
    settings = scene.raster_settings()                 # GaussianRasterizationSettings
    inputs = scene.rasterizer_inputs()                 # keyword arguments of GaussianRasterizer
    color, radii, depth, weight = GaussianRasterizer(settings)(**inputs)
    gs = scene.gsplat_inputs()                         # the same scene for gsplat.rasterization

The protocol, step by step:
- keep the points inside the box [-2, 2]^3 (111,785 of the file's 138,766);
- larger scenes tile that crop on an odd n x n grid in x and y, spaced by the box's edge (4),
  z unchanged: n = 3 gives 1,006,065 Gaussians, n = 5 gives 2,794,625;
- attributes are drawn from a seeded `torch.Generator` on the CPU (so every device gets the same
  scene): scales uniform in [1e-4, 0.02], unit quaternions (w, x, y, z) uniform on the sphere,
  opacities uniform in [0, 1], colours from the file / 255 (or, with `sh=True`, degree-3 SH whose
  DC term reproduces the file's colour and whose higher bands are random);
- camera i of the file: viewmatrix = viewmats[i].T, tanfovx = W / (2 fx), tanfovy = H / (2 fy),
  projmatrix = viewmatrix @ P.T (OpenGL-style P, znear 0.01, zfar 100, z forward), campos = the
  camera centre; a resolution scale k renders W = 648 k by H = 420 k with fx, fy scaled by k.

The data file is found by `find_data`: an explicit path, else $DGRD_DATA, else the copy in the
repository, `<repo>/data/garden_points.npz`.

Cameras are the package's `diff_gaussian_rasterization_depth.cameras.Camera` (pure Python, no
compiled extension needed) with gsplat's K and a tensor world-to-camera matrix added.
"""
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from diff_gaussian_rasterization_depth import cameras

REPO = Path(__file__).resolve().parents[1]
DATA_NAME = "garden_points.npz"
DATA_ENV = "DGRD_DATA"

CROP_HALF_EXTENT = 2.0          # the crop box is [-2, 2]^3 ...
TILE_SPACING = 2 * CROP_HALF_EXTENT   # ... and tiled copies sit one box edge apart
SCALE_RANGE = (1e-4, 0.02)
SH_DEGREE = 3
SH_C0 = 0.28209479177387814     # degree-0 real SH constant: colour = SH_C0 * dc + 0.5
SH_REST_STD = 0.1               # spread of the random higher SH bands

# name -> (n for the n x n tiling, number of points kept after a seeded subsample or None)
NAMED_SCENES: Dict[str, Tuple[int, Optional[int]]] = {
    "112k": (1, None),
    "1m": (3, None),
    "2.8m": (5, None),
}


# ----------------------------------------------------------------------------------------------
# The data file
# ----------------------------------------------------------------------------------------------

def data_candidates(path: Optional[Union[str, Path]] = None) -> List[Path]:
    """Where `find_data` looks, in order."""
    if path is not None:
        return [Path(path)]
    out = []
    if os.environ.get(DATA_ENV):
        out.append(Path(os.environ[DATA_ENV]))
    out.append(REPO / "data" / DATA_NAME)
    return out


def find_data(path: Optional[Union[str, Path]] = None) -> Path:
    """The garden_points.npz to use; FileNotFoundError naming every place tried."""
    tried = data_candidates(path)
    for p in tried:
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{DATA_NAME} not found; tried: {', '.join(str(p) for p in tried)}. "
        f"Pass its path or set ${DATA_ENV}.")


@dataclass
class GardenData:
    """The file's arrays: points (M,3) float32, colours (M,3) uint8, three cameras."""
    means: np.ndarray
    colors: np.ndarray
    viewmats: np.ndarray      # (3,4,4) world-to-camera, acting on column vectors (OpenCV axes)
    Ks: np.ndarray            # (3,3,3) pinhole intrinsics
    width: int
    height: int
    path: Path


_CACHE: Dict[Path, GardenData] = {}


def load_garden(path: Optional[Union[str, Path]] = None) -> GardenData:
    """Load (once per process) the data file located by `find_data`."""
    p = find_data(path).resolve()
    if p not in _CACHE:
        with np.load(p) as f:
            _CACHE[p] = GardenData(
                means=np.asarray(f["means3d"], dtype=np.float32),
                colors=np.asarray(f["colors"], dtype=np.uint8),
                viewmats=np.asarray(f["viewmats"], dtype=np.float64),
                Ks=np.asarray(f["Ks"], dtype=np.float64),
                width=int(f["width"]), height=int(f["height"]), path=p)
    return _CACHE[p]


def _as_data(data) -> GardenData:
    return data if isinstance(data, GardenData) else load_garden(data)


# ----------------------------------------------------------------------------------------------
# Points: crop, tile, subsample
# ----------------------------------------------------------------------------------------------

def parse_scene(name: str) -> Tuple[int, Optional[int]]:
    """(tiles, subsample) of a scene name: "112k", "1m", "2.8m", or "<N>k" / "<N>" for N points
    drawn (seeded) from the 112k crop, e.g. "20k" or "2000"."""
    key = name.strip().lower()
    if key in NAMED_SCENES:
        return NAMED_SCENES[key]
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(k?)", key)
    if not m:
        raise ValueError(f"scene: expected one of {', '.join(NAMED_SCENES)} or a point count "
                         f"such as 20k, got {name!r}")
    count = int(round(float(m.group(1)) * (1000 if m.group(2) else 1)))
    if count < 1:
        raise ValueError(f"scene: expected at least one point, got {name!r}")
    return 1, count


def crop_mask(means: np.ndarray, half_extent: float = CROP_HALF_EXTENT) -> np.ndarray:
    """Points inside the closed box [-half_extent, half_extent]^3."""
    return np.all(np.abs(means) <= half_extent, axis=1)


def scene_points(tiles: int = 1, subsample: Optional[int] = None, seed: int = 0,
                 data=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positions (N,3) float32 and colours (N,3) in [0,1] of the cropped, tiled scene.

    tiles: odd n of the n x n grid (1 = the crop alone). subsample: keep this many points of the
    crop, chosen by a generator seeded with `seed` (before tiling; only with tiles == 1 in the
    named scenes, but allowed with any n).
    """
    if tiles < 1 or tiles % 2 != 1:
        raise ValueError(f"tiles: expected an odd positive n for the n x n grid, got {tiles}")
    d = _as_data(data)
    keep = crop_mask(d.means)
    means = torch.from_numpy(d.means[keep].copy())
    colors = torch.from_numpy(d.colors[keep].astype(np.float32) / 255.0)
    if subsample is not None:
        if not 0 < subsample <= means.shape[0]:
            raise ValueError(f"subsample: expected 1..{means.shape[0]} points, got {subsample}")
        gen = torch.Generator().manual_seed(10_000 + seed)
        idx = torch.randperm(means.shape[0], generator=gen)[:subsample].sort().values
        means, colors = means[idx], colors[idx]
    if tiles > 1:
        r = tiles // 2
        steps = torch.arange(-r, r + 1, dtype=torch.float32) * TILE_SPACING
        gx, gy = torch.meshgrid(steps, steps, indexing="ij")
        offsets = torch.stack([gx.reshape(-1), gy.reshape(-1), torch.zeros(tiles * tiles)], 1)
        means = (means[None, :, :] + offsets[:, None, :]).reshape(-1, 3)
        colors = colors.repeat(tiles * tiles, 1)
    return means.contiguous(), colors.contiguous()


def scene_size(name: str, data=None) -> int:
    """Number of Gaussians of a named scene, without drawing attributes."""
    tiles, subsample = parse_scene(name)
    base = subsample if subsample is not None else int(crop_mask(_as_data(data).means).sum())
    return base * tiles * tiles


# ----------------------------------------------------------------------------------------------
# Gaussians
# ----------------------------------------------------------------------------------------------

@dataclass
class Gaussians:
    """Activated attributes, as the rasterizer takes them.

    means (N,3); scales (N,3) > 0; rotations (N,4) unit quaternions (w,x,y,z); opacities (N,1);
    colors (N,3) in [0,1] or None; sh (N,16,3) or None (exactly one of the two is set).
    """
    means: torch.Tensor
    scales: torch.Tensor
    rotations: torch.Tensor
    opacities: torch.Tensor
    colors: Optional[torch.Tensor] = None
    sh: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return 0 if self.sh is None else int(round(math.sqrt(self.sh.shape[1]))) - 1

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def to(self, device=None, dtype=None) -> "Gaussians":
        return Gaussians(**{k: v.to(device=device, dtype=dtype)
                            for k, v in self.tensors().items()})

    def requires_grad_(self, flag: bool = True) -> "Gaussians":
        for v in self.tensors().values():
            v.requires_grad_(flag)
        return self

    def zero_grad(self):
        for v in self.tensors().values():
            v.grad = None


def make_gaussians(scene: str = "112k", seed: int = 0, sh: bool = False,
                   data=None) -> Gaussians:
    """The named scene's Gaussians on the CPU, float32, attributes drawn from `seed`."""
    tiles, subsample = parse_scene(scene)
    means, rgb = scene_points(tiles, subsample, seed=seed, data=data)
    n = means.shape[0]
    gen = torch.Generator().manual_seed(seed)
    lo, hi = SCALE_RANGE
    scales = lo + (hi - lo) * torch.rand(n, 3, generator=gen)
    quats = torch.randn(n, 4, generator=gen)
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    opacities = torch.rand(n, 1, generator=gen)
    if not sh:
        return Gaussians(means, scales, quats, opacities, colors=rgb)
    coeffs = (SH_DEGREE + 1) ** 2
    shs = SH_REST_STD * torch.randn(n, coeffs, 3, generator=gen)
    shs[:, 0, :] = (rgb - 0.5) / SH_C0
    return Gaussians(means, scales, quats, opacities, sh=shs)


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------

class Camera(cameras.Camera):
    """The package's pinhole camera (`cameras.Camera`: float64 `world_to_camera`, `tanfovx`,
    `tanfovy`, `center` = campos, `viewmatrix()`, `projmatrix()`), plus what gsplat takes."""

    @property
    def w2c(self) -> torch.Tensor:
        """A float64 tensor copy of the world-to-camera matrix (gsplat's `viewmats` entry)."""
        return torch.tensor(self.world_to_camera, dtype=torch.float64)

    @property
    def center(self) -> np.ndarray:
        """Camera centre (campos) as the translation of the inverted matrix: the file's rotations
        are orthonormal only to ~1e-8, so the base class's -R^T t would be off by about that."""
        return torch.linalg.inv(self.w2c)[:3, 3].numpy()

    @property
    def K(self) -> torch.Tensor:
        """Intrinsics with the principal point at (W/2, H/2): with gsplat's pixel centres at
        +0.5 that is exactly this rasterizer's image (its pixel centres sit at integers and its
        optical axis at ((W-1)/2, (H-1)/2))."""
        return torch.tensor([[self.fx, 0.0, self.width / 2.0],
                             [0.0, self.fy, self.height / 2.0],
                             [0.0, 0.0, 1.0]], dtype=torch.float64)


def make_camera(index: int = 0, scale: float = 1.0, data=None) -> Camera:
    """Camera `index` of the file, rendering (W, H) = (648, 420) * scale."""
    d = _as_data(data)
    if not 0 <= index < d.viewmats.shape[0]:
        raise ValueError(f"camera: expected 0..{d.viewmats.shape[0] - 1}, got {index}")
    width, height = int(round(d.width * scale)), int(round(d.height * scale))
    if width < 1 or height < 1:
        raise ValueError(f"scale: {scale} gives an empty {width}x{height} image")
    K = d.Ks[index]
    return Camera(d.viewmats[index].copy(), width=width, height=height,
                  fx=float(K[0, 0]) * width / d.width, fy=float(K[1, 1]) * height / d.height)


# ----------------------------------------------------------------------------------------------
# A scene: Gaussians + camera, as rasterizer inputs or gsplat inputs
# ----------------------------------------------------------------------------------------------

@dataclass
class Scene:
    name: str
    gaussians: Gaussians
    camera: Camera

    @property
    def device(self) -> torch.device:
        return self.gaussians.means.device

    def settings_fields(self, bg=None) -> dict:
        """The settings as a dict of the fields common to every version of the original
        `GaussianRasterizationSettings` (the 2024 one adds `antialiasing`)."""
        cam, dev = self.camera, self.device

        def f32(a) -> torch.Tensor:
            return torch.as_tensor(a).to(dev, torch.float32)

        return dict(
            image_height=cam.height, image_width=cam.width,
            tanfovx=cam.tanfovx, tanfovy=cam.tanfovy,
            bg=f32(torch.zeros(3) if bg is None else bg),
            scale_modifier=1.0,
            viewmatrix=f32(cam.viewmatrix()),
            projmatrix=f32(cam.projmatrix()),
            sh_degree=self.gaussians.sh_degree,
            campos=f32(cam.center),
            prefiltered=False, debug=False)

    def raster_settings(self, bg=None, settings_class=None):
        """GaussianRasterizationSettings of this package (or of `settings_class`, keeping only
        the fields it has)."""
        if settings_class is None:
            from diff_gaussian_rasterization_depth import GaussianRasterizationSettings
            settings_class = GaussianRasterizationSettings
        fields = self.settings_fields(bg)
        if "antialiasing" in settings_class._fields:
            fields["antialiasing"] = False
        return settings_class(**{k: v for k, v in fields.items()
                                 if k in settings_class._fields})

    def rasterizer_inputs(self) -> dict:
        """Keyword arguments of `GaussianRasterizer.forward`, sharing this scene's tensors; a
        fresh zero `means2D` carrier that requires grad when the means do."""
        g = self.gaussians
        means2D = torch.zeros_like(g.means, requires_grad=g.means.requires_grad)
        out = dict(means3D=g.means, means2D=means2D, opacities=g.opacities,
                   scales=g.scales, rotations=g.rotations)
        if g.sh is not None:
            out["shs"] = g.sh
        else:
            out["colors_precomp"] = g.colors
        return out

    def gsplat_inputs(self) -> dict:
        """Keyword arguments of `gsplat.rasterization` for the same scene and image.

        means (N,3), quats (N,4) wxyz, scales (N,3), opacities (N,), colors (N,3) or SH (N,16,3)
        with sh_degree, viewmats (1,4,4) world-to-camera (column vectors), Ks (1,3,3), width,
        height. Views of this scene's tensors, so gradients land on the same leaves.
        """
        g, dev, f32 = self.gaussians, self.device, torch.float32
        return dict(means=g.means, quats=g.rotations, scales=g.scales,
                    opacities=g.opacities.reshape(-1),
                    colors=g.sh if g.sh is not None else g.colors,
                    sh_degree=g.sh_degree if g.sh is not None else None,
                    viewmats=self.camera.w2c.to(dev, f32)[None],
                    Ks=self.camera.K.to(dev, f32)[None],
                    width=self.camera.width, height=self.camera.height)


def garden_scene(scene: str = "112k", camera: int = 0, scale: float = 1.0, seed: int = 0,
                 sh: bool = False, device: Union[str, torch.device] = "cpu",
                 requires_grad: bool = False, data=None) -> Scene:
    """A whole benchmark scene on `device`; see the module docstring for the protocol."""
    g = make_gaussians(scene, seed=seed, sh=sh, data=data).to(device)
    if requires_grad:
        g.requires_grad_(True)
    return Scene(scene, g, make_camera(camera, scale, data=data))


def gsplat_scene(scene: str = "112k", camera: int = 0, scale: float = 1.0, seed: int = 0,
                 sh: bool = False, device: Union[str, torch.device] = "cpu",
                 requires_grad: bool = False, data=None) -> dict:
    """`garden_scene(...)` as the keyword arguments of `gsplat.rasterization`."""
    return garden_scene(scene, camera, scale, seed, sh, device, requires_grad,
                        data).gsplat_inputs()
