"""Compiles every .cu file with the nvcc of CUDA 12.4 or 11.8, the toolkits most 3DGS users build
with (CI's own nvcc is 13.0): tools/check_cuda_compile.py --registers run by that toolkit, with
its own CUB and Thrust, its own ptxas (registers, spills, and no spill in a per-splat loop) and
its own host compiler's range.

The toolkit is NVIDIA's, as Debian packages it in non-free (nvidia-cuda-toolkit: nvcc, cicc,
ptxas, cuobjdump; trixie has 12.4, bookworm 11.8), downloaded and unpacked under
~/.cache/dgrd/toolkits, not installed; its headers come from PyPI's wheels of the same release
(nvidia-cuda-runtime, -nvcc, -cccl; Debian's header package is 774 MB). PyPI's own CUDA 12 and
11 nvcc wheels hold ptxas alone. About 110 MB downloaded for one toolkit.

    python tools/check_older_nvcc.py [--cuda 12.4] [--cuda 11.8 --python PY] [--arch 75 ...]

CUDA 11.8's nvcc knows no C++20, which the headers of PyTorch 2.10 and newer need: for 11.8,
--python names the Python of an environment with an older PyTorch (tools/check_legacy_env.sh
passes its PyTorch 1.12.1, 3DGS's own). 11.8 takes GCC 11 at the most: g++-11 is installed from
Debian when missing. In CI: 12.4 with this machine's PyTorch.
"""
import argparse
import collections
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import downloads  # noqa: E402

Toolkit = collections.namedtuple("Toolkit", "suite wheels host_compiler")
TOOLKITS = {
    # CUDA 12.4 takes GCC up to 13; this machine's (Debian 12's g++ 12) will do.
    "12.4": Toolkit("trixie", ("nvidia-cuda-nvcc-cu12==12.4.131",
                               "nvidia-cuda-runtime-cu12==12.4.127",
                               "nvidia-cuda-cccl-cu12==12.4.127.post1"), "g++"),
    "11.8": Toolkit("bookworm", ("nvidia-cuda-nvcc-cu11==11.8.89",
                                 "nvidia-cuda-runtime-cu11==11.8.89",
                                 "nvidia-cuda-cccl-cu11==11.8.89.post1"), "g++-11"),
}
# The programs nvcc runs, and cuobjdump with the nvdisasm it runs (the SASS check).
PROGRAMS = ("nvcc", "ptxas", "cudafe++", "fatbinary", "nvlink", "bin2c", "cuobjdump", "nvdisasm")


def say(*words):
    print("check_older_nvcc:", *words, flush=True)


def toolkit_home(version):
    """A CUDA_HOME of the toolkit, assembled once: bin/ (Debian's programs), nvvm/ (cicc and
    libdevice), include/ (the runtime's, nvcc's crt and the CCCL headers of the same release)."""
    toolkit = TOOLKITS[version]
    cache = os.path.join(downloads.CACHE, "toolkits")
    home = os.path.join(cache, f"cuda-{version}")
    if os.path.exists(os.path.join(home, "bin", "nvcc.profile")):
        return home
    root, deb_version = downloads.debian_package("nvidia-cuda-toolkit", toolkit.suite, "non-free",
                                                 os.path.join(cache, f"debian-{toolkit.suite}"))
    if not deb_version.startswith(version + "."):
        sys.exit(f"check_older_nvcc: Debian {toolkit.suite} now has CUDA {deb_version}, not "
                 f"{version}: update TOOLKITS")
    wheels = os.path.join(cache, f"wheels-{version}")
    for spec in toolkit.wheels:
        downloads.unpack(downloads.pip_download(spec, os.path.join(wheels, "whl"),
                                                "--only-binary=:all:"), wheels, ["nvidia/"])
    building = home + ".partial"
    shutil.rmtree(building, ignore_errors=True)
    os.makedirs(os.path.join(building, "nvvm", "bin"))
    libexec = os.path.join(root, "usr", "lib", "nvidia-cuda-toolkit", "bin")
    shutil.copytree(os.path.join(libexec, "crt"), os.path.join(building, "bin", "crt"))
    # /usr/bin/nvcc is Debian's wrapper script; the real driver lies with cicc.
    for program in PROGRAMS:
        source = os.path.join(libexec if program == "nvcc" else os.path.join(root, "usr", "bin"),
                              program)
        shutil.copy2(source, os.path.join(building, "bin", program))
    shutil.copy2(os.path.join(libexec, "cicc"), os.path.join(building, "nvvm", "bin", "cicc"))
    shutil.copytree(os.path.join(wheels, "nvidia", "cuda_nvcc", "nvvm", "libdevice"),
                    os.path.join(building, "nvvm", "libdevice"))
    for part in ("cuda_runtime", "cuda_nvcc", "cuda_cccl"):
        shutil.copytree(os.path.join(wheels, "nvidia", part, "include"),
                        os.path.join(building, "include"), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))
    # nvcc reads the paths of its parts from the profile beside it (_HERE_ is bin/).
    with open(os.path.join(building, "bin", "nvcc.profile"), "w") as f:
        f.write("TOP = $(_HERE_)/..\n"
                "NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice\n"
                "PATH += $(TOP)/nvvm/bin:$(_HERE_):\n"
                'INCLUDES += "-I$(TOP)/include" $(_SPACE_)\n')
    os.rename(building, home)
    return home


def torch_cxx_standard(python):
    """The C++ standard the PyTorch of `python` compiles extensions with."""
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import check_cuda_compile; "
             "print(check_cuda_compile.cxx_standard())")
    said = subprocess.run([python, "-c", probe, os.path.join(ROOT, "tools")], check=True,
                          capture_output=True, text=True).stdout
    return said.strip().splitlines()[-1]  # after what PyTorch 1.x prints on import


def check(version, python, archs):
    toolkit = TOOLKITS[version]
    home = toolkit_home(version)
    if toolkit.host_compiler != "g++":
        downloads.apt_install(toolkit.host_compiler, toolkit.host_compiler)
    nvcc = os.path.join(home, "bin", "nvcc")
    release = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    std = torch_cxx_standard(python)
    say(f"CUDA {version} ({release.strip().splitlines()[-1]}), host compiler "
        f"{toolkit.host_compiler}, PyTorch headers of {python} ({std})")
    if std == "c++20" and version.startswith("11."):
        sys.exit(f"check_older_nvcc: CUDA {version}'s nvcc has no C++20, which this PyTorch's "
                 "headers need; give --python of an environment with PyTorch < 2.10")
    env = dict(os.environ, NVCC=nvcc, CUDA_HOME=home,
               NVCC_PREPEND_FLAGS=f"-ccbin {toolkit.host_compiler}")
    command = [python, os.path.join(ROOT, "tools", "check_cuda_compile.py"), "--registers"]
    for arch in archs:
        command += ["--arch", arch]
    return subprocess.run(command, env=env).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuda", action="append", choices=sorted(TOOLKITS),
                    help="the toolkit's version (default 12.4); may be repeated")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python whose PyTorch's headers to compile against")
    ap.add_argument("--arch", action="append", help="compute capability digits (default 75, 90)")
    args = ap.parse_args()
    failed = [v for v in args.cuda or ["12.4"]
              if check(v, args.python, args.arch or ["75", "90"]) != 0]
    if failed:
        sys.exit(f"check_older_nvcc: failed with CUDA {', '.join(failed)}")
    say("all passed")


if __name__ == "__main__":
    main()
