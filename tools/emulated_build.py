"""Sources and flags of the emulated CUDA backend (module `_emulated_cuda`, tests only).

Every .cu file is compiled by the host compiler under DGRD_EMULATE_CUDA through a generated
one-line wrapper (setuptools hands .cu files to nvcc), so a new kernel file needs nothing here;
the sources shared with `_C` get wrappers too, so that the two modules' objects never share a
path in the build directory.
Used by setup.py and by the AddressSanitizer test (tests/test_emulation.py).
"""
import glob
import os
import platform

import build_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The glue's helpers (allocation, size checks) live in rasterize_points.cpp, which needs the CPU
# backend to link, in mcmc.cpp (the relocation's checks and outputs) and in fused_ssim.cpp (the
# SSIM's).
OWN_SOURCES = ["ext_emulated.cpp", "cuda_rasterizer/cuda_emulation.cpp"]
SHARED_SOURCES = ["rasterize_points.cpp", "cuda_rasterizer/cpu_backend.cpp", "mcmc.cpp",
                  "fused_ssim.cpp"]


def fused_multiply_add_flags():
    """The kernels' a*b+c contracted into fused multiply-adds, as nvcc does by default, so that
    the emulated CUDA backend rounds apart from the CPU backend (built with -ffp-contract=off) as
    a GPU does, and every CI run checks the CUDA tests' tolerances against that. GCC contracts
    at -O2 and up. Only where the CPU has FMA (x86: the fma flag of /proc/cpuinfo; aarch64
    always); DGRD_EMULATE_FMA=0 builds the twin that rounds as the CPU backend does."""
    if os.environ.get("DGRD_EMULATE_FMA", "1") in ("", "0"):
        return []
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ["-ffp-contract=fast", "-DDGRD_EMULATE_FMA=1"]
    if machine in ("x86_64", "amd64"):
        try:
            with open("/proc/cpuinfo") as f:
                has_fma = any(line.startswith("flags") and " fma " in f" {line.split(':', 1)[-1]} "
                              for line in f)
        except OSError:
            has_fma = False
        if has_fma:
            return ["-ffp-contract=fast", "-mfma", "-DDGRD_EMULATE_FMA=1"]
    return []


STD_FLAGS = build_config.cxx_standard_flags()
DEFINES = ["-DDGRD_EMULATE_CUDA=1"]
FMA_FLAGS = fused_multiply_add_flags()
# -O1 (-O2 with fused multiply-adds, which GCC forms from -O2 on): compiles fast, and the kernels
# run fast enough for scenes of the test suite's size.
# -Wno-unknown-pragmas: the module is built without OpenMP and its kernels' `#pragma unroll` is
# nvcc's, so GCC ignores both on purpose.
CXX_FLAGS = ((["-O2"] + FMA_FLAGS) if FMA_FLAGS else ["-O1", "-ffp-contract=off"]) + [
    "-fno-gnu-unique", "-Wno-psabi", "-Wno-unknown-pragmas"] + DEFINES + STD_FLAGS


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
