#!/usr/bin/env python3
"""The order the CUDA render backward's blocks start in, modelled: the kernel's span when its
blocks, in launch order, go to a GPU's SMs as their block slots come free.

    python benchmarks/block_order_model.py [--scenes 112k,1m] [--scales 1,2]

A block's work is the splats it walks (its part of the tile's list, up to the block's last
contributor), from a CPU forward's tile lists, as in warp_skip_model.py. The blocks of a split
list's parts (TileSplits) each walk a whole part of L positions, the longest blocks of the
kernel. Launched after every tile's block (tiles first, the order before stop 48) they start in
the kernel's last wave wherever the tiles fill several waves (1296x840 and up), and the kernel
waits for one more part's walk; launched first (CudaTuning::parts_first) they start at once.

The model: blocks taken in launch order, each to the SM with the fewest of its 4 slots taken;
an SM's blocks share its rate (--throughput), so that a block left alone runs faster; a block
costs its walk plus --block-cost (an unused slot's block, which exits at once, nothing). It
prints the span of whole lists, of split lists in either order, and the ratio of whole to split
next to the one a GPU run measured (its render_backward stage, --measured), which is what the
model is checked by. Spans are in splats walked, comparable between orders, not times.
"""
import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.cpu_bench import forward_state  # noqa: E402
from benchmarks.scenes import garden_scene  # noqa: E402
from benchmarks.warp_skip_model import split_length, warp_ends  # noqa: E402

SMS = 132  # an H100 / H200
BACKWARD_SLOTS = SMS * 4  # kRenderBackwardBlocks; the resolve kernel's too (kResolveBlocks)
FORWARD_SLOTS = SMS * 8   # kRenderBlocks on sm_90


def span(works, slots, block_cost, sms, throughput):
    """The last finish of list scheduling: works (None: a block that exits at once) in launch
    order on `slots` block slots grouped into `sms` SMs, each block to the SM with the fewest
    (the first of them); an SM's blocks share its rate, throughput[k - 1] with k of them (one
    slot an SM and throughput [1]: independent slots), so that a block left alone runs faster."""
    per_sm = slots // sms
    queue = [w + block_cost for w in works if w is not None][::-1]
    running = [[] for _ in range(sms)]  # remaining work of each block on each SM
    now = 0.0
    while True:
        for sm in sorted(range(sms), key=lambda i: len(running[i])):
            while queue and len(running[sm]) < per_sm:
                running[sm].append(queue.pop())
        active = [(sm, throughput[len(r) - 1] / len(r)) for sm, r in enumerate(running) if r]
        if not active:
            return now
        step = min(min(running[sm]) / rate for sm, rate in active)
        now += step
        for sm, rate in active:
            running[sm] = [w - step * rate for w in running[sm] if w - step * rate > 1e-9]


def tile_lists(state, width, height):
    """(lengths, walks): each tile's list length and its block's last contributor."""
    ranges = state[5].long()
    lengths = (ranges[:, 1] - ranges[:, 0]).tolist()
    walks = warp_ends(state[7], width, height).max(dim=1).values.tolist()
    return lengths, walks


def backward_blocks(lengths, walks, length, parts_first):
    """The render backward's blocks in launch order: a tile's block walks its list's last part
    (the whole list when not split); the block of slot e the part that ends at split e, slots in
    list order, (pairs - 1) // L of them, the unused ones exiting at once."""
    pairs = sum(lengths)
    tiles, slots = [], []
    position = 0
    for n, w in zip(lengths, walks):
        parts = 1 if length == 0 or n <= length else -(-n // length)
        lo = (parts - 1) * length
        tiles.append(max(0, w - lo))
        for c in range(parts - 1):
            slots.append((position + (c + 1) * length, max(0, min(w, (c + 1) * length) - c * length)))
        position += n
    capacity = (pairs - 1) // length if length else 0
    by_slot = [None] * capacity
    for split, work in slots:
        by_slot[split // length - 1] = work
    return by_slot + tiles if parts_first else tiles + by_slot


def measured_ratios(path):
    """{(scene, scale): render_backward stage ms of whole lists / split (tiles first)} from a GPU
    run's ablation (bench.py --impls ablation before parts_first: "ours" launched the tiles'
    blocks first), where the file is there."""
    import json
    try:
        with open(path) as f:
            results = json.load(f)["results"]
    except (OSError, ValueError, KeyError):
        return {}
    stage = {(r["scene"], r["scale"], r["impl"]): r.get("stage_ms", {}).get(
        "backward/render_backward") for r in results}
    out = {}
    for (scene, scale, impl), ms in stage.items():
        whole = stage.get((scene, scale, "ours-no-split"))
        if impl == "ours" and ms and whole:
            out[(scene, float(scale))] = whole / ms
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", default="112k,1m")
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--block-cost", type=float, default=16.0,
                    help="units a block costs besides its walk (a splat walked: 1)")
    ap.add_argument("--throughput", default="1,1,1,1",
                    help="an SM's rate with 1, 2, 3, 4 blocks on it, in splats a unit; each of "
                         "its blocks runs at rate / blocks (default: the same rate however "
                         "many: a block left alone runs four times as fast)")
    ap.add_argument("--measured", default=str(REPO / "benchmarks" / "results" /
                                              "h200_bench_ablation.json"),
                    help="a GPU run's ablation JSON to set the model against")
    args = ap.parse_args(argv)
    c = args.block_cost
    curve = [float(x) for x in args.throughput.split(",")]
    measured = measured_ratios(args.measured)
    print(f"{'scene':6s} {'resolution':>10s} {'L':>5s} {'whole':>7s} {'tiles 1st':>10s} "
          f"{'parts 1st':>10s} {'whole / tiles 1st':>18s} {'measured':>9s} "
          f"{'parts / tiles 1st':>18s}")
    for name in args.scenes.split(","):
        for scale in (float(s) for s in args.scales.split(",")):
            scene = garden_scene(name, camera=0, scale=scale)
            cam = scene.camera
            _, state = forward_state(scene)
            lengths, walks = tile_lists(state, cam.width, cam.height)
            L = split_length(sum(lengths), BACKWARD_SLOTS)
            spans = [span(works, BACKWARD_SLOTS, c, SMS, curve) for works in (
                walks, backward_blocks(lengths, walks, L, False),
                backward_blocks(lengths, walks, L, True))]
            seen = measured.get((name, scale))
            print(f"{name:6s} {cam.width:>4d}x{cam.height:<5d} {L:>5d} {spans[0]:>7.0f} "
                  f"{spans[1]:>10.0f} {spans[2]:>10.0f} {spans[0] / spans[1]:>17.2f}x "
                  f"{'' if seen is None else f'{seen:.2f}x':>9s} "
                  f"{spans[2] / spans[1]:>17.2f}x", flush=True)
    print(f"the render backward's span (splats walked, +{c:g} a block) on {SMS} SMs x 4 "
          f"blocks, an SM's rate with 1-4 blocks {args.throughput}: whole lists (no split), "
          "split with the parts' blocks launched after the tiles' (before stop 48) and before "
          "them (TileSplits::parts_first); measured: the same ratio of whole lists to split, "
          "render_backward stage, from --measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
