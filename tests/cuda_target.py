"""The "CUDA target" of the `cuda`-marked tests: a real GPU where there is one, and everywhere the
CUDA backend's own kernels run on the CPU by the emulation of the CUDA execution model
(cuda_rasterizer/cuda_emulation.h, module `_emulated_cuda`).

A target is a device name. The emulated one is the str "cpu" (what torch sees in `.to(device)`)
that compares equal to "cuda" and not to "cpu", so the tests treat it as the CUDA backend
(float32 only, gradients summed by atomics); renders go to the emulated backend while its
`active()` context is entered (conftest.py enters it for tests parametrized by `device`).
"""
import contextlib

import pytest
import torch

import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import _backend

REAL_CUDA = torch.cuda.is_available() and dgrd.has_cuda_backend()
EMULATED_CUDA = _backend.has_emulated_cuda()


class EmulatedCuda(str):
    """The emulated CUDA target, with the thread order of its blocks ('asc', 'desc',
    'random:SEED')."""

    def __new__(cls, order):
        self = super().__new__(cls, "cpu")
        self.order = order
        return self

    def __eq__(self, other):
        return other == "cuda" or (isinstance(other, EmulatedCuda) and other.order == self.order)

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __repr__(self):
        return f"cuda-emu-{self.order}"

    def active(self):
        return _backend.emulated_cuda(self.order)


def active(device):
    """Context in which renders on `device` run on its backend."""
    return device.active() if isinstance(device, EmulatedCuda) else contextlib.nullcontext()


def is_emulated(device):
    return isinstance(device, EmulatedCuda)


def real_cuda_param():
    return pytest.param("cuda", id="cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not REAL_CUDA, reason="needs a CUDA GPU and the CUDA backend")])


def emulated_param(order):
    return pytest.param(EmulatedCuda(order), id=f"cuda-emu-{order}", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not EMULATED_CUDA, reason="the emulated CUDA backend was not built")])


# The suite runs the emulated kernels under two thread orders, so that a missing barrier (a
# result that depends on which threads run first) shows as a failure in one of them.
EMULATED_ORDERS = ("asc", "desc")


def cuda_targets(orders=EMULATED_ORDERS):
    """Parameters: the real GPU, then the emulation in each order."""
    return [real_cuda_param()] + [emulated_param(o) for o in orders]
