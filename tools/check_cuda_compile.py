"""Compile every .cu file of the package with nvcc against PyTorch's headers (no link).

CI has nvcc but a CPU-only PyTorch and no GPU, so the CUDA backend cannot be built into the
extension there; this proves it compiles. Usage:
    python tools/check_cuda_compile.py [--arch 70 --arch 90] [--jobs 2]
Exits non-zero on the first compile error, printing nvcc's output.
"""
import argparse
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc():
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.exists(candidate):
            return candidate
    sys.exit("check_cuda_compile: nvcc not found (set CUDA_HOME or NVCC)")


def torch_includes(shim_dir):
    """PyTorch's include paths. A CPU-only wheel ships the c10/cuda headers but not the one
    that its CMake build generates; a shim with the content CMake writes for a shared-library
    build stands in for it."""
    from torch.utils import cpp_extension
    paths = cpp_extension.include_paths()
    generated = os.path.join("c10", "cuda", "impl", "cuda_cmake_macros.h")
    if not any(os.path.exists(os.path.join(p, generated)) for p in paths):
        os.makedirs(os.path.join(shim_dir, os.path.dirname(generated)))
        with open(os.path.join(shim_dir, generated), "w") as f:
            f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        paths.append(shim_dir)
    return paths + [sysconfig.get_paths()["include"]]


def cxx_standard():
    """The C++ standard PyTorch's own extension builder passes (C++20 from torch 2.10 on)."""
    import inspect
    from torch.utils import cpp_extension
    return "c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "c++17"


def compile_one(nvcc, source, archs, includes, outdir):
    import torch
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd = [nvcc, "-c", source, "-o", os.path.join(outdir, os.path.basename(source) + ".o"),
           f"-std={cxx_standard()}", "-O3", "-DDGRD_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Xcompiler", "-fPIC", "-Xcompiler",
           "-fno-gnu-unique", *gencode]
    for inc in [ROOT] + includes:
        cmd += ["-I", inc]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return source, proc.returncode, proc.stdout + proc.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="compute capability digits, e.g. 90")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    archs = args.arch or ["75", "90"]  # Turing (the oldest CUDA 13 builds for) and Hopper
    sources = sorted(glob.glob(os.path.join(ROOT, "*.cu")) +
                     glob.glob(os.path.join(ROOT, "cuda_rasterizer", "*.cu")))
    if not sources:
        sys.exit("check_cuda_compile: no .cu files found")
    nvcc = find_nvcc()
    failed = 0
    with tempfile.TemporaryDirectory() as outdir, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        includes = torch_includes(os.path.join(outdir, "shim"))
        jobs = [pool.submit(compile_one, nvcc, s, archs, includes, outdir) for s in sources]
        for job in jobs:
            source, rc, log = job.result()
            name = os.path.relpath(source, ROOT)
            if rc == 0:
                print(f"ok    {name} (sm_{', sm_'.join(archs)})")
            else:
                failed += 1
                print(f"FAIL  {name}\n{log}")
    if failed:
        sys.exit(f"check_cuda_compile: {failed} of {len(sources)} CUDA sources failed to compile")
    print(f"check_cuda_compile: all {len(sources)} CUDA sources compile")


if __name__ == "__main__":
    main()
