"""The build: every source of an extension compiles to an object path of its own, a `_C` built
ahead for the GPU window (tools/prebuilt.py) is used only for the sources it was built from, and
the flags fit the PyTorch and CUDA toolkit at hand, old ones too (tools/build_config.py).

torch's BuildExtension (ninja) names an object after its source with the suffix dropped, so
`rasterize_points.cpp` and `rasterize_points.cu` in one extension are two rules for one object
and the CUDA build stops at once ("multiple rules generate rasterize_points.o"). CI's PyTorch has
no CUDA, so only the CPU half of `_C` is ever built there: this checks the CUDA half's list.
"""
import ast
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import build_config  # noqa: E402
import emulated_build  # noqa: E402
import prebuilt  # noqa: E402


def _setup_cpu_sources():
    """setup.py's `cpu_sources`: build_config.CPU_SOURCES, which tools/check_msvc_build.py
    compiles too (setup.py runs setup() when imported, so it is parsed)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "cpu_sources"
                                                for t in node.targets):
            assert getattr(node.value, "attr", None) == "CPU_SOURCES", "not build_config's list"
            return list(build_config.CPU_SOURCES)
    raise AssertionError("setup.py has no cpu_sources list")


def _object_paths(sources):
    return [os.path.splitext(os.path.normpath(s))[0] + ".o" for s in sources]


def _assert_unique_objects(sources):
    objects = _object_paths(sources)
    clashes = sorted({o for o in objects if objects.count(o) > 1})
    assert not clashes, (f"sources sharing an object path (rename one): "
                         f"{[s for s, o in zip(sources, objects) if o in clashes]}")


def test_cuda_extension_sources_have_distinct_objects():
    cpu = _setup_cpu_sources()
    cuda = emulated_build.cuda_files()  # setup.py takes its CUDA sources from here
    assert cuda and all(s.endswith(".cu") for s in cuda)
    assert all(os.path.exists(os.path.join(ROOT, s)) for s in cpu + cuda)
    _assert_unique_objects(cpu + cuda)


def test_emulated_extension_sources_have_distinct_objects(tmp_path):
    sources = emulated_build.sources(str(tmp_path), relative_to=str(tmp_path))
    _assert_unique_objects(sources)


def test_a_clash_is_caught():
    # The check itself: the pair that stopped the CUDA build before the .cu file was renamed.
    try:
        _assert_unique_objects(["ext.cpp", "rasterize_points.cpp", "rasterize_points.cu"])
    except AssertionError as e:
        assert "rasterize_points.cu" in str(e)
    else:
        raise AssertionError("a clash went unnoticed")


# ------------------------------------------------------------ tools/prebuilt.py (the GPU window)
def _copy_sources(dest):
    for rel in prebuilt.source_files():
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copyfile(os.path.join(ROOT, rel), os.path.join(dest, rel))


def test_source_hash_follows_the_sources_only(tmp_path):
    _copy_sources(tmp_path)
    assert prebuilt.source_hash(str(tmp_path)) == prebuilt.source_hash()
    (tmp_path / "README.md").write_text("not a source")
    assert prebuilt.source_hash(str(tmp_path)) == prebuilt.source_hash()
    header = tmp_path / "cuda_rasterizer" / "blend.h"
    header.write_text(header.read_text() + "\n")
    assert prebuilt.source_hash(str(tmp_path)) != prebuilt.source_hash()
    header.write_text(header.read_text()[:-1])
    (tmp_path / "cuda_rasterizer" / "new_kernel.cu").write_text("")
    assert prebuilt.source_hash(str(tmp_path)) != prebuilt.source_hash()


def test_prebuilt_is_used_only_for_its_sources_and_target(tmp_path, monkeypatch):
    so = tmp_path / "_C.fake.so"
    so.write_bytes(os.urandom(64))
    store = tmp_path / "store"
    manifest = prebuilt.record(str(store), str(so), "9.0")
    assert manifest["sources"] == prebuilt.source_hash() and manifest["file"] == so.name
    assert prebuilt.why_not(str(store), "9.0") is None
    assert "arch" in prebuilt.why_not(str(store), "8.6")

    package = tmp_path / "package"
    package.mkdir()
    monkeypatch.setattr(prebuilt, "PACKAGE", str(package))
    assert prebuilt.install(str(store), "9.0") is None
    assert (package / so.name).read_bytes() == so.read_bytes()

    path = store / prebuilt.MANIFEST
    (package / so.name).unlink()
    for key, value in [("torch", "2.0.0+cu118"), ("python", ".cpython-39-x86_64-linux-gnu.so"),
                       ("torch_commit", "f" * 40), ("sources", "0" * 64)]:
        changed = dict(manifest, **{key: value})
        path.write_text(json.dumps(changed))
        reason = prebuilt.why_not(str(store), "9.0")
        assert reason is not None and (key in reason or "sources" in reason), reason
        assert prebuilt.install(str(store), "9.0") == reason
        assert not (package / so.name).exists()
    path.write_text(json.dumps(manifest))
    (store / so.name).unlink()
    assert "missing" in prebuilt.why_not(str(store), "9.0")


def test_cuda_home_is_the_toolkit_root():
    """tools/cuda_home.sh: $CUDA_HOME as set; else a folder whose bin/ holds nvcc (PyTorch's own
    guess, the folder above nvcc on the PATH, is /usr/local where nvcc there is a wrapper)."""
    script = os.path.join(ROOT, "tools", "cuda_home.sh")
    given = subprocess.run(["bash", script], env=dict(os.environ, CUDA_HOME="/opt/some/cuda"),
                           capture_output=True, text=True)
    assert given.returncode == 0 and given.stdout.strip() == "/opt/some/cuda"
    if shutil.which("nvcc") is None:
        return  # the rest needs a toolkit; CI's machines have one
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOME"}
    found = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert os.access(os.path.join(found.stdout.strip(), "bin", "nvcc"), os.X_OK), found.stdout


def test_build_tag_names_torch_cuda_and_arch():
    """The one name of a carried build (run_gpu.sh's gsplat parts, build_for_gpu_image.sh)."""
    import torch
    cuda = (torch.version.cuda or "none").replace(".", "")
    assert prebuilt.build_tag("9.0") == f"{torch.__version__.split('+')[0]}-cu{cuda}-sm90"
    assert prebuilt.build_tag("12.0").endswith("-sm120")


def test_cxx_standard_is_asked_for_only_where_torch_would_pass_cxx14():
    """PyTorch 1.x passes -std=c++14 unless a standard is given (the sources are C++17); 2.0 and
    later pass their own (C++20 from 2.10), which must not be overridden."""
    for version, flags in [("1.12.1+cu116", ["-std=c++17"]), ("1.13.1", ["-std=c++17"]),
                           ("2.0.1+cu118", []), ("2.1.0a0+git3af0c", []),
                           ("2.4.1", []), ("2.13.0+cpu", []), ("10.0.0", [])]:
        assert build_config.cxx_standard_flags(version) == flags, version
    assert build_config.major_minor("1.12.1+cu116") == (1, 12)
    assert build_config.major_minor("2.1.0a0+git3af0c") == (2, 1)
    # The emulated backend and the AddressSanitizer build take the same flag as _C.
    assert set(build_config.cxx_standard_flags()) <= set(emulated_build.CXX_FLAGS)


def test_msvc_gets_its_own_flags():
    """On Windows PyTorch builds with MSVC, which refuses GCC's flags: the package's flags then
    are MSVC's, with no contraction into fused multiply-adds either way (the lanes' bits), the
    standard flag in MSVC's spelling for torch 1.x, and OpenMP as given."""
    assert build_config.uses_msvc("win32") and not build_config.uses_msvc("linux")
    for version in ("1.12.1", "2.13.0"):
        msvc = build_config.host_compile_flags(True, ["/openmp"], version=version)
        gcc = build_config.host_compile_flags(False, ["-fopenmp"], version=version)
        assert "/fp:precise" in msvc and "/openmp" in msvc and "/O2" in msvc
        assert not any(f.startswith("-") for f in msvc), msvc
        assert "-ffp-contract=off" in gcc and "-fopenmp" in gcc
        assert not any(f.startswith("/") for f in gcc), gcc
        std = build_config.cxx_standard_flags(version, msvc=True)
        assert std == (["/std:c++17"] if version.startswith("1.") else [])
        assert set(std) <= set(msvc)
    assert build_config.host_compile_flags(False, [], "portable")[-1] == "-DDGRD_PORTABLE_LANES"
    assert "-DDGRD_BASELINE_LANES" in build_config.host_compile_flags(False, [], "baseline")
    assert build_config.host_compile_flags(False, [], "avx2")[-2:] == ["-DDGRD_AVX2_LANES",
                                                                      "-mavx2"]


def test_default_architectures_follow_the_toolkit():
    """Without TORCH_CUDA_ARCH_LIST and a visible GPU: Volta (Turing from CUDA 13) up to what the
    toolkit knows (sm_86 from 11.1, sm_89 and sm_90 from 11.8, sm_100 and sm_120 from 12.8) and
    PyTorch knows too (1.x stops at sm_86), PTX of the newest up to Hopper."""
    def archs(cuda, knows=lambda arch: True):
        listed = build_config.default_archs(cuda, knows).split(";")
        assert sum(arch.endswith("+PTX") for arch in listed) == 1
        return listed
    assert archs((11, 0)) == ["7.0", "7.5", "8.0+PTX"]
    assert archs((11, 6)) == ["7.0", "7.5", "8.0", "8.6+PTX"]
    assert archs((11, 8)) == archs((12, 4)) == ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0+PTX"]
    assert archs((12, 8)) == archs((12, 4)) + ["10.0", "12.0"]
    assert archs((12, 8), lambda arch: arch != "12.0") == archs((12, 4)) + ["10.0"]
    assert archs((13, 0)) == ["7.5", "8.0", "8.6", "8.9", "9.0+PTX", "10.0", "12.0"]
    assert archs((13, 0), lambda arch: float(arch) < 10) == ["7.5", "8.0", "8.6", "8.9", "9.0+PTX"]
    assert archs((11, 8), lambda arch: float(arch) < 8.7) == ["7.0", "7.5", "8.0", "8.6+PTX"]


def test_default_architectures_are_asked_of_pytorch():
    """PyTorch refuses an architecture it does not list in TORCH_CUDA_ARCH_LIST (1.x 8.9 and 9.0,
    before 2.6 10.0, before 2.7 12.0): the default list asks the installed PyTorch's extension builder,
    and leaves the caller's setting as it was."""
    saved = os.environ.get("TORCH_CUDA_ARCH_LIST")
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.6"
    try:
        assert build_config.torch_knows_arch("8.6")
        assert not build_config.torch_knows_arch("99.0")
        assert not build_config.torch_knows_arch("9.7")
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.6"
    finally:
        if saved is None:
            del os.environ["TORCH_CUDA_ARCH_LIST"]
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    for cuda in ((11, 8), (13, 0)):
        listed = build_config.default_archs(cuda, build_config.torch_knows_arch)
        toolkit_knows = build_config.default_archs(cuda).replace("+PTX", "").split(";")
        assert listed.replace("+PTX", "").split(";") == [
            arch for arch in toolkit_knows if build_config.torch_knows_arch(arch)]


def test_nvcc_compiles_architectures_side_by_side():
    """--threads from CUDA 11.2 on: the CPUs up to 4, no more than MAX_JOBS where it is set."""
    flags = build_config.nvcc_thread_flags
    assert flags((11, 1), cpus=16) == [] and flags(None) == []
    assert flags((11, 2), cpus=16) == ["--threads", "4"]
    assert flags((13, 0), cpus=2) == ["--threads", "2"]
    assert flags((12, 4), "1", cpus=16) == ["--threads", "1"]
    assert flags((12, 4), "3", cpus=16) == ["--threads", "3"]
    assert flags((12, 4), "0", cpus=16) == ["--threads", "1"]
    assert flags((12, 4), "many", cpus=8) == ["--threads", "4"]
    assert flags((12, 4), cpus=None)[1] == str(min(4, os.cpu_count() or 1))


def test_cuda_toolkit_installed_by_pip_is_found(tmp_path):
    """Where neither the PATH nor CUDA_HOME has nvcc, setup.py takes the toolkit pip installed
    beside a CUDA 13 PyTorch (site-packages/nvidia/cu13), for PyTorch's own CUDA major only, and
    links its runtime by the versioned file, the only one pip's nvidia-cuda-runtime has."""
    site, other = tmp_path / "site", tmp_path / "other"
    home = site / "nvidia" / "cu13"
    (home / "bin").mkdir(parents=True)
    (home / "lib").mkdir()
    other.mkdir()
    paths = [str(tmp_path / "missing"), str(other), str(site)]
    assert build_config.pip_cuda_home("13.0", paths) is None  # no nvcc yet
    (home / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")).write_text("")
    assert build_config.pip_cuda_home("13.0", paths) == str(home)
    assert build_config.pip_cuda_home("13.2", paths[1:]) == str(home)
    assert build_config.pip_cuda_home("12.8", paths) is None
    assert build_config.pip_cuda_home(None, paths) is None
    assert build_config.pip_cuda_home("13.0", paths[:2]) is None

    link = build_config.cudart_link_name
    assert link(str(home)) == "cudart"  # no runtime there: PyTorch's -lcudart, as before
    for name in ("libcudart.so.12", "libcudart.so.13", "libcudart_static.a"):
        (home / "lib" / name).write_text("")
    assert link(str(home)) == ":libcudart.so.13"
    (home / "lib" / "libcudart.so").write_text("")
    assert link(str(home)) == "cudart"
    (home / "lib64").mkdir()  # PyTorch takes lib64 where there is one
    (home / "lib64" / "libcudart.so.13").write_text("")
    assert link(str(home)) == ":libcudart.so.13"
    assert link(str(tmp_path / "none")) == "cudart"

    assert 'pip install "cuda-toolkit[nvcc,nvvm,crt,cccl]==13.0.*"' in (
        build_config.pip_toolkit_hint("13.0"))
    assert "==13.1.*" in build_config.pip_toolkit_hint("13.1")
    for older in ("12.8", "11.8", None):
        hint = build_config.pip_toolkit_hint(older)
        assert "cuda-toolkit[" not in hint and "CUDA_HOME" in hint


def test_toolkit_version_is_read_from_nvcc(tmp_path):
    """The toolkit's own version, which may differ from PyTorch's CUDA in its minor; PyTorch's
    where nvcc cannot be run. With the toolkit here, every default architecture compiles."""
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 11.6, V11.6.124'\n")
    fake.chmod(0o755)
    assert build_config.cuda_toolkit_version(str(tmp_path), "11.7") == (11, 6)
    assert build_config.cuda_toolkit_version(str(tmp_path / "none"), "11.7") == (11, 7)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return  # the rest needs a toolkit; CI's machines have one
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    cuda = build_config.cuda_toolkit_version(home, None)
    assert cuda >= build_config.MIN_CUDA
    source = tmp_path / "empty.cu"
    source.write_text("__global__ void k(float* x) { x[threadIdx.x] = 1.f; }\n")
    gencode = []
    for arch in build_config.default_archs(cuda).replace("+PTX", "").split(";"):
        digits = arch.replace(".", "")
        gencode += ["-gencode", f"arch=compute_{digits},code=sm_{digits}"]
    done = subprocess.run([nvcc, "-c", str(source), "-o", str(tmp_path / "empty.o"), *gencode,
                           *build_config.nvcc_thread_flags(cuda)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_setuptools_too_old_for_pyproject_is_refused():
    """An old setuptools (before 61 it ignores pyproject.toml's [project]) would install a
    package named UNKNOWN without its Python files: setup.py stops with what to do instead."""
    assert build_config.setuptools_problem("64.0.0") is None
    assert build_config.setuptools_problem("80.9.0") is None
    for old in ("47.1.0", "61.2.0", "63.4.3"):
        problem = build_config.setuptools_problem(old)
        assert problem and old in problem and "setuptools>=64" in problem
    assert build_config.setuptools_problem() is None  # the one installed here builds it


# PyTorch's umbrella headers: each pulls in most of ATen, and extension.h also the Python
# bindings and the C++ nn API (a g++ parse of extension.h alone takes about 30 s on this
# machine). nvcc parses a .cu file's headers several times, once per GPU architecture.
UMBRELLA_HEADERS = ("torch/extension.h", "torch/torch.h", "torch/all.h", "torch/python.h",
                    "ATen/ATen.h", "ATen/Functions.h")


def _included_headers(path):
    with open(path) as f:
        return [line.split("<", 1)[1].split(">", 1)[0] for line in f
                if line.lstrip().startswith("#include <")]


def test_sources_include_no_umbrella_header():
    """Every C++ and CUDA file of the package includes the PyTorch headers it uses, not an
    umbrella that parses all of PyTorch: that kept each glue file's compile near a minute."""
    paths = [os.path.join(folder, name)
             for folder in (ROOT, os.path.join(ROOT, "cuda_rasterizer"))
             for name in sorted(os.listdir(folder)) if name.endswith((".h", ".cpp", ".cu"))]
    names = [os.path.relpath(p, ROOT) for p in paths]
    assert "rasterize_points.h" in names and "ext.cpp" in names
    assert os.path.join("cuda_rasterizer", "cuda_backend.cu") in names
    offenders = [f"{name}: {header}" for name, path in zip(names, paths)
                 for header in _included_headers(path) if header in UMBRELLA_HEADERS]
    assert not offenders, offenders


def test_module_exports_its_init_function_alone():
    """_C is compiled with hidden visibility (build_config.UNSHARED_SYMBOLS): none of the
    package's own functions is in its dynamic symbol table, so a library loaded beside it (the
    original rasterizer has functions of the same names) cannot bind to ours, nor ours to its."""
    import diff_gaussian_rasterization_depth._C as C
    nm = shutil.which("nm")
    if nm is None or not C.__file__.endswith(".so"):
        pytest.skip("needs binutils' nm and an ELF or Mach-O module")
    exported = subprocess.run([nm, "-D", "--defined-only", "-C", C.__file__], check=True,
                              capture_output=True, text=True).stdout.splitlines()
    assert any(line.endswith(" PyInit__C") for line in exported)
    ours = [line for line in exported if "dgrd::" in line]
    assert not ours, ours[:10]
