"""pytest configuration for the test suite."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device and the CUDA backend (run with `pytest -m cuda`)")
