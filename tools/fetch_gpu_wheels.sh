#!/usr/bin/env bash
# Fills .whl/ (ignored by git) with what benchmarks/run_gpu.sh needs on a GPU machine that has no
# network: the gsplat 1.5.3 wheel (pure Python; its dependencies ninja, numpy, jaxtyping, rich and
# torch are in the GPU image) and, unless --no-orig, the source of the original rasterizer with
# its glm submodule in .whl/orig/. The original is under a non-commercial licence: it is built
# on the GPU machine for the side-by-side timings only and must never be committed.
#
#   bash tools/fetch_gpu_wheels.sh [--no-orig] [DEST]        # DEST defaults to .whl
#
# ORIG_SRC and GLM_SRC name the git repositories to take the sources from (a URL or a local
# clone or mirror; default: GitHub). GPU_PYTHON_VERSION (default 3.12) is the GPU machine's Python.
set -euo pipefail
cd "$(dirname "$0")/.."

with_orig=1
if [ "${1:-}" = "--no-orig" ]; then with_orig=0; shift; fi
dest=${1:-.whl}
mkdir -p "$dest"
git check-ignore -q "$dest" || echo "WARNING: $dest is not ignored by git: never commit its content" >&2

python3 -m pip download --no-deps --only-binary=:all: \
    --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest" gsplat==1.5.3
ls "$dest"/gsplat-1.5.3-*.whl

[ "$with_orig" = 1 ] || exit 0

ORIG_SRC=${ORIG_SRC:-https://github.com/graphdeco-inria/diff-gaussian-rasterization}
GLM_SRC=${GLM_SRC:-https://github.com/g-truc/glm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A local repository (bare or not) is read in place; a URL is cloned without blobs first.
repo_of() {
    if [ -d "$1" ]; then echo "$1"; return; fi
    git clone -q --bare --filter=blob:none "$1" "$work/$2.git"
    echo "$work/$2.git"
}
orig_repo=$(repo_of "$ORIG_SRC" orig)
orig_commit=$(git -C "$orig_repo" rev-parse HEAD)
glm_commit=$(git -C "$orig_repo" ls-tree HEAD third_party/glm | awk '{print $3}')
glm_repo=$(repo_of "$GLM_SRC" glm)

rm -rf "$dest/orig"
mkdir -p "$dest/orig/third_party/glm"
git -C "$orig_repo" archive --format=tar "$orig_commit" | tar -x -C "$dest/orig"
# Only the headers and the licence of glm: the rest (docs, tests) is megabytes the build skips.
git -C "$glm_repo" archive --format=tar "$glm_commit" glm copying.txt \
    | tar -x -C "$dest/orig/third_party/glm"
echo "diff-gaussian-rasterization $orig_commit with glm $glm_commit (from $ORIG_SRC, $GLM_SRC)" \
    > "$dest/orig/SOURCE.txt"
cat "$dest/orig/SOURCE.txt"
du -sh "$dest"
