"""The Python the package promises (requires-python >= 3.7, 3DGS's own environment): every Python
file of the repository parses as Python 3.7 and uses no standard-library name added after it.

CI runs Python 3.11, where code written for 3.8 and later runs fine, so a walrus, a
`math.prod` or a `list[int]` annotation would pass every other test and break the package, its
tests or its benchmarks in 3DGS's environment. `tools/check_legacy_env.sh` runs the whole suite
under Python 3.7 and PyTorch 1.12.1; this test keeps the most common slips out between its runs.
"""
import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLDEST = (3, 7)
SKIP_DIRS = {".git", ".whl", "build", "__pycache__", ".gl", "out"}

# Names of the standard library added in Python 3.8 to 3.10 that code here could reach for.
NEWER_NAMES = {
    "math": {"prod", "isqrt", "dist", "nextafter", "ulp", "lcm", "comb", "perm"},
    "statistics": {"fmean", "geometric_mean", "multimode", "quantiles", "NormalDist"},
    "functools": {"cached_property", "cache"},
    "typing": {"Literal", "Final", "Protocol", "TypedDict", "get_origin", "get_args"},
}
NEWER_METHODS = {"removeprefix", "removesuffix"}  # str, 3.9
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}  # subscriptable: 3.9


def python_files():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def newer_than_oldest(tree, postponed):
    """(line, what) of each use in `tree` of a name or an annotation newer than OLDEST."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.attr in NEWER_NAMES.get(node.value.id, ()):
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
            if node.attr in NEWER_METHODS:
                found.append((node.lineno, f".{node.attr}()"))
        if isinstance(node, ast.ImportFrom) and node.module in NEWER_NAMES:
            for alias in node.names:
                if alias.name in NEWER_NAMES[node.module]:
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    if postponed:  # from __future__ import annotations: annotations are never evaluated
        return found
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in getattr(args, "posonlyargs", []) + args.args
                            + args.kwonlyargs
                            + [args.vararg, args.kwarg] if a is not None and a.annotation]
            annotations.append(node.returns)
        if isinstance(node, ast.ClassDef) or isinstance(node, ast.Module):
            annotations += [s.annotation for s in node.body if isinstance(s, ast.AnnAssign)]
    for annotation in filter(None, annotations):
        for part in ast.walk(annotation):
            if (isinstance(part, ast.Subscript) and isinstance(part.value, ast.Name)
                    and part.value.id in BUILTIN_GENERICS):
                found.append((part.lineno, f"{part.value.id}[...] in an annotation"))
            if isinstance(part, ast.BinOp) and isinstance(part.op, ast.BitOr):
                found.append((part.lineno, "X | Y in an annotation"))
    return found


def check_source(source, name="<source>"):
    """Each problem of `source` as 'name:line: what'."""
    try:  # feature_version from Python 3.8 on; Python 3.7 parses as itself
        tree = (ast.parse(source) if sys.version_info < (3, 8)
                else ast.parse(source, feature_version=OLDEST))
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: {e.msg}"]
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                    and any(a.name == "annotations" for a in n.names) for n in tree.body)
    return [f"{name}:{line}: {what}" for line, what in newer_than_oldest(tree, postponed)]


def test_every_python_file_is_python_37():
    files = list(python_files())
    assert len(files) > 40  # the package, tests, benchmarks, examples, tools
    package = [f for f in files if os.sep + "diff_gaussian_rasterization_depth" + os.sep in f]
    assert len(package) >= 10
    problems = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            problems += check_source(f.read(), os.path.relpath(path, ROOT))
    assert not problems, "newer than Python 3.7:\n" + "\n".join(problems)


def test_the_check_catches_what_it_looks_for():
    """Each kind of slip, planted, is reported; the 3.7 forms of the same code are not."""
    slips = {
        "if (n := 3): pass": "",  # syntax: the message is the parser's own
        "def f(a, /): pass": "",
        # (f'{a=}' too, but only up to Python 3.11: later parsers ignore feature_version there)
        "import math\ny = math.prod([1, 2])": "math.prod",
        "import statistics\ny = statistics.fmean([1.0])": "statistics.fmean",
        "from functools import cached_property": "cached_property",
        "from typing import Literal": "Literal",
        "y = 'ab'.removeprefix('a')": "removeprefix",
        "def f(a: list[int]) -> None: pass": "list[...]",
        "def f(a) -> dict[str, int]: pass": "dict[...]",
        "def f(a: 'int' = 1, *, b: int | None = None): pass": "X | Y",
        "class C:\n    x: tuple[int, int] = (1, 2)": "tuple[...]",
    }
    for source, what in slips.items():
        problems = check_source(source)
        assert problems and what in " ".join(problems), (source, problems)
    fine = ["import math\ny = math.fsum([1.0])", "from typing import List\ndef f(a: List[int]): pass",
            "from __future__ import annotations\ndef f(a: list[int]) -> int | None: pass",
            "def f():\n    x: list[int] = []\n    return x", "y = [1, 2][0] | 4"]
    for source in fine:
        assert check_source(source) == [], source
