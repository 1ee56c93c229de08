"""The CUDA forward's peak memory stays within the buffers its design names (doc/design.md,
"the depth-first sort"): on a GPU by torch.cuda's peak statistic, on the emulated backend by the
allocation events of torch's profiler (benchmarks/peak_memory.py), whose glue allocates the same
buffers through PyTorch, CUB's scratch sized as CUB sizes it."""
import importlib.util
from pathlib import Path

import pytest
import torch

import scenes
from cuda_target import active, cuda_targets, is_emulated
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend

REPO = Path(__file__).resolve().parents[1]


def bench_module(name):
    spec = importlib.util.spec_from_file_location(f"_dgrd_peak_{name}",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def skip_unless_measurable(target):
    """The emulated targets are measured by torch's profiler, whose allocation events PyTorch
    1.12 (3DGS's own environment) lacks; a GPU is measured by its allocator."""
    if is_emulated(target) and not bench_module("peak_memory").measures_on_cpu():
        pytest.skip(f"PyTorch {torch.__version__}'s profiler reports no allocations")


# What the forward holds a Gaussian from its sort by depth to its render (Binning in
# rasterize_points_cuda.cu frees each buffer once its last reader is queued), the garden's
# colours given: throughout, the state's radii (4) and the caller's (4); while the Gaussians sort
# by depth, tiles touched (8), tile rectangles (16), the depth keys and the Gaussians' ids in two
# buffers each (16); then the compact state (CudaTuning::compact_state), a row for each of the V
# Gaussians with tiles (mean2d 8, conic and opacity 16, colour and depth 16, the Gaussian's id
# 4), projected again after the sort by depth, which the render and the backward read; while
# the rows and then the pairs are written, the rectangles, the ids by depth (4) and the
# offsets (8). Without the compact state the preprocess stores P rows (mean2d, conic and
# opacity, and the depth alone: 28; the colours are read where the caller's tensor holds them),
# held from the preprocess on.
RADII_BYTES_A_GAUSSIAN = 4
HELD_BYTES_A_GAUSSIAN = 2 * RADII_BYTES_A_GAUSSIAN
FULL_ROW_BYTES, COMPACT_ROW_BYTES = 28, 44
DEPTH_SORT_BYTES_A_GAUSSIAN = HELD_BYTES_A_GAUSSIAN + 8 + 16 + 16
WRITING_PAIRS_BYTES_A_GAUSSIAN = HELD_BYTES_A_GAUSSIAN + 16 + 4 + 8
# A pair while it is written: a key and an id (8); while the pairs sort: in two buffers each
# (16); after: the point list (4).
WRITTEN_BYTES_A_PAIR, SORTING_BYTES_A_PAIR, KEPT_BYTES_A_PAIR = 8, 16, 4
# A pixel, taken after the sort: the saved pixel state (final T, weight and depth: 12) and
# n_contrib (4); the colour (12), depth (4) and weight (4). A tile: its range (8).
STATE_BYTES_A_PIXEL, OUTPUT_BYTES_A_PIXEL, BYTES_A_TILE = 16, 20, 8
# A split slot (TileSplits): its saved state (5 values), a tile's pixels, and its row of the
# parts table (8); the split forward's own slots (half as long, so up to twice as many: the
# state's length over forward_length) a composite each (7 values) and a row (8).
STATE_SLOT_BYTES, COMPOSITE_SLOT_BYTES = 5 * 256 * 4 + 8, 7 * 256 * 4 + 8
# CUB's own scratch (digit counts, look-back tiles; a few tens of KiB at these sizes), the
# caching allocator's rounding of each buffer to 512 bytes, the small tensors.
SLACK = 256 << 10


# The backward (backward_cuda): the state the render backward reads (radii and rows as above,
# the pairs, the tile ranges, a pixel's saved state, the split slots) beside the gradients that
# hold its sums (means3D 12, scales 12, rotations 16); then, the state freed but its radii,
# every input's gradient (those and means2D 12, opacities 4, colours 12). Throughout, the maps'
# upstream gradients (colour, depth, weight: 20 a pixel).
SUM_ROW_BYTES_A_GAUSSIAN = 40
INPUT_GRAD_BYTES_A_GAUSSIAN = 40 + 12 + 4 + 12
UPSTREAM_BYTES_A_PIXEL = 20


def state_rows(P, state):
    """(bytes of the state's rows the render reads, whether they are the compact state's):
    the V Gaussians with tiles (state[11] names them), or all P."""
    rows = state[11].numel()
    return (COMPACT_ROW_BYTES * rows, True) if rows else (FULL_ROW_BYTES * P, False)


def forward_length(length):
    """The split forward's part length for the backward's (gpu::forward_split_length, with
    every technique on)."""
    return length // 2 if length % 512 == 0 else length


def forward_budget(P, rows, pairs, pixels, tiles, slots, forward_slots):
    """The most the forward may hold at once: at its sort by depth, as it writes the pairs
    (the compact rows written before them), at its sort of the pairs, or at its render (the
    pairs' sort buffers freed, the maps and the split slots, the backward's and the forward's,
    allocated). `rows`: state_rows."""
    row_bytes, compact = rows
    depth_sort = DEPTH_SORT_BYTES_A_GAUSSIAN * P + (0 if compact else row_bytes)
    held = HELD_BYTES_A_GAUSSIAN * P + row_bytes
    writing = (WRITING_PAIRS_BYTES_A_GAUSSIAN * P + row_bytes + WRITTEN_BYTES_A_PAIR * pairs
               + BYTES_A_TILE * tiles)
    tile_sort = held + SORTING_BYTES_A_PAIR * pairs + BYTES_A_TILE * tiles
    render = (held + KEPT_BYTES_A_PAIR * pairs + BYTES_A_TILE * tiles
              + (STATE_BYTES_A_PIXEL + OUTPUT_BYTES_A_PIXEL) * pixels
              + STATE_SLOT_BYTES * slots + COMPOSITE_SLOT_BYTES * forward_slots)
    return max(depth_sort, writing, tile_sort, render)


def forward_peak_and_budget(scene, target):
    """The CUDA forward on `scene`: its peak (the least of three measurements: the caching
    allocator may hand a request a cached block up to 1 MiB larger than asked, whose whole size
    its statistic counts), its forward_budget, and the counts that budget was made of."""
    device = "cpu" if is_emulated(target) else "cuda"
    with active(target):
        config, gaussians = scenes.backend_call(scene)
        state = _backend.forward(config, gaussians)[-1]
        measure = bench_module("peak_memory").peak_extra_bytes
        peak = min(measure(lambda: _backend.forward(config, gaussians), device)
                   for _ in range(3))
    P = scene.inputs["means3D"].shape[0]
    pairs, tiles, slots = state[4].numel(), state[5].shape[0], state[10].shape[0]
    pixels = scene.settings.image_height * scene.settings.image_width
    length = int(state[9][0]) if slots else 0
    forward_slots = (pairs - 1) // forward_length(length) if slots else 0
    rows = state_rows(P, state)
    budget = forward_budget(P, rows, pairs, pixels, tiles, slots, forward_slots)
    counts = dict(P=P, rows=rows, binned=state[11].numel(), pairs=pairs, tiles=tiles,
                  pixels=pixels, slots=slots)
    return peak, budget, counts


@pytest.mark.parametrize("target", cuda_targets(("asc",)))
def test_forward_peak_memory_within_its_buffers(target):
    """Garden 112k at 324x210 (294 tiles: the pairs' sort takes two passes of 8 bits, where a
    sort not in place would take a scratch copy of keys and ids, 8 bytes a pair more), where
    the Gaussians and their 197k pairs, not the image, set the forward's peak: a buffer held
    past its last reader, or a sort's scratch copy, would pass the budget."""
    skip_unless_measurable(target)
    device = "cpu" if is_emulated(target) else "cuda"
    garden = bench_module("scenes").garden_scene("112k", camera=0, scale=0.5, seed=0,
                                                 device=device)
    scene = scenes.Scene(garden.rasterizer_inputs(), garden.raster_settings())
    peak, budget, n = forward_peak_and_budget(scene, target)
    assert n["tiles"] > 256 and n["pairs"] > 150_000
    assert n["rows"][1], "the compact state is the default"
    # The sort's buffers and the state alone, so that a measurement that saw nothing fails too.
    floor = SORTING_BYTES_A_PAIR * n["pairs"] + HELD_BYTES_A_GAUSSIAN * n["P"] + n["rows"][0]
    assert floor <= peak <= budget + SLACK, (
        f"peak {peak} bytes against a budget of {budget} (+{SLACK}): {n}")


@pytest.mark.parametrize("target", cuda_targets(("asc",)))
def test_forward_holds_no_row_for_a_gaussian_without_tiles(target):
    """Garden 112k at 324x210 beside the mirror image of each of its Gaussians through the
    camera's centre (behind the camera: no tiles), so that most Gaussians have no tile and the
    sort by depth, not the pairs, would set the forward's peak if the preprocess stored every
    Gaussian's row (28 bytes a Gaussian more through that sort): the compact state's rows are
    projected after it, for the Gaussians with tiles alone."""
    skip_unless_measurable(target)
    device = "cpu" if is_emulated(target) else "cuda"
    garden = bench_module("scenes").garden_scene("112k", camera=0, scale=0.5, seed=0,
                                                 device=device)
    settings = garden.raster_settings()
    inputs = garden.rasterizer_inputs()
    centre = settings.campos.to(device)
    mirrored = dict(inputs, means3D=2 * centre - inputs["means3D"])
    scene = scenes.Scene({k: torch.cat([v, mirrored[k]]) for k, v in inputs.items()}, settings)
    peak, budget, n = forward_peak_and_budget(scene, target)
    assert n["rows"][1] and n["binned"] < n["P"] // 2, "the mirrored half has no tiles"
    rows_at_depth_sort = (DEPTH_SORT_BYTES_A_GAUSSIAN + FULL_ROW_BYTES) * n["P"]
    assert rows_at_depth_sort > budget + SLACK, "the scene tells the two designs apart"
    assert DEPTH_SORT_BYTES_A_GAUSSIAN * n["P"] <= peak <= budget + SLACK, (
        f"peak {peak} bytes against a budget of {budget} (+{SLACK}): {n}")


def backward_budget(P, rows, pairs, pixels, tiles, slots):
    """The most the backward may hold at once, the maps dropped: at its render backward, or at
    its preprocess backward, once the state the render read is freed."""
    render = ((RADII_BYTES_A_GAUSSIAN + SUM_ROW_BYTES_A_GAUSSIAN) * P + rows[0]
              + KEPT_BYTES_A_PAIR * pairs + BYTES_A_TILE * tiles
              + (STATE_BYTES_A_PIXEL + UPSTREAM_BYTES_A_PIXEL) * pixels
              + STATE_SLOT_BYTES * slots)
    preprocess = ((RADII_BYTES_A_GAUSSIAN + INPUT_GRAD_BYTES_A_GAUSSIAN) * P
                  + UPSTREAM_BYTES_A_PIXEL * pixels)
    return max(render, preprocess)


@pytest.mark.parametrize("target", cuda_targets(("asc",)))
def test_backward_peak_memory_within_its_buffers(target):
    """A training step's forward + backward on the frame above, through autograd, the maps
    dropped before the backward (as a training step and bench.py do): its peak is the
    forward's or the backward's budget. Sums of their own (48 bytes a Gaussian), or the state
    held through the preprocess backward (40), would pass it."""
    skip_unless_measurable(target)
    device = "cpu" if is_emulated(target) else "cuda"
    garden = bench_module("scenes").garden_scene("112k", camera=0, scale=0.5, seed=0,
                                                 device=device, requires_grad=True)
    settings = garden.raster_settings()
    inputs = garden.rasterizer_inputs()  # means2D made here, outside the measured call
    scene = scenes.Scene({k: v.detach() for k, v in inputs.items()}, settings)

    def step():
        color, radii, depth, weight = GaussianRasterizer(settings)(**inputs)
        loss = color.sum() + depth.sum() + weight.sum()
        del color, radii, depth, weight
        loss.backward()
        for v in inputs.values():
            v.grad = None  # each call's gradients are its own (and are counted in its peak)

    with active(target):
        config, gaussians = scenes.backend_call(scene)
        state = _backend.forward(config, gaussians)[-1]
        measure = bench_module("peak_memory").peak_extra_bytes
        peak = min(measure(step, device) for _ in range(3))
    P = scene.inputs["means3D"].shape[0]
    pairs, tiles, slots = state[4].numel(), state[5].shape[0], state[10].shape[0]
    pixels = settings.image_height * settings.image_width
    length = int(state[9][0]) if slots else 0
    forward_slots = (pairs - 1) // forward_length(length) if slots else 0
    rows = state_rows(P, state)
    budget = max(forward_budget(P, rows, pairs, pixels, tiles, slots, forward_slots),
                 backward_budget(P, rows, pairs, pixels, tiles, slots))
    floor = (RADII_BYTES_A_GAUSSIAN + SUM_ROW_BYTES_A_GAUSSIAN) * P + rows[0]
    assert floor <= peak <= budget + SLACK, (
        f"peak {peak} bytes against a budget of {budget} (+{SLACK}): {P} Gaussians, "
        f"{pairs} pairs, {pixels} pixels, {tiles} tiles, {slots} split slots")
