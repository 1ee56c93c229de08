"""Build of diff_gaussian_rasterization_depth.

`pip install --no-build-isolation .` builds against the PyTorch already installed:
- CUDA + CPU backends when that PyTorch has CUDA and nvcc is found (TORCH_CUDA_ARCH_LIST is
  respected; without it and without a visible GPU, a list from Volta to Hopper is used);
- the CPU backend alone otherwise (or with DGRD_CPU_ONLY=1); CUDA tensors then raise a clear error.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def default_archs():
    """Volta (CUDA < 13 only: CUDA 13 dropped it) or Turing to Hopper, with PTX for newer GPUs."""
    major = int((torch.version.cuda or "0").split(".")[0])
    return ("7.0;" if major < 13 else "") + "7.5;8.0;8.6;8.9;9.0+PTX"


def rel(path):
    return os.path.relpath(path, ROOT)


def want_cuda():
    if os.environ.get("DGRD_CPU_ONLY", "0") not in ("", "0"):
        return False, "DGRD_CPU_ONLY is set"
    if torch.version.cuda is None:
        return False, "this PyTorch has no CUDA"
    if cpp_extension.CUDA_HOME is None:
        return False, "nvcc / CUDA_HOME not found"
    return True, ""


cpu_sources = ["ext.cpp", "rasterize_points.cpp", "sparse_adam.cpp",
               "cuda_rasterizer/cpu_backend.cpp"]
cuda_sources = sorted(rel(p) for p in glob.glob(os.path.join(ROOT, "*.cu")) +
                      glob.glob(os.path.join(ROOT, "cuda_rasterizer", "*.cu")))

cxx_flags = ["-O3", "-fopenmp", "-fno-gnu-unique",
             # sqrt need not set errno: lets loops with sqrt vectorize (values are unchanged)
             "-fno-math-errno"]  # the C++ standard is PyTorch's choice
use_cuda, why_not = want_cuda()
if use_cuda:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = default_archs()
    ext = cpp_extension.CUDAExtension(
        name="diff_gaussian_rasterization_depth._C",
        sources=cpu_sources + cuda_sources,
        include_dirs=[ROOT],
        define_macros=[("DGRD_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "-Xcompiler", "-fno-gnu-unique", "-lineinfo"],
        },
        extra_link_args=["-fopenmp"],
    )
else:
    print(f"diff_gaussian_rasterization_depth: building the CPU backend only ({why_not})")
    ext = cpp_extension.CppExtension(
        name="diff_gaussian_rasterization_depth._C",
        sources=cpu_sources,
        include_dirs=[ROOT],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
