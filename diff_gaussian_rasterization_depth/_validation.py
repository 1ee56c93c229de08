"""Input checking for the rasterizer: every violated contract raises before any kernel runs.

ValueError for shapes, combinations and values; TypeError for dtypes and non-tensors;
RuntimeError for CUDA tensors on a build without CUDA (raised by the dispatcher).
"""
import functools
import math
import operator
from typing import Optional

import numpy as np
import torch

SUPPORTED_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32,),
}


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"
    return f"{type(t).__name__} {t!r}"


def _require_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_describe(t)}")
    return t


def _require_shape(name: str, t: torch.Tensor, allowed, expected_text: str):
    """allowed: list of shape tuples where None matches any size."""
    # Plain loops: this runs for every input of every call (generators cost more than the test).
    shape = t.shape
    for pattern in allowed:
        if len(pattern) != len(shape):
            continue
        for want, got in zip(pattern, shape):
            if want is not None and want != got:
                break
        else:
            return
    raise ValueError(f"{name}: expected shape {expected_text}, got {tuple(shape)}")


def _require_int(name: str, v, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(v, bool) or not hasattr(type(v), "__index__"):
        raise TypeError(f"{name}: expected an int, got {_describe(v)}")
    v = operator.index(v)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ValueError(f"{name}: expected an integer {rng}, got {v}")
    return v


def _require_float(name: str, v, positive: bool = False) -> float:
    """A Python number or a one-element tensor (the fields of view may take a gradient)."""
    try:
        f = real_value(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {_describe(v)}") from None
    if not math.isfinite(f) or (positive and f <= 0):
        what = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"{name}: expected {what}, got {f}")
    return f


def real_value(v) -> float:
    """A field that is a number or a one-element tensor (the fields of view may be tensors that
    take a gradient) as a Python float, for code that reads it as a number."""
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _require_like(name: str, t, device, dtype) -> torch.Tensor:
    """t must be a tensor on `device` with `dtype` (those of means3D)."""
    t = _require_tensor(name, t)
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of means3D), "
                         f"got one on {t.device}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of means3D), got {t.dtype}")
    return t


def _small_tensor(name: str, t, numel: int) -> torch.Tensor:
    """Matrices, bg, campos: any layout with the right element count (flattened, row-major,
    by `_backend.pack_camera`)."""
    t = _require_tensor(f"raster_settings.{name}", t)
    if not t.is_floating_point():
        raise TypeError(f"raster_settings.{name}: expected a floating-point tensor, got {t.dtype}")
    if t.numel() != numel:
        raise ValueError(f"raster_settings.{name}: expected {numel} elements, got "
                         f"{t.numel()} (shape {tuple(t.shape)})")
    return t


CAMERA_FIELDS = ("viewmatrix", "projmatrix", "campos", "tanfovx", "tanfovy", "fisheye_distortion",
                 "pinhole_distortion")
KERNEL_SIZE_DEFAULT = 0.3  # the original's dilation (config.h kDefaultKernelSize)


def pack_camera(parts, device, dtype, keep_grad):
    """The camera's tensors [bg, viewmatrix, projmatrix, campos] as flat views of one private
    copy on (device, dtype) (torch.cat always allocates), detached unless keep_grad: the
    PyTorch twin of the compiled `_C.pack_camera`, which the rasterizer's own calls use
    (`_backend.pack_camera`); the reference and `markVisible` use this one."""
    flat = [(p if keep_grad else p.detach()).reshape(-1) for p in parts]
    packed = torch.cat([f if f.device == device and f.dtype == dtype
                        else f.to(device=device, dtype=dtype) for f in flat])
    return torch.split_with_sizes(packed, [f.numel() for f in flat])


class CheckedSettings:
    """The settings after validation, with tensors on the Gaussians' device and dtype."""

    def __init__(self, s, device, dtype, pack=pack_camera):
        self.image_height = _require_int("raster_settings.image_height", s.image_height, 1, 1 << 15)
        self.image_width = _require_int("raster_settings.image_width", s.image_width, 1, 1 << 15)
        self.tanfovx = _require_float("raster_settings.tanfovx", s.tanfovx, positive=True)
        self.tanfovy = _require_float("raster_settings.tanfovy", s.tanfovy, positive=True)
        self.scale_modifier = _require_float("raster_settings.scale_modifier", s.scale_modifier)
        self.sh_degree = _require_int("raster_settings.sh_degree", s.sh_degree, 0, 3)
        # Camera gradients are wanted when a camera tensor requires grad (outside no_grad). The
        # flat copies are then built by differentiable ops (reshape, to, cat, split), so that a
        # gradient given to them reaches the caller's tensors through any view.
        self.camera_grad = False
        if torch.is_grad_enabled():
            for name in CAMERA_FIELDS:
                t = getattr(s, name, None)
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    self.camera_grad = True
        # The fields of view (the focal lengths) as the reference differentiates them and the
        # Function takes them where the camera takes a gradient: a tensor as a 0-dim view (its
        # own dtype and device: a 0-dim tensor mixes with any), else the number read above,
        # which is what the config takes (read once: a CUDA tensor's read is a sync).
        self.fields_of_view = (self.tanfovx, self.tanfovy)
        if self.camera_grad:
            self.fields_of_view = tuple(
                t.reshape(()) if isinstance(t, torch.Tensor) else value
                for t, value in ((s.tanfovx, self.tanfovx), (s.tanfovy, self.tanfovy)))
        parts = [_small_tensor("bg", s.bg, 3), _small_tensor("viewmatrix", s.viewmatrix, 16),
                 _small_tensor("projmatrix", s.projmatrix, 16),
                 _small_tensor("campos", s.campos, 3)]
        # The background takes a gradient where it requires one (gsplat's learnable
        # backgrounds): d/d(bg) = sum over pixels of d/d(colour) T_final.
        self.bg_grad = torch.is_grad_enabled() and parts[0].requires_grad
        # One private copy on the Gaussians' device: the backward reads it, and the caller may
        # edit the settings' tensors in place meanwhile; differentiable where a gradient is
        # wanted (the parts that take none detached first).
        keep = [self.bg_grad] + [self.camera_grad] * 3
        if any(keep):
            parts = [p if wanted else p.detach() for p, wanted in zip(parts, keep)]
        self.bg, self.viewmatrix, self.projmatrix, self.campos = pack(parts, device, dtype,
                                                                      any(keep))
        self.prefiltered = bool(s.prefiltered)
        self.debug = bool(s.debug)
        self.antialiasing = bool(s.antialiasing)
        # Settings classes made for the original have no kernel_size: its 0.3.
        self.kernel_size = _require_float("raster_settings.kernel_size",
                                          getattr(s, "kernel_size", KERNEL_SIZE_DEFAULT))
        if self.kernel_size < 0:
            raise ValueError(f"raster_settings.kernel_size: expected a number >= 0 (the "
                             f"low-pass filter's variance in px^2), got {self.kernel_size}")
        # Settings classes without the field: perspective.
        self.orthographic = bool(getattr(s, "orthographic", False))
        self.fisheye = bool(getattr(s, "fisheye", False))
        if self.orthographic and self.fisheye:
            raise ValueError("raster_settings: orthographic and fisheye are two projections; "
                             "set one of them")
        # OpenCV's lens coefficients, the fisheye's or the pinhole's: numbers for the config;
        # where they are a tensor that takes a gradient, also `distortion_leaf`, a flat view of
        # it, as the reference differentiates them and the Function takes them (zeros then
        # stay distorted: their gradient is wanted).
        fisheye_k = getattr(s, "fisheye_distortion", None)
        pinhole_k = getattr(s, "pinhole_distortion", None)
        self.distortion_leaf = None
        for k in (fisheye_k, pinhole_k):
            if self.camera_grad and isinstance(k, torch.Tensor) and k.requires_grad:
                self.distortion_leaf = k.reshape(-1)
        self.fisheye_distortion, self.fisheye_max_angle = check_fisheye_distortion(
            fisheye_k, self.fisheye, keep_zeros=self.distortion_leaf is not None)
        self.pinhole_distortion, self.pinhole_max_u = check_pinhole_distortion(
            pinhole_k, self.fisheye or self.orthographic,
            keep_zeros=self.distortion_leaf is not None)
        self.subpixel_offset, self.sample_margin = check_subpixel_offset(
            getattr(s, "subpixel_offset", None), self.image_height, self.image_width, device,
            dtype)


def fisheye_fold_angle(k) -> float:
    """`_fold_angle` of the four coefficients (remembered for the last few lenses: a fixed
    lens pays for it once)."""
    return _fold_angle(*(float(v) for v in k))


@functools.lru_cache(maxsize=64)
def _fold_angle(k1: float, k2: float, k3: float, k4: float) -> float:
    """The first angle off the axis (radians) where OpenCV's distorted fisheye angle
    theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8) stops growing
    (d theta_d / d theta = 0), past which the image folds back on itself; pi / 2 where it grows
    all the way (nothing in front of the camera lies further off the axis). A scan of
    d theta_d / d theta over theta^2 (4096 steps, one vectorized evaluation), then bisection of
    the first sign change: some tens of microseconds."""

    def slope(w):  # d theta_d / d theta at theta^2 = w (a number or an array)
        return 1.0 + w * (3.0 * k1 + w * (5.0 * k2 + w * (7.0 * k3 + w * 9.0 * k4)))

    grid = np.linspace(0.0, (math.pi / 2) ** 2, 4097)
    folded = np.flatnonzero(slope(grid) <= 0.0)
    if folded.size == 0:
        return math.pi / 2
    below, above = float(grid[folded[0] - 1]), float(grid[folded[0]])
    for _ in range(60):
        mid = 0.5 * (below + above)
        below, above = (mid, above) if slope(mid) > 0.0 else (below, mid)
    return math.sqrt(below)


def _coefficient_numbers(field: str, value, counts, how_many: str, names: str):
    """Settings `field`'s lens coefficients as a tuple of floats: a sequence or a tensor of
    finite numbers, as many as one of `counts` (`how_many` and `names` word the errors)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1).tolist()
    try:
        k = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"raster_settings.{field}: expected {how_many} numbers ({names}), got "
                        f"{_describe(value)}") from None
    if len(k) not in counts or not all(math.isfinite(v) for v in k):
        raise ValueError(f"raster_settings.{field}: expected {how_many} finite numbers "
                         f"({names}), got {k}")
    return k


def check_fisheye_distortion(value, fisheye: bool, keep_zeros: bool = False):
    """Settings `fisheye_distortion`: None, or OpenCV's fisheye coefficients (k1, k2, k3, k4)
    (COLMAP's OPENCV_FISHEYE; a sequence or a tensor of four finite numbers), with
    `fisheye=True` only. Returns (the four as floats, their fold angle `fisheye_fold_angle`), or
    (None, 0.0) for None and, unless `keep_zeros`, for four zeros: the plain equidistant
    fisheye."""
    if value is None:
        return None, 0.0
    if not fisheye:
        raise ValueError("raster_settings.fisheye_distortion: OpenCV's fisheye coefficients "
                         "need fisheye=True")
    k = _coefficient_numbers("fisheye_distortion", value, (4,), "four", "k1, k2, k3, k4")
    if not any(k) and not keep_zeros:
        return None, 0.0
    return k, fisheye_fold_angle(k)


def pinhole_fold_u(k) -> float:
    """The first u = (x^2 + y^2) / z^2 where the radial part of OpenCV's pinhole distortion
    (k1, k2, p1, p2, k3, k4, k5, k6), r L(r^2) with L = n / d, n(u) = 1 + k1 u + k2 u^2 +
    k3 u^3, d(u) = 1 + k4 u + k5 u^2 + k6 u^3, stops growing or meets a pole: the smallest
    positive root of d or of d(r L)/dr's numerator (n + 2 u n') d - 2 u n d', past which the
    image folds back on itself; `NO_FOLD_U` where there is none."""
    k = tuple(float(v) for v in k)
    k = k + (0.0,) * (PINHOLE_COEFFICIENTS - len(k))
    return _pinhole_fold_u(k[0], k[1], k[4], *k[5:8])


NO_FOLD_U = 1e30  # finite: a fast-math build may not compare with infinity
PINHOLE_COEFFICIENTS = 8  # (k1, k2, p1, p2, k3, k4, k5, k6): config.h kLensCoefficients


@functools.lru_cache(maxsize=64)
def _pinhole_fold_u(k1: float, k2: float, k3: float, k4: float, k5: float, k6: float) -> float:
    poly = np.polynomial.polynomial   # coefficients in ascending powers of u
    n, d = np.array([1.0, k1, k2, k3]), np.array([1.0, k4, k5, k6])
    u = np.array([0.0, 1.0])
    slope = poly.polysub(poly.polymul(poly.polyadd(n, 2.0 * poly.polymul(u, poly.polyder(n))),
                                      d),
                         2.0 * poly.polymul(u, poly.polymul(n, poly.polyder(d))))
    roots = []
    for p in (slope, d):
        p = np.trim_zeros(p, "b")
        if len(p) > 1:
            roots.extend(poly.polyroots(p))
    # a root counts where it is real to rounding and positive
    real = [r.real for r in roots if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real > 0.0]
    return float(min(real)) if real else NO_FOLD_U


def check_pinhole_distortion(value, other_projection: bool, keep_zeros: bool = False):
    """Settings `pinhole_distortion`: None, or OpenCV's pinhole coefficients (k1, k2, p1, p2),
    (k1, k2, p1, p2, k3) or (k1, k2, p1, p2, k3, k4, k5, k6) (COLMAP's OPENCV, RADIAL and
    FULL_OPENCV cameras, OpenCV's distCoeffs; a sequence or a tensor of finite numbers) on the
    perspective camera only (`other_projection`: the settings ask for the fisheye or the
    orthographic one). Returns (the eight as floats, those not given 0; their fold
    `pinhole_fold_u`), or (None, 0.0) for None and, unless `keep_zeros`, for zeros: the plain
    pinhole."""
    if value is None:
        return None, 0.0
    if other_projection:
        raise ValueError("raster_settings.pinhole_distortion: OpenCV's pinhole coefficients "
                         "need the perspective camera (fisheye=False, orthographic=False); "
                         "the fisheye's are fisheye_distortion")
    k = _coefficient_numbers("pinhole_distortion", value, (4, 5, 8), "4, 5 or 8",
                             "k1, k2, p1, p2[, k3[, k4, k5, k6]]")
    k = k + (0.0,) * (PINHOLE_COEFFICIENTS - len(k))
    if not any(k) and not keep_zeros:
        return None, 0.0
    return k, pinhole_fold_u(k)


def require_pinhole(caller: str, settings,
                    refused=("orthographic", "fisheye", "pinhole_distortion")) -> None:
    """NotImplementedError for an orthographic, fisheye or distorted camera (settings
    `orthographic=True`, `fisheye=True`, a `pinhole_distortion`: those of `refused`) where
    `caller` takes pixel (x, y)'s ray as the pinhole's, through the camera centre along
    ((x - cx) / fx, (y - cy) / fy, 1)."""
    for field in refused:
        value = getattr(settings, field, None)
        if value is not None if field == "pinhole_distortion" else bool(value):
            shown = "pinhole_distortion" if field == "pinhole_distortion" else f"{field}=True"
            raise NotImplementedError(f"{caller}: its rays are the undistorted pinhole "
                                      f"camera's; not available with {shown}")


def optional_float_tensor(field: str, value) -> Optional[torch.Tensor]:
    """Settings field `field` that is None or a floating-point tensor (TypeError otherwise)."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"raster_settings.{field}: expected a tensor or None, got "
                        f"{_describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"raster_settings.{field}: expected a floating-point tensor, got "
                        f"{value.dtype}")
    return value


def check_subpixel_offset(offset, height: int, width: int, device, dtype):
    """Mip-Splatting's per-pixel sample offsets (its --ray_jitter): (H, W, 2), pixel (x, y)
    sampled at (x + o[y, x, 0], y + o[y, x, 1]). Returns (a private contiguous copy on the
    Gaussians' device and dtype, the largest |offset|: Camera::sample_margin, which the reach
    boxes widen by), or (None, 0.0) for None and for offsets that are all zero, which sample every pixel at its
    own coordinates (the call is then the one without offsets, bit for bit). Reading the
    offsets is a reduction, and on a GPU one host sync. No gradient reaches them."""
    if optional_float_tensor("subpixel_offset", offset) is None:
        return None, 0.0
    if offset.numel() != 2 * height * width:
        raise ValueError(f"raster_settings.subpixel_offset: expected ({height}, {width}, 2) "
                         f"values, got shape {tuple(offset.shape)}")
    # A private copy, row-major whatever the caller's strides (clone alone keeps them).
    copy = offset.detach().to(device=device, dtype=dtype).reshape(height, width, 2).clone(
        memory_format=torch.contiguous_format)
    largest = float(copy.abs().max())  # H, W >= 1: never empty
    if not math.isfinite(largest):
        raise ValueError("raster_settings.subpixel_offset: expected finite offsets")
    if largest == 0.0:
        return None, 0.0
    return copy, largest


def check_gaussians(means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                    cov3D_precomp, dc, settings, join_dc=True, pack_camera=pack_camera):
    """Validate the per-Gaussian inputs and the settings; return normalized tensors.

    Returns (means3D, opacities (P,1), shs (P,M,3) or None, colors_precomp or None, scales,
    rotations, cov3D_precomp, CheckedSettings). `dc` (P,1,3), SH coefficient 0 given apart (the
    2024 API), is concatenated into shs with `join_dc`; without it shs is returned as given, and
    the caller passes dc on itself (the compiled backends read both where they lie).
    """
    means3D = _require_tensor("means3D", means3D)
    _require_shape("means3D", means3D, [(None, 3)], "(P, 3)")
    P = means3D.shape[0]
    device, dtype = means3D.device, means3D.dtype
    if device.type not in SUPPORTED_DTYPES:
        raise ValueError(f"means3D: expected a CPU or CUDA tensor, got device {device}")
    if dtype not in SUPPORTED_DTYPES[device.type]:
        allowed = ", ".join(str(d) for d in SUPPORTED_DTYPES[device.type])
        raise TypeError(f"means3D: expected dtype {allowed} on {device.type}, got {dtype}")

    def same(name, t):
        return _require_like(name, t, device, dtype)

    if means2D is not None:
        same("means2D", means2D)
        # (P, 4): columns 2-3 take the absolute gradient (AbsGS; doc/api.md).
        _require_shape("means2D", means2D, [(P, 3), (P, 2), (P, 4)],
                       f"({P}, 3), ({P}, 2) or ({P}, 4)")

    if opacities is None:
        raise ValueError("opacities: expected a tensor of shape (P, 1) or (P,), got None")
    same("opacities", opacities)
    _require_shape("opacities", opacities, [(P, 1), (P,)], f"({P}, 1) or ({P},)")
    if opacities.dim() == 1:  # (P, 1) as given costs no view
        opacities = opacities.reshape(P, 1)

    if dc is not None:
        same("dc", dc)
        _require_shape("dc", dc, [(P, 1, 3)], f"({P}, 1, 3)")
        if colors_precomp is not None:
            raise ValueError("dc: given together with colors_precomp; dc belongs to the SH "
                             "coefficients, pass either (dc, shs) or colors_precomp")
    if (shs is None and dc is None) == (colors_precomp is None):
        given = "both" if colors_precomp is not None else "neither"
        raise ValueError(f"shs / colors_precomp: expected exactly one of them, got {given}")

    checked = CheckedSettings(settings, device, dtype, pack_camera)
    if colors_precomp is None:
        coefficients = 1 if dc is not None else 0
        if shs is not None:
            same("shs", shs)
            _require_shape("shs", shs, [(P, None, 3)], f"({P}, M, 3)")
            coefficients += shs.shape[1]
        name = "dc and shs" if dc is not None else "shs"
        need = (checked.sh_degree + 1) ** 2
        if coefficients < need:
            raise ValueError(f"{name}: sh_degree {checked.sh_degree} needs M >= {need} "
                             f"coefficients per Gaussian, got M = {coefficients}")
        if dc is not None and join_dc:
            shs = dc if shs is None else torch.cat([dc, shs], dim=1)
    else:
        same("colors_precomp", colors_precomp)
        _require_shape("colors_precomp", colors_precomp, [(P, 3)], f"({P}, 3)")

    have_sr = scales is not None or rotations is not None
    if have_sr and cov3D_precomp is not None:
        raise ValueError("scales/rotations and cov3D_precomp: expected exactly one of "
                         "(scales and rotations) or cov3D_precomp, got both")
    if not have_sr and cov3D_precomp is None:
        raise ValueError("scales/rotations and cov3D_precomp: expected exactly one of "
                         "(scales and rotations) or cov3D_precomp, got neither")
    if have_sr:
        if scales is None or rotations is None:
            missing = "scales" if scales is None else "rotations"
            raise ValueError(f"{missing}: expected a tensor (scales and rotations go together), "
                             f"got None")
        same("scales", scales)
        _require_shape("scales", scales, [(P, 3)], f"({P}, 3)")
        same("rotations", rotations)
        _require_shape("rotations", rotations, [(P, 4)], f"({P}, 4)")
    else:
        same("cov3D_precomp", cov3D_precomp)
        _require_shape("cov3D_precomp", cov3D_precomp, [(P, 6)], f"({P}, 6)")

    return means3D, opacities, shs, colors_precomp, scales, rotations, cov3D_precomp, checked


def check_optional_outputs(features, median_depth, means3D, inverse_depth=False):
    """The arguments of the optional outputs (issue 12) and of the depth channel, after
    check_gaussians.

    features: None or a (P, C) tensor, C >= 1, of the dtype and device of means3D (any strides).
    median_depth, inverse_depth: bools. Returns (features, median_depth, inverse_depth).
    """
    for name, flag in (("median_depth", median_depth), ("inverse_depth", inverse_depth)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {_describe(flag)}")
    if features is not None:
        features = _require_like("features", features, means3D.device, means3D.dtype)
        P = means3D.shape[0]
        if features.dim() != 2 or features.shape[0] != P or features.shape[1] < 1:
            raise ValueError(f"features: expected shape ({P}, C) with C >= 1 channels, got "
                             f"{tuple(features.shape)}")
    return features, median_depth, inverse_depth
