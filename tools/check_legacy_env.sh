#!/usr/bin/env bash
# The package in 3DGS's own environment: Python 3.7 and PyTorch 1.12.1 (the official repository's
# environment.yml, which many forks keep), with numpy 1.21.
#   bash tools/check_legacy_env.sh          # ~8 min here, the first time with a download of ~900 MB
# 1. a virtual environment under ~/.cache/dgrd/ with that Python (PYTHON, default python3.7: pyenv
#    provides one here) and PyTorch 1.12.1 from PyPI (its CUDA 10.2 build, whose nvcc predates
#    C++17, so the package is built CPU-only there);
# 2. in a copy of the tree, the README's two commands: the install (its setuptools upgraded first,
#    as the README says for old environments) with the demo, and the whole test suite: the CPU
#    backend, the emulated CUDA backend and its AddressSanitizer build, all compiled against
#    PyTorch 1.12's headers with the -std=c++17 that tools/build_config.py adds for torch 1.x;
# 3. every .cu file compiled against PyTorch 1.12's headers by CUDA 11.8's own nvcc, with its CUB
#    and ptxas and GCC 11 (tools/check_nvcc_versions.py: registers, and no spill in a per-splat loop).
# Not part of CI (the download). What it cannot show: the CUDA backend running under that
# PyTorch, and CUDA 11.6, 3DGS's own, which Debian does not package (11.8 is the closest).
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

# CUDA 11.8's own nvcc, CUB and g++-11 (Debian's non-free toolkit, headers from PyPI).
python3 tools/check_nvcc_versions.py --cuda 11.8 --python "$VENV/bin/python"
echo "check_legacy_env: all passed"
