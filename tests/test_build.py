"""The build's source lists: every source of an extension compiles to an object path of its own.

torch's BuildExtension (ninja) names an object after its source with the suffix dropped, so
`rasterize_points.cpp` and `rasterize_points.cu` in one extension are two rules for one object
and the CUDA build stops at once ("multiple rules generate rasterize_points.o"). CI's PyTorch has
no CUDA, so only the CPU half of `_C` is ever built there: this checks the CUDA half's list.
"""
import ast
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import emulated_build  # noqa: E402


def _setup_cpu_sources():
    """setup.py's `cpu_sources` literal (setup.py runs setup() when imported, so it is parsed)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "cpu_sources"
                                                for t in node.targets):
            return ast.literal_eval(node.value)
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
