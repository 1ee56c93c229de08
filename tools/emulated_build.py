"""Sources and flags of the emulated CUDA backend (module `_emulated_cuda`, tests only).

Every .cu file is compiled by the host compiler under DGRD_EMULATE_CUDA through a generated
one-line wrapper (setuptools hands .cu files to nvcc), so a new kernel file needs nothing here;
the sources shared with `_C` get wrappers too, so that the two modules' objects never share a
path in the build directory.
Used by setup.py and by the AddressSanitizer test (tests/test_emulation.py).
"""
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The glue's helpers (allocation, size checks) live in rasterize_points.cpp, which needs the CPU
# backend to link.
OWN_SOURCES = ["ext_emulated.cpp", "cuda_rasterizer/cuda_emulation.cpp"]
SHARED_SOURCES = ["rasterize_points.cpp", "cuda_rasterizer/cpu_backend.cpp"]
DEFINES = ["-DDGRD_EMULATE_CUDA=1"]
# -O1: compiles fast, and the kernels run fast enough for scenes of the test suite's size.
CXX_FLAGS = ["-O1", "-fno-gnu-unique", "-ffp-contract=off", "-Wno-psabi"] + DEFINES


def cuda_files():
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "*.cu")) +
                  glob.glob(os.path.join(ROOT, "cuda_rasterizer", "*.cu")))


def write_wrappers(out_dir):
    """One .cpp per .cu file and shared source, including it; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for src in SHARED_SOURCES + cuda_files():
        path = os.path.join(out_dir, src.replace(os.sep, "_").replace(".", "_") + ".cpp")
        text = f'#include "{src}"\n'
        if not os.path.exists(path) or open(path).read() != text:  # keep the build incremental
            with open(path, "w") as f:
                f.write(text)
        paths.append(path)
    return paths


def sources(out_dir, relative_to=ROOT):
    """All sources of the module, relative to `relative_to`."""
    files = [os.path.join(ROOT, s) for s in OWN_SOURCES] + write_wrappers(out_dir)
    return [os.path.relpath(f, relative_to) for f in files]
