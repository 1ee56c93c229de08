#!/usr/bin/env bash
# Builds, on a machine without a GPU, what benchmarks/run_gpu.sh would otherwise compile inside
# the short GPU window, against the GPU image's Python and PyTorch, into .whl/ (ignored by git):
#   .whl/prebuilt/   this package's _C (CUDA and CPU backends) and prebuilt.json (tools/prebuilt.py:
#                    run_gpu.sh installs it only for the same sources, Python, PyTorch and arch)
#   .whl/gsplat_cuda-<torch>-cu<cuda>-sm<arch>.so.gz.partNN   gsplat 1.5.3's CUDA extension, from
#                    the wheel in .whl/ (run_gpu.sh loads it instead of its JIT build)
#   .whl/orig/diff_gaussian_rasterization/_C*.so   the original rasterizer, when its source is in
#                    .whl/orig/ (tools/fetch_gpu_wheels.sh; non-commercial: never committed)
# It is also the one place where `setup.py build_ext` runs with a CUDA PyTorch off the GPU
# machine: CI's PyTorch has no CUDA, so there only the CPU half of _C is built and linked.
#
#   bash tools/build_for_gpu_image.sh [--only ours|gsplat|orig|pip-toolkit]
#
# --only pip-toolkit (not part of the default, and writes nothing to .whl/) checks the build of
# a user who has no CUDA toolkit but the one pip installs beside a CUDA 13 PyTorch (NVIDIA's
# cuda-toolkit[nvcc,nvvm,crt,cccl] wheels, of PyTorch's own CUDA): it installs them into the
# virtual environment, hides this machine's toolkit and the nvcc on the PATH in a mount
# namespace (unshare -m: root), builds, and loads the module with its CUDA half.
#
# Needs python$GPU_PYTHON_VERSION (3.12; or GPU_PYTHON=path) and nvcc. Installs
# torch==$GPU_TORCH_VERSION (2.11.0, which is 2.11.0+cu130 on PyPI, about 4.7 GB with its CUDA
# libraries) into a virtual environment at $GPU_VENV (default ~/.cache/dgrd/gpu-venv-<torch>).
# GPU_ARCH: 9.0 (the H200); MAX_JOBS: 2.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

only=${2:-}
if [ "${1:-}" != "" ] && { [ "$1" != "--only" ] || [ -z "$only" ]; } \
        || ! [[ "$only" =~ ^(|ours|gsplat|orig|pip-toolkit)$ ]]; then
    echo "usage: bash tools/build_for_gpu_image.sh [--only ours|gsplat|orig|pip-toolkit]" >&2
    exit 2
fi
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }

PYV=${GPU_PYTHON_VERSION:-3.12}
TORCH_V=${GPU_TORCH_VERSION:-2.11.0}
ARCH=${GPU_ARCH:-9.0}
VENV=${GPU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/dgrd/gpu-venv-$TORCH_V}
export MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=$ARCH
CUDA_HOME=$(bash tools/cuda_home.sh) || { echo "nvcc not found" >&2; exit 1; }
export CUDA_HOME
mkdir -p .whl
git check-ignore -q .whl || { echo ".whl is not ignored by git: stopping" >&2; exit 1; }

# ----------------------------------------------------------------- the GPU image's PyTorch
# python3.12 from $GPU_PYTHON, the PATH, or pyenv's versions (whose shim fails unless selected).
find_python() {
    local c
    local pyenv_root
    pyenv_root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    for c in "${GPU_PYTHON:-}" "$(command -v "python$PYV" || true)" \
             $(ls -d "$pyenv_root"/versions/"$PYV"*/bin/python 2>/dev/null | sort -rV); do
        [ -n "$c" ] && "$c" -c "import sys; assert sys.version.startswith('$PYV.')" 2>/dev/null \
            && { echo "$c"; return 0; }
    done
    return 1
}
if [ ! -x "$VENV/bin/python" ]; then
    base=$(find_python) || {
        echo "python$PYV not found (the GPU image's Python): set GPU_PYTHON" >&2
        exit 1
    }
    "$base" -m venv "$VENV"
fi
PY=$VENV/bin/python
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_V')" \
        2>/dev/null; then
    "$PY" -m pip install -q "torch==$TORCH_V" numpy ninja "setuptools<82" wheel jaxtyping rich
fi
tag=$("$PY" tools/prebuilt.py tag --arch "$ARCH")
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
echo "building for $("$PY" --version), torch $torch_version, sm $ARCH ($tag)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------------------- this package
if want ours; then
    # A copy of what the device tool sends (tracked files, and untracked ones git does not
    # ignore), so that the build's objects and .so stay out of the work tree.
    git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$work"
    (cd "$work" && DGRD_NO_EMULATED=1 "$PY" setup.py build_ext --inplace > build.log 2>&1) \
        || { tail -n 40 "$work/build.log"; exit 1; }
    so=$(ls "$work"/diff_gaussian_rasterization_depth/_C.*.so)
    strip --strip-debug "$so"   # host debug sections only; the kernels keep their line info
    rm -rf .whl/prebuilt
    (cd "$work" && "$PY" tools/prebuilt.py record "$REPO/.whl/prebuilt" "$so" --arch "$ARCH")
    ls -l .whl/prebuilt
fi

# ------------------------------------------------- this package with the toolkit pip installs
if [ "$only" = pip-toolkit ]; then
    cuda=$("$PY" -c 'import torch; print(".".join(torch.version.cuda.split(".")[:2]))')
    "$PY" -m pip install -q "cuda-toolkit[nvcc,nvvm,crt,cccl]==$cuda.*"
    git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$work"
    mkdir "$work/hidden"
    : > "$work/hidden-nvcc"
    hide="mount --bind '$work/hidden' '$(readlink -f "$CUDA_HOME")'"
    for nvcc in $(which -a nvcc || true); do
        hide="$hide && mount --bind '$work/hidden-nvcc' '$nvcc'"
    done
    unshare -m bash -c "$hide && cd '$work' && ! which nvcc && env -u CUDA_HOME \
        -u CUDA_PATH DGRD_NO_EMULATED=1 '$PY' setup.py build_ext --inplace" > "$work/build.log" 2>&1 \
        || { tail -n 40 "$work/build.log"; exit 1; }
    grep "the CUDA toolkit pip installed" "$work/build.log"
    grep -q -- "-l:libcudart.so" "$work/build.log"
    (cd "$work" && "$PY" -c "
from diff_gaussian_rasterization_depth import _C
assert _C.has_cuda(), 'built without its CUDA half'
print('pip-toolkit: the module loads, with its CUDA half')")
    exit 0
fi

# ---------------------------------------------------------------------------------- gsplat
wheel=$(ls .whl/gsplat-*.whl 2>/dev/null | head -n 1 || true)
if want gsplat && [ -n "$wheel" ]; then
    "$PY" -m pip install -q --no-deps --force-reinstall "$wheel"
    TORCH_EXTENSIONS_DIR=$work/ext "$PY" -c "
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat built no CUDA extension'"
    rm -f .whl/gsplat_cuda-"$tag".so.gz.part*
    strip --strip-debug "$work/ext/gsplat_cuda/gsplat_cuda.so"
    gzip -6 -c "$work/ext/gsplat_cuda/gsplat_cuda.so" \
        | split -b 15m -d - ".whl/gsplat_cuda-$tag.so.gz.part"
    ls -l .whl/gsplat_cuda-"$tag".so.gz.part*
elif want gsplat; then
    echo "gsplat: no .whl/gsplat-*.whl (bash tools/fetch_gpu_wheels.sh): skipped"
fi

# ------------------------------------------------------------------- the original rasterizer
if want orig && [ -f .whl/orig/setup.py ]; then
    (cd .whl/orig && NVCC_APPEND_FLAGS='-include cstdint' "$PY" setup.py build_ext --inplace \
        > "$work/orig.log" 2>&1) || { tail -n 40 "$work/orig.log"; exit 1; }
    rm -rf .whl/orig/build
    strip --strip-debug .whl/orig/diff_gaussian_rasterization/_C.*.so
    ls -l .whl/orig/diff_gaussian_rasterization/_C.*.so
elif want orig; then
    echo "original: no .whl/orig/setup.py (bash tools/fetch_gpu_wheels.sh): skipped"
fi
du -sh .whl
