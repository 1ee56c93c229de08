"""Compile every .cu file of the package with nvcc against PyTorch's headers (no link).

CI has nvcc but a CPU-only PyTorch and no GPU, so the CUDA backend cannot be built into the
extension there; this proves it compiles. Usage:
    python tools/check_cuda_compile.py [--arch 75 --arch 90] [--jobs 2] [--registers]
                                       [--include DIR]
Exits non-zero on the first compile error, printing nvcc's output. --registers also prints each
render kernel's registers and spills per architecture (ptxas -v), with its static shared memory
and the blocks of 256 threads an SM can hold by them (the occupancy the design assumes, checked
without a GPU), and reads the machine code (cuobjdump -sass): it fails when a render kernel
touches local memory (a spill) inside a per-splat loop, where every splat of every pixel would
pay for it, or spills more than RENDER_SPILL_LIMIT bytes in all. The render kernels are compiled
for a number of blocks per SM (their __launch_bounds__), and a spill in their hot loops is a
slowdown no CPU test can see. --include puts a folder of headers before the toolkit's own: an
older CUB. tools/check_nvcc_versions.py runs this check with CUDA 12.4's, 13.5's and 11.8's own
nvcc.
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

# Bytes of spill stores a render kernel may have in all. The largest seen, 72 B (CUDA 11.8's
# ptxas, sm_90; 52 B with CUDA 13.0's), is the median's render with warp skipping and the split
# forward: all of it in the per-batch staging, a few instructions per 256 splats. Spills inside
# the per-splat loops fail the check at any size (per_splat_local_accesses).
RENDER_SPILL_LIMIT = 128

# cuobjdump and the nvdisasm it runs, where the toolkit has none beside nvcc (CUDA 13.0 on the
# development machines has neither): PyPI's, of the oldest CUDA 13 release it carries.
DISASSEMBLER_WHEELS = ("nvidia-cuda-cuobjdump==13.2.51", "nvidia-cuda-nvdisasm==13.2.51")


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
    names = short_names([r[1] for r in rows])
    return [(a, n, *rest) for (a, _, *rest), n in zip(rows, names)]


# Per SM: registers, shared memory, shared memory the runtime reserves per block, threads,
# blocks (CUDA programming guide, compute capabilities 7.5, 8.0, 8.6, 8.9, 9.0, 10.0 and 12.0:
# Turing, A100, the RTX 30 and 40 series most 3DGS users train on, Hopper, the B200 and the RTX
# 50 series; 12.0's 1536 threads and 100 KiB as an RTX 50's deviceQuery prints them).
SM_LIMITS = {"sm_75": (65536, 64 << 10, 0, 1024, 16),
             "sm_80": (65536, 164 << 10, 1 << 10, 2048, 32),
             "sm_86": (65536, 100 << 10, 1 << 10, 1536, 16),
             "sm_89": (65536, 100 << 10, 1 << 10, 1536, 24),
             "sm_90": (65536, 228 << 10, 1 << 10, 2048, 32),
             "sm_100": (65536, 228 << 10, 1 << 10, 2048, 32),
             "sm_120": (65536, 100 << 10, 1 << 10, 1536, 32)}


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


def short_names(mangled):
    """Kernel names as C++ spells them, without parameters and namespaces, where c++filt is
    present (else as given)."""
    if not shutil.which("c++filt") or not mangled:
        return list(mangled)
    names = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True,
                           text=True).stdout.splitlines()
    if len(names) != len(mangled):
        return list(mangled)
    return [re.sub(r"\(.*", "", n.replace("(anonymous namespace)::", ""))
            .replace("void ", "").replace("dgrd::gpu::", "") for n in names]


def find_disassembler(nvcc):
    """A folder holding cuobjdump and nvdisasm: the toolkit's own, beside nvcc, else PyPI's,
    fetched once into ~/.cache/dgrd/cuobjdump."""
    for folder in (os.path.dirname(os.path.realpath(nvcc)), os.path.dirname(nvcc)):
        if all(os.access(os.path.join(folder, p), os.X_OK) for p in ("cuobjdump", "nvdisasm")):
            return folder
    import downloads
    dest = os.path.join(downloads.CACHE, "cuobjdump")
    for spec in DISASSEMBLER_WHEELS:
        downloads.unpack(downloads.pip_download(spec, os.path.join(dest, "wheels")), dest,
                         ["nvidia/cu13/bin/"])
    folder = os.path.join(dest, "nvidia", "cu13", "bin")
    for program in ("cuobjdump", "nvdisasm"):
        os.chmod(os.path.join(folder, program), 0o755)
    return folder


def sass_functions(listing):
    """(arch, mangled name, [(address, instruction)]) of each function in cuobjdump -sass's
    listing; an instruction without its predicate's line noise: "@!P0 BRA 0x1ea0"."""
    arch, name, code = None, None, []
    for line in listing.splitlines():
        m = re.match(r"\s*arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.search(r"Function : (\S+)", line)
        if m:
            if name:
                yield arch, name, code
            name, code = m.group(1), []
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m and name:
            code.append((int(m.group(1), 16), m.group(2)))
    if name:
        yield arch, name, code


def per_splat_loops(code):
    """The per-splat loops of a kernel's machine code, as (first, last address) each: the
    innermost loops (a branch back to an earlier address, and that address) among those that
    hold an exponential (MUFU.EX2). Every splat's alpha takes one; the staging of a batch, the
    loop around them, none."""
    loops = []
    for address, instruction in code:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", instruction)
        if m and int(m.group(1), 16) <= address:
            loops.append((int(m.group(1), 16), address))
    hot = [loop for loop in loops
           if any(loop[0] <= a <= loop[1] and "MUFU.EX2" in i for a, i in code)]
    return [loop for loop in hot
            if not any(o != loop and loop[0] <= o[0] and o[1] <= loop[1] for o in hot)]


def local_accesses(code, loops):
    """The local-memory loads and stores (LDL, STL: spills) inside any of `loops`."""
    return [(a, i) for a, i in code if any(first <= a <= last for first, last in loops)
            and re.search(r"\b(LDL|STL)\b", i)]


def render_loop_report(disassembler, obj):
    """[(arch, kernel, per-splat loops, [(address, instruction)] of local memory in them)] of
    each render kernel in the object file (cuobjdump -sass)."""
    env = dict(os.environ, PATH=disassembler + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run([os.path.join(disassembler, "cuobjdump"), "-sass", obj],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"check_cuda_compile: cuobjdump -sass failed:\n{proc.stdout}{proc.stderr}")
    rows = [(arch, name, per_splat_loops(code), code)
            for arch, name, code in sass_functions(proc.stdout) if "render" in name]
    names = short_names([name for _, name, _, _ in rows])
    return [(arch, n, loops, local_accesses(code, loops))
            for (arch, _, loops, code), n in zip(rows, names)]


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
    disassembler = find_disassembler(nvcc) if args.registers else None
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
            if args.registers:
                obj = os.path.join(outdir, os.path.basename(source) + ".o")
                report = render_loop_report(disassembler, obj)
                for arch, kernel, loops, accesses in report:
                    if not loops:
                        failed += 1
                        print(f"FAIL  {kernel} ({arch}): no per-splat loop found in its "
                              "machine code (has cuobjdump's listing changed its form?)")
                    elif accesses:
                        failed += 1
                        print(f"FAIL  {kernel} ({arch}) touches local memory in its per-splat "
                              "loop: " + "; ".join(f"/*{a:04x}*/ {i}" for a, i in accesses[:4]))
                if report:
                    clean = sum(bool(loops) and not accesses for _, _, loops, accesses in report)
                    print(f"      {clean} of {len(report)} render kernels: no local memory in "
                          "their per-splat loops (cuobjdump -sass)")
    if failed:
        sys.exit(f"check_cuda_compile: {failed} failures (compile errors or spilling render "
                 "kernels)")
    print(f"check_cuda_compile: all {len(sources)} CUDA sources compile")


if __name__ == "__main__":
    main()
