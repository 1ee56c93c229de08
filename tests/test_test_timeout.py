"""The per-test time limit of conftest.py ($DGRD_TEST_TIMEOUT): a slow test fails and the run goes
on; a test that cannot be interrupted ends the process, naming where it was stuck."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SLOW_TESTS = '''
import signal
import time


def test_slow_but_interruptible():
    time.sleep(20)


def test_after_the_slow_one_still_runs():
    assert True


def test_stuck_where_no_signal_reaches():
    # As a test blocked in a C call would be: the alarm cannot reach Python code.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
    time.sleep(20)


def test_never_reached():
    assert True
'''


def test_per_test_limit_soft_then_hard(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_slow.py").write_text(SLOW_TESTS)
    env = dict(os.environ, DGRD_TEST_TIMEOUT="1", DGRD_TEST_TIMEOUT_GRACE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("CI", None)   # the CI check wants the compiled extension, which this does not need
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           "--capture=sys", "test_slow.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert "test_slow_but_interruptible FAILED" in out, out
    assert "over the 1 s per-test limit" in out, out
    assert "test_after_the_slow_one_still_runs PASSED" in out, out
    # The hard stop: faulthandler's dump names the stuck test's frame, and the process exits.
    assert "Timeout" in out and "test_stuck_where_no_signal_reaches" in out, out
    assert "test_never_reached" not in out.split("test_stuck_where_no_signal_reaches", 1)[1], out
    assert proc.returncode != 0
    assert elapsed < 60, elapsed   # neither 20 s sleep ran out
