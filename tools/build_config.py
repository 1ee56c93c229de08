"""What the build needs to know about the PyTorch, setuptools, C++ compiler and CUDA toolkit it
builds with: the C++ standard to ask for, the host compiler's flags (GCC/Clang or MSVC), whether
setuptools can read pyproject.toml, the CUDA toolkit's version, and the GPU architectures to
build by default.
Used by setup.py, tools/emulated_build.py and tools/check_msvc_build.py; tested in
tests/test_build.py."""
import os
import re
import subprocess
import sys


def major_minor(version):
    """(major, minor) of a version string ("1.12.1+cu116", "2.1.0a0+git...", "47.1.0")."""
    major, minor = (int(re.match(r"\d+", part).group()) for part in version.split(".")[:2])
    return major, minor


def cxx_standard_flags(version=None, msvc=False):
    """["-std=c++17"] (MSVC: ["/std:c++17"]) where PyTorch's extension builder would pass C++14
    (torch 1.x, such as the 1.12 of 3DGS's own environment): the sources are C++17. From 2.0 on
    torch passes C++17 or C++20 itself (2.0.1's cpp_extension.py: C++17; 2.13's: C++20),
    whichever its headers need, so nothing is added there. PyTorch adds its standard only when
    none is given, so this one replaces it, for nvcc too (which refuses two)."""
    if version is None:
        import torch
        version = torch.__version__
    if major_minor(version) >= (2, 0):
        return []
    return ["/std:c++17"] if msvc else ["-std=c++17"]


def uses_msvc(platform=None):
    """Whether PyTorch builds the extension with MSVC: on Windows it always does (cl.exe, which
    nvcc also hands the host code of the .cu files)."""
    return (platform or sys.platform) == "win32"


# The lane loops of the CPU backend (cuda_rasterizer/cpu_lanes.h): "" is the compiler's own
# choice (GCC/Clang vector extensions; MSVC, which has none, AVX2 intrinsics on x64 and the
# portable form elsewhere), "baseline" the GCC/Clang form for 16-byte vectors only, "portable"
# eight plain elements with any compiler, "avx2" MSVC's intrinsics with GCC/Clang (the whole
# module then needs AVX2: a test build, not one to ship).
LANE_FORMS = {"": [], "baseline": ["-DDGRD_BASELINE_LANES"], "portable": ["-DDGRD_PORTABLE_LANES"],
              "avx2": ["-DDGRD_AVX2_LANES", "-mavx2"]}


def host_compile_flags(msvc, openmp, lanes="", version=None):
    """The C++ sources' compile flags. openmp: the compiler's OpenMP flags (none: one thread).
    Neither compiler may contract a*b+c into a fused multiply-add, so that the lane loops give
    the bits of the per-pixel loop whichever instruction set runs them."""
    std = cxx_standard_flags(version, msvc)
    if msvc:
        # /fp:precise contracts nothing (from Visual Studio 2022 on, only /fp:contract does).
        return ["/O2", "/fp:precise"] + list(openmp) + std + LANE_FORMS[lanes]
    # -fno-math-errno: sqrt need not set errno, so loops with sqrt vectorize (values unchanged).
    return (["-O3", "-ffp-contract=off", "-Wno-psabi", "-fno-math-errno"] + UNSHARED_SYMBOLS +
            list(openmp) + std + LANE_FORMS[lanes])


# GCC and Clang: nothing of the module's own is shared with other libraries in the process (the
# original rasterizer defines some of the same names): no GNU-unique symbols, and hidden
# visibility, so that the module exports its init function alone (PYBIND11_MODULE marks it),
# as pybind11 asks; without it GCC warns that the bound classes are more visible than
# pybind11's own.
UNSHARED_SYMBOLS = ["-fno-gnu-unique", "-fvisibility=hidden"]


def cuda_toolkit_version(cuda_home, fallback):
    """(major, minor) of the nvcc in cuda_home ("Cuda compilation tools, release 11.6, ..."), or
    of `fallback` (PyTorch's CUDA, "11.6") when nvcc cannot be asked."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"release (\d+)\.(\d+)", out)
        if m:
            return int(m.group(1)), int(m.group(2))
    except (OSError, subprocess.SubprocessError):
        pass
    major, minor = (fallback or "0.0").split(".")[:2]
    return int(major), int(minor)


def pip_cuda_home(torch_cuda, paths=None):
    """The CUDA toolkit pip installed beside PyTorch, for a machine with no other: NVIDIA's CUDA
    13 wheels (`pip install "cuda-toolkit[nvcc,nvvm,crt,cccl]==13.0.*"`) lay it out as one tree,
    site-packages/nvidia/cu13, nvcc in its bin/ (CUDA 12's wheels hold no nvcc). None where
    `paths` (sys.path) holds none for PyTorch's CUDA major."""
    if not torch_cuda:
        return None
    tree = os.path.join("nvidia", "cu" + torch_cuda.split(".")[0])
    nvcc = "nvcc.exe" if os.name == "nt" else "nvcc"
    for base in sys.path if paths is None else paths:
        if os.path.isfile(os.path.join(base or ".", tree, "bin", nvcc)):
            return os.path.abspath(os.path.join(base or ".", tree))
    return None


def pip_toolkit_hint(torch_cuda):
    """What to install where no nvcc is found: pip's toolkit of PyTorch's own CUDA (13 on), or
    NVIDIA's installer or conda's (CUDA 12 and older, whose wheels hold no nvcc)."""
    major_minor_cuda = ".".join((torch_cuda or "0.0").split(".")[:2])
    if major_minor(major_minor_cuda) >= (13, 0):
        return (f'pip install "cuda-toolkit[nvcc,nvvm,crt,cccl]=={major_minor_cuda}.*" gives '
                "this PyTorch's nvcc")
    return (f"install CUDA {major_minor_cuda}'s toolkit (NVIDIA's installer, or conda's "
            f"cuda-nvcc) and set CUDA_HOME")


def cudart_link_name(cuda_home):
    """The CUDA runtime as the linker is to take it: "cudart" (-lcudart), or, where the
    toolkit's library folder (lib64, else lib, as PyTorch picks it) holds only the versioned
    library, as pip's nvidia-cuda-runtime does (libcudart.so.13, no libcudart.so), that file by
    name (":libcudart.so.13": -l:, GNU ld and LLVM's lld)."""
    for lib in ("lib64", "lib"):
        folder = os.path.join(cuda_home, lib)
        if os.path.isdir(folder):
            names = os.listdir(folder)
            versioned = sorted((n for n in names if re.fullmatch(r"libcudart\.so\.\d+", n)),
                               key=lambda n: int(n.rsplit(".", 1)[1]))
            if "libcudart.so" in names or not versioned:
                return "cudart"
            return ":" + versioned[-1]
    return "cudart"


# setuptools reads the package's metadata (name, packages, extras) from pyproject.toml from 61 on,
# and builds editable installs from 64 on. pip --no-build-isolation does not enforce the
# build-system's own "setuptools>=64", and an older one (3DGS's environment has one) installs a
# package named UNKNOWN without its Python files or extras.
MIN_SETUPTOOLS = (64, 0)


def setuptools_problem(version=None):
    """Why the installed setuptools cannot build this package, or None."""
    if version is None:
        import setuptools
        version = setuptools.__version__
    if major_minor(version) >= MIN_SETUPTOOLS:
        return None
    return (f"setuptools {version} is too old to read pyproject.toml (64 or newer is needed); "
            'upgrade it with `pip install -U "setuptools>=64"`, then install again')


# The C++ sources of the package's module `_C` (with every .cu file when CUDA is built).
CPU_SOURCES = ["ext.cpp", "rasterize_points.cpp", "sparse_adam.cpp", "mcmc.cpp",
               "fused_ssim.cpp", "cuda_rasterizer/cpu_backend.cpp"]


# The oldest toolkit that builds the CUDA backend: nvcc takes -std=c++17 from CUDA 11.0 on.
MIN_CUDA = (11, 0)


def torch_knows_arch(arch):
    """Whether this PyTorch's extension builder takes `arch` in TORCH_CUDA_ARCH_LIST: it refuses
    one it does not list (8.9 and 9.0 came with PyTorch 2.0, 10.0 with 2.6, 12.0 with 2.7: the
    lists in their cpp_extension.py), so ask it."""
    from torch.utils import cpp_extension
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    try:
        return bool(cpp_extension._get_cuda_arch_flags())
    except (ValueError, AttributeError, TypeError):
        return False
    finally:
        if saved is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved


def nvcc_thread_flags(cuda, max_jobs=None, cpus=None):
    """nvcc's --threads, so that it compiles the architectures of one file side by side (CUDA
    11.2 on): a build for several (the default list without a visible GPU has up to seven) waits
    on cuda_backend.cu, whose architectures nvcc otherwise compiles one after another. As many
    threads as the CPUs, at most 4 (each takes up to about 0.7 GB there), and no more than
    MAX_JOBS where the user limits the build's jobs (PyTorch's setting, read by its ninja
    build), for a machine short of memory."""
    if cuda is None or cuda < (11, 2):
        return []
    threads = min(4, cpus or os.cpu_count() or 1)
    if max_jobs is not None and str(max_jobs).strip().isdigit():
        threads = max(1, min(threads, int(max_jobs)))
    return ["--threads", str(threads)]


# The architectures a default build covers, each with the first toolkit that knows it (CUDA 13
# dropped Volta): Volta, Turing, A100, the RTX 30 series, the RTX 40 series, Hopper, the B200
# and the RTX 50 series.
DEFAULT_ARCHS = [("7.0", (11, 0)), ("7.5", (11, 0)), ("8.0", (11, 0)), ("8.6", (11, 1)),
                 ("8.9", (11, 8)), ("9.0", (11, 8)), ("10.0", (12, 8)), ("12.0", (12, 8))]


def default_archs(cuda, torch_knows=lambda arch: True):
    """TORCH_CUDA_ARCH_LIST when none is set and no GPU is visible: every architecture of
    DEFAULT_ARCHS that both this toolkit and this PyTorch know (a toolkit or a PyTorch asked for
    one it lacks stops the build: PyTorch 1.x, 3DGS's own 1.12 included, refuses 8.9 and 9.0,
    PyTorch before 2.6 10.0, before 2.7 12.0), with PTX of the newest up to Hopper for GPUs
    none of them runs (PTX of 12.0 would not run on a 10.x or 11.0)."""
    archs = [arch for arch, first in DEFAULT_ARCHS
             if cuda >= first and not (arch == "7.0" and cuda >= (13, 0)) and torch_knows(arch)]
    ptx = max((a for a in archs if float(a) <= 9.0), key=float)
    return ";".join(a + "+PTX" if a == ptx else a for a in archs)
