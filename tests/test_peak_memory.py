"""The CUDA forward's peak memory stays within the buffers its design names (doc/design.md,
"the depth-first sort"): on a GPU by torch.cuda's peak statistic, on the emulated backend by the
allocation events of torch's profiler (benchmarks/peak_memory.py), whose glue allocates the same
buffers through PyTorch, CUB's scratch sized as CUB sizes it."""
import importlib.util
from pathlib import Path

import pytest

import scenes
from cuda_target import active, cuda_targets, is_emulated
from diff_gaussian_rasterization_depth import _backend

REPO = Path(__file__).resolve().parents[1]


def bench_module(name):
    spec = importlib.util.spec_from_file_location(f"_dgrd_peak_{name}",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What the forward holds a Gaussian while it sorts its pairs: the state (radii, mean2d, conic
# and opacity, colour and depth: 44), the caller's radii (4), tiles touched (8), tile rectangles
# (16), the depth keys and the Gaussians' order (4 + 4, and 4 for the order's second buffer
# when the sorted order lies there), the scanned offsets (8). While it sorts by depth: both
# second buffers (8) instead of the order's.
SORTING_BYTES_A_GAUSSIAN = 92
DEPTH_SORT_BYTES_A_GAUSSIAN = 96
# A pixel: the saved pixel state (final T, weight and depth: 12) and n_contrib (4); then the
# colour (12), depth (4) and weight (4). A tile: its range (8).
STATE_BYTES_A_PIXEL, OUTPUT_BYTES_A_PIXEL, BYTES_A_TILE = 16, 20, 8
# A pair while the tiles are sorted: keys and ids in two buffers each (4 x 4); after: the point
# list (4).
SORTING_BYTES_A_PAIR, KEPT_BYTES_A_PAIR = 16, 4
# A split slot (TileSplits): its saved state (6 values) and its composite (7), a tile's pixels.
SLOT_BYTES = (6 + 7) * 256 * 4
# CUB's own scratch (digit counts, look-back tiles; a few tens of KiB at these sizes), the
# caching allocator's rounding of each buffer to 512 bytes, the small tensors.
SLACK = 256 << 10


def forward_budget(P, pairs, pixels, tiles, slots):
    """The most the forward may hold at once: at its sort by depth, at its sort of the pairs,
    or at its render (the pairs' sort buffers freed, the maps and the split slots allocated)."""
    pixel_state = STATE_BYTES_A_PIXEL * pixels + BYTES_A_TILE * tiles
    depth_sort = DEPTH_SORT_BYTES_A_GAUSSIAN * P
    tile_sort = SORTING_BYTES_A_GAUSSIAN * P + pixel_state + SORTING_BYTES_A_PAIR * pairs
    render = (SORTING_BYTES_A_GAUSSIAN * P + pixel_state + OUTPUT_BYTES_A_PIXEL * pixels
              + KEPT_BYTES_A_PAIR * pairs + SLOT_BYTES * slots + 8 * slots)
    return max(depth_sort, tile_sort, render)


@pytest.mark.parametrize("target", cuda_targets(("asc",)))
def test_forward_peak_memory_within_its_buffers(target):
    """Garden 112k at 324x210 (294 tiles: the pairs' sort takes two passes of 8 bits, where a
    sort not in place would take a scratch copy of keys and ids, 8 bytes a pair more), where
    the sort of 256k pairs, not the image, sets the forward's peak."""
    device = "cpu" if is_emulated(target) else "cuda"
    garden = bench_module("scenes").garden_scene("112k", camera=0, scale=0.5, seed=0,
                                                 device=device)
    scene = scenes.Scene(garden.rasterizer_inputs(), garden.raster_settings())
    with active(target):
        config, gaussians = scenes.backend_call(scene)
        state = _backend.forward(config, gaussians)[-1]
        # The least of three: the caching allocator may hand a request a cached block up to
        # 1 MiB larger than asked, whose whole size its statistic counts.
        measure = bench_module("peak_memory").peak_extra_bytes
        peak = min(measure(lambda: _backend.forward(config, gaussians), device)
                   for _ in range(3))
    P = scene.inputs["means3D"].shape[0]
    pairs, tiles, slots = state[4].numel(), state[5].shape[0], state[10].shape[0]
    pixels = scene.settings.image_height * scene.settings.image_width
    assert tiles > 256 and pairs > 200_000
    budget = forward_budget(P, pairs, pixels, tiles, slots)
    # The sort's buffers and the state alone, so that a measurement that saw nothing fails too.
    assert SORTING_BYTES_A_PAIR * pairs + 44 * P <= peak <= budget + SLACK, (
        f"peak {peak} bytes against a budget of {budget} (+{SLACK}): {P} Gaussians, "
        f"{pairs} pairs, {pixels} pixels, {tiles} tiles, {slots} split slots")
