#!/usr/bin/env bash
# Build, CUDA tests and benchmarks on a GPU machine, in one command:
#
#   bash benchmarks/run_gpu.sh [extra bench.py arguments, e.g. --scenes 112k --reps 20]
#
# 1. installs carried wheels from .whl/ (gsplat) into /tmp/site, when there are any;
# 2. starts gsplat's one-time JIT compilation of its CUDA code in the background;
# 3. builds this package: pip install --no-build-isolation .
# 4. runs the CUDA tests: pytest -m cuda, and compute-sanitizer memcheck and racecheck on
#    tools/sanitize_cuda.py when compute-sanitizer is on PATH;
# 5. runs benchmarks/bench.py, writing <results>/<gpu-name>.json,
# where <results> is $OUT when set (the device tool's folder that comes back), else
# benchmarks/results. The log goes to <results>/run_gpu.log too.
#
# The garden data is looked up by benchmarks/scenes.py: $DGRD_DATA, ../shared/data/ or
# shared/data/ inside the repository (the copy a GPU machine gets has no ../shared); this script
# also takes .whl/garden_points.npz when there is one (.whl/ is ignored by git and carried).
#
# A compiled gsplat extension can be reused by a later run: after the JIT build, the script puts
# gsplat_cuda.so (split into parts under 15 MiB) into <results>; copy those files into .whl/ and
# the next run loads them instead of compiling (saves minutes). Only valid for the same image
# (same torch, CUDA and GPU architecture).
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the visible GPU's),
# SKIP_BUILD=1, SKIP_TESTS=1, SKIP_SANITIZE=1, SKIP_BENCH=1, SKIP_GSPLAT=1, BENCH_SH=1 (also a run with SH deg. 3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/run_gpu.log") 2>&1
tee_pid=$!
finish() { echo; echo "=== done (status $1) [$(date -u +%H:%M:%S)]"; exec 1>&- 2>&-; wait "$tee_pid"; exit "$1"; }
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
status=0
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
nvcc --version 2>/dev/null | tail -n 1 || echo "nvcc not found"
$PY -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| cuda', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'NO CUDA DEVICE')"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
    export TORCH_CUDA_ARCH_LIST
fi
echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
export MAX_JOBS=${MAX_JOBS:-8}
if [ -z "${DGRD_DATA:-}" ] && [ -f .whl/garden_points.npz ]; then
    export DGRD_DATA="$PWD/.whl/garden_points.npz"
fi
$PY -c "import sys; sys.path.append('.'); from benchmarks.scenes import find_data; \
print('data:', find_data())" || echo "WARNING: the benchmark will fail without the data file"

# --- gsplat -------------------------------------------------------------------------------------
gsplat_pid=""
if [ "${SKIP_GSPLAT:-0}" != 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    step "installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')"
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "wheel install failed: gsplat will be missing"
    fi
fi
if [ "${SKIP_GSPLAT:-0}" != 1 ] && $PY -c "import gsplat" 2>/dev/null; then
    if compgen -G ".whl/gsplat_cuda.so*" > /dev/null && [ -d /tmp/site/gsplat ]; then
        step "using the carried prebuilt gsplat extension"
        cat $(ls .whl/gsplat_cuda.so* | sort) > /tmp/gsplat_cuda.so
        # gsplat imports `gsplat.csrc` first and compiles only when that fails: make it load the
        # prebuilt library (its module name, hence its init symbol, is gsplat_cuda).
        cat > /tmp/site/gsplat/csrc.py <<'PYEOF'
"""Loads a prebuilt gsplat CUDA extension (benchmarks/run_gpu.sh)."""
import importlib.machinery
import importlib.util

import torch  # noqa: F401  (the library links against torch)

_loader = importlib.machinery.ExtensionFileLoader("gsplat_cuda", "/tmp/gsplat_cuda.so")
_spec = importlib.util.spec_from_loader("gsplat_cuda", _loader)
_module = importlib.util.module_from_spec(_spec)
_loader.exec_module(_module)
globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
PYEOF
    fi
    step "gsplat: loading or JIT-compiling its CUDA extension in the background"
    ( MAX_JOBS=$MAX_JOBS $PY -c "
import time; t = time.time()
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat has no CUDA extension'
print(f'gsplat CUDA extension ready in {time.time() - t:.0f} s')
" > "$RESULTS/gsplat_build.log" 2>&1 ) &
    gsplat_pid=$!
fi

# --- this package ---------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    step "building: pip install --no-build-isolation ."
    t0=$SECONDS
    if ! $PY -m pip install --no-build-isolation --no-deps . ; then
        echo "BUILD FAILED"; finish 1
    fi
    echo "built in $((SECONDS - t0)) s"
fi
# -P (Python >= 3.11): do not put the current directory first on sys.path, so that the installed
# (compiled) package is imported, not the source tree's copy without the extension.
PYP="$PY -P"
$PYP -c pass 2>/dev/null || PYP="$PY"
$PYP -c "import diff_gaussian_rasterization_depth as d; print('imported', d.__file__, \
'| CUDA backend:', d.has_cuda_backend())"

if [ "${SKIP_TESTS:-0}" != 1 ]; then
    step "CUDA tests: pytest -m cuda"
    t0=$SECONDS
    $PYP -m pytest -m cuda -q -p no:cacheprovider tests || status=1
    echo "tests took $((SECONDS - t0)) s"
fi
if [ "${SKIP_SANITIZE:-0}" != 1 ]; then
    sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
    if [ -n "$sanitizer" ]; then
        for tool in memcheck racecheck; do
            step "compute-sanitizer --tool $tool"
            "$sanitizer" --tool "$tool" --error-exitcode 1 $PYP tools/sanitize_cuda.py \
                || status=1
        done
    else
        echo "compute-sanitizer not found: sanitizer runs skipped"
    fi
fi

# --- benchmark ------------------------------------------------------------------------------
impls="ours,gsplat,original"
if [ -n "$gsplat_pid" ]; then
    step "waiting for gsplat"
    if wait "$gsplat_pid"; then
        cat "$RESULTS/gsplat_build.log" | tail -n 3
        so=$(ls "$TORCH_EXTENSIONS_DIR"/*/gsplat_cuda/gsplat_cuda.so 2>/dev/null | head -n 1)
        if [ -n "$so" ] && [ -n "${OUT:-}" ]; then
            # Files that come back from the device are at most 16 MiB each.
            split -b 15m -d "$so" "$RESULTS/gsplat_cuda.so.part"
            echo "saved $(du -h "$so" | cut -f1) gsplat_cuda.so as $(ls "$RESULTS"/gsplat_cuda.so.part* | wc -l) part(s): copy them into .whl/ to skip the JIT next time"
        fi
    else
        echo "gsplat's extension failed to build or load; timing without gsplat:"
        tail -n 30 "$RESULTS/gsplat_build.log"
        impls="ours,original"
    fi
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
    step "benchmark"
    $PY benchmarks/bench.py --device cuda --impls "$impls" --json-dir "$RESULTS" "$@" || status=1
    if [ "${BENCH_SH:-0}" = 1 ]; then
        step "benchmark, SH degree 3"
        $PY benchmarks/bench.py --device cuda --impls "$impls" --json-dir "$RESULTS" --sh "$@" \
            || status=1
    fi
fi
finish "$status"
