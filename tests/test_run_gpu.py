"""benchmarks/run_gpu.sh --dry-run: the GPU window's staging (order, summary, deadline, what
comes back under $OUT) on the CPU, so that the script cannot rot between GPU windows."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "run_gpu.sh"
# Stages in the foreground, in order; gsplat-build (in the background) is recorded when it is
# waited for, which may come before or after timings-ours.
STAGES = ["build", "cpu-probe", "tests-cuda-vs-cpu", "garden-compare", "tests-robust-debug",
          "demo", "memcheck", "racecheck", "call-overhead", "host-profile", "opacity-field",
          "ssim", "deterministic", "timings-ours",
          "timings-gsplat", "synccheck", "initcheck", "ablation", "profile"]
BACKGROUND = "gsplat-build"
MAX_FILES_BACK = 8      # the device tool brings back at most 8 files, at most 2 folders down

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def dry_run(out: Path, **env):
    full_env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, **env)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=full_env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - t0


def stage_lines(out: Path):
    """(name, status) of each stage line of summary.txt, in order."""
    lines = (out / "summary.txt").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("--- stage"))
    rows = [l.split() for l in lines[start + 1:] if l and not l.startswith(("---", " "))]
    return [(r[0], r[1]) for r in rows]


def test_dry_run_runs_every_stage_in_order_and_writes_out(tmp_path):
    proc, _ = dry_run(tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    stages = stage_lines(tmp_path)
    assert [name for name, _ in stages if name != BACKGROUND] == STAGES, stages
    status = dict(stages)
    assert status.pop("timings-gsplat") == "skipped"
    assert all(s == "ok" for s in status.values()), stages

    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) <= MAX_FILES_BACK and all(p.parent == tmp_path for p in files), files
    # The summary comes back last in the output too (the reply shows the output's end).
    assert log.rstrip().endswith((tmp_path / "summary.txt").read_text().rstrip())
    assert (tmp_path / "run_gpu.log").read_text().count("=== ") >= len(STAGES)

    # The targets, judged from the timings that came back (none against gsplat on the CPU).
    summary = (tmp_path / "summary.txt").read_text()
    assert ("--- targets (benchmarks/report.py --brief bench_ablation.json bench_ours.json"
            in summary)
    assert summary.count("    not measured ") == 5 and "  ablation, forward + backward" in summary
    # The Python around one call, on one line: the full call costs more than the raw backend.
    overhead = json.loads(summary.split("  call overhead, us: ", 1)[1].splitlines()[0])
    assert overhead["forward"] > overhead["raw_forward"] > 0 and overhead["device"] == "cpu"
    # A step under the profiler, on one line: on the CPU no device time, no launches.
    host = json.loads(summary.split("  host profile of a step: ", 1)[1].splitlines()[0])
    assert host["step_ms"] > 0 and host["device_busy_ms"] == 0 == host["kernel_launches"]
    assert host["top_host_ops_us"] and host["device"] == "cpu"

    compare = json.loads((tmp_path / "compare_cuda_cpu.json").read_text())
    assert set(compare["outputs"]) == {"color", "depth", "weight"}
    assert compare["outputs"]["color"]["max_abs_diff"] == 0.0    # CPU against itself
    assert compare["gradients"]["all"]["means3D"]["max_abs_ref"] > 0
    # ... and the call with features, the median and inverse depth.
    assert set(compare["optional"]["outputs"]) == {"color", "depth", "weight", "feature_map",
                                                   "median"}
    assert compare["optional"]["outputs"]["median"]["max_abs_ref"] > 0
    assert compare["optional"]["gradients"]["all"]["features"]["max_abs_ref"] > 0
    bench = json.loads((tmp_path / "bench_ours.json").read_text())
    assert bench["complete"] is True and len(bench["results"]) == 2    # two resolutions
    assert bench["environment"]["git_commit"]
    # The ablation of the CUDA kernels: on the CPU, ours and the 2024 call alone, saying why not
    # the others.
    ablation = json.loads((tmp_path / "bench_ablation.json").read_text())
    assert [r["impl"] for r in ablation["results"]] == [
        "ours", "ours-2024", "ours-surface", "ours-contributions", "ours-radegs", "ours-pgsr",
        "ours-pgsr-no-abs"] * 2
    assert "CUDA" in ablation["environment"]["ours-none_unavailable_because"]
    assert "test_no_memory_growth_and_repeatable" in log    # the CUDA tests were collected
    assert "test_radius_beyond_2_30_from_far_off_screen" in log
    # The steps that ncu profiles on a GPU ran, one process per configuration in order
    # (without the profiler).
    assert log.index("--- profile: 300:0.1") < log.index("--- profile: 200:0.1")
    assert "ours 300 " in log and "ours 200 " in log and "marked step" in log


def test_dry_run_keeps_its_deadline(tmp_path):
    """Every stage a 60 s sleep against a 12 s budget: the first stage that starts is stopped at
    the deadline, the others are skipped, the run ends on time, and every foreground stage
    still leaves its line in the summary."""
    budget = 12
    proc, elapsed = dry_run(tmp_path, RUN_GPU_BUDGET_S=str(budget), RUN_GPU_FAKE_STEP_S="60")
    # The budget, plus the last timeout's --kill-after margin, the shell's own start and the
    # summary of the skipped stages: 20 s of slack, as the real run keeps 30 s between its
    # deadline (560 s) and the device tool's limit (590 s). It was 8 s, which a machine loaded
    # by two builds overran once; a run that waited for any stage's sleep would take 60 s.
    assert elapsed < budget + 20, elapsed
    stages = stage_lines(tmp_path)
    names = [name for name, _ in stages if name != BACKGROUND]
    assert names[:7] == STAGES[:7], stages          # each foreground stage leaves a line
    assert any(st == "skipped" for _, st in stages), stages
    if any(st == "TIMEOUT" for name, st in stages if name != BACKGROUND):
        assert proc.returncode != 0
    assert "--- end" in (tmp_path / "summary.txt").read_text()


def test_dry_run_skips_the_stages_asked_to(tmp_path):
    """RUN_GPU_SKIP: a later GPU window leaves out what an earlier one settled."""
    proc, _ = dry_run(tmp_path, RUN_GPU_SKIP="memcheck,racecheck,ablation")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = stage_lines(tmp_path)
    assert [name for name, _ in stages if name != BACKGROUND] == STAGES, stages
    status = dict(stages)
    assert [status[s] for s in ("memcheck", "racecheck", "ablation")] == ["skipped"] * 3
    assert status["tests-robust-debug"] == status["timings-ours"] == "ok"
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.count("RUN_GPU_SKIP") == 3
    assert not (tmp_path / "bench_ablation.json").exists()
