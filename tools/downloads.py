"""What the build checks fetch, once, into ~/.cache/dgrd: wheels from PyPI, and Debian packages,
installed (a compiler, wine) or only downloaded and unpacked (a CUDA toolkit from non-free).

Shared by tools/check_msvc_build.py, check_windows_nvcc.py, check_nvcc_versions.py
and check_cuda_compile.py (its disassembler); none of it is needed to build or use the package.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile
import zlib

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "dgrd")


def pip_download(spec, dest, *extra):
    """The path of the wheel `spec` ("name==version"), downloaded into dest unless there."""
    os.makedirs(dest, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", dest, *extra,
                    spec], check=True)
    name = re.split(r"[=<>]", spec)[0].replace("-", "_")
    version = spec.split("==")[1] if "==" in spec else "*"
    found = sorted(glob.glob(os.path.join(dest, f"{name}-{version}-*.whl")))
    if not found:
        sys.exit(f"pip download {spec} gave no wheel in {dest}")
    return found[-1]


def unpack(wheel, dest, prefixes):
    """The wheel's members under any of `prefixes`, into dest (once for this wheel and these
    prefixes)."""
    key = "|".join([os.path.basename(wheel)] + list(prefixes))
    stamp = os.path.join(dest, ".unpacked-%08x" % zlib.crc32(key.encode()))
    if os.path.exists(stamp):
        return
    with zipfile.ZipFile(wheel) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith(tuple(prefixes))])
    open(stamp, "w").close()


def apt_install(package, command):
    """Installs Debian's `package` unless `command` is on the PATH already (root only)."""
    if shutil.which(command):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        sys.exit(f"{command} is missing; install Debian's {package} package")
    print(f"installing {package} (apt-get install {package})", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    quiet = dict(env=env, stdout=subprocess.DEVNULL)
    if subprocess.run(["apt-get", "install", "-y", "-qq", package], **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, **quiet)


def debian_package(package, suite, component, dest):
    """Downloads `package` as Debian `suite`'s `component` has it (non-free, say, which this
    machine's own sources may lack) and unpacks it under dest/root; returns (root, version).
    apt reads and writes only under dest (its own sources, lists and caches), so the machine's
    apt sees nothing of it, and nothing is installed."""
    apt = os.path.join(dest, "apt")
    parts = os.path.join(apt, "sources.list.d")
    os.makedirs(os.path.join(apt, "lists", "partial"), exist_ok=True)
    os.makedirs(os.path.join(apt, "cache", "archives", "partial"), exist_ok=True)
    os.makedirs(parts, exist_ok=True)
    with open(os.path.join(parts, f"{suite}.sources"), "w") as f:
        f.write(f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\n"
                f"Components: {component}\n"
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    options = [f"-oDir::State::Lists={apt}/lists", f"-oDir::Cache={apt}/cache",
               "-oDir::Etc::SourceList=/dev/null", f"-oDir::Etc::SourceParts={parts}",
               "-oAPT::Sandbox::User=root", "-qq"]
    debs = glob.glob(os.path.join(dest, f"{package}_*.deb"))
    if not debs:
        subprocess.run(["apt-get", *options, "update"], check=True)
        subprocess.run(["apt-get", *options, "download", package], check=True, cwd=dest)
        debs = glob.glob(os.path.join(dest, f"{package}_*.deb"))
    (deb,) = debs
    version = os.path.basename(deb).split("_")[1].replace("%7e", "~")
    root = os.path.join(dest, "root")
    if not os.path.isdir(root):
        subprocess.run(["dpkg-deb", "-x", deb, root + ".partial"], check=True)
        os.rename(root + ".partial", root)
    return root, version
