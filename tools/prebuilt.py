"""A `_C` built elsewhere for the GPU machine's image, carried in .whl/prebuilt/, and the check
that it is still this source's build.

The GPU window is short (about 9 minutes a command), and building `_C` there takes one to two of
them. tools/build_for_gpu_image.sh builds it ahead, on a machine without a GPU, against the GPU
image's Python and PyTorch; benchmarks/run_gpu.sh installs it only when it was built from the
same sources, for the same Python, PyTorch and GPU architecture, and builds as before otherwise.

    python tools/prebuilt.py hash                         # the sources' hash
    python tools/prebuilt.py tag --arch 9.0               # a carried build's name: 2.11.0-cu130-sm90
    python tools/prebuilt.py record DIR SO --arch 9.0     # DIR/<SO's name> and DIR/prebuilt.json
    python tools/prebuilt.py check DIR --arch 9.0         # exit 0: usable; 1: says why not
    python tools/prebuilt.py install DIR --arch 9.0       # the same, and copies it into the package

`record` and `install` run under the Python that builds or runs it (its torch is the one named).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "diff_gaussian_rasterization_depth")
MANIFEST = "prebuilt.json"
# What setup.py compiles `_C` from: its sources and headers, and the scripts that choose the
# sources and flags.
SOURCE_DIRS = (".", "cuda_rasterizer")
SOURCE_SUFFIXES = (".cpp", ".cu", ".h")
BUILD_SCRIPTS = ("setup.py", os.path.join("tools", "emulated_build.py"),
                 os.path.join("tools", "build_config.py"))


def source_files(root=ROOT):
    files = [os.path.join(d, f) for d in SOURCE_DIRS
             for f in os.listdir(os.path.join(root, d)) if f.endswith(SOURCE_SUFFIXES)]
    return sorted(os.path.normpath(f) for f in files) + list(BUILD_SCRIPTS)


def source_hash(root=ROOT):
    """sha256 over the sources' paths and contents (the same on any copy of the tree)."""
    h = hashlib.sha256()
    for rel in source_files(root):
        with open(os.path.join(root, rel), "rb") as f:
            content = f.read()
        h.update(f"{rel.replace(os.sep, '/')}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()


def target(arch):
    """What a build is for: the interpreter, PyTorch (version, commit, CUDA) and the GPU arch."""
    import torch
    return {"python": sysconfig.get_config_var("EXT_SUFFIX"), "torch": torch.__version__,
            "torch_commit": torch.version.git_version, "cuda": torch.version.cuda, "arch": arch}


def build_tag(arch):
    """The name of a build for this PyTorch, its CUDA and a GPU architecture ("9.0"), as in
    gsplat_cuda-<tag>.so.gz.partNN: "2.11.0-cu130-sm90"."""
    import torch
    cuda = (torch.version.cuda or "none").replace(".", "")
    return f"{torch.__version__.split('+')[0]}-cu{cuda}-sm{arch.replace('.', '')}"


def record(directory, so_path, arch):
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(so_path)
    shutil.copyfile(so_path, os.path.join(directory, name))
    manifest = dict(target(arch), file=name, sources=source_hash())
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def why_not(directory, arch):
    """None when DIR holds this source's build for this interpreter, PyTorch and architecture;
    else the reason."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return f"no {path}"
    with open(path) as f:
        manifest = json.load(f)
    for key, value in target(arch).items():
        if manifest.get(key) != value:
            return f"built for {key} {manifest.get(key)}, here {value}"
    if manifest.get("sources") != source_hash():
        return "built from other sources"
    if not os.path.exists(os.path.join(directory, manifest["file"])):
        return f"{manifest['file']} is missing"
    return None


def install(directory, arch):
    reason = why_not(directory, arch)
    if reason is not None:
        return reason
    with open(os.path.join(directory, MANIFEST)) as f:
        name = json.load(f)["file"]
    shutil.copyfile(os.path.join(directory, name), os.path.join(PACKAGE, name))
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("hash")
    tag = sub.add_parser("tag")
    tag.add_argument("--arch", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("directory")
    rec.add_argument("so")
    rec.add_argument("--arch", required=True)
    for name in ("check", "install"):
        use = sub.add_parser(name)
        use.add_argument("directory")
        use.add_argument("--arch", required=True)
    args = ap.parse_args(argv)
    if args.command == "hash":
        print(source_hash())
        return 0
    if args.command == "tag":
        print(build_tag(args.arch))
        return 0
    if args.command == "record":
        print(json.dumps(record(args.directory, args.so, args.arch)))
        return 0
    if args.command == "check":
        reason = why_not(args.directory, args.arch)
        verdict = "usable" if reason is None else "not usable"
    else:
        reason = install(args.directory, args.arch)
        verdict = "installed" if reason is None else "not used"
    print(f"prebuilt _C in {args.directory}: {verdict}{'' if reason is None else ': ' + reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    sys.exit(main())
