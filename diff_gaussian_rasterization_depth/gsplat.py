"""gsplat's `rasterization()` (nerfstudio-project/gsplat 1.5, the function its `simple_trainer`
and nerfstudio's splatfacto call) on this package's rasterizer: change

    from gsplat import rasterization

into `from diff_gaussian_rasterization_depth.gsplat import rasterization` and nothing else.

    render_colors, render_alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=3, render_mode="RGB+ED", packed=False, absgrad=False)

The call, its shapes (channels last, leading batch dimensions, several cameras, per-camera
colors, N-D colors, SH with `sh_degree`, `backgrounds`, `covars`), its five render modes and the
meta that gsplat's densification strategies read (`means2d` with its `.grad` or `.absgrad` in
pixels, `radii` (..., C, N, 2) or packed (nnz, 2), `gaussian_ids`, `width`, `height`,
`n_cameras`) are gsplat's; it runs wherever the package does, the CPU included, and gradients
reach means, quats, scales, opacities, colors, covars and viewmats.

What is rendered is the 3DGS rasterizer's math (doc/design.md), which gsplat's "classic" mode
follows closely; the differences, each a fact of the original that this package keeps:

- a footprint is the 3-sigma square of the original (gsplat: 3.33 sigma per axis); alpha is
  capped at 0.99 (gsplat: 0.999). Opaque splats differ at their rims and cores, by little;
- Gaussians nearer than 0.2 are culled whatever `near_plane` is (the original's fixed near
  plane); a `near_plane` above it and `far_plane` cull as gsplat's do;
- the projection's Jacobian is clamped to 1.3 times the half field of view about the image
  centre (gsplat: about the principal point); the two differ only for an off-centre principal
  point and splats far outside the image;
- `meta["radii"]` repeats the square's radius on both axes;
- `meta["means2d"]` is the render's screen-space point (3DGS's `screenspace_points`): its
  `.grad` is dL/d(pixel position) as gsplat's, but a loss on its values does not reach `means`;
- `packed` changes only the layout of meta (gsplat's packed layout, the pairs with radii > 0);
  the memory is the same either way;
- `radius_clip` finds the radii by the PyTorch twin (`reference`) before the render, so a
  Gaussian whose radius rounds to the clip itself may fall on the other side of it;
- `tile_size` must be 16; `channel_chunk` and `segmented` change nothing here.

`camera_model="ortho"` renders with the package's orthographic camera (`orthographic=True`:
pixel = K (x, y), the projection's Jacobian diag(fx, fy) at every depth), as gsplat's.
`camera_model="fisheye"` renders with the package's equidistant fisheye (`fisheye=True`: pixel =
K (x/z, y/z) theta / tan(theta), theta the angle off the axis, the projection's Jacobian its own,
unclamped), as gsplat's; a Gaussian at view z 0.2 or less (all at 90 degrees off the axis and
beyond) is culled, as gsplat culls at its near plane. With it, `radial_coeffs` (..., C, 4) are
OpenCV's fisheye coefficients k1-k4 (theta becomes theta (1 + k1 theta^2 + ... + k4 theta^8),
the settings' `fisheye_distortion`) in the EWA projection, where gsplat takes them only with
`with_ut=True`; where they require grad they receive the render's gradient. Likewise
`camera_model="pinhole"` takes `radial_coeffs` (..., C, 6) (OpenCV's rational k1-k6) and
`tangential_coeffs` (..., C, 2) (p1, p2): the settings' `pinhole_distortion` (k1, k2, p1, p2,
k3, k4, k5, k6), in the EWA projection.

Not provided (each raises NotImplementedError naming the argument): `distributed`, camera
models other than "pinhole", "ortho" and "fisheye", `with_ut`, `with_eval3d`, distortion
coefficients but those above (`thin_prism_coeffs`, `ftheta_coeffs`), and rolling shutter.
The meta has no `conics`, compensated `opacities` or tile-intersection tensors (`isect_ids`,
`flatten_ids`, `isect_offsets`, `tiles_per_gauss`): they are gsplat's internals.
"""
from typing import Dict, Optional, Tuple

import torch

from . import GaussianRasterizationSettings
from . import rasterize_gaussians as _rasterize
from ._precision import compute_dtype, full_precision, upcast
from ._validation import CheckedSettings, _require_tensor
from .cameras import camera_centre, projection_from_intrinsics
# The package's tiles, fixed near plane and least opacity a splat is blended with (config.h).
from .reference import ALPHA_MIN as ALPHA_THRESHOLD
from .reference import NEAR_PLANE, TILE_SIZE, _fisheye_terms, _pinhole_terms

__all__ = ["rasterization"]

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
CAMERA_MODELS = ("pinhole", "ortho", "fisheye")
FAR_PLANE = 1e10               # gsplat's default far plane: at or beyond it, nothing is culled


class _SparseGradient(torch.autograd.Function):
    """Identity whose backward hands its input a sparse COO gradient (the rows, along the last
    dimension, that are not zero), as gsplat's `sparse_grad=True` does for means, quats and
    scales. Applied to the caller's tensor itself: nothing downstream takes a sparse gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        rows = grad.ne(0).any(dim=-1).nonzero().T  # (leading dims, rows), in order
        return torch.sparse_coo_tensor(rows, grad[tuple(rows)], grad.shape, is_coalesced=True,
                                       check_invariants=False)


def _unsupported(name: str, why: str):
    raise NotImplementedError(f"rasterization: {name} is not supported here ({why}); see "
                              "doc/api.md, gsplat's API")


def _check_arguments(render_mode, tile_size, distributed, camera_model, with_ut, with_eval3d,
                     distortion, rolling_shutter, viewmats_rs):
    if render_mode not in RENDER_MODES:
        raise ValueError(f"rasterization: render_mode must be one of {RENDER_MODES}, "
                         f"got {render_mode!r}")
    if tile_size != TILE_SIZE:
        raise ValueError(f"rasterization: tile_size must be {TILE_SIZE} (the package's tiles), "
                         f"got {tile_size}")
    if distributed:
        _unsupported("distributed=True", "one process renders every camera")
    if camera_model not in CAMERA_MODELS:
        _unsupported(f"camera_model={camera_model!r}",
                     "pinhole, orthographic and fisheye cameras only")
    if with_ut or with_eval3d:
        _unsupported("with_ut / with_eval3d", "the EWA projection only")
    taken = {"fisheye": ("radial_coeffs",), "pinhole": ("radial_coeffs", "tangential_coeffs")}
    for name, value in distortion.items():
        if value is not None and name not in taken.get(camera_model, ()):
            _unsupported(f"{name} with camera_model={camera_model!r}",
                         "OpenCV's radial and tangential coefficients of the pinhole and "
                         "radial ones of the fisheye only")
    if rolling_shutter is not None and getattr(rolling_shutter, "name", None) != "GLOBAL":
        _unsupported(f"rolling_shutter={rolling_shutter!r}", "global shutter only")
    if viewmats_rs is not None:
        _unsupported("viewmats_rs", "global shutter only")


def _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, covars, sh_degree,
                  backgrounds):
    """gsplat's shape rules, and floating tensors on the means' device (Ks anywhere: it is
    read to the host); returns (batch_dims, N, C, per_camera_colors)."""
    named = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                 viewmats=viewmats, covars=covars, backgrounds=backgrounds, Ks=Ks)
    for name, t in named.items():
        if t is None:
            continue
        _require_tensor(name, t)
        if not t.is_floating_point():
            raise TypeError(f"rasterization: {name} must be floating point, got {t.dtype}")
        if name != "Ks" and t.device != means.device:
            raise ValueError(f"rasterization: {name} must be on the means' device "
                             f"({means.device}), got {t.device}")
    if means.dim() < 2 or means.shape[-1] != 3:
        raise ValueError(f"rasterization: means must be (..., N, 3), got {tuple(means.shape)}")
    batch, N = means.shape[:-2], means.shape[-2]
    if viewmats.dim() != len(batch) + 3 or viewmats.shape[:-3] != batch or \
            viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"rasterization: viewmats must be {(*batch, 'C', 4, 4)}, "
                         f"got {tuple(viewmats.shape)}")
    C = viewmats.shape[-3]
    expected = {"opacities": (opacities, (*batch, N)), "Ks": (Ks, (*batch, C, 3, 3))}
    if covars is None:
        expected.update(quats=(quats, (*batch, N, 4)), scales=(scales, (*batch, N, 3)))
    else:
        expected.update(covars=(covars, (*batch, N, 3, 3)))
    for name, (t, shape) in expected.items():
        if t is None or tuple(t.shape) != shape:
            raise ValueError(f"rasterization: {name} must be {shape}, got "
                             f"{None if t is None else tuple(t.shape)}")
    per_gaussian = len(batch) + (2 if sh_degree is None else 3)
    if colors.dim() == per_gaussian and colors.shape[:len(batch) + 1] == (*batch, N):
        per_camera = False
    elif colors.dim() == per_gaussian + 1 and colors.shape[:len(batch) + 2] == (*batch, C, N):
        per_camera = True
    else:
        want = "(..., [C,] N, D)" if sh_degree is None else \
            f"(..., [C,] N, K, 3) SH coefficients with sh_degree={sh_degree}"
        raise ValueError(f"rasterization: colors must be {want}, got {tuple(colors.shape)}")
    if sh_degree is not None:
        if colors.shape[-1] != 3 or (sh_degree + 1) ** 2 > colors.shape[-2]:
            raise ValueError(f"rasterization: colors must hold (sh_degree + 1)^2 = "
                             f"{(sh_degree + 1) ** 2} SH coefficients of 3 channels, got "
                             f"{tuple(colors.shape)}")
    channels = 3 if sh_degree is not None else colors.shape[-1]
    if backgrounds is not None and tuple(backgrounds.shape) != (*batch, C, channels):
        raise ValueError(f"rasterization: backgrounds must be {(*batch, C, channels)}, got "
                         f"{tuple(backgrounds.shape)}")
    return batch, N, C, per_camera


def _lens_coefficients(radial_coeffs, tangential_coeffs, camera_model, batch, C):
    """Each camera's lens coefficients, in the order the settings take them: the fisheye's
    (k1, k2, k3, k4) from radial_coeffs (..., C, 4), the pinhole's (k1, k2, p1, p2, k3, k4, k5,
    k6) from radial_coeffs (..., C, 6) and tangential_coeffs (..., C, 2). A tuple of numbers
    (None where all are 0), or, where either tensor requires grad, a tensor made of their
    entries, which passes the render's gradient back to them."""
    count = C
    for size in batch:
        count *= size
    if radial_coeffs is None and tangential_coeffs is None:
        return [None] * count
    fisheye = camera_model == "fisheye"
    shapes = {"radial_coeffs": (radial_coeffs, 4 if fisheye else 6),
              "tangential_coeffs": (tangential_coeffs, 2)}
    rows = {}
    for name, (value, width) in shapes.items():
        if value is None:
            continue
        _require_tensor(name, value)
        if tuple(value.shape) != (*batch, C, width):
            meaning = ("OpenCV's fisheye k1-k4" if fisheye else
                       "OpenCV's k1-k6" if name == "radial_coeffs" else "OpenCV's p1, p2")
            raise ValueError(f"rasterization: {name} must be {(*batch, C, width)} with "
                             f"camera_model={camera_model!r} ({meaning}), got "
                             f"{tuple(value.shape)}")
        rows[name] = value.reshape(count, width)
    radial, tangential = rows.get("radial_coeffs"), rows.get("tangential_coeffs")
    if fisheye:
        ordered = radial
    else:  # OpenCV's order, (k1, k2, p1, p2, k3, k4, k5, k6)
        like = radial if radial is not None else tangential
        r = radial if radial is not None else like.new_zeros(count, 6)
        t = tangential if tangential is not None else like.new_zeros(count, 2)
        ordered = torch.cat([r[:, :2], t, r[:, 2:]], 1)
    if torch.is_grad_enabled() and ordered.requires_grad:
        return list(ordered.unbind(0))   # views that take the gradient
    return [tuple(k) if any(k) else None for k in ordered.detach().tolist()]


def _settings(viewmat, K, width, height, bg, sh_degree, eps2d, antialiased,
              camera_model="pinhole", distortion=None):
    """The rasterizer's settings for gsplat's world-to-camera `viewmat` (4, 4) and intrinsics K
    (fx, fy, cx, cy: numbers, or 0-dim tensors where Ks takes a gradient); viewmatrix,
    projmatrix and campos stay differentiable in viewmat, the fields of view and projmatrix in
    K. gsplat's pixel (i, j) is centred at (i + 0.5, j + 0.5), the rasterizer's at (i, j): its
    principal point is gsplat's less half a pixel. With "ortho", tanfovx and tanfovy are the
    view's half-extents, W / (2 fx) and H / (2 fy); with "fisheye", the package's fisheye takes
    its principal point from the pinhole projmatrix, and `distortion` (k1-k4 or None) as its
    fisheye_distortion; with "pinhole", `distortion` (k1, k2, p1, p2, k3, k4, k5, k6 or None)
    is its pinhole_distortion."""
    fx, fy, cx, cy = K
    ortho = camera_model == "ortho"
    tanfovx, tanfovy, P = projection_from_intrinsics(fx, fy, cx - 0.5, cy - 0.5, width, height,
                                                     orthographic=ortho)
    P = P.to(dtype=viewmat.dtype, device=viewmat.device)
    # gsplat reads the rotation and translation rows alone: its last row (0, 0, 0, 1) takes no
    # gradient (the orthographic projection's shift would send it one through w).
    if viewmat.requires_grad:
        viewmat = torch.cat([viewmat[:3], viewmat[3:].detach()])
    return GaussianRasterizationSettings(
        image_height=int(height), image_width=int(width), tanfovx=tanfovx, tanfovy=tanfovy,
        bg=bg, scale_modifier=1.0, viewmatrix=viewmat.transpose(0, 1),
        projmatrix=viewmat.transpose(0, 1) @ P.transpose(0, 1), sh_degree=int(sh_degree or 0),
        campos=camera_centre(viewmat), prefiltered=False, debug=False,
        antialiasing=antialiased, kernel_size=float(eps2d), orthographic=ortho,
        fisheye=camera_model == "fisheye",
        fisheye_distortion=distortion if camera_model == "fisheye" else None,
        pinhole_distortion=distortion if camera_model == "pinhole" else None)


def _project(means, viewmat, K, camera_model="pinhole", distortion=None):
    """(N, 2) gsplat's projected means K (x/z, y/z) (K: (fx, fy, cx, cy), a tensor in the means'
    dtype and on their device; "ortho": K (x, y); "fisheye":
    K (x/z, y/z) theta_d / tan(theta), theta the angle off the axis and theta_d it distorted by
    `distortion`, k1-k4 or None; a distorted "pinhole": K of OpenCV's distorted (x/z, y/z)),
    values only, and (N,) the view-space z, differentiable in means and viewmat (gsplat's
    meta["depths"])."""
    view = torch.addmm(viewmat[:3, 3], means, viewmat[:3, :3].transpose(0, 1))
    with torch.no_grad():
        if camera_model == "ortho":
            xy = view[:, :2]
        else:
            xy = view[:, :2] / view[:, 2:]
            if camera_model == "fisheye":
                xy = xy * _fisheye_terms(xy[:, 0], xy[:, 1], distortion)[0][:, None]
            elif distortion is not None:
                radial, _, _, tau_x, tau_y = _pinhole_terms(xy[:, 0], xy[:, 1], distortion)[:5]
                xy = xy * radial[:, None] + torch.stack([tau_x, tau_y], 1)
        pixels = torch.addcmul(K[2:], xy, K[:2])
    return pixels, view[:, 2]


def _clip_by_radius(radius_clip, means, opacities, scales, quats, cov6, settings):
    """(N,) bool: the radius the PyTorch twin finds is above radius_clip (from the checked
    settings: flat matrices, and a distorted lens's fold)."""
    from .reference import _preprocess
    with torch.no_grad():
        checked = CheckedSettings(settings, means.device, means.dtype)
        g = _preprocess(means, opacities[:, None], None, means.new_zeros(means.shape), scales,
                        quats, cov6, checked)
    return g["visible"] & (g["radius"] > radius_clip)


def _color_inputs(color, sh_degree, wants_rgb):
    """(shs, colors_precomp, features) for one camera's colors: SH coefficients, 3 channels
    (blended with the background by the render), or D channels (the feature map). Where only
    depth is rendered, zero colours (no SH evaluated)."""
    if not wants_rgb:
        return None, color.new_zeros(color.shape[0], 3), None
    if sh_degree is not None:
        return color, None, None
    if color.shape[-1] == 3:
        return None, color, None
    return None, color.new_zeros(color.shape[0], 3), color


@full_precision  # the projections and settings below in the inputs' precision, autocast or not
def rasterization(means: torch.Tensor, quats: Optional[torch.Tensor],
                  scales: Optional[torch.Tensor], opacities: torch.Tensor, colors: torch.Tensor,
                  viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                  near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
                  eps2d: float = 0.3, sh_degree: Optional[int] = None, packed: bool = True,
                  tile_size: int = 16, backgrounds: Optional[torch.Tensor] = None,
                  render_mode: str = "RGB", sparse_grad: bool = False, absgrad: bool = False,
                  rasterize_mode: str = "classic", channel_chunk: int = 32,
                  distributed: bool = False, camera_model: str = "pinhole",
                  segmented: bool = False, covars: Optional[torch.Tensor] = None,
                  with_ut: bool = False, with_eval3d: bool = False,
                  radial_coeffs: Optional[torch.Tensor] = None,
                  tangential_coeffs: Optional[torch.Tensor] = None,
                  thin_prism_coeffs: Optional[torch.Tensor] = None, ftheta_coeffs=None,
                  rolling_shutter=None, viewmats_rs: Optional[torch.Tensor] = None,
                  ) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
    """gsplat 1.5's `rasterization`: returns (render_colors (..., C, H, W, X), render_alphas
    (..., C, H, W, 1), meta). X is D for "RGB", 1 for "D" (sum w z) and "ED" (sum w z / sum
    w), D + 1 for "RGB+D" and "RGB+ED" (the depth last). See the module's docstring for what
    differs from gsplat."""
    _check_arguments(render_mode, tile_size, distributed, camera_model, with_ut, with_eval3d,
                     dict(radial_coeffs=radial_coeffs, tangential_coeffs=tangential_coeffs,
                          thin_prism_coeffs=thin_prism_coeffs, ftheta_coeffs=ftheta_coeffs),
                     rolling_shutter, viewmats_rs)
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterization: rasterize_mode must be 'classic' or 'antialiased', "
                         f"got {rasterize_mode!r}")
    batch, N, C, per_camera = _check_shapes(means, quats, scales, opacities, colors, viewmats,
                                            Ks, covars, sh_degree, backgrounds)
    # float16 / bfloat16 Gaussians (an autocast region's colours) are computed in float32, as
    # the rasterizer computes them; their gradients return in their own dtype.
    dtype = compute_dtype(means)
    means, quats, scales, opacities, colors, covars, backgrounds = (
        upcast(t, dtype) for t in (means, quats, scales, opacities, colors, covars, backgrounds))
    B = 1
    for size in batch:  # math.prod is Python 3.8's
        B *= size
    wants_rgb = render_mode.startswith("RGB")
    depth_mode = None if render_mode == "RGB" else render_mode.rsplit("+", 1)[-1]

    # Everything as (B, ...), the Gaussians of batch b rendered by its C cameras.
    if sparse_grad and packed:
        means = _SparseGradient.apply(means)
        if covars is None:
            quats, scales = _SparseGradient.apply(quats), _SparseGradient.apply(scales)
    means = means.reshape(B, N, 3)
    if covars is None:
        # gsplat's quaternions need not be unit; the rasterizer uses them as given.
        # (F.normalize's arithmetic without its Python wrappers, torch.norm's checks: 10 us)
        quats = quats.reshape(B, N, 4)
        quats = quats / torch.linalg.vector_norm(quats, dim=-1, keepdim=True).clamp_min(1e-12)
        scales = scales.reshape(B, N, 3)
        cov6 = None
    else:
        rows, cols = (0, 0, 0, 1, 1, 2), (0, 1, 2, 1, 2, 2)  # the upper triangle, row by row
        cov6 = covars.reshape(B, N, 3, 3)[:, :, rows, cols]
    opacities = opacities.reshape(B, N)
    colors = colors.reshape(B, *colors.shape[len(batch):])
    if not per_camera:
        colors = colors.unsqueeze(1)  # (B, 1, N, ...): every camera reads camera 0's
    # gsplat takes float32 cameras with float64 Gaussians and the other way round.
    viewmats = viewmats.reshape(B, C, 4, 4).to(means.dtype)
    # (fx, fy, cx, cy) of every camera, read once (one host sync on a GPU); where Ks takes a
    # gradient (gsplat's own does not), the settings are made of its entries themselves.
    intrinsics = [[k[0], k[4], k[2], k[5]] for k in Ks.detach().reshape(B * C, 9).tolist()]
    differentiable_K = torch.is_grad_enabled() and Ks.requires_grad
    focal_centre = Ks.reshape(B * C, 9)[:, [0, 4, 2, 5]] if differentiable_K else None
    # The same as one tensor in the Gaussians' dtype, for the projected means (one copy for
    # every camera instead of two a camera).
    focal_centre_values = means.new_tensor(intrinsics)
    distortions = _lens_coefficients(radial_coeffs, tangential_coeffs, camera_model, batch, C)
    if backgrounds is not None:
        backgrounds = backgrounds.reshape(B, C, -1).to(means.dtype)

    inputs = [means, quats, scales, opacities, colors, viewmats, cov6]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in inputs)
    # The screen-space points (leaves, shaped as gsplat's): their values are gsplat's means2d,
    # their gradient the render's, in pixels.
    projected = [_project(means[b], viewmats[b, c], focal_centre_values[b * C + c], camera_model,
                          distortions[b * C + c])
                 for b in range(B) for c in range(C)]
    means2d = projected[0][0][None] if B * C == 1 else torch.stack([p for p, _ in projected])
    means2d = means2d.reshape(*batch, C, N, 2).requires_grad_(needs_grad)
    depths = [z for _, z in projected]
    # The planes cull by opacity 0 (and radius 0 in meta), only where they cull more than the
    # package's own near plane does; the default call pays nothing for them.
    planes_cull = near_plane > NEAR_PLANE or far_plane < FAR_PLANE
    abs_carrier = torch.zeros_like(means2d, requires_grad=True) if absgrad and needs_grad \
        else None
    to_ndc = means2d.new_tensor([2.0 / width, 2.0 / height])
    # dL/d(ndc) is what the rasterizer gives its means2D; ndc = pixels * 2 / size.
    screen_points = means2d.reshape(B * C, N, 2) * to_ndc
    screen_abs = abs_carrier.reshape(B * C, N, 2) * to_ndc if abs_carrier is not None \
        else means2d.new_zeros(N, 1).expand(B * C, N, 1)

    images, alphas, radii = [], [], []
    for b in range(B):
        faint = opacities[b].detach() < ALPHA_THRESHOLD  # never blended: radius 0, as gsplat's
        for c in range(C):
            image = b * C + c
            K, z = intrinsics[image], depths[image].detach()
            color = colors[b, c if per_camera else 0]
            shs, colors_precomp, features = _color_inputs(color, sh_degree, wants_rgb)
            bg = backgrounds[b, c] if backgrounds is not None and wants_rgb else None
            settings = _settings(viewmats[b, c],
                                 focal_centre[image].unbind() if differentiable_K else K,
                                 width, height,
                                 bg if bg is not None and features is None
                                 else means.new_zeros(3), sh_degree, eps2d,
                                 rasterize_mode == "antialiased", camera_model,
                                 distortions[image])
            keep = (z >= near_plane) & (z <= far_plane) if planes_cull else None
            if radius_clip > 0:
                clipped = _clip_by_radius(
                    radius_clip, means[b], opacities[b], None if cov6 is not None else scales[b],
                    None if cov6 is not None else quats[b],
                    None if cov6 is None else cov6[b], settings)
                keep = clipped if keep is None else keep & clipped
            opacity = opacities[b]
            if keep is not None:
                opacity = torch.where(keep, opacity, torch.zeros_like(opacity))
            screen = torch.cat([screen_points[image], screen_abs[image]], dim=1)
            out = _rasterize(means[b], screen, shs, colors_precomp,
                             opacity[:, None], None if cov6 is not None else scales[b],
                             None if cov6 is not None else quats[b],
                             None if cov6 is None else cov6[b], settings, features=features)
            rendered, r, depth, weight = out[:4]
            channels = []  # (H, W, k) views, joined channels last by one copy
            if features is not None:
                rendered = out[4]
                if bg is not None:  # the feature map has no background of its own
                    rendered = rendered + (1.0 - weight)[None] * bg[:, None, None]
            if wants_rgb:
                channels.append(rendered.permute(1, 2, 0))
            if depth_mode == "D":
                channels.append((depth * weight)[..., None])
            elif depth_mode == "ED":
                channels.append(depth[..., None])
            images.append(torch.cat(channels, dim=-1) if len(channels) > 1 else channels[0])
            alphas.append(weight)
            culled = faint if keep is None else faint | ~keep
            radii.append(r.masked_fill(culled, 0))

    one = len(images) == 1
    render_colors = (images[0][None] if one else torch.stack(images)).contiguous()
    render_colors = render_colors.reshape(*batch, C, height, width, -1)
    render_alphas = (alphas[0][None] if one else torch.stack(alphas))
    render_alphas = render_alphas.reshape(*batch, C, height, width, 1)
    radii = (radii[0][None] if one else torch.stack(radii)).reshape(*batch, C, N, 1)
    radii = radii.expand(*batch, C, N, 2).contiguous()
    depths = (depths[0][None] if one else torch.stack(depths)).reshape(*batch, C, N)
    meta = {"radii": radii, "means2d": means2d, "depths": depths,
            "batch_ids": None, "camera_ids": None, "gaussian_ids": None,
            "width": width, "height": height, "tile_size": TILE_SIZE,
            "tile_width": (width + TILE_SIZE - 1) // TILE_SIZE,
            "tile_height": (height + TILE_SIZE - 1) // TILE_SIZE,
            "n_batches": B, "n_cameras": C}
    if packed:
        _pack(meta, B, C, N)
    if needs_grad:
        _route_gradients(meta, means2d, abs_carrier)
    return render_colors, render_alphas, meta


def _pack(meta: Dict, B: int, C: int, N: int) -> None:
    """gsplat's packed meta: the (batch, camera, Gaussian) triples with radii > 0, in that
    order; means2d becomes a leaf of its own, which _route_gradients fills."""
    radii = meta["radii"].reshape(B, C, N, 2)
    batch_ids, camera_ids, gaussian_ids = (radii[..., 0] > 0).nonzero(as_tuple=True)
    index = (batch_ids, camera_ids, gaussian_ids)
    full = meta["means2d"]
    meta.update(radii=radii[index],
                means2d=full.detach().reshape(B, C, N, 2)[index].requires_grad_(
                    full.requires_grad),
                depths=meta["depths"].reshape(B, C, N)[index],
                batch_ids=batch_ids, camera_ids=camera_ids, gaussian_ids=gaussian_ids)


def _route_gradients(meta: Dict, means2d: torch.Tensor,
                     abs_carrier: Optional[torch.Tensor]) -> None:
    """Where the render's screen-space gradients land: on means2d itself (unpacked), or
    gathered into the packed leaf; the absolute gradient as `.absgrad`, as gsplat's."""
    target = meta["means2d"]
    if target is means2d:
        if abs_carrier is not None:
            abs_carrier.register_hook(lambda g: setattr(means2d, "absgrad", g))
        return
    B, C, N = meta["n_batches"], meta["n_cameras"], means2d.shape[-2]
    index = (meta["batch_ids"], meta["camera_ids"], meta["gaussian_ids"])

    def gather(grad):
        part = grad.reshape(B, C, N, 2)[index]
        target.grad = part if target.grad is None else target.grad + part

    means2d.register_hook(gather)
    if abs_carrier is not None:
        abs_carrier.register_hook(
            lambda g: setattr(target, "absgrad", g.reshape(B, C, N, 2)[index]))
