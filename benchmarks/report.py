#!/usr/bin/env python3
"""The GPU window's timings (bench.py's JSON files) as doc/performance.md's tables and issue 9's
targets, met or missed.

    python benchmarks/report.py benchmarks/results/bench_*.json            # markdown tables
    python benchmarks/report.py --brief $OUT/bench_*.json                  # run_gpu.sh's summary

The targets (issue 9), each from one run that timed both sides:
- garden 1.0M and 2.8M at 1296x840 (x2) and 1944x1260 (x3), a loss on colour, depth and weight:
  forward + backward at least 1.5x faster than gsplat's RGB+ED, forward no slower than
  gsplat's, peak memory no higher than gsplat's;
- garden 112k at 648x420 (x1): forward + backward under 0.5 ms.

Ratios are the other's time over ours (> 1: ours is faster), from rows of the same file, as
bench.py computes them. Ablation rows (bench.py --impls ablation) are reported as the variant's
time over all-on's: > 1 means what the variant switches off pays.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SPEED_SCENES = ("1m", "2.8m")
SPEED_SCALES = (2.0, 3.0)
FWD_BWD_RATIO_TARGET = 1.5  # gsplat / ours, forward + backward
FWD_RATIO_TARGET = 1.0      # gsplat / ours, forward
SMALL_SCENE, SMALL_SCALE, SMALL_FWD_BWD_MS = "112k", 1.0, 0.5
BASELINES = ("gsplat", "original")


def load(paths: List[Path]) -> List[dict]:
    """The files that parse, each as {"path", "environment", "config", "results"}, the run
    with gsplat first; a file cut short mid-run (complete: false) still counts for the
    configurations it holds."""
    runs = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            print(f"report: skipping {path}: {e}", file=sys.stderr)
            continue
        runs.append(dict(data, path=str(path)))
    # Ours from the run beside gsplat first (its ratios are the issue's), the ablation's last.
    def rank(run):
        impls = {row["impl"] for row in run.get("results", [])}
        return (0 if "gsplat" in impls else 2 if impls - {"ours", *BASELINES} else 1)
    return sorted(runs, key=rank)


def key(row: dict) -> Tuple[str, float]:
    return row["scene"], float(row["scale"])


def ok(row: Optional[dict]) -> bool:
    return row is not None and not row.get("error") and "fwd_bwd_ms" in row


def median(row: dict, what: str) -> float:
    return row[f"{what}_ms"]["median"]


def pairs_with(runs: List[dict], baseline: str) -> Dict[Tuple[str, float], Tuple[dict, dict]]:
    """{(scene, scale): (ours, baseline)} from the first run that timed both there."""
    found = {}
    for run in runs:
        rows = {}
        for row in run["results"]:
            rows.setdefault(key(row), {})[row["impl"]] = row
        for k, impls in rows.items():
            if k not in found and ok(impls.get("ours")) and ok(impls.get(baseline)):
                found[k] = (impls["ours"], impls[baseline])
    return found


def ours_rows(runs: List[dict]) -> Dict[Tuple[str, float], dict]:
    """Ours per configuration, from the first file that has it."""
    found = {}
    for run in runs:
        for row in run["results"]:
            if row["impl"] == "ours" and ok(row):
                found.setdefault(key(row), row)
    return found


def targets(runs: List[dict]) -> List[Tuple[str, str, str]]:
    """(target, "met" | "missed" | "not measured", the figures)."""
    out = []
    with_gsplat = pairs_with(runs, "gsplat")
    for scene in SPEED_SCENES:
        for scale in SPEED_SCALES:
            name = f"{scene} x{scale:g}"
            pair = with_gsplat.get((scene, scale))
            if pair is None:
                out.append((f"{name}: fwd+bwd, fwd and peak against gsplat", "not measured",
                            "no run timed ours and gsplat there"))
                continue
            ours, gsplat = pair
            fb = median(gsplat, "fwd_bwd") / median(ours, "fwd_bwd")
            f = median(gsplat, "fwd") / median(ours, "fwd")
            out.append((f"{name}: fwd+bwd >= {FWD_BWD_RATIO_TARGET:g}x gsplat",
                        "met" if fb >= FWD_BWD_RATIO_TARGET else "missed",
                        f"{fb:.2f}x ({median(ours, 'fwd_bwd'):.2f} ms against "
                        f"{median(gsplat, 'fwd_bwd'):.2f} ms)"))
            out.append((f"{name}: fwd >= gsplat", "met" if f >= FWD_RATIO_TARGET else "missed",
                        f"{f:.2f}x ({median(ours, 'fwd'):.2f} ms against "
                        f"{median(gsplat, 'fwd'):.2f} ms)"))
            mo, mg = ours.get("peak_fwd_bwd_mib"), gsplat.get("peak_fwd_bwd_mib")
            if mo is None or mg is None:
                out.append((f"{name}: peak <= gsplat", "not measured", "no peak recorded"))
            else:
                out.append((f"{name}: peak <= gsplat", "met" if mo <= mg else "missed",
                            f"{mo:.0f} MiB against {mg:.0f} MiB"))
    small = ours_rows(runs).get((SMALL_SCENE, SMALL_SCALE))
    name = f"{SMALL_SCENE} x{SMALL_SCALE:g}: fwd+bwd < {SMALL_FWD_BWD_MS:g} ms"
    if small is None:
        out.append((name, "not measured", "no run timed it"))
    else:
        t = median(small, "fwd_bwd")
        out.append((name, "met" if t < SMALL_FWD_BWD_MS else "missed", f"{t:.3f} ms"))
    return out


def timing_table(runs: List[dict]) -> List[str]:
    """Markdown: ours and each baseline per configuration, with the ratios of one run."""
    lines = ["| scene | Gaussians | resolution | implementation | forward ms | backward ms | "
             "forward + backward ms | peak MiB | its / ours, forward | its / ours, f + b |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    ours = ours_rows(runs)
    paired = {b: pairs_with(runs, b) for b in BASELINES}
    for k in sorted(ours, key=lambda k: (float(ours[k]["n_gaussians"]), k[1])):
        rows = [("ours", ours[k], None)]
        for b in BASELINES:
            if k in paired[b]:
                mine, theirs = paired[b][k]
                rows.append((b, theirs, mine))
        for impl, row, mine in rows:
            peak = row.get("peak_fwd_bwd_mib")
            ratios = ("", "") if mine is None else (
                f"{median(row, 'fwd') / median(mine, 'fwd'):.2f}",
                f"{median(row, 'fwd_bwd') / median(mine, 'fwd_bwd'):.2f}")
            lines.append(f"| {row['scene']} | {row['n_gaussians']:,} | {row['resolution']} | "
                         f"{impl} | {median(row, 'fwd'):.3f} | {median(row, 'bwd'):.3f} | "
                         f"{median(row, 'fwd_bwd'):.3f} | "
                         f"{'-' if peak is None else format(peak, '.0f')} | {ratios[0]} | "
                         f"{ratios[1]} |")
    return lines


def ablation_rows(runs: List[dict]) -> List[Tuple[dict, dict]]:
    """(all on, variant) for every variant of every configuration timed with all on."""
    out = []
    for run in runs:
        rows = {}
        for row in run["results"]:
            if ok(row):
                rows.setdefault(key(row), {})[row["impl"]] = row
        for impls in rows.values():
            if "ours" in impls:
                out += [(impls["ours"], r) for v, r in impls.items()
                        if v not in ("ours",) + BASELINES]
    return out


def peak_ratio(base: dict, r: dict) -> Optional[float]:
    """The variant's forward + backward peak memory over all-on's, where both were measured."""
    peak, base_peak = r.get("peak_fwd_bwd_mib"), base.get("peak_fwd_bwd_mib")
    return peak / base_peak if peak and base_peak else None


def ablation_table(runs: List[dict]) -> List[str]:
    """Markdown: each variant's times and peak memory over all-on's of the same run (> 1:
    slower, or more memory, than all on, so what the variant switches off pays)."""
    rows = ablation_rows(runs)
    if not rows:
        return []
    return ["| scene | resolution | variant | forward | backward | forward + backward | peak |",
            "|---|---|---|---|---|---|---|"] + [
        f"| {r['scene']} | {r['resolution']} | {r['impl']} | "
        + " | ".join(f"{median(r, w) / median(base, w):.2f}x" for w in ("fwd", "bwd", "fwd_bwd"))
        + (" | -" if peak_ratio(base, r) is None else f" | {peak_ratio(base, r):.2f}x")
        + " |" for base, r in rows]


def ablation_lines(runs: List[dict]) -> List[str]:
    """One line per configuration: each variant's forward + backward over all-on's, and its
    peak memory's where that differs (the compact state's variant is about memory)."""
    by_config: Dict[Tuple[str, float], List[str]] = {}
    for base, r in ablation_rows(runs):
        item = f"{r['impl']} {median(r, 'fwd_bwd') / median(base, 'fwd_bwd'):.2f}x"
        memory = peak_ratio(base, r)
        if memory is not None and abs(memory - 1) >= 0.005:
            item += f" (peak {memory:.2f}x)"
        by_config.setdefault(key(r), []).append(item)
    return [f"  {scene} x{scale:g}: " + ", ".join(items)
            for (scene, scale), items in by_config.items()]


def environment_line(runs: List[dict]) -> str:
    env = next((r.get("environment") for r in runs if r.get("environment")), {}) or {}
    return (f"GPU {env.get('gpu', '-')} (driver {env.get('driver', '-')}), torch "
            f"{env.get('torch', '-')}, CUDA {env.get('torch_cuda', '-')}, commit "
            f"{(env.get('git_commit') or '-')[:12]}, {env.get('date_utc', '-')}")


def report(runs: List[dict], brief: bool) -> str:
    out = [environment_line(runs)]
    found = targets(runs)
    met = sum(status == "met" for _, status, _ in found)
    measured = sum(status != "not measured" for _, status, _ in found)
    out.append(f"targets of issue 9: {met} met of the {measured} measured "
               f"({len(found)} lines)")
    out += [f"  {status:12s} {name}: {figures}" for name, status, figures in found]
    if brief:
        lines = ablation_lines(runs)
        if lines:
            out += ["ablation, forward + backward of each variant / all on (> 1: it pays):"]
            out += lines
        return "\n".join(out) + "\n"
    out += ["", "Timings (medians):", ""] + timing_table(runs)
    ablation = ablation_table(runs)
    if ablation:
        out += ["", "Ablation (variant / all on; > 1: slower than all on):", ""] + ablation
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="bench.py JSON files")
    ap.add_argument("--brief", action="store_true",
                    help="the targets only (run_gpu.sh appends them to summary.txt)")
    args = ap.parse_args(argv)
    runs = load(args.files)
    if not runs:
        print("report: no results to read", file=sys.stderr)
        return 1
    sys.stdout.write(report(runs, args.brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
