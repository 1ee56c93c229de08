#!/usr/bin/env python3
"""The work model of the CUDA render's warp skipping and of its balance over blocks, from a CPU
forward's tile lists.

    python benchmarks/warp_skip_model.py [--scenes 112k,1m] [--scales 1,2]

On CUDA a tile is a block of 8 warps, each two rows of 16 pixels. Without warp skipping, a warp
evaluates every splat of its tile's list up to where its pixels stop (the backward: up to the
block's last contributor, evaluating where any of its pixels still blends); with it, a warp
passes the splats whose reach box (`band_reach_mask`, blend.h) misses its two rows, and the
backward starts each warp at its own last contributor. This counts, on the garden frames, the
(warp, splat) evaluations of each: their ratio is the predicted gain of the render loops, before
the GPU measures it (`bench.py --impls ablation`). The masks are computed by the same compiled
function as the kernels', through the emulated CUDA module (built by default).

With the counts, and the instructions of each path through the render loops as read in
sm_90's machine code (PATHS), it predicts the warp instructions the loops issue, ours against
gsplat 1.5.3's `RGB+ED` kernels (doc/performance.md, "CUDA"): instruction issue only, not time.

A second table puts the longest tile's walk against an even share of all walks over the blocks
a GPU runs at once: where it is larger, one tile bounds the render kernels, and only splitting
long lists (not reordering the blocks) can help. Its last columns split the lists as the CUDA
backward does (TileSplits, parts of `length` positions chosen by gpu::split_length) and give the
longest part's walk against the same share. A third does the same for the forward, and a
fourth counts what compositing the lists' last parts too would spare its second kernel.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.cpu_bench import forward_state  # noqa: E402
from benchmarks.scenes import garden_scene  # noqa: E402

TILE, WARPS = 16, 8


def tile_pixels(values, width, height):
    """Tiles x 256: a per-pixel map (padded with 0 to whole tiles) in each tile's thread order
    (row-major, so warp w holds the tile's rows 2w and 2w + 1: entries 32 w .. 32 w + 31)."""
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    padded = torch.zeros(tiles_y * TILE, tiles_x * TILE, dtype=values.dtype)
    padded[:height, :width] = values
    return padded.view(tiles_y, TILE, tiles_x, TILE).permute(0, 2, 1, 3).reshape(-1, TILE * TILE)


def warp_ends(n_contrib, width, height):
    """Tiles x 8: each warp's last contributor (n_contrib padded with 0 to whole tiles; warp w
    holds the tile's rows 2w and 2w + 1)."""
    per_tile = tile_pixels(n_contrib.long(), width, height)
    return per_tile.view(-1, WARPS, 32).max(dim=2).values


def blending_warps(means2d, conic_opacity, stops, x0, y0):
    """Positions x 8: whether splat k of a tile's list blends at some pixel of warp w, i.e. has
    alpha >= 1/255 at a pixel that has not stopped before it (position < the pixel's n_contrib,
    `stops`, in the tile's thread order). Alpha as splat_alpha takes it, in float32."""
    pixels = torch.arange(TILE * TILE)
    px, py = (x0 + pixels % TILE).float(), (y0 + pixels // TILE).float()
    dx = means2d[:, 0:1] - px.view(1, -1)
    dy = means2d[:, 1:2] - py.view(1, -1)
    a, b, c, o = (conic_opacity[:, k:k + 1] for k in range(4))
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp(o * torch.exp(power), max=0.99)
    positions = torch.arange(means2d.shape[0]).view(-1, 1)
    blends = (power <= 0) & (alpha >= 1 / 255) & (positions < stops.view(1, -1))
    return blends.view(-1, WARPS, 32).any(dim=2)


def warp_counts(state, width, height) -> dict:
    from diff_gaussian_rasterization_depth import _emulated_cuda
    means2d, conic_opacity, point_list, tile_ranges, n_contrib = (state[k] for k in (1, 2, 4, 5, 7))
    tiles_x = (width + TILE - 1) // TILE
    warp_end = warp_ends(n_contrib, width, height)              # tiles x 8
    block_end = warp_end.max(dim=1).values                      # tiles
    stops = tile_pixels(n_contrib.long(), width, height)       # tiles x 256
    bits = torch.arange(WARPS)
    skipping = blending = 0
    for t in torch.nonzero(block_end).flatten().tolist():
        begin = int(tile_ranges[t, 0])
        ids = point_list[begin:begin + int(block_end[t])].long()
        x0, y0 = (t % tiles_x) * TILE, (t // tiles_x) * TILE
        masks = _emulated_cuda.checks.band_reach_masks(means2d[ids], conic_opacity[ids], x0, y0)
        reaches = (masks.view(-1, 1) >> bits) & 1 == 1           # positions x 8
        before_end = torch.arange(len(ids)).view(-1, 1) < warp_end[t].view(1, -1)
        skipping += int((reaches & before_end).sum())
        blending += int(blending_warps(means2d[ids], conic_opacity[ids], stops[t], x0, y0).sum())
    return {"pairs": int(point_list.numel()), "block": int(block_end.sum()) * WARPS,
            "warp": int(warp_end.sum()), "warp_skip": skipping, "blending": blending}


# Warp instructions of each path through the render loops, read by hand in sm_90's machine code
# (CUDA 13.0: ours from check_cuda_compile.py's object at stop 41; gsplat 1.5.3's
# `rasterize_to_pixels_3dgs_{fwd,bwd}_kernel<4>` as tools/build_for_gpu_image.sh builds it;
# `tools/sass_loops.py` finds the loops): "ballot" per 32 positions a warp walks (ours gathers
# the splats that reach it 32 at a time), "evaluated" per splat evaluated where no pixel of the
# warp blends it, "blended" where one does (the backward's gradients, sums and atomics).
PATHS = {
    "forward": {"ours": {"ballot": 29, "evaluated": 25, "blended": 44},
                "gsplat": {"ballot": 0, "evaluated": 31, "blended": 54}},
    "backward": {"ours": {"ballot": 36, "evaluated": 27, "blended": 146},
                 "gsplat": {"ballot": 0, "evaluated": 39, "blended": 259}},
}


def predicted_instructions(counts, paths=PATHS) -> dict:
    """{(loop, impl): warp instructions} of the render loops from warp_counts' counts. Ours
    evaluates only the splats that reach a warp (warp_skip), its forward ballots over the
    block's walk (a warp stops only with its block), its backward from each warp's own last
    contributor; gsplat evaluates every splat of each warp's walk (both loops start or stop
    each warp at its own end). The blending evaluations are the same for both."""
    blending = counts["blending"]
    walked = {("forward", "ours"): counts["block"], ("backward", "ours"): counts["warp"]}
    evaluated = {"ours": counts["warp_skip"], "gsplat": counts["warp"]}
    out = {}
    for loop, impls in paths.items():
        for impl, p in impls.items():
            positions = walked.get((loop, impl), counts["warp"])
            out[(loop, impl)] = (p["ballot"] * positions / 32 +
                                 p["evaluated"] * (evaluated[impl] - blending) +
                                 p["blended"] * blending)
    return out


def split_length(pairs, slots):
    """gpu::split_length's choice: parts of at most half the even share of the pairs over the
    `slots` backward blocks running at once, rounded up to whole pairs of batches of 256 (the
    split forward's parts are half as long: CudaTuning::short_forward_parts)."""
    share = -(-pairs // (2 * slots))
    return max(256, -(-share // 512) * 512)


def tile_balance(state, width, height, slots=132 * 4) -> dict:
    """How evenly the render's blocks share the work: each tile's walk (its block's last
    contributor, as the backward walks) against the ideal share of `slots` blocks running at once
    (an H200: 132 SMs x 4 blocks of the backward). When the longest walk exceeds the ideal share,
    that one tile bounds the kernel, whatever the order the blocks start in. With the lists split
    into parts of `length` positions, a block walks the part of its tile's walk in its part."""
    walk = warp_ends(state[7], width, height).max(dim=1).values
    ranges = state[5].long()
    lengths = ranges[:, 1] - ranges[:, 0]
    length = split_length(int(state[4].numel()), slots)
    longest_part = 0
    for t in torch.nonzero(lengths > length).flatten().tolist():
        n, w = int(lengths[t]), int(walk[t])
        for c in range(-(-n // length)):
            longest_part = max(longest_part, max(0, min(w, (c + 1) * length) - c * length))
    unsplit = walk[lengths <= length]
    if unsplit.numel():
        longest_part = max(longest_part, int(unsplit.max()))
    return {"tiles": int(walk.numel()), "mean_walk": float(walk.float().mean()),
            "longest_walk": int(walk.max()), "ideal_share": float(walk.sum()) / slots,
            "split_length": length, "longest_part": longest_part,
            **forward_balance(state, width, height, walk, lengths, length, 2 * slots),
            "forward_longest_path_short_parts": forward_balance(
                state, width, height, walk, lengths, max(256, length // 2),
                2 * slots)["forward_longest_path"]}


def forward_balance(state, width, height, walk, lengths, length, slots) -> dict:
    """The same for the forward (8 blocks per SM: twice the backward's slots), and what the split
    forward makes of it (CudaTuning::split_forward): a first kernel walks each split list's first
    part and composites each other part at once, one block each (at most a part each); then
    render_resolve_kernel walks, for each part, the pixels that stop within it (the last part:
    all that go on), again one block each, so the longest path is the first kernel's longest
    block and then the second's. Where a pixel stops is taken from its last splat and whether it
    saturates, counted where its final transmittance is below 1e-2 (past its last splat, an
    alpha of at most 0.99 takes it under 1e-4): the walks are over-counted, not under."""
    n_contrib, final_t = state[7], state[6][0]
    tiles_x, tiles_y = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    pad = lambda m, fill: torch.nn.functional.pad(  # noqa: E731
        m, (0, tiles_x * TILE - width, 0, tiles_y * TILE - height), value=fill)
    per_tile = lambda m: m.view(tiles_y, TILE, tiles_x, TILE).permute(0, 2, 1, 3).reshape(  # noqa
        -1, TILE * TILE)
    stops = per_tile(pad(n_contrib.long(), 0))
    stopping = per_tile(pad(final_t, 1.0)) < 1e-2
    first = second = 0
    for t in range(walk.numel()):
        n, w = int(lengths[t]), int(walk[t])
        if n <= length:
            first = max(first, w)
            continue
        parts = -(-n // length)
        first = max(first, length)  # the composites (and the first part) take at most a part
        for c in range(1, parts):
            lo = c * length
            here = (stops[t] > lo) & (stops[t] <= lo + length)
            if c < parts - 1:
                here &= stopping[t]
            if bool(here.any()):
                second = max(second, int(stops[t][here].max()) - lo)
    return {"forward_share": float(walk.sum()) / slots,
            "forward_longest_path": first + second}


def last_part_walks(state, width, height, length) -> dict:
    """What compositing each split list's last part in the split forward's first kernel (as it
    composites the parts between) would spare the second kernel: there the last part's block
    walks the part for every pixel that reaches it, to where the pixel stops or to the list's
    end; with the composite, only for the pixels the part stops (the others append it). Exact,
    not the 1e-2 rule of forward_balance: each pixel of a split list walked in float64 (alpha
    as splat_alpha takes it), stopping at the first splat that would take T below 1e-4.
    `reach` counts the pixels that reach their list's last part, `stop` those it stops; `walk`
    and `longest` the second kernel's last-part blocks' walks (each block's longest pixel walk),
    summed and at most, without (`_walked`) and with (`_composited`) the composites."""
    means2d, conic_opacity = state[1].double(), state[2].double()
    point_list, tile_ranges = state[4].long(), state[5].long()
    tiles_x = (width + TILE - 1) // TILE
    pixels = torch.arange(TILE * TILE)
    out = dict(lists=0, reach=0, stop=0, walk_walked=0, walk_composited=0, longest_walked=0,
               longest_composited=0)
    for t in range(tile_ranges.shape[0]):
        begin, end = int(tile_ranges[t, 0]), int(tile_ranges[t, 1])
        n = end - begin
        if length == 0 or n <= length:
            continue
        last = (-(-n // length) - 1) * length  # the last part's first position
        x = (t % tiles_x) * TILE + pixels % TILE
        y = (t // tiles_x) * TILE + pixels // TILE
        ids = point_list[begin:end]
        dx = means2d[ids, 0:1] - x.double().view(1, -1)
        dy = means2d[ids, 1:2] - y.double().view(1, -1)
        a, b, c, o = (conic_opacity[ids, k:k + 1] for k in range(4))
        power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
        alpha = torch.clamp(o * torch.exp(power), max=0.99)
        alpha = torch.where((power <= 0) & (alpha >= 1 / 255), alpha, torch.zeros_like(alpha))
        saturated = torch.cumprod(1 - alpha, dim=0) < 1e-4  # positions x pixels
        stops = torch.where(saturated.any(dim=0), saturated.int().argmax(dim=0),
                            torch.full_like(pixels, n))
        reach = (x < width) & (y < height) & (stops >= last)
        stop = reach & (stops < n)
        out["lists"] += 1
        out["reach"] += int(reach.sum())
        out["stop"] += int(stop.sum())
        walked = int((stops[reach] - last + (stops[reach] < n).long()).max()) if reach.any() else 0
        composited = int((stops[stop] - last + 1).max()) if stop.any() else 0
        out["walk_walked"] += walked
        out["walk_composited"] += composited
        out["longest_walked"] = max(out["longest_walked"], walked)
        out["longest_composited"] = max(out["longest_composited"], composited)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", default="112k,1m")
    ap.add_argument("--scales", default="1,2")
    args = ap.parse_args(argv)
    print(f"{'scene':6s} {'resolution':>10s} {'pairs':>10s} {'block-wide':>12s} "
          f"{'own end':>12s} {'skipping':>12s} {'gain':>6s} {'blending':>12s}")
    states, counts = {}, {}
    for name in args.scenes.split(","):
        for scale in (float(s) for s in args.scales.split(",")):
            scene = garden_scene(name, camera=0, scale=scale)
            cam = scene.camera
            _, state = forward_state(scene)
            states[(name, scale)] = (cam, state)
            c = counts[(name, scale)] = warp_counts(state, cam.width, cam.height)
            print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {c['pairs']:>10d} {c['block']:>12d} "
                  f"{c['warp']:>12d} {c['warp_skip']:>12d} {c['block'] / c['warp_skip']:>5.2f}x "
                  f"{c['blending']:>12d}", flush=True)
    print("(warp, splat) evaluations of the render loops: every warp to the block's last "
          "contributor; each to its own; with warp skipping. gain = block-wide / skipping; "
          "blending = those where the splat blends at some pixel of the warp (the forward's "
          "longer path, the same with and without skipping)")
    print(f"\n{'scene':6s} {'resolution':>10s} {'forward ours':>13s} {'gsplat':>9s} "
          f"{'ratio':>6s} {'backward ours':>14s} {'gsplat':>9s} {'ratio':>6s}")
    for (name, scale), c in counts.items():
        cam = states[(name, scale)][0]
        p = predicted_instructions(c)
        cells = []
        for loop in ("forward", "backward"):
            ours, gsplat = p[(loop, "ours")], p[(loop, "gsplat")]
            cells.append(f"{ours / 1e6:>12.1f}M {gsplat / 1e6:>8.1f}M {gsplat / ours:>5.2f}x")
        print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {cells[0]} {' ' + cells[1]}")
    print("predicted warp instructions of the render loops (PATHS: each path's instructions in "
          "sm_90's machine code); ratio = gsplat / ours. Instruction issue only, not time")
    print(f"\n{'scene':6s} {'resolution':>10s} {'tiles':>6s} {'mean walk':>10s} "
          f"{'longest':>8s} {'ideal share':>12s} {'bound':>6s} {'split':>6s} {'longest part':>13s} "
          f"{'bound':>6s}")
    for (name, scale), (cam, state) in states.items():
        b = tile_balance(state, cam.width, cam.height)
        print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {b['tiles']:>6d} {b['mean_walk']:>10.0f} "
              f"{b['longest_walk']:>8d} {b['ideal_share']:>12.0f} "
              f"{b['longest_walk'] / b['ideal_share']:>5.1f}x {b['split_length']:>6d} "
              f"{b['longest_part']:>13d} {b['longest_part'] / b['ideal_share']:>5.1f}x")
    print("splats walked per tile; ideal share = all walks / 528 blocks at once (132 SMs x 4); "
          "bound = longest / ideal share: above 1, one tile's walk bounds the render kernels; "
          "split = the backward's part length; longest part = the longest walk of one block then")
    print(f"\n{'scene':6s} {'resolution':>10s} {'forward share':>14s} {'bound':>6s} "
          f"{'split path':>11s} {'bound':>6s} {'half parts':>11s} {'bound':>6s}")
    for (name, scale), (cam, state) in states.items():
        b = tile_balance(state, cam.width, cam.height)
        share = b["forward_share"]
        short = b["forward_longest_path_short_parts"]
        print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {share:>14.0f} "
              f"{b['longest_walk'] / share:>5.1f}x {b['forward_longest_path']:>11d} "
              f"{b['forward_longest_path'] / share:>5.1f}x {short:>11d} {short / share:>5.1f}x")
    print("the forward: share = all walks / 1056 blocks at once (132 SMs x 8); split path = the "
          "longest path with the split forward: the longest block of its first kernel (a tile, "
          "a first part or a composite), then of render_resolve_kernel (forward_balance), in "
          "parts of the backward's length; half parts: in parts half as long, as the split "
          "forward walks them (CudaTuning::short_forward_parts)")
    print(f"\n{'scene':6s} {'resolution':>10s} {'split lists':>12s} {'reach last':>11s} "
          f"{'stop in it':>11s} {'last-part walks':>16s} {'composited':>11s} {'longest':>8s} "
          f"{'composited':>11s}")
    for (name, scale), (cam, state) in states.items():
        length = tile_balance(state, cam.width, cam.height)["split_length"]
        w = last_part_walks(state, cam.width, cam.height, length)
        print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {w['lists']:>12d} {w['reach']:>11d} "
              f"{w['stop']:>11d} {w['walk_walked']:>16d} {w['walk_composited']:>11d} "
              f"{w['longest_walked']:>8d} {w['longest_composited']:>11d}")
    print("render_resolve_kernel's walks of split lists' last parts (last_part_walks): pixels "
          "that reach their list's last part and those it stops; the blocks' walks summed and "
          "the longest, as built (every pixel that reaches the part walks it) and were the last "
          "parts composited too (only the pixels it stops)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
