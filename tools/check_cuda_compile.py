"""Compile every .cu file of the package with nvcc against PyTorch's headers (no link).

CI has nvcc but a CPU-only PyTorch and no GPU, so the CUDA backend cannot be built into the
extension there; this proves it compiles. Usage:
    python tools/check_cuda_compile.py [--arch 75 --arch 90] [--jobs 2] [--registers]
                                       [--include DIR]
Exits non-zero on the first compile error, printing nvcc's output. --registers also prints each
render kernel's registers and spills per architecture (ptxas -v), and fails when one spills more
than RENDER_SPILL_LIMIT bytes: the render kernels are compiled for a number of blocks per SM
(their __launch_bounds__), and a spill that grows past a few bytes of staging is a slowdown no
CPU test can see. With each kernel's static shared memory it prints the blocks of 256 threads an
SM can hold by registers, shared memory and threads (the occupancy the design assumes, checked
without a GPU). --include puts a folder of headers before the toolkit's own: an older CUB, as
tools/check_legacy_env.sh does to compile against CUDA 11's.
"""
import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build_config  # noqa: E402

# Bytes of spill stores a render kernel may have. The largest, 52 B (sm_90), is the median's
# render with warp skipping and the split forward: all of it in the per-batch staging (SASS: no
# local-memory access in its per-splat loops), a few instructions per 256 splats.
RENDER_SPILL_LIMIT = 64


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
    if not any(os.path.exists(os.path.join(p, CMAKE_MACROS)) for p in paths):
        paths.append(cmake_macros_shim(shim_dir))
    return paths + [sysconfig.get_paths()["include"]]


CMAKE_MACROS = os.path.join("c10", "cuda", "impl", "cuda_cmake_macros.h")


def cmake_macros_shim(shim_dir):
    """A folder holding CMAKE_MACROS as CMake writes it for a shared-library build; returns it."""
    os.makedirs(os.path.join(shim_dir, os.path.dirname(CMAKE_MACROS)), exist_ok=True)
    with open(os.path.join(shim_dir, CMAKE_MACROS), "w") as f:
        f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return shim_dir


def cxx_standard():
    """The C++ standard PyTorch's own extension builder passes (C++20 from torch 2.10 on)."""
    import inspect
    from torch.utils import cpp_extension
    return "c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "c++17"


def compile_one(nvcc, source, archs, includes, outdir, extra=()):
    import torch
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd = [nvcc, "-c", source, "-o", os.path.join(outdir, os.path.basename(source) + ".o"),
           f"-std={cxx_standard()}", "-O3", "-DDGRD_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Xcompiler", "-fPIC", "-Xcompiler",
           ",".join(build_config.UNSHARED_SYMBOLS), *gencode, *extra]
    for inc in [ROOT] + includes:
        cmd += ["-I", inc]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return source, proc.returncode, proc.stdout + proc.stderr


def kernel_resources(log):
    """(arch, kernel, registers, spill store bytes, static shared memory bytes) of each kernel
    in ptxas -v output; kernel names demangled when c++filt is present."""
    rows, arch, name, spill = [], None, None, 0
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            name, arch, spill = m.group(1), m.group(2), 0
        m = re.search(r"(\d+) bytes spill stores", line)
        if m and name:
            spill = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            rows.append((arch, name, int(m.group(1)), spill, int(smem.group(1)) if smem else 0))
            name = None
    if shutil.which("c++filt") and rows:
        names = subprocess.run(["c++filt"], input="\n".join(r[1] for r in rows),
                               capture_output=True, text=True).stdout.splitlines()
        if len(names) == len(rows):
            short = [re.sub(r"\(.*", "", n.replace("(anonymous namespace)::", ""))
                     .replace("void ", "").replace("dgrd::gpu::", "") for n in names]
            rows = [(a, s, *rest) for (a, _, *rest), s in zip(rows, short)]
    return rows


# Per SM: registers, shared memory, shared memory the runtime reserves per block, threads,
# blocks (CUDA programming guide, compute capabilities 7.5 and 9.0).
SM_LIMITS = {"sm_75": (65536, 64 << 10, 0, 1024, 16),
             "sm_90": (65536, 228 << 10, 1 << 10, 2048, 32)}


def blocks_per_sm(arch, registers, smem, threads=256):
    """(blocks of `threads` an SM holds, what limits it) by the kernel's registers (allocated
    per warp in units of 256) and static shared memory; None for an arch not in SM_LIMITS."""
    if arch not in SM_LIMITS:
        return None
    sm_registers, sm_smem, reserved, sm_threads, sm_blocks = SM_LIMITS[arch]
    warps = threads // 32
    per_warp = -(-registers * 32 // 256) * 256
    limits = {"threads": sm_threads // threads, "blocks": sm_blocks,  # full occupancy first
              "registers": sm_registers // per_warp // warps if registers else sm_blocks,
              "shared memory": sm_smem // (smem + reserved) if smem else sm_blocks}
    which = min(limits, key=limits.get)
    return limits[which], which


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="compute capability digits, e.g. 90")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--registers", action="store_true",
                    help="print the render kernels' registers and spills; fail on large spills")
    ap.add_argument("--include", action="append", default=[],
                    help="a folder of headers searched before PyTorch's and the toolkit's")
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
        includes = args.include + torch_includes(os.path.join(outdir, "shim"))
        extra = ["-Xptxas", "-v"] if args.registers else []
        jobs = [pool.submit(compile_one, nvcc, s, archs, includes, outdir, extra)
                for s in sources]
        for job in jobs:
            source, rc, log = job.result()
            name = os.path.relpath(source, ROOT)
            if rc != 0:
                failed += 1
                print(f"FAIL  {name}\n{log}")
                continue
            print(f"ok    {name} (sm_{', sm_'.join(archs)})")
            for arch, kernel, registers, spill, smem in (kernel_resources(log)
                                                         if args.registers else []):
                if "render" not in kernel:
                    continue
                occupancy = blocks_per_sm(arch, registers, smem)
                fits = "" if occupancy is None else f"{occupancy[0]} blocks/SM ({occupancy[1]})"
                print(f"      {arch}  {registers:3d} registers  {spill:3d} B spilled  "
                      f"{smem / 1024:5.1f} KiB smem  {fits:28s} {kernel}")
                if spill > RENDER_SPILL_LIMIT:
                    failed += 1
                    print(f"FAIL  {kernel} ({arch}) spills {spill} bytes, more than "
                          f"{RENDER_SPILL_LIMIT}")
    if failed:
        sys.exit(f"check_cuda_compile: {failed} failures (compile errors or spilling render "
                 "kernels)")
    print(f"check_cuda_compile: all {len(sources)} CUDA sources compile")


if __name__ == "__main__":
    main()
