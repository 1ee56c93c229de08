"""Compiles every .cu file as nvcc does on Windows, with Windows CUDA's own compilers and MSVC,
run under wine on a Linux machine: the Windows CUDA build checked without a Windows machine.

nvcc.exe itself does not run here: under wine it preprocesses its probe of the host compiler
with cl.exe, reads the answer back, then stops with "Host compiler targets unsupported OS"
(Windows 7 or 10 as wine's version alike). So this script runs nvcc's steps one by one, as
nvcc 13.0 lists them with --dryrun on Linux, with the Windows programs and MSVC's dialect:
1. cl.exe -E of the .cu file for the host (-D__CUDACC__, -FI cuda_runtime.h, ...);
2. cudafe++.exe on it (--microsoft_version, --msvc_target_version, --ms_c++NN): the host half
   of the file, with the kernels' launch stubs, as C++ for cl.exe;
3. cl.exe -E for the device (-D__CUDA_ARCH__), then cicc.exe (the device front end in MSVC's
   dialect, to PTX), ptxas.exe and fatbinary.exe;
4. cl.exe -c of step 2's output, which includes step 3's fatbinary: the object file.
Flags: what PyTorch's BuildExtension gives nvcc on Windows (read from the Windows wheel's
cpp_extension.py: COMMON_NVCC_FLAGS, -Xcompiler COMMON_MSVC_FLAGS, the -Xcudafe suppressions,
its C++ standard) and setup.py's (-O3, -lineinfo, DGRD_WITH_CUDA), for one architecture.
Errors anywhere, and warnings in the package's own files, fail the check; warnings in PyTorch's
and MSVC's headers are counted.

Needs what tools/check_msvc_build.py fetches (wine, MSVC 14.44, PyTorch's win_amd64 wheel,
CPython's headers) and, once, into the same cache, CUDA 13.0's win_amd64 wheels from PyPI
(nvidia-cuda-nvcc, -nvvm, -crt, -runtime, -cccl; about 230 MB unpacked).

    python tools/check_windows_nvcc.py [--arch 75] [--out DIR] [FILE.cu ...]
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import check_cuda_compile  # noqa: E402
import check_msvc_build as msvc_check  # noqa: E402
import downloads  # noqa: E402
import emulated_build  # noqa: E402

# CUDA 13.0's Windows wheels: the toolkit whose Linux nvcc CI runs, so the steps are the same.
CUDA_WHEELS = ["nvidia-cuda-nvcc==13.0.88", "nvidia-nvvm==13.0.88", "nvidia-cuda-crt==13.0.88",
               "nvidia-cuda-runtime==13.0.96", "nvidia-cuda-cccl==13.0.85"]
win = msvc_check.Msvc.win


def say(*words):
    print("check_windows_nvcc:", *words, flush=True)


def cuda_for_windows():
    """The unpacked toolkit (bin/, nvvm/, include/), fetched once into the check's cache."""
    dest = os.path.join(msvc_check.CACHE, "cuda-13.0-win")
    for spec in CUDA_WHEELS:
        wheel = downloads.pip_download(spec, os.path.join(msvc_check.CACHE, "wheels"),
                                       "--only-binary=:all:", "--platform", "win_amd64",
                                       "--python-version", msvc_check.PY)
        downloads.unpack(wheel, dest, ["nvidia/cu13/"])
    return os.path.join(dest, "nvidia", "cu13")


class Toolchain:
    """wine, cl.exe and the CUDA programs, with the flags every file gets."""

    def __init__(self, arch, out):
        msvc_check.ensure_wine()
        self.msvc = msvc_check.Msvc()
        self.version, self.torch_dir = msvc_check.torch_for_windows()
        self.cuda = cuda_for_windows()
        self.arch = arch
        self.out = out
        msvc_flags, std = msvc_check.torch_windows_flags(self.torch_dir)
        nvcc_flags = msvc_check.cpp_extension_list(self.torch_dir, "COMMON_NVCC_FLAGS")
        cudafe_quiet = msvc_check.cpp_extension_list(self.torch_dir, "MSVC_IGNORE_CUDAFE_WARNINGS")
        self.std = std[len("/std:"):]  # "c++20"
        self.msc_ver = self.ask_msc_ver()
        major, minor, build = self.nvcc_version()
        # A CPU-only wheel lacks the header PyTorch's CMake generates.
        shim = check_cuda_compile.cmake_macros_shim(os.path.join(out, "shim"))
        includes = [ROOT, os.path.join(self.torch_dir, "include"),
                    os.path.join(self.torch_dir, "include", "torch", "csrc", "api", "include")]
        includes += msvc_check.python_headers() + [shim, os.path.join(self.cuda, "include"),
                                                  os.path.join(self.cuda, "include", "cccl")]
        self.includes = [f"-I{win(i)}" for i in includes]
        defines = [f for f in nvcc_flags if f.startswith("-D")]
        defines += ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
                    "-DDGRD_WITH_CUDA=1"]
        relaxed = "--expt-relaxed-constexpr" in nvcc_flags
        # The macros nvcc defines for both of its preprocessings (its --dryrun).
        self.nvcc_defines = ["-D__CUDACC__", "-D__NVCC__"] + (
            ["-D__CUDACC_RELAXED_CONSTEXPR__"] if relaxed else []) + [
            f"-D__CUDACC_VER_MAJOR__={major}", f"-D__CUDACC_VER_MINOR__={minor}",
            f"-D__CUDACC_VER_BUILD__={build}", f"-D__CUDA_API_VER_MAJOR__={major}",
            f"-D__CUDA_API_VER_MINOR__={minor}", "-D__NVCC_DIAG_PRAGMA_SUPPORT__=1",
            "-D__CUDACC_DEVICE_ATOMIC_BUILTINS__=1"] + defines
        self.cl_flags = ["-nologo", "-TP", f"/std:{self.std}", "/O2"] + msvc_flags
        # The front ends' options in MSVC's dialect (cudafe++ and cicc share them).
        self.front_end = [f"--microsoft_version={self.msc_ver}",
                          f"--msvc_target_version={self.msc_ver}", f"--ms_{self.std}",
                          "--display_error_number", "--allow_managed", "--m64"] + (
            ["--relaxed_constexpr"] if relaxed else []) + [
            f"--diag_suppress={w}" for w in cudafe_quiet]
        say(f"MSVC {self.msvc.version} (_MSC_VER {self.msc_ver}), CUDA {major}.{minor}.{build} "
            f"for Windows, PyTorch {self.version} win_amd64 headers, {self.std}, sm_{arch}")

    def wine(self, program, args, cwd=None):
        return msvc_check.run(["wine", program, *args], env=self.msvc.env, cwd=cwd or self.out)

    def cl(self, args):
        return self.wine(os.path.join(self.msvc.bin, "cl.exe"), args)

    def ask_msc_ver(self):
        probe = os.path.join(self.out, "msc_ver.cpp")
        with open(probe, "w") as f:
            f.write("dgrd_msc_ver _MSC_VER\n")
        r = self.cl(["-nologo", "-E", win(probe)])
        found = re.search(r"dgrd_msc_ver (\d+)", r.stdout)
        if not found:
            sys.exit(f"check_windows_nvcc: cl.exe did not tell its _MSC_VER: {r.stdout[-500:]}")
        return found.group(1)

    def nvcc_version(self):
        r = self.wine(os.path.join(self.cuda, "bin", "nvcc.exe"), ["--version"])
        found = re.search(r"V(\d+)\.(\d+)\.(\d+)", r.stdout)
        if not found:
            sys.exit(f"check_windows_nvcc: nvcc.exe --version said: {r.stdout[-500:]}")
        return found.groups()

    def compile(self, src):
        """The steps for one .cu file; returns (ok, the warnings in PyTorch's and MSVC's
        headers)."""
        name = os.path.splitext(os.path.basename(src))[0]
        base = os.path.join(self.out, name)

        def path(p):  # forward slashes: names reach the generated code's strings and #line
            return win(p).replace("\\", "/")

        source = path(os.path.join(ROOT, src))
        arch_list = f"-D__CUDA_ARCH_LIST__={self.arch}0"
        front = self.front_end + [f"--orig_src_file_name={source}",
                                  f"--orig_src_path_name={source}"]
        foreign = 0

        def preprocess(extra, dst):
            r = self.cl(["-E"] + self.cl_flags + extra + self.nvcc_defines + self.includes +
                        ["-FIcuda_runtime.h", source])
            with open(dst, "w") as f:
                f.write(r.stdout)
            return r.returncode == 0, r.stderr

        def judge(step, r, ok):
            """Fails the step on its exit status or on a diagnostic in our files; counts the
            others' warnings."""
            nonlocal foreign
            text = r if isinstance(r, str) else r.stdout + r.stderr
            # cl.exe: "FILE(LINE): warning C4129: ..."; the front ends: "FILE(LINE): warning
            # #177-D: ..." (then the source line); each diagnostic's line starts with its file.
            diagnostics = [l for l in text.splitlines()
                           if re.search(r"\): (fatal )?(error|warning)\b", l)]
            mine = win(ROOT).lower() + "\\"
            ours = [l for l in diagnostics if l.strip().replace("/", "\\").lower().startswith(mine)]
            foreign += sum(1 for l in diagnostics if l not in ours and "warning" in l)
            if not ok or ours:
                say(f"  {src}: {step}: {'FAILED' if not ok else 'warnings in our files'}")
                errors = [l for l in diagnostics if re.search(r"\berrors?\b", l)]
                print("\n".join((ours + errors)[:40] or text.splitlines()[-40:]))
                return False
            return True

        steps = [
            ("cl -E (host)", lambda: preprocess([arch_list], base + ".cpp4.ii")),
            ("cudafe++", lambda: self.wine(os.path.join(self.cuda, "bin", "cudafe++.exe"), front + [
                "--parse_templates", f"--gen_c_file_name={path(base + '.cudafe1.cpp')}",
                f"--stub_file_name={name}.cudafe1.stub.c", "--gen_module_id_file",
                f"--module_id_file_name={path(base + '.module_id')}", path(base + ".cpp4.ii")])),
            ("cl -E (device)", lambda: preprocess([f"-D__CUDA_ARCH__={self.arch}0", arch_list,
                                                   "-DCUDA_DOUBLE_MATH_FUNCTIONS"],
                                                  base + ".cpp1.ii")),
            ("cicc", lambda: self.wine(os.path.join(self.cuda, "nvvm", "bin", "cicc.exe"), front + [
                "-arch", f"compute_{self.arch}", "--no-version-ident", "-ftz=0", "-prec_div=1",
                "-prec_sqrt=1", "-fmad=1", f"--include_file_name={name}.fatbin.c",
                "-generate-line-info", "-tused", f"--module_id_file_name={path(base + '.module_id')}",
                f"--gen_c_file_name={path(base + '.cudafe1.c')}",
                f"--stub_file_name={name}.cudafe1.stub.c",
                f"--gen_device_file_name={path(base + '.cudafe1.gpu')}", path(base + ".cpp1.ii"),
                "-o", path(base + ".ptx")])),
            ("ptxas", lambda: self.wine(os.path.join(self.cuda, "bin", "ptxas.exe"), [
                f"-arch=sm_{self.arch}", "-m64", win(base + ".ptx"), "-o",
                win(base + ".cubin")])),
            ("fatbinary", lambda: self.wine(os.path.join(self.cuda, "bin", "fatbinary.exe"), [
                "-64", f"--image3=kind=elf,sm={self.arch},file={win(base + '.cubin')}",
                f"--image3=kind=ptx,sm={self.arch},file={win(base + '.ptx')}",
                f"--embedded-fatbin={win(base + '.fatbin.c')}"])),
            ("cl -c", lambda: self.cl(["-c"] + self.cl_flags + [
                arch_list, "-DCUDA_DOUBLE_MATH_FUNCTIONS"] + self.includes +
                [f"-I{win(self.out)}", win(base + ".cudafe1.cpp"), f"/Fo{win(base + '.obj')}"])),
        ]
        start = time.time()
        for step, run in steps:
            r = run()
            if isinstance(r, tuple):
                ok, text = r
            else:
                ok, text = r.returncode == 0, r
            if not judge(step, text, ok):
                return False, foreign
        for suffix in (".cpp4.ii", ".cpp1.ii", ".cudafe1.cpp", ".cudafe1.gpu"):
            os.remove(base + suffix)  # tens of MB each
        say(f"  {src}: compiled, {os.path.getsize(base + '.obj') // 1024} KiB "
            f"({time.time() - start:.0f} s)")
        return True, foreign


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="75", help="the one GPU architecture (default 75)")
    parser.add_argument("--out", help="folder for the objects (default: a temporary one)")
    parser.add_argument("files", nargs="*", help=".cu files (default: every one of the package)")
    args = parser.parse_args()
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        sys.exit("check_windows_nvcc: runs on x86-64 Linux (wine runs the x64 programs)")
    out = args.out or tempfile.mkdtemp(prefix="dgrd-winnvcc-")
    os.makedirs(out, exist_ok=True)
    tools = Toolchain(args.arch, out)
    failed, foreign = [], 0
    for src in args.files or emulated_build.cuda_files():
        ok, count = tools.compile(os.path.relpath(os.path.abspath(src), ROOT))
        foreign += count
        if not ok:
            failed.append(src)
    say(f"warnings in PyTorch's and MSVC's headers (not ours): {foreign}")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    say("FAILED: " + ", ".join(failed) if failed else "every .cu file compiled")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
