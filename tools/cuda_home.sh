#!/usr/bin/env bash
# Prints the CUDA toolkit's root (whose lib64 holds libcudart) for builds that need CUDA_HOME:
# $CUDA_HOME when set; /usr/local/cuda when it has nvcc; else the folder above the bin/ of nvcc
# on the PATH, links resolved. PyTorch's own guess is the folder above nvcc's, which is wrong
# where nvcc on the PATH is a wrapper script (/usr/local/bin/nvcc on the development machines:
# the link then fails, "cannot find -lcudart").
set -euo pipefail
if [ -n "${CUDA_HOME:-}" ]; then
    echo "$CUDA_HOME"
elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda
elif command -v nvcc > /dev/null; then
    dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"
else
    exit 1
fi
