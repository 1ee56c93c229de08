"""MonoGS's rasterizer API (the `diff-gaussian-rasterization-w-pose` submodule of MonoGS, Gaussian
Splatting SLAM, Matsuki et al., CVPR 2024): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.monogs import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., viewmatrix=..., projmatrix=...,
                                             projmatrix_raw=..., sh_degree=..., campos=..., ...)
    color, radii, depth, opacity, n_touched = GaussianRasterizer(settings)(
        means3D, means2D, opacities, shs=..., colors_precomp=..., scales=..., rotations=...,
        cov3D_precomp=..., theta=camera.cam_rot_delta, rho=camera.cam_trans_delta)

- depth (1, H, W): sum_i w_i z_i (not normalized), opacity (1, H, W): sum_i w_i, as MonoGS's;
  both with their exact gradients (MonoGS's own rasterizer drops the opacity map's).
- n_touched (P,) int32: the pixels where each Gaussian is blended with the transmittance behind
  it still above 0.5 (the package's `touch_count`), what MonoGS's covisibility and pruning read.
- theta, rho (3,): the rotation and translation of MonoGS's pose update, which after each step
  sets world-to-camera to exp([rho, theta]^) @ world-to-camera and zeroes them. The render does
  not read their values; they receive the gradient of the loss at zero, through the camera
  gradients of the package (doc/camera_gradients.md): the view matrix, the full projection
  `viewmatrix @ projmatrix_raw` and the camera centre all move with the pose, so the gradient
  is the total derivative (MonoGS's own leaves out the centre's path through the SH colours).
"""
from typing import NamedTuple

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import GaussianRasterizer as _DepthRasterizer
from . import rasterize_gaussians as _rasterize
from .cameras import camera_centre
from ._precision import full_precision

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians"]


class GaussianRasterizationSettings(NamedTuple):
    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    projmatrix_raw: torch.Tensor  # None: solved from viewmatrix and projmatrix
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool = False
    debug: bool = False


def _zero_valued(t: torch.Tensor) -> torch.Tensor:
    """0 in value (exactly, a non-finite value too), the identity in gradient."""
    return torch.where(torch.isfinite(t.detach()), t - t.detach(), torch.zeros_like(t))


def _pose_tangent(theta, rho, like: torch.Tensor) -> torch.Tensor:
    """The 4x4 matrix [[theta]_x, rho; 0, 0] of the pose update, of value 0 and gradient to
    theta and rho."""
    w = _zero_valued(theta.reshape(3).to(like))
    t = _zero_valued(rho.reshape(3).to(like))
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    return torch.stack([
        torch.stack([zero, -w[2], w[1], t[0]]),
        torch.stack([w[2], zero, -w[0], t[1]]),
        torch.stack([-w[1], w[0], zero, t[2]]),
        torch.stack([zero, zero, zero, zero]),
    ])


def _check_pose(name, t, size):
    """theta, rho (3 values) and projmatrix_raw (16), named in the error where they are wrong."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if t.numel() != size:
        raise ValueError(f"{name}: expected {size} values, got shape {tuple(t.shape)}")


@full_precision
def _package_settings(settings: GaussianRasterizationSettings, theta, rho):
    """The package's settings of a MonoGS call. Where theta or rho requires grad, the view
    matrix, the full projection and the camera centre carry the first-order pose update of
    value 0: the render sees the given matrices, and theta and rho get the gradient at 0."""
    _check_pose("theta", theta, 3)
    _check_pose("rho", rho, 3)
    _check_pose("projmatrix_raw", settings.projmatrix_raw, 16)
    viewmatrix, projmatrix, campos = settings.viewmatrix, settings.projmatrix, settings.campos
    wants_pose = any(t is not None and t.requires_grad for t in (theta, rho))
    if wants_pose and torch.is_grad_enabled():
        theta = torch.zeros(3) if theta is None else theta
        rho = torch.zeros(3) if rho is None else rho
        w2c = viewmatrix.reshape(4, 4).T
        moved = w2c + _pose_tangent(theta, rho, w2c) @ w2c  # the same values as w2c
        viewmatrix = moved.T
        raw = settings.projmatrix_raw
        if raw is None:  # the projection alone, from the two matrices given
            raw = torch.linalg.solve(w2c.detach().T, projmatrix.detach().reshape(4, 4).to(w2c))
        projmatrix = projmatrix + _zero_valued(
            viewmatrix @ raw.reshape(4, 4).to(viewmatrix)).reshape(projmatrix.shape).to(projmatrix)
        campos = campos + _zero_valued(camera_centre(moved)).reshape(campos.shape).to(campos)
    return _PackageSettings(settings.image_height, settings.image_width, settings.tanfovx,
                    settings.tanfovy, settings.bg, settings.scale_modifier, viewmatrix,
                    projmatrix, settings.sh_degree, campos, settings.prefiltered, settings.debug)


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, theta, rho, raster_settings):
    """MonoGS's functional form and argument order; returns (color, radii, depth, opacity,
    n_touched)."""
    color, radii, depth, weight, touched = _rasterize(
        means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
        _package_settings(raster_settings, theta, rho), touch_count=True)
    return color, radii, (depth * weight).unsqueeze(0), weight.unsqueeze(0), touched


class GaussianRasterizer(_DepthRasterizer):
    """MonoGS's module: `markVisible` as the package's, `forward` with theta and rho."""

    def markVisible(self, positions):
        return _DepthRasterizer(_package_settings(self.raster_settings, None, None)).markVisible(
            positions)

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None, theta=None, rho=None):
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, theta, rho, self.raster_settings)
