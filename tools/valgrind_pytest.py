"""Tests of the emulated CUDA backend under valgrind's memcheck: reads of what nothing wrote.

    python tools/valgrind_pytest.py tests/test_cuda.py -k emu-asc
    python tools/valgrind_pytest.py tests/test_robustness.py tests/test_cuda_camera.py -k emu

Runs pytest with the arguments given under memcheck (the package built with valgrind's headers,
so that the emulation marks what it poisons as unwritten: see tools/sanitize_cuda.py --valgrind,
which runs compute-sanitizer's cases so in CI) and prints the reports that name this package's
code; the interpreter's and PyTorch's own are left out. Exit status 1 if there is one, or if
pytest failed. Slow: about 50 times the tests' own time, plus 80 s for PyTorch's import.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sanitize_cuda import memcheck  # noqa: E402


def main(argv):
    if not argv:
        sys.exit(__doc__)
    return memcheck(["-m", "pytest", "-q", "-p", "no:cacheprovider", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
