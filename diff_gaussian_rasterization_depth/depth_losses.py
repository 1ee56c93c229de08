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
  and scaled by its mean absolute deviation; with `patch_size`, per patch.

    color, radii, depth, weight = rasterizer(...)
    loss = photometric + 0.5 * pearson_depth_loss(depth, weight, prior)

Shapes: (H, W) for one image, (B, H, W) or (B, 1, H, W) for a batch of B (each of weight,
prior and mask with as many values, in any of these shapes): each image is its own comparison
(its own prior scale and shift; a Pearson over a flattened batch would ask one affine map of all
the views), and the loss is the mean over the images that count. float16 / bfloat16 maps (a
depth network run under autocast) are computed in float32. No pixel left out (low weight,
`mask` False, a non-finite prior, a non-positive depth) reaches the loss or takes a gradient;
with too few pixels left the loss is 0, with a zero gradient. No loss waits for the device:
which pixels, patches and pairs count is decided by masks on the device, never by a count read
back to the host (a training step on a GPU keeps its queue full; tests/test_depth_losses.py runs
each on the meta device, where any such read raises). doc/depth_and_weight.md, section 3, says
which to use.
"""
from typing import Optional, Tuple

import torch

from ._precision import compute_dtype, upcast
from ._validation import _require_int

__all__ = ["pearson_depth_loss", "patch_pearson_depth_loss", "ranking_depth_loss",
           "ranking_pairs", "scale_shift_invariant_depth_loss"]


class _Maps:
    """The rendered inverse depth x and the prior y as (B, H, W) maps in the compute dtype, the
    valid pixels (bool, (B, H, W)), and their count per image ((B,), on the device: reading it
    on the host would wait for the device). x is 1 at left-out pixels (a value that cannot be
    inf or NaN, so that no gradient there is NaN either); every loss masks them out."""

    def __init__(self, depth, weight, prior, min_weight, inverse_depth, mask):
        for name, t in (("depth", depth), ("weight", weight), ("prior", prior), ("mask", mask)):
            if t is None and name == "mask":
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
        shape = _batch_shape(depth)
        for name, t in (("weight", weight), ("prior", prior), ("mask", mask)):
            if t is not None and t.numel() != depth.numel():
                raise ValueError(f"{name}: expected {depth.numel()} values, one per pixel of "
                                 f"the depth map {tuple(depth.shape)}, got shape "
                                 f"{tuple(t.shape)}")
        dtype = compute_dtype(depth)
        depth = upcast(depth, dtype).reshape(shape)
        prior = prior.reshape(shape).to(device=depth.device, dtype=dtype)
        valid = ((weight.detach().reshape(shape).to(depth.device) > min_weight)
                 & torch.isfinite(prior))
        if mask is not None:
            valid &= mask.reshape(shape).to(device=depth.device, dtype=torch.bool)
        d = depth.detach()
        valid &= torch.isfinite(d) if inverse_depth else (torch.isfinite(d) & (d > 0))
        safe = torch.where(valid, depth, torch.ones_like(depth))
        self.x = safe if inverse_depth else 1.0 / safe
        self.y = torch.where(valid, prior, torch.zeros_like(self.x))
        self.valid = valid
        self.count = valid.sum((1, 2))

    def rows(self):
        """(x, y, valid), each (B, H * W): an image a row."""
        B = self.x.shape[0]
        return self.x.reshape(B, -1), self.y.reshape(B, -1), self.valid.reshape(B, -1)


def _batch_shape(depth: torch.Tensor) -> Tuple[int, int, int]:
    """(B, H, W) of a depth map (H, W), (B, H, W) or (B, 1, H, W). A trailing 1 in three or
    four dimensions is refused rather than read as images one pixel wide: it is gsplat's
    channels-last layout, (C, H, W, 1), whose map is depth[..., 0]."""
    shape = tuple(depth.shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) in (3, 4) and shape[-1] != 1 and (len(shape) == 3 or shape[1] == 1):
        return (shape[0], shape[-2], shape[-1])
    hint = " (channels last, as gsplat's (C, H, W, 1)? pass depth[..., 0])" \
        if len(shape) in (3, 4) and shape[-1] == 1 else ""
    raise ValueError(f"depth: expected shape (H, W), (B, H, W) or (B, 1, H, W), got "
                     f"{shape}{hint}")


def _masked_mean(values: torch.Tensor, keep: torch.Tensor, dim=None) -> torch.Tensor:
    """The mean of values where keep (over `dim`, or all), 0 where nothing is kept; the others
    take a zero gradient (values and their derivatives must be finite there: that zero still
    flows back through them, and 0 times inf is NaN). A fixed-size reduction instead of
    values[keep].mean(), whose size the host must read."""
    kept = torch.where(keep, values, torch.zeros_like(values))
    dims = () if dim is None else (dim,)
    return kept.sum(*dims) / keep.sum(*dims).clamp_min(1).to(values.dtype)


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
    flat over them (no correlation to ask for). In a batch, the mean over the images that
    count."""
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    # Fewer than 2 valid pixels leave a zero spread, so `counts` covers that case too.
    loss, counts = _pearson(*_cells(maps, None))
    return _mean_of_cells(loss, counts)


def _patches(t: torch.Tensor, size: int, offset: Tuple[int, int], fill) -> torch.Tensor:
    """(B, patches, size * size) of (B, H, W) maps cut on a grid whose lines lie at rows
    offset[0] + k size and columns offset[1] + k size, the cells the image edges cut padded
    with `fill`."""
    B, H, W = t.shape
    top, left = offset[0] % size, offset[1] % size
    top, left = (top and size - top), (left and size - left)  # padding before row/column 0
    rows, cols = -(-(H + top) // size), -(-(W + left) // size)
    padded = torch.nn.functional.pad(t[:, None].to(torch.float64 if t.dtype == torch.bool
                                                   else t.dtype),
                                     (left, cols * size - W - left, top, rows * size - H - top),
                                     value=fill)[:, 0]
    if t.dtype == torch.bool:
        padded = padded.bool()
    return padded.reshape(B, rows, size, cols, size).permute(0, 1, 3, 2, 4).reshape(
        B, rows * cols, size * size)


def _patch_grid(patch_size, offset, min_pixels):
    """(patch_size, offset, least valid pixels) of a patch grid, checked: the defaults' least
    count is a quarter of a patch, and never below 2."""
    patch_size = _require_int("patch_size", patch_size, 2)
    if not isinstance(offset, (tuple, list)) or len(offset) != 2:
        raise ValueError(f"offset: expected a pair of ints, got {offset!r}")
    offset = tuple(_require_int("offset", o, -2 ** 62) for o in offset)
    need = max(2, patch_size * patch_size // 4) if min_pixels is None else max(2, min_pixels)
    return patch_size, offset, need


def _cells(maps: _Maps, grid):
    """(x, y, valid, count) over the cells the losses compare separately: each (B, cells,
    pixels of a cell), count (B, cells); a cell is a whole image (grid None) or a patch of
    `_patch_grid`'s grid."""
    if grid is None:
        x, y, valid = (t[:, None] for t in maps.rows())
        return x, y, valid, maps.count[:, None]
    size, offset, _ = grid
    valid = _patches(maps.valid, size, offset, False)
    return (_patches(maps.x, size, offset, 0.0), _patches(maps.y, size, offset, 0.0), valid,
            valid.sum(-1))


def _mean_of_cells(loss: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each image's mean over its cells that count, then the mean over the images with one:
    the losses' reduction (0 with a zero gradient where no cell counts)."""
    return _masked_mean(_masked_mean(loss, counts, -1), counts.any(-1))


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
    quarter of it, at least 2) and neither map flat over them. 0 where none counts. In a
    batch, each image's mean over its patches, then the mean over the images with a patch that
    counts."""
    grid = _patch_grid(patch_size, offset, min_pixels)
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    x, y, valid, count = _cells(maps, grid)
    loss, counts = _pearson(x, y, valid, count)
    return _mean_of_cells(loss, counts & (count >= grid[2]))


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """t (drawn on the host) on `device` without waiting for it: a CUDA copy from pinned memory
    is queued like a kernel, where one from pageable memory waits for the queue to drain."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _pair_arguments(pairs, radius) -> Tuple[int, Optional[int]]:
    """pairs (an int >= 1) and radius (None or an int >= 1), checked."""
    return (_require_int("pairs", pairs, 1),
            None if radius is None else _require_int("radius", radius, 1))


def _draw_pairs(valid: torch.Tensor, pairs: int, radius: Optional[int],
                generator: Optional[torch.Generator]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, keep), each (B, pairs): pixel indices within each image of the
    (B, H, W) map `valid` (row * W + column) and whether the pair holds (see ranking_pairs), on
    valid's device, with no read of a valid count on the host. The random numbers are drawn
    where `generator` lives (the CPU where None) and mapped to pixels on the device: a uniform
    u picks the (floor(u n) + 1)-th of an image's n valid pixels, found by a binary search of
    the running count of its valid pixels; that mapping is exact integer and correctly rounded
    float64 arithmetic, so a seed gives the same pairs on any device."""
    B, H, W = valid.shape
    device = valid.device
    draw_on = generator.device if generator is not None else torch.device("cpu")
    flat = valid.reshape(B, H * W)
    running = flat.cumsum(1)  # running[b, p]: the valid pixels of image b at or before p
    n = running[:, -1:]

    def nth_valid(u):
        # (torch.minimum, not clamp_max with a tensor bound: PyTorch 1.12 has only the number)
        k = torch.minimum((u * n.to(torch.float64)).floor().to(torch.int64), n - 1)
        k = k.clamp_min(0)
        return torch.searchsorted(running, k + 1).clamp_max(H * W - 1)  # first running >= k + 1

    u = _to_device(torch.rand((B, 2, pairs), generator=generator, dtype=torch.float64,
                              device=draw_on), device)
    first = nth_valid(u[:, 0])
    if radius is None:
        second = nth_valid(u[:, 1])
        inside = torch.ones_like(first, dtype=torch.bool)
    else:
        step = _to_device(torch.randint(-radius, radius + 1, (B, 2, pairs), generator=generator,
                                        device=draw_on), device)
        row, col = first // W + step[:, 0], first % W + step[:, 1]
        inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
        second = torch.where(inside, row * W + col, first)
    # valid at first fails only where an image has no valid pixel (the search runs off its end).
    keep = inside & (second != first) & flat.gather(1, first) & flat.gather(1, second)
    return first, second, keep


def ranking_pairs(valid: torch.Tensor, pairs: int = 4096, radius: Optional[int] = None,
                  generator: Optional[torch.Generator] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(first, second): flat indices (row * W + column, int64, on valid's device) of up to
    `pairs` pixel pairs of the (H, W) bool map `valid`: the first pixel drawn uniformly among
    the valid ones, the second likewise (radius None) or at a uniform offset in
    [-radius, radius]^2 from the first; pairs whose second pixel is off the image, not valid, or
    the first itself are dropped. A (B, H, W) map: up to `pairs` in each image, indices into
    valid.reshape(-1) ((b H + row) W + column). The random numbers come from `generator`
    (torch's default CPU one where None, a CUDA generator draws on its GPU), and a seeded
    generator gives the same pairs on any device. The pairs ranking_depth_loss draws with the
    same seed (it keeps all of them on the device and masks the dropped ones; this call's
    result has a size the host has to read)."""
    if valid.dim() not in (2, 3) or valid.dtype != torch.bool:
        raise ValueError(f"valid: expected a bool (H, W) or (B, H, W) map, got {valid.dtype} "
                         f"of shape {tuple(valid.shape)}")
    pairs, radius = _pair_arguments(pairs, radius)
    batch = valid.reshape(-1, *valid.shape[-2:])
    first, second, keep = _draw_pairs(batch, pairs, radius, generator)
    image = torch.arange(batch.shape[0], device=valid.device)[:, None] * batch[0].numel()
    return (first + image)[keep], (second + image)[keep]


def ranking_depth_loss(depth: torch.Tensor, weight: torch.Tensor, prior: torch.Tensor,
                       pairs: int = 4096, radius: Optional[int] = None, margin: float = 1e-4,
                       min_weight: float = 0.5, inverse_depth: bool = False,
                       mask: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The depth ranking loss: for random pairs of valid pixels (`ranking_pairs`; `radius` keeps
    them neighbours), the mean of relu(margin - s (x_i - x_j)), s the sign of the prior's
    difference (pairs the prior ties are left out) and x the rendered inverse depth over its
    mean (detached), so that `margin` is relative. Only the prior's order counts: any increasing
    distortion of it changes nothing. 0 with no pair. In a batch, `pairs` in each image, each
    image's mean, then the mean over the images with a pair."""
    pairs, radius = _pair_arguments(pairs, radius)
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    first, second, keep = _draw_pairs(maps.valid, pairs, radius, generator)
    x, y, valid = maps.rows()
    mean = _masked_mean(x.detach(), valid, -1)[:, None]
    x = x / torch.where(mean != 0, mean, torch.ones_like(mean))
    sign = torch.sign(y.gather(1, first) - y.gather(1, second))
    terms = torch.relu(margin - sign * (x.gather(1, first) - x.gather(1, second)))
    return _mean_of_cells(terms, keep & (sign != 0))


def _robust_normalized(v: torch.Tensor, valid: torch.Tensor, count: torch.Tensor):
    """((v - median) / (mean |v - median|), that spread) over the valid entries of each row of
    v (rows, n): MiDaS's shift and scale estimates. The median is the lower middle one
    (torch.median's), of rows whose left-out entries are NaN (nanmedian skips them, and its
    result has a size known without the count); the spread is divided out only where it is
    positive (1 elsewhere), so that every value and gradient stays finite."""
    centre = torch.where(valid, v, torch.full_like(v, float("nan"))).nanmedian(-1).values
    centre = torch.where(count > 0, centre, torch.zeros_like(centre))[..., None]  # NaN: none
    spread = _masked_mean((v - centre).abs(), valid, -1)
    return (v - centre) / torch.where(spread > 0, spread, torch.ones_like(spread))[..., None], \
        spread


def scale_shift_invariant_depth_loss(depth: torch.Tensor, weight: torch.Tensor,
                                     prior: torch.Tensor, min_weight: float = 0.5,
                                     inverse_depth: bool = False,
                                     mask: Optional[torch.Tensor] = None,
                                     patch_size: Optional[int] = None,
                                     min_pixels: Optional[int] = None,
                                     offset: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """MiDaS's scale- and shift-invariant loss (Ranftl et al. 2020, with its robust
    estimates): the rendered inverse depth x and the prior each shifted by its median and
    scaled by its mean absolute deviation from it, over the valid pixels, then the mean L1
    distance of the two (gradients through x's median and deviation too). Invariant to a
    positive scale and any shift of either, 0 where x is such a map of the prior, unitless.
    Unlike a least-squares fit of one to the other, it keeps the sign: an inverted render
    (near drawn far) costs the most, where a fitted negative scale would make it free. 1 where
    x is flat (with a zero gradient); 0 with fewer than 2 valid pixels or a flat prior. In a
    batch, the mean over the images that count.

    `patch_size`: the same per square patch, on the grid of patch_pearson_depth_loss (`offset`,
    `min_pixels` as there), each patch normalized by its own median and deviation (DNGaussian's
    local depth normalization, in MiDaS's robust form); each image's mean over the patches that
    count (enough valid pixels, the prior not flat there; a flat x costs 1), then the mean over
    the images."""
    grid = None if patch_size is None else _patch_grid(patch_size, offset, min_pixels)
    maps = _Maps(depth, weight, prior, min_weight, inverse_depth, mask)
    x, y, valid, count = _cells(maps, grid)
    shape = count.shape
    x, y, valid, flat_count = (t.reshape(-1, *t.shape[2:]) for t in (x, y, valid, count))
    y, y_spread = _robust_normalized(y.detach(), valid, flat_count)
    x, x_spread = _robust_normalized(x, valid, flat_count)
    distance = _masked_mean((x - y).abs(), valid, -1)
    # A flat x (with a spread y) costs 1, with no gradient: the distance then is mean |y|, 1 in
    # exact arithmetic; written as 1 so that rounding does not show.
    loss = torch.where(x_spread.detach() > 0, distance, torch.ones_like(distance))
    counts = (count >= (2 if grid is None else grid[2])) & (y_spread.reshape(shape) > 0)
    return _mean_of_cells(loss.reshape(shape), counts)
