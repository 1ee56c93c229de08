"""Compiles every .cu file with the nvcc of other CUDA toolkits than CI's 13.0: 12.4 and 11.8, the
toolkits most 3DGS users build with, and 13.5, the newest on PyPI (with CCCL 3.5, where CUB and
Thrust change first): tools/check_cuda_compile.py --registers run by that toolkit, with its own
CUB and Thrust, its own ptxas (registers, spills, and no spill in a per-splat loop) and its own
host compiler's range.

12.4 and 11.8 are NVIDIA's, as Debian packages them in non-free (nvidia-cuda-toolkit: nvcc,
cicc, ptxas, cuobjdump; trixie has 12.4, bookworm 11.8), downloaded and unpacked under
~/.cache/dgrd/toolkits, not installed; their headers come from PyPI's wheels of the same release
(nvidia-cuda-runtime, -nvcc, -cccl; Debian's header package is 774 MB). PyPI's own CUDA 12 and
11 nvcc wheels hold ptxas alone. CUDA 13's wheels on PyPI hold the whole toolkit (nvcc, cicc in
nvidia-nvvm, headers), which pip lays out as one tree: 13.5 comes from PyPI alone. About 110 MB
downloaded for one of Debian's toolkits, 170 MB for 13.5.

    python tools/check_nvcc_versions.py [--cuda 12.4] [--cuda 13.5] [--cuda 11.8 --python PY]
                                        [--arch 75 ...]

CUDA 11.8's nvcc knows no C++20, which the headers of PyTorch 2.10 and newer need: for 11.8,
--python names the Python of an environment with an older PyTorch (tools/check_legacy_env.sh
passes its PyTorch 1.12.1, 3DGS's own). 11.8 takes GCC 11 at the most: g++-11 is installed from
Debian when missing. In CI: 12.4 and 13.5 with this machine's PyTorch.
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

# suite: Debian's release that packages the toolkit's programs, or None where PyPI's wheels hold
# the whole toolkit; archs: what the check compiles for by default (sm_120 from CUDA 12.8).
Toolkit = collections.namedtuple("Toolkit", "suite wheels host_compiler archs")
TOOLKITS = {
    # CUDA 12.4 takes GCC up to 13; this machine's (Debian 12's g++ 12) will do.
    "12.4": Toolkit("trixie", ("nvidia-cuda-nvcc-cu12==12.4.131",
                               "nvidia-cuda-runtime-cu12==12.4.127",
                               "nvidia-cuda-cccl-cu12==12.4.127.post1"), "g++", ("75", "90")),
    "11.8": Toolkit("bookworm", ("nvidia-cuda-nvcc-cu11==11.8.89",
                                 "nvidia-cuda-runtime-cu11==11.8.89",
                                 "nvidia-cuda-cccl-cu11==11.8.89.post1"), "g++-11", ("75", "90")),
    # The newest on PyPI when this was written; CCCL's wheels have their own numbering since
    # 13.3 (13.3.5.0.6 is CCCL 3.5.0, the newest).
    "13.5": Toolkit(None, ("nvidia-cuda-nvcc==13.5.37", "nvidia-nvvm==13.5.37",
                           "nvidia-cuda-crt==13.5.37", "nvidia-cuda-runtime==13.5.37",
                           "nvidia-cuda-cccl==13.3.5.0.6", "nvidia-cuda-cuobjdump==13.5.37",
                           "nvidia-cuda-nvdisasm==13.5.37"), "g++", ("75", "90", "120")),
}
# The programs nvcc runs, and cuobjdump with the nvdisasm it runs (the SASS check).
PROGRAMS = ("nvcc", "ptxas", "cudafe++", "fatbinary", "nvlink", "bin2c", "cuobjdump", "nvdisasm")


def say(*words):
    print("check_nvcc_versions:", *words, flush=True)


def toolkit_home(version):
    """A CUDA_HOME of the toolkit, assembled once: bin/ (Debian's programs), nvvm/ (cicc and
    libdevice), include/ (the runtime's, nvcc's crt and the CCCL headers of the same release)."""
    toolkit = TOOLKITS[version]
    cache = os.path.join(downloads.CACHE, "toolkits")
    home = os.path.join(cache, f"cuda-{version}")
    if os.path.exists(os.path.join(home, "bin", "nvcc.profile")):
        return home
    if toolkit.suite is None:
        return pypi_toolkit_home(toolkit, home)
    root, deb_version = downloads.debian_package("nvidia-cuda-toolkit", toolkit.suite, "non-free",
                                                 os.path.join(cache, f"debian-{toolkit.suite}"))
    if not deb_version.startswith(version + "."):
        sys.exit(f"check_nvcc_versions: Debian {toolkit.suite} now has CUDA {deb_version}, not "
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


def pypi_toolkit_home(toolkit, home):
    """A CUDA 13 toolkit from PyPI's wheels: they unpack into one tree, nvidia/cu13/, with the
    nvcc.profile nvcc reads (CCCL under include/cccl, as the toolkit's installer puts it); the
    programs lose their modes in the wheels' zip."""
    building = home + ".partial"
    shutil.rmtree(building, ignore_errors=True)
    for spec in toolkit.wheels:
        downloads.unpack(downloads.pip_download(spec, home + "-wheels", "--only-binary=:all:"),
                         building, ["nvidia/cu13/"])
    tree = os.path.join(building, "nvidia", "cu13")
    for folder in ("bin", os.path.join("nvvm", "bin")):
        for program in os.listdir(os.path.join(tree, folder)):
            path = os.path.join(tree, folder, program)
            if os.path.isfile(path) and "." not in program:
                os.chmod(path, 0o755)
    os.rename(tree, home)
    shutil.rmtree(building)
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
        sys.exit(f"check_nvcc_versions: CUDA {version}'s nvcc has no C++20, which this PyTorch's "
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
                    help="the toolkit's version (default 12.4 and 13.5); may be repeated")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python whose PyTorch's headers to compile against")
    ap.add_argument("--arch", action="append",
                    help="compute capability digits (default: the toolkit's archs in TOOLKITS)")
    args = ap.parse_args()
    failed = [v for v in args.cuda or ["12.4", "13.5"]
              if check(v, args.python, args.arch or TOOLKITS[v].archs) != 0]
    if failed:
        sys.exit(f"check_nvcc_versions: failed with CUDA {', '.join(failed)}")
    say("all passed")


if __name__ == "__main__":
    main()
