"""Depth losses against a monocular depth prior (sparse-view 3DGS): the rendered depth and weight
maps compared with a prior known only up to an unknown scale and shift.

A monocular depth network (Depth Anything, MiDaS, DPT) gives an inverse-depth-like map (larger is
nearer) that is right up to an affine map and wrong in smooth, low-frequency ways. Each loss here
compares it with the rendered inverse depth x = 1 / depth over the pixels the render covers
(weight above `min_weight`), in a way its unknown scale and shift cannot disturb:

- `pearson_depth_loss`: 1 - the Pearson correlation over the image (FSGS, SparseGS);
- `patch_pearson_depth_loss`: the same per square patch, averaged: a prior that is right only
  locally (its own scale and shift in each region) still scores 0 (DNGaussian's local depth
  normalization, FSGS's patches);
- `ranking_depth_loss`: the order of random pixel pairs (SparseNeRF, SparseGS): only the prior's
  ordering counts, so any increasing distortion of it is harmless;
- `scale_shift_invariant_depth_loss`: MiDaS's: L1 between the two, each shifted by its median
  and scaled by its mean absolute deviation.

    color, radii, depth, weight = rasterizer(...)
    loss = photometric + 0.5 * pearson_depth_loss(depth, weight, prior)

Shapes: (H, W) or (1, H, W) for each map. float16 / bfloat16 maps (a depth network run under
autocast) are computed in float32. No pixel left out (low weight, `mask` False, a non-finite
prior, a non-positive depth) reaches the loss or takes a gradient; with too few pixels left the
loss is 0, with a zero gradient. doc/depth_and_weight.md, section 3, says which to use.
"""
from typing import Optional, Tuple

import torch

from ._precision import compute_dtype, upcast
from ._validation import _require_int

__all__ = ["pearson_depth_loss", "patch_pearson_depth_loss", "ranking_depth_loss",
           "ranking_pairs", "scale_shift_invariant_depth_loss"]


class _Maps:
    """The rendered inverse depth x and the prior y as (H, W) maps in the compute dtype, the
    valid pixels (bool, (H, W)), and their count. x is 1 at left-out pixels (a value that cannot
    be inf or NaN, so that no gradient there is NaN either); every loss masks them out."""

    def __init__(self, depth, weight, prior, min_weight, inverse_depth, mask):
        for name, t in (("depth", depth), ("weight", weight), ("prior", prior), ("mask", mask)):
            if t is None and name == "mask":
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
        if depth.dim() == 3 and depth.shape[0] == 1:
            depth = depth[0]
        if depth.dim() != 2:
            raise ValueError(f"depth: expected shape (H, W) or (1, H, W), got "
                             f"{tuple(depth.shape)}")
        for name, t in (("weight", weight), ("prior", prior), ("mask", mask)):
            if t is not None and t.numel() != depth.numel():
                raise ValueError(f"{name}: expected {depth.numel()} values, one per pixel of "
                                 f"the depth map {tuple(depth.shape)}, got shape "
                                 f"{tuple(t.shape)}")
        dtype = compute_dtype(depth)
        depth = upcast(depth, dtype)
        shape = depth.shape
        prior = prior.reshape(shape).to(device=depth.device, dtype=dtype)
        valid = (weight.detach().reshape(shape) > min_weight) & torch.isfinite(prior)
        if mask is not None:
            valid &= mask.reshape(shape).to(device=depth.device, dtype=torch.bool)
        d = depth.detach()
        valid &= torch.isfinite(d) if inverse_depth else (torch.isfinite(d) & (d > 0))
        safe = torch.where(valid, depth, torch.ones_like(depth))
        self.x = safe if inverse_depth else 1.0 / safe
        self.y = torch.where(valid, prior, torch.zeros_like(self.x))
        self.valid = valid
        self.valid_sum = valid.sum()
        self.count = int(self.valid_sum)

    def zero(self) -> torch.Tensor:
        """0, with a zero gradient, still connected to the depth map (through x, which is finite
        everywhere: a depth of inf at a left-out pixel would make depth * 0 NaN)."""
        return (self.x * 0).sum()


def _pearson(x, y, valid, count):
    """(1 - correlation) over the valid entries along the last dimension, and whether each row
    counts (neither spread zero: a flat map has no correlation, and its row's value is only a
    placeholder). No epsilon in the denominator: an absolute one would bias the correlation of
    a nearly flat patch, where the spreads are small, and so break the scale invariance; the
    clamp only keeps the flat rows finite."""
    w = valid.to(x.dtype)
    n = count.to(x.dtype).clamp_min(1)
    xc = (x - (x * w).sum(-1, keepdim=True) / n[..., None]) * w
    yc = (y - (y * w).sum(-1, keepdim=True) / n[..., None]) * w
    sxx, syy = (xc * xc).sum(-1), (yc * yc).sum(-1)
    tiny = torch.finfo(x.dtype).tiny
    corr = (xc * yc).sum(-1) * torch.rsqrt(sxx.clamp_min(tiny)) * torch.rsqrt(syy.clamp_min(tiny))
    counts = (sxx.detach() > 0) & (syy.detach() > 0)
    return 1 - corr, counts


def pearson_depth_loss(depth: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor,
                       min_weight: float = 0.5, inverse_depth: bool = False,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """1 - the Pearson correlation of the rendered inverse depth and the prior over the valid
    pixels, in [0, 2]: 0 where they are affine alike (a positive scale, any shift), whatever the
    prior's own scale and shift. `inverse_depth`: `depth` is a mean inverse depth already (a
    render with `inverse_depth=True`). 0 with fewer than 2 valid pixels, or where either map is
    flat over them (no correlation to ask for)."""
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    if maps.count < 2:
        return maps.zero()
    loss, counts = _pearson(maps.x.reshape(-1), maps.y.reshape(-1), maps.valid.reshape(-1),
                            maps.valid_sum)
    return loss if bool(counts) else maps.zero()


def _patches(t: torch.Tensor, size: int, offset: Tuple[int, int], fill) -> torch.Tensor:
    """(patches, size * size) of an (H, W) map cut on a grid whose lines lie at rows
    offset[0] + k size and columns offset[1] + k size, the cells the image edges cut padded
    with `fill`."""
    H, W = t.shape
    top, left = offset[0] % size, offset[1] % size
    top, left = (top and size - top), (left and size - left)  # padding before row/column 0
    rows, cols = -(-(H + top) // size), -(-(W + left) // size)
    padded = torch.nn.functional.pad(t[None, None].to(torch.float64 if t.dtype == torch.bool
                                                      else t.dtype),
                                     (left, cols * size - W - left, top, rows * size - H - top),
                                     value=fill)[0, 0]
    if t.dtype == torch.bool:
        padded = padded.bool()
    return padded.reshape(rows, size, cols, size).permute(0, 2, 1, 3).reshape(-1, size * size)


def patch_pearson_depth_loss(depth: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor,
                             patch_size: int = 32, min_weight: float = 0.5,
                             inverse_depth: bool = False, mask: Optional[torch.Tensor] = None,
                             min_pixels: Optional[int] = None,
                             offset: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The mean over square patches of 1 - the Pearson correlation within each: 0 where the
    rendered inverse depth is affine in the prior patch by patch (a positive scale and a shift
    of each patch's own), so a prior distorted smoothly across the image costs nothing while its
    local shape is still asked for. Patches of `patch_size` pixels on a grid whose lines lie at
    rows offset[0] + k patch_size and columns offset[1] + k patch_size (a random offset per
    step varies the cuts); a patch counts with at least `min_pixels` valid pixels (default a
    quarter of it, at least 2) and neither map flat over them. 0 where none counts."""
    patch_size = _require_int("patch_size", patch_size, 2)
    if not isinstance(offset, (tuple, list)) or len(offset) != 2:
        raise ValueError(f"offset: expected a pair of ints, got {offset!r}")
    offset = tuple(_require_int("offset", o, -2 ** 62) for o in offset)
    need = max(2, patch_size * patch_size // 4) if min_pixels is None else max(2, min_pixels)
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    if maps.count < 2:
        return maps.zero()
    valid = _patches(maps.valid, patch_size, offset, False)
    count = valid.sum(-1)
    loss, counts = _pearson(_patches(maps.x, patch_size, offset, 0.0),
                            _patches(maps.y, patch_size, offset, 0.0), valid, count)
    counts &= count >= need
    if not bool(counts.any()):
        return maps.zero()
    return loss[counts].mean()


def ranking_pairs(valid: torch.Tensor, pairs: int = 4096, radius: Optional[int] = None,
                  generator: Optional[torch.Generator] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(first, second): flat indices (row * W + column, int64, on valid's device) of up to
    `pairs` pixel pairs of the (H, W) bool map `valid`: the first pixel drawn uniformly among
    the valid ones, the second likewise (radius None) or at a uniform offset in
    [-radius, radius]^2 from the first; pairs whose second pixel is off the image, not valid, or
    the first itself are dropped. Drawn on the CPU with `generator` (torch's default where None),
    so a seeded generator gives the same pairs on any device."""
    if valid.dim() != 2 or valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a bool (H, W) map, got {valid.dtype} of shape "
                         f"{tuple(valid.shape)}")
    pairs = _require_int("pairs", pairs, 1)
    radius = None if radius is None else _require_int("radius", radius, 1)
    H, W = valid.shape
    flat = valid.reshape(-1).cpu()
    candidates = flat.nonzero()[:, 0]
    empty = torch.zeros(0, dtype=torch.int64, device=valid.device)
    if candidates.numel() < 2:
        return empty, empty
    first = candidates[torch.randint(candidates.numel(), (pairs,), generator=generator)]
    if radius is None:
        second = candidates[torch.randint(candidates.numel(), (pairs,), generator=generator)]
        keep = second != first
    else:
        step = torch.randint(-radius, radius + 1, (2, pairs), generator=generator)
        row, col = first // W + step[0], first % W + step[1]
        inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
        second = torch.where(inside, row * W + col, first)
        keep = inside & (second != first) & flat[second]
    return first[keep].to(valid.device), second[keep].to(valid.device)


def ranking_depth_loss(depth: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor,
                       pairs: int = 4096, radius: Optional[int] = None, margin: float = 1e-4,
                       min_weight: float = 0.5, inverse_depth: bool = False,
                       mask: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The depth ranking loss: for random pairs of valid pixels (`ranking_pairs`; `radius` keeps
    them neighbours), the mean of relu(margin - s (x_i - x_j)), s the sign of the prior's
    difference (pairs the prior ties are left out) and x the rendered inverse depth over its
    mean (detached), so that `margin` is relative. Only the prior's order counts: any increasing
    distortion of it changes nothing. 0 with no pair."""
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    first, second = ranking_pairs(maps.valid, pairs, radius, generator)
    if first.numel() == 0:
        return maps.zero()
    x = maps.x.reshape(-1)
    x = x / (x.detach() * maps.valid.reshape(-1)).sum() * maps.count
    y = maps.y.reshape(-1)
    sign = torch.sign(y[first] - y[second])
    ordered = sign != 0
    if not bool(ordered.any()):
        return maps.zero()
    terms = torch.relu(margin - sign * (x[first] - x[second]))
    return terms[ordered].mean()


def _robust_normalized(v: torch.Tensor):
    """(v - median) / (mean |v - median|) and that spread: MiDaS's shift and scale estimates."""
    centre = v.median()
    spread = (v - centre).abs().mean()
    return (v - centre) / spread.clamp_min(torch.finfo(v.dtype).tiny), spread


def scale_shift_invariant_depth_loss(depth: torch.Tensor, weight: torch.Tensor,
                                     prior: torch.Tensor, min_weight: float = 0.5,
                                     inverse_depth: bool = False,
                                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """MiDaS's scale- and shift-invariant loss (Ranftl et al. 2020, with its robust
    estimates): the rendered inverse depth x and the prior each shifted by its median and
    scaled by its mean absolute deviation from it, over the valid pixels, then the mean L1
    distance of the two (gradients through x's median and deviation too). Invariant to a
    positive scale and any shift of either, 0 where x is such a map of the prior, unitless.
    Unlike a least-squares fit of one to the other, it keeps the sign: an inverted render
    (near drawn far) costs the most, where a fitted negative scale would make it free. 1 where
    x is flat (with a zero gradient); 0 with fewer than 2 valid pixels or a flat prior."""
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    if maps.count < 2:
        return maps.zero()
    y, y_spread = _robust_normalized(maps.y[maps.valid].detach())
    if not bool(y_spread > 0):
        return maps.zero()
    x, x_spread = _robust_normalized(maps.x[maps.valid])
    if not bool(x_spread.detach() > 0):
        return maps.zero() + 1
    return (x - y).abs().mean()
