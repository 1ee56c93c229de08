"""Differentiable Gaussian rasterizer with depth and weight maps.

A drop-in replacement for `diff_gaussian_rasterization`: the same settings and call, plus an
expected-depth map and an accumulated-alpha (weight) map, all with exact gradients.

    color, radii, depth, weight = GaussianRasterizer(settings)(means3D, means2D, opacities, ...)
"""
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from ._validation import (check_gaussians, check_optional_outputs, CheckedSettings,
                          KERNEL_SIZE_DEFAULT, require_pinhole)
from . import _backend, _debug, _precision
from ._debug import replay_snapshot
from .relocation import compute_relocation
from .sparse_adam import SparseGaussianAdam
from .ssim import fused_l1_ssim_loss, fused_ssim, ssim_map

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "has_cuda_backend", "replay_snapshot", "SparseGaussianAdam", "compute_relocation",
           "fused_ssim", "fused_l1_ssim_loss", "ssim_map"]

__version__ = "0.1.0"


class GaussianRasterizationSettings(NamedTuple):
    image_height: int
    image_width: int
    tanfovx: float
    tanfovy: float
    bg: torch.Tensor
    scale_modifier: float
    viewmatrix: torch.Tensor
    projmatrix: torch.Tensor
    sh_degree: int
    campos: torch.Tensor
    prefiltered: bool = False
    debug: bool = False
    antialiasing: bool = False
    # The 2D low-pass filter's variance in px^2, added to each projected covariance's diagonal:
    # the original's 0.3; Mip-Splatting's `kernel_size` (0.1 there, with antialiasing=True).
    kernel_size: float = KERNEL_SIZE_DEFAULT
    # Mip-Splatting's per-pixel sample offsets (its --ray_jitter): (H, W, 2), pixel (x, y)
    # sampled at (x + o[y, x, 0], y + o[y, x, 1]); None: every pixel at its own coordinates.
    subpixel_offset: Optional[torch.Tensor] = None
    # An orthographic camera (gsplat's camera_model="ortho"): pixel = focal x + c at every depth,
    # focal = W / (2 tanfovx) px per view-space unit, so tanfovx and tanfovy are the view's
    # half-width and half-height; projmatrix the orthographic projection of that extent
    # (cameras.orthographic_matrix).
    orthographic: bool = False
    # An equidistant fisheye (Fisheye-GS's is_fisheye, gsplat's camera_model="fisheye"): a point
    # theta radians off the optical axis lands focal * theta px from the principal point, focal =
    # W / (2 tanfovx) as for the pinhole; projmatrix the pinhole projection of the same camera,
    # which gives the principal point (where it puts the axis). Depth is view-space z as ever.
    fisheye: bool = False
    # OpenCV's fisheye distortion (COLMAP's OPENCV_FISHEYE, gsplat's fisheye radial_coeffs) on
    # that fisheye: (k1, k2, k3, k4), a point theta off the axis lands focal * theta_d px from the
    # principal point, theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8).
    # Gaussians past the angle where theta_d stops growing are culled. None: undistorted.
    fisheye_distortion: Optional[Sequence[float]] = None
    # OpenCV's pinhole distortion (COLMAP's OPENCV, FULL_OPENCV and RADIAL cameras, OpenCV's
    # distCoeffs, gsplat's radial and tangential coeffs) on the perspective camera:
    # (k1, k2, p1, p2), (k1, k2, p1, p2, k3) or (k1, k2, p1, p2, k3, k4, k5, k6); the
    # normalized point (a, b) = (x, y) / z lands at c + focal (a L + 2 p1 a b + p2 (r^2 + 2 a^2),
    # b L + p1 (r^2 + 2 b^2) + 2 p2 a b), L = (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 +
    # k5 r^4 + k6 r^6), c where projmatrix puts the axis. Gaussians past the radius where r L
    # stops growing are culled. A tensor that requires grad receives its gradient
    # (calibration). None: the plain pinhole.
    pinhole_distortion: Optional[Sequence[float]] = None


def has_cuda_backend() -> bool:
    """True when the compiled extension includes the CUDA kernels."""
    return _backend.has_cuda()


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings, dc=None, features=None,
                        median_depth=False, inverse_depth=False, touch_count=False,
                        contributions=False, dominant=False, points3D=None,
                        median_gaussian=False):
    """Functional form, argument order as in the original package.

    Returns (color (3,H,W), radii (P,) int32, depth (H,W), weight (H,W)), followed by
    feature_map (C,H,W) = sum_i w_i features_i when `features` (P,C) is given, and by
    median (H,W), the depth where the transmittance crosses 0.5, when `median_depth` is True.
    With `inverse_depth`, the depth channel blends 1/z instead of z: depth is
    (sum_i w_i / z_i) / weight, so depth * weight is the 2024 upstream's invdepth, and median
    is 1/z of the median's Gaussian; the render costs the same.
    With `touch_count`, the last output is touch_count (P,) int32: the pixels where each
    Gaussian is blended with the transmittance behind it still above 0.5 (MonoGS's n_touched;
    no gradient), counted by a walk of the tile lists of its own.
    With `contributions`, the last output is contribution (P, 5) of the input dtype: over the
    pixels where each Gaussian is blended, the sum and the largest of its weights w = alpha T,
    the number of those pixels, the number where its weight is the pixel's largest, and the sum
    of its opacity times the transmittance in front, o T (LightGaussian's score) (no gradient;
    a walk of its own, as the touch count's).
    With `dominant`, the last output is dominant (H, W) int32: at each pixel the index of the
    Gaussian whose weight there is the largest (the first in depth order among equal ones), -1
    where nothing is blended (Mini-Splatting's depth reinitialization; the same walk as the
    statistics', one walk for both).
    With `points3D` (N, 3), of the Gaussians' dtype and device, the last output is
    point_opacity (N,): the opacity field at those points in this view (Gaussian Opacity
    Fields' `integrate`), 1 - the transmittance through the splats of the point's pixel, each
    splat's alpha taken at the point's own screen position and faded in front of its
    Gaussian's peak along the point's ray; at a point behind everything it is the weight map's
    value there. 1 where the view does not see the point (off the image or in front of the near
    plane), so that the field's minimum over views (mesh.OpacityField) skips those views. No
    gradient; a walk of its own.
    With `median_gaussian`, the last output is median_gaussian (H, W) int32: at each pixel the
    index of its median Gaussian, the last blended one in front of which the transmittance is
    above 0.5 (the one whose blend takes it to 0.5 or below, whose z `median_depth` gives, or the
    last blended where the transmittance stays above 0.5, as RaDe-GS and Gaussian Opacity Fields
    take it), -1 where nothing is blended. No gradient; read off the state the forward keeps for
    its backward (no walk), for per-pixel values of the median's own (`.rade_gs`'s median depth).
    With raster_settings.debug, non-finite inputs raise a ValueError naming them, and an error
    of the backend writes a snapshot of the call (see `replay_snapshot`).
    """
    if _backend.compiling():  # torch.compile: one graph break here, the call run eagerly
        return _backend.untraced(rasterize_gaussians)(
            means3D, means2D, sh, colors_precomp, opacities, scales, rotations, cov3Ds_precomp,
            raster_settings, dc, features, median_depth, inverse_depth, touch_count,
            contributions, dominant, points3D, median_gaussian)
    for name, flag in (("touch_count", touch_count), ("contributions", contributions),
                       ("dominant", dominant), ("median_gaussian", median_gaussian)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
    if points3D is not None:
        if not isinstance(points3D, torch.Tensor):
            raise TypeError(f"points3D: expected a tensor, got {type(points3D).__name__}")
        points3D = points3D.detach()
        require_pinhole("points3D (the opacity field)", raster_settings,
                        refused=("orthographic",))
    # The median Gaussian is read off the median's position the forward keeps where it tracks
    # the median depth; that map is dropped again below where it was not asked for.
    returns_median = median_depth
    median_depth = median_depth or median_gaussian
    common = _backend.check_common(means3D, means2D, opacities, sh, colors_precomp, scales,
                                   rotations, cov3Ds_precomp, dc, features, raster_settings,
                                   median_depth, inverse_depth)
    if common is None and _precision.has_low_precision(
            means3D, means2D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp,
            dc, features, points3D):
        # float16 / bfloat16 inputs (an autocast region's MLP output, a half model): computed
        # in float32 (means3D's dtype where that is float32 or float64), each cast taking its
        # gradient back to its own dtype; the maps come out in the computing dtype.
        dtype = _precision.compute_dtype(means3D)
        (means3D, means2D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp,
         dc, features, points3D) = (_precision.upcast(t, dtype) for t in (
            means3D, means2D, opacities, sh, colors_precomp, scales, rotations,
            cov3Ds_precomp, dc, features, points3D))
        common = _backend.check_common(means3D, means2D, opacities, sh, colors_precomp, scales,
                                       rotations, cov3Ds_precomp, dc, features,
                                       raster_settings, median_depth, inverse_depth)
    if common is not None:  # checked in C++: no debug, no camera or background gradient
        opacities, config = common
        checked, camera = None, ()
    else:
        given = (means3D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp, dc,
                 features)  # _debug.INPUT_NAMES, then features
        (means3D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp,
         checked) = check_gaussians(means3D, means2D, opacities, sh, colors_precomp, scales,
                                    rotations, cov3Ds_precomp, dc, raster_settings,
                                    join_dc=False, pack_camera=_backend.pack_camera)
        features, median_depth, inverse_depth = check_optional_outputs(features, median_depth,
                                                                       means3D, inverse_depth)
        if checked.debug:
            _debug.raise_if_nonfinite(list(zip(_debug.INPUT_NAMES + ("features",), given)),
                                      raster_settings)
        config = _backend.make_config(checked, median_depth, inverse_depth)
        # The camera's flat tensors and fields of view become inputs of the Function only when
        # they take a gradient.
        camera = ((checked.viewmatrix, checked.projmatrix, checked.campos,
                   *checked.fields_of_view, checked.distortion_leaf)
                  if checked.camera_grad else ())
        if checked.bg_grad:  # and the background, last, where it takes one
            camera += (checked.bg,)
    if means2D is None:
        # Nobody wants the screen-space gradient: a throwaway carrier keeps the Function simple.
        means2D = torch.zeros((means3D.shape[0], 3), dtype=means3D.dtype, device=means3D.device)
    outputs = _RasterizeGaussians.apply(means3D, means2D, sh, colors_precomp, opacities, scales,
                                        rotations, cov3Ds_precomp, dc, features,
                                        (touch_count, contributions, dominant, points3D,
                                         median_gaussian), config, checked, *camera)
    if median_gaussian and not returns_median:
        median_at = 4 + (features is not None)
        outputs = outputs[:median_at] + outputs[median_at + 1:]
    return outputs


def _named_inputs(inputs, features):
    """The Function's Gaussian inputs by name, for debug snapshots."""
    named = dict(zip(_debug.INPUT_NAMES, inputs))
    if features is not None:
        named["features"] = features
    return named


class _RasterizeGaussians(torch.autograd.Function):
    """Autograd glue: the compiled backend does both passes. The one sum here is the
    background's gradient, where bg takes one: a reduction of the colour's gradient by the weight
    map, which no kernel needs (`_background_gradient`)."""

    @staticmethod
    def forward(ctx, means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                cov3Ds_precomp, dc, features, walks, config,
                settings: Optional[CheckedSettings], *camera):
        # config: the backend's RasterConfig of the call; settings: the checked settings, for
        # debug snapshots (None where the call was checked in C++, never in debug mode).
        # camera: (viewmatrix, projmatrix, campos, tanfovx, tanfovy, distortion) when
        # config.camera_grad: the flat tensors the config holds, the fields of view as 0-dim
        # tensors or numbers, the lens's coefficients (fisheye_distortion or
        # pinhole_distortion) as a flat tensor that takes a gradient or None; then bg (the
        # config's flat copy) where the background takes a gradient.
        # dc: SH coefficient 0 apart from sh (the 2024 API), read where it lies rather than
        # copied in front of sh. walks: (touch_count, contributions, dominant,
        # points3D, median_gaussian), the outputs made after the render from its state (walks
        # of the tile lists of their own, but for the last).
        inputs = (means3D, opacities, sh, colors_precomp, scales, rotations, cov3Ds_precomp, dc)
        if means2D.shape[1] == 4:  # columns 2-3 take AbsGS's absolute gradient
            config.absolute_grad = True

        def render():
            # The backward reads the inputs through the same GaussianInputs (contiguous copies
            # made once); save_for_backward below still guards them against in-place edits.
            ctx.gaussians = _backend.make_gaussians(*inputs, features=features)
            maps = _backend.forward(config, ctx.gaussians)
            touch_count, contributions, dominant, points3D, median_gaussian = walks
            counts = (_backend.count_touches(config, maps[-1]),) if touch_count else ()
            if contributions or dominant:  # one walk gives both
                statistics, dominant_map = _backend.gaussian_contributions(config, maps[-1],
                                                                           contributions)
                counts += ((statistics,) if contributions else ()) + (
                    (dominant_map,) if dominant else ())
            if points3D is not None:
                counts += (_backend.point_opacity(config, ctx.gaussians, maps[-1], points3D),)
            if median_gaussian:
                counts += (_backend.median_gaussians(maps[-1]),)
            return maps, counts

        (color, depth, weight, radii, feature_map, median, state), counts = _debug.guarded(
            config.debug, lambda: _debug.Capture("forward", _named_inputs(inputs, features),
                                                   settings, median_depth=config.median_depth,
                                                   inverse_depth=config.inverse_depth),
            render)
        ctx.config = config
        ctx.checked = settings
        # Internal per-Gaussian and per-pixel state of the forward: never handed to the user,
        # so in-place edits of the returned maps cannot corrupt the backward.
        ctx.state = state
        ctx.present = tuple(t is not None for t in inputs)
        ctx.means2D_columns = means2D.shape[1]   # (P, 3), (P, 2) or (P, 4)
        ctx.has_features = features is not None
        absent = _backend.empty(means3D.device, means3D.dtype)  # stands in for absent inputs
        saved = [absent if t is None else t for t in inputs]
        if ctx.has_features:
            saved.append(features)
        # An unused map's gradient stays None rather than a zero tensor that autograd would
        # allocate and fill (one for radii on every call, one per map no loss reaches): the
        # backend takes None as zero, and a loss on the colour alone does not pay for a
        # backward through C feature channels.
        ctx.set_materialize_grads(False)
        ctx.bg_grad = settings is not None and settings.bg_grad
        if ctx.bg_grad:  # d/d(bg) reads the weight map: 1 - weight is T_final
            saved.append(weight)
        ctx.save_for_backward(*saved)
        ctx.fields_of_view = camera[3:5]
        ctx.distortion = camera[5] if config.camera_grad else None
        outputs = (color, radii, depth, weight)
        if ctx.has_features:
            outputs += (feature_map,)
        if config.median_depth:
            outputs += (median,)
        ctx.mark_non_differentiable(radii, *counts)
        return outputs + counts

    @staticmethod
    def backward(ctx, grad_color, _grad_radii, grad_depth, grad_weight, *grad_optional):
        saved = ctx.saved_tensors
        inputs = tuple(t if present else None for t, present in zip(saved, ctx.present))
        features = saved[len(inputs)] if ctx.has_features else None
        weight = saved[-1] if ctx.bg_grad else None
        grad_features = grad_optional[0] if ctx.has_features else None
        grad_median = grad_optional[int(ctx.has_features)] if ctx.config.median_depth else None

        def upstream():  # the map gradients by name, for a debug snapshot only
            named = dict(color=grad_color, depth=grad_depth, weight=grad_weight)
            if ctx.has_features:
                named["feature_map"] = grad_features
            if ctx.config.median_depth:
                named["median"] = grad_median
            return named

        (d_means3D, d_means2D, d_opacities, d_dc, d_sh, d_colors, d_scales, d_rotations,
         d_cov3D, d_features, *d_camera) = _debug.guarded(
            ctx.config.debug,
            lambda: _debug.Capture("backward", _named_inputs(inputs, features), ctx.checked,
                                   grads=upstream(), median_depth=ctx.config.median_depth,
                                   inverse_depth=ctx.config.inverse_depth),
            lambda: _backend.backward(ctx.config, ctx.gaussians, ctx.state, grad_color,
                                      grad_depth, grad_weight, grad_features, grad_median,
                                      release_state=_backend.graph_is_freed()))
        _, _, has_sh, has_colors, has_scales, has_rotations, has_cov, has_dc = ctx.present
        if ctx.means2D_columns == 2:  # the backend's gradient has 3 columns (4 with AbsGS)
            d_means2D = d_means2D[:, :2]
        return (d_means3D, d_means2D, d_sh if has_sh else None,
                d_colors if has_colors else None, d_opacities,
                d_scales if has_scales else None, d_rotations if has_rotations else None,
                d_cov3D if has_cov else None, d_dc if has_dc else None,
                d_features if ctx.has_features else None,
                None, None, None, *(_camera_gradients(d_camera, ctx.fields_of_view,
                                                      ctx.distortion)
                                    if ctx.config.camera_grad else ()),
                *((_background_gradient(grad_color, weight),) if ctx.bg_grad else ()))


def _camera_gradients(d_camera, fields_of_view, distortion):
    """The Function's gradients of (viewmatrix, projmatrix, campos, tanfovx, tanfovy, the lens
    coefficients) from the backend's (view, proj, campos, tanfov (2,), distortion (8,)):
    a field of view's where it is a tensor (0-dim, in its own dtype and on its own device),
    None where it is a number; the coefficients' where they are a tensor (the fisheye's four,
    the pinhole's four, five or eight: the first values, the order being the settings'), else
    None."""
    d_view, d_proj, d_campos, d_tanfov, d_k = d_camera
    return (d_view, d_proj, d_campos) + tuple(
        d_tanfov[k].to(device=t.device, dtype=t.dtype) if isinstance(t, torch.Tensor) else None
        for k, t in enumerate(fields_of_view)) + (
        None if distortion is None
        else d_k[:distortion.numel()].to(device=distortion.device, dtype=distortion.dtype),)


def _background_gradient(grad_color, weight):
    """d/d(bg) (3,): the colour is sum w c + T_final bg with T_final = 1 - weight, so each pixel
    adds its colour gradient times 1 - weight (None where no loss reaches the colour)."""
    if grad_color is None:
        return None
    return (grad_color * (1.0 - weight)).sum(dim=(1, 2))


class GaussianRasterizer(nn.Module):
    def __init__(self, raster_settings: GaussianRasterizationSettings):
        super().__init__()
        self.raster_settings = raster_settings

    @_backend.run_eagerly_under_compile
    def markVisible(self, positions: torch.Tensor) -> torch.Tensor:
        """Bool mask (P,) of the points in front of the near plane; no gradient."""
        from ._validation import _require_tensor, _require_shape
        positions = _require_tensor("positions", positions)
        _require_shape("positions", positions, [(None, 3)], "(P, 3)")
        if not positions.is_floating_point():
            raise TypeError(f"positions: expected a floating-point tensor, got {positions.dtype}")
        positions = _precision.upcast(positions, torch.float32)
        with torch.no_grad():
            checked = CheckedSettings(self.raster_settings, positions.device, positions.dtype)
            return _backend.mark_visible(positions.detach().contiguous(), checked)

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None, dc=None, features=None, median_depth=False,
                inverse_depth=False, touch_count=False, contributions=False, dominant=False,
                points3D=None, median_gaussian=False):
        """(color, radii, depth, weight), then feature_map (C,H,W) when `features` (P,C) is
        given, then median (H,W) when `median_depth` is True, then touch_count (P,) int32 when
        `touch_count` is True, then contribution (P,5) when `contributions` is True, then
        dominant (H,W) int32 when `dominant` is True, then point_opacity (N,) when `points3D`
        (N,3) is given, then median_gaussian (H,W) int32 when `median_gaussian` is True; depth
        (and median) of 1/z with `inverse_depth` (see rasterize_gaussians)."""
        return rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                   rotations, cov3D_precomp, self.raster_settings, dc=dc,
                                   features=features, median_depth=median_depth,
                                   inverse_depth=inverse_depth, touch_count=touch_count,
                                   contributions=contributions, dominant=dominant,
                                   points3D=points3D, median_gaussian=median_gaussian)
