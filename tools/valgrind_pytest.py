"""Tests of the emulated CUDA backend under valgrind's memcheck: reads of what nothing wrote.

    python tools/valgrind_pytest.py tests/test_cuda.py -k emu-asc
    python tools/valgrind_pytest.py tests/test_robustness.py tests/test_cuda_camera.py -k emu

Runs pytest with the arguments given under memcheck (the package built with valgrind's headers,
so that the emulation marks what it poisons as unwritten: see tools/sanitize_cuda.py --valgrind,
which runs compute-sanitizer's cases so in CI) and prints the reports that name this package's
code; the interpreter's and PyTorch's own are left out. Exit status 1 if there is one, or if
pytest failed. Slow: about 50 times the tests' own time, plus 80 s for PyTorch's import.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sanitize_cuda import our_reports  # noqa: E402


def main(argv):
    if not argv:
        sys.exit(__doc__)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("valgrind_pytest: needs valgrind on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        # One log per process: some tests start Python processes of their own.
        command = [valgrind, "--tool=memcheck", "--error-limit=no", "--num-callers=40",
                   f"--log-file={tmp}/memcheck.%p.log", sys.executable, "-m", "pytest", "-q",
                   "-p", "no:cacheprovider", *argv]
        run = subprocess.run(command, env=dict(os.environ, PYTHONMALLOC="malloc"))
        reports = []
        for log in sorted(glob.glob(os.path.join(tmp, "memcheck.*.log"))):
            with open(log) as f:
                reports += our_reports(f.read())
    for report in reports:
        print("\n".join(line[:240] for line in report[:12]) + "\n")
    print(f"valgrind_pytest: {len(reports)} report(s) in this package's code, pytest exit "
          f"status {run.returncode}")
    return 1 if reports or run.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
