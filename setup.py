"""Build of diff_gaussian_rasterization_depth.

`pip install --no-build-isolation .` builds against the PyTorch already installed:
- CUDA + CPU backends when that PyTorch has CUDA and nvcc (CUDA 11.0 or newer) is found: in
  CUDA_HOME, on the PATH, in /usr/local/cuda, or the toolkit pip installs beside a CUDA 13
  PyTorch (site-packages/nvidia/cu13). TORCH_CUDA_ARCH_LIST is respected; without it and
  without a visible GPU, the architectures from Volta to Blackwell that the toolkit and
  PyTorch know (tools/build_config.py);
- the CPU backend alone otherwise (or with DGRD_CPU_ONLY=1); CUDA tensors then raise a clear error.
"""
import os
import sys

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build_config  # noqa: E402
import emulated_build  # noqa: E402

# An install needs the metadata; `setup.py build_ext --inplace` (CI's copies, the GPU script)
# builds the extension alone and does not.
setuptools_problem = build_config.setuptools_problem()
if setuptools_problem and sys.argv[1:2] != ["build_ext"]:
    sys.exit("diff_gaussian_rasterization_depth: " + setuptools_problem)


def want_cuda():
    """(build the CUDA backend, why not, the toolkit's (major, minor))."""
    if os.environ.get("DGRD_CPU_ONLY", "0") not in ("", "0"):
        return False, "DGRD_CPU_ONLY is set", None
    if torch.version.cuda is None:
        return False, "this PyTorch has no CUDA", None
    home = cpp_extension.CUDA_HOME
    nvcc = "nvcc.exe" if MSVC else "nvcc"
    if home is None or not os.path.isfile(os.path.join(home, "bin", nvcc)):
        # PyTorch looks for nvcc on the PATH, then takes /usr/local/cuda (a runtime-only image
        # has one without nvcc); pip's toolkit is in neither.
        pip_home = build_config.pip_cuda_home(torch.version.cuda)
        if pip_home is None:
            missing = "nvcc / CUDA_HOME not found" if home is None else f"no nvcc in {home}"
            return False, f"{missing}; {build_config.pip_toolkit_hint(torch.version.cuda)}", None
        print(f"diff_gaussian_rasterization_depth: the CUDA toolkit pip installed, {pip_home}")
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = pip_home
    cuda = build_config.cuda_toolkit_version(cpp_extension.CUDA_HOME, torch.version.cuda)
    if cuda < build_config.MIN_CUDA:
        oldest = ".".join(map(str, build_config.MIN_CUDA))
        return False, (f"CUDA {cuda[0]}.{cuda[1]} is older than {oldest}, the first whose nvcc "
                       "compiles C++17"), cuda
    return True, "", cuda


cpu_sources = build_config.CPU_SOURCES
# Every .cu file at the root and in cuda_rasterizer/; tests/test_build.py checks that no two
# sources of _C share an object path (ninja names an object after its source, suffix dropped).
cuda_sources = emulated_build.cuda_files()


MSVC = build_config.uses_msvc()


def openmp_flags():
    """-fopenmp where the C++ compiler has OpenMP (GCC, LLVM clang); otherwise none, and the CPU
    backend runs its loops on one thread (Apple clang ships without OpenMP). MSVC: /openmp, its
    OpenMP 2.0 (vcomp140.dll, part of the Visual C++ runtime that PyTorch needs anyway).
    DGRD_NO_OPENMP=1 builds without it on purpose."""
    if os.environ.get("DGRD_NO_OPENMP", "0") not in ("", "0"):
        print("diff_gaussian_rasterization_depth: building without OpenMP (DGRD_NO_OPENMP is set); "
              "the CPU backend will use one thread")
        return []
    if MSVC:
        return ["/openmp"]
    import subprocess
    import tempfile
    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run([compiler, "-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    if not ok:
        print(f"diff_gaussian_rasterization_depth: {compiler} has no OpenMP; the CPU backend will "
              "use one thread (install libomp, or GCC, for all cores)")
        return []
    return ["-fopenmp"]


omp = openmp_flags()
link_flags = [] if MSVC else omp  # MSVC's /openmp is a compile flag only
# DGRD_BASELINE_LANES=1: the CPU's eight-lane loops for the baseline instruction set alone (no
# AVX2 or AVX-512 clones), which is what ARM and older x86 machines run; DGRD_PORTABLE_LANES=1:
# the portable form that MSVC compiles for ARM64; DGRD_AVX2_LANES=1: the AVX2 intrinsics that
# MSVC compiles for x64 (with GCC the whole module then needs AVX2). CI tests all three with GCC.
lanes = ""
for form, variable in (("baseline", "DGRD_BASELINE_LANES"), ("portable", "DGRD_PORTABLE_LANES"),
                       ("avx2", "DGRD_AVX2_LANES")):
    if os.environ.get(variable, "0") not in ("", "0"):
        print(f"diff_gaussian_rasterization_depth: lane loops in the {form} form "
              f"({variable} is set)")
        lanes = form
cxx_flags = build_config.host_compile_flags(MSVC, omp, lanes)
# nvcc's own standard flag where torch 1.x would pass C++14; the host compiler's symbol flags as
# for the C++ (build_config.UNSHARED_SYMBOLS).
nvcc_flags = build_config.cxx_standard_flags() + ["-O3", "-lineinfo"] + (
    [] if MSVC else ["-Xcompiler", ",".join(build_config.UNSHARED_SYMBOLS)])
use_cuda, why_not, cuda_version = want_cuda()
if use_cuda:
    nvcc_flags += build_config.nvcc_thread_flags(cuda_version, os.environ.get("MAX_JOBS"))
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = build_config.default_archs(
            cuda_version, build_config.torch_knows_arch)
    ext = cpp_extension.CUDAExtension(
        name="diff_gaussian_rasterization_depth._C",
        sources=cpu_sources + cuda_sources,
        include_dirs=[ROOT],
        define_macros=[("DGRD_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": nvcc_flags,
        },
        extra_link_args=link_flags,
    )
    if not MSVC:
        cudart = build_config.cudart_link_name(cpp_extension.CUDA_HOME)
        ext.libraries = [cudart if lib == "cudart" else lib for lib in ext.libraries]
else:
    print(f"diff_gaussian_rasterization_depth: building the CPU backend only ({why_not})")
    ext = cpp_extension.CppExtension(
        name="diff_gaussian_rasterization_depth._C",
        sources=cpu_sources,
        include_dirs=[ROOT],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

# The emulated CUDA backend: the CUDA kernels and glue built by the host compiler, run on the
# CPU by cuda_rasterizer/cuda_emulation.h. A test-only module, built everywhere (CI has no GPU)
# unless DGRD_NO_EMULATED=1 (a GPU machine that only wants the real kernels tested). Not on
# Windows: the emulation's threads and guard pages are POSIX (ucontext, mmap, signals).

ext_modules = [ext]
if MSVC:
    print("diff_gaussian_rasterization_depth: no emulated CUDA backend on Windows (its tests skip)")
elif os.environ.get("DGRD_NO_EMULATED", "0") in ("", "0"):
    ext_modules.append(cpp_extension.CppExtension(
        name="diff_gaussian_rasterization_depth._emulated_cuda",
        sources=emulated_build.sources(os.path.join(ROOT, "build", "emulated_sources")),
        include_dirs=[ROOT],
        extra_compile_args={"cxx": emulated_build.CXX_FLAGS},
    ))

# The licence here, not in pyproject.toml: setuptools 77 and newer deprecate its table form there
# (builds stop being supported from 2027-02-18), and before 77 they reject the SPDX string that
# replaces it (Python 3.7, 3DGS's own environment, has setuptools 68 at most).
setup(
    license="Apache-2.0",
    ext_modules=ext_modules,
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
