#!/usr/bin/env bash
# The package in 3DGS's own environment: Python 3.7 and PyTorch 1.12.1 (the official repository's
# environment.yml, which many forks keep), with numpy 1.21.
#   bash tools/check_legacy_env.sh          # ~6 min here, the first time with a download of ~800 MB
# 1. a virtual environment under ~/.cache/dgrd/ with that Python (PYTHON, default python3.7: pyenv
#    provides one here) and PyTorch 1.12.1 from PyPI (its CUDA 10.2 build, whose nvcc predates
#    C++17, so the package is built CPU-only there);
# 2. in a copy of the tree, the README's two commands: the install (its setuptools upgraded first,
#    as the README says for old environments) with the demo, and the whole test suite: the CPU
#    backend, the emulated CUDA backend and its AddressSanitizer build, all compiled against
#    PyTorch 1.12's headers with the -std=c++17 that tools/build_config.py adds for torch 1.x;
# 3. every .cu file compiled by this machine's nvcc against PyTorch 1.12's headers and the CUB of
#    CUDA 11 (nvidia-cuda-cccl-cu11 from PyPI, placed before the toolkit's own headers).
# Not part of CI (the download). What it cannot show: nvcc 11's own front end (PyPI has no
# CUDA 11 nvcc), and the CUDA backend running under that PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
# python3.7 on PATH, or pyenv's 3.7 when its shim is not switched on (pyenv says "command not
# found" for a version installed but not selected).
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3.7
    if ! "$PYTHON" -c pass 2>/dev/null; then
        PYTHON=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7*/bin/python3.7 2>/dev/null \
                 | tail -1)
    fi
    [ -n "$PYTHON" ] || { echo "no Python 3.7: set PYTHON" >&2; exit 1; }
fi
VENV=${VENV:-$HOME/.cache/dgrd/legacy-venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q "torch==1.12.1" "numpy<1.22" typing_extensions wheel
fi
"$VENV/bin/python" -m pip install -q -U "setuptools>=64"   # the README's step for old environments
"$VENV/bin/python" -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "| torch",
    torch.__version__, "| numpy", numpy.__version__)'

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard | tar -cf - -T - | tar -x -C "$work/"
(cd "$work" && DGRD_CPU_ONLY=1 "$VENV/bin/python" -m pip install -v --no-build-isolation \
    -e ".[demo,test]" > build.log 2>&1 || { cat build.log; exit 1; })
grep -q "std=c++17" "$work/build.log" || { echo "no -std=c++17 in the build"; exit 1; }
(cd "$work" && "$VENV/bin/python" -m diff_gaussian_rasterization_depth demo --out "$work/demo" \
    && "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider -W ignore::UserWarning)

"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$work/cccl" \
    --platform manylinux2014_x86_64 --python-version 3.8 "nvidia-cuda-cccl-cu11==11.8.89"
(cd "$work/cccl" && "$VENV/bin/python" -m zipfile -e nvidia_cuda_cccl_cu11-*.whl .)
grep "define CUB_VERSION " "$work/cccl/nvidia/cuda_cccl/include/cub/version.cuh"
CUDA_HOME=${CUDA_HOME:-$(bash tools/cuda_home.sh)} "$VENV/bin/python" tools/check_cuda_compile.py \
    --arch 75 --include "$work/cccl/nvidia/cuda_cccl/include"
echo "check_legacy_env: all passed"
