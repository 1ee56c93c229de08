"""pytest configuration for the test suite."""
import os

import pytest


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


@pytest.fixture(autouse=True)
def _cuda_target(request):
    """Tests parametrized by `device` run their renders on that device's backend: for the
    emulated CUDA target, the emulation is active for the whole test."""
    import cuda_target
    callspec = getattr(request.node, "callspec", None)
    device = callspec.params.get("device") if callspec else None
    with cuda_target.active(device):
        yield
