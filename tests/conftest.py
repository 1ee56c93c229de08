"""pytest configuration for the test suite: the cuda marker, the CI build check, and an optional
per-test time limit ($DGRD_TEST_TIMEOUT seconds; benchmarks/run_gpu.sh sets it)."""
import faulthandler
import os
import signal
import sys

import pytest

TIMEOUT_ENV = "DGRD_TEST_TIMEOUT"
# After the soft limit's exception, this long again before the hard stop: a test stuck inside a
# C call (a hung kernel behind a synchronize) never returns to Python to see the exception.
GRACE_ENV = "DGRD_TEST_TIMEOUT_GRACE"
DEFAULT_GRACE_S = 30.0


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device and the CUDA backend (run with `pytest -m cuda`)")


def pytest_sessionstart(session):
    """Under CI the compiled extension must be importable: the backend tests would otherwise
    skip and a broken build would pass unnoticed."""
    from diff_gaussian_rasterization_depth import _backend
    if _backend._C is None and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise pytest.UsageError(
            f"CI: the compiled extension is not importable ({_backend._IMPORT_ERROR}); build it "
            "with `pip install --no-build-isolation -e .` before running the tests")


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env, "")
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise pytest.UsageError(f"${env}: expected seconds, got {text!r}")


class PerTestTimeout(Exception):
    """A test ran past $DGRD_TEST_TIMEOUT."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """With $DGRD_TEST_TIMEOUT set, a test running longer fails (SIGALRM raises in it), and one
    that cannot be interrupted ends the process with every thread's traceback (faulthandler), so
    that a script running the suite under its own deadline learns which test hung. The traceback
    goes to the process's own stderr: visible with `--capture=sys` or `-s`, lost under the
    default fd capture."""
    limit = _seconds(TIMEOUT_ENV, 0.0)
    if limit <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        message = f"{item.nodeid}: over the {limit:g} s per-test limit (${TIMEOUT_ENV})"
        print(f"\n{message}", file=sys.__stderr__, flush=True)   # now, not in the final summary
        raise PerTestTimeout(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    faulthandler.dump_traceback_later(limit + _seconds(GRACE_ENV, DEFAULT_GRACE_S), exit=True,
                                      file=sys.__stderr__)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _cuda_target(request):
    """Tests parametrized by `device` run their renders on that device's backend: for the
    emulated CUDA target, the emulation is active for the whole test."""
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec else None
    if device is None:
        yield
        return
    import cuda_target
    with cuda_target.active(device):
        yield
