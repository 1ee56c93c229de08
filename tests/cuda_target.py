"""The "CUDA target" of the `cuda`-marked tests: a real GPU where there is one, and everywhere the
CUDA backend's own kernels run on the CPU by the emulation of the CUDA execution model
(cuda_rasterizer/cuda_emulation.h, module `_emulated_cuda`).

A target is a device name. The emulated one is the str "cpu" (what torch sees in `.to(device)`)
that compares equal to "cuda" and not to "cpu", so the tests treat it as the CUDA backend
(float32 only, gradients summed by atomics); renders go to the emulated backend while its
`active()` context is entered (conftest.py enters it for tests parametrized by `device`).
"""
import contextlib
import os

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


def adds_in_fixed_order(device):
    """Whether two identical calls on `device` add their atomics in the same order: the CPU,
    and the emulation in a fixed thread order (not a GPU, nor the emulation's random orders,
    which draw a new order at each launch)."""
    if is_emulated(device):
        return not device.order.startswith("random")
    return device != "cuda"


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
# DGRD_EMU_ORDERS (comma-separated, e.g. "random:7,random:8") runs it under others instead.
EMULATED_ORDERS = tuple(os.environ.get("DGRD_EMU_ORDERS", "asc,desc").split(","))


def cuda_targets(orders=EMULATED_ORDERS):
    """Parameters: the real GPU, then the emulation in each order."""
    return [real_cuda_param()] + [emulated_param(o) for o in orders]


# CUDA against the CPU backend, forward. The two round apart: a GPU fuses multiply-adds (nvcc's
# default) and takes 2^x by ex2.approx where the CPU takes exp_poly, and a thin splat's power
# cancels in float32, so a pixel moves by up to about 1e-5 of its map's scale. Measured on the
# emulation built with fused multiply-adds (setup.py): at most 6e-6 on the strict scenes of
# test_cuda.py, 7e-5 at a few pixels of the bulk ones. A map is compared at FORWARD_ATOL times its
# scale, the largest magnitude its reference takes and at least 1 (a depth sums w z: a weight's
# rounding counts with the z behind it), and times the image's extent over 512 where it is larger:
# a splat's offset from a pixel is exact only to float32's rounding of pixel coordinates (at x =
# 5000, 5e-4 px; a 1x5000 image moved 1.6e-4). The bulk comparisons allow a thousandth of the
# pixels beyond BULK_ATOL on the same scales.
FORWARD_ATOL = 3e-5
BULK_ATOL = 1e-4


def extent_factor(extent, base=512):
    """How a CUDA-vs-CPU tolerance grows with the image's larger side `extent` past `base`
    pixels: float32 rounds pixel coordinates in proportion to them (see FORWARD_ATOL)."""
    return max(1.0, extent / base)


def forward_atol(reference, atol=FORWARD_ATOL, extent=0):
    """The tolerance of a CUDA map against the CPU's `reference` (see FORWARD_ATOL); `extent`:
    the image's larger side."""
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return atol * max(1.0, scale) * extent_factor(extent)


def bulk_gradient_rtol(height, width):
    """The relative error (in norm) allowed a CUDA gradient against the CPU's on a whole image.
    It grows with the extent as the forward's rounding does (see FORWARD_ATOL): each pixel's
    term carries its offset's rounding."""
    return 1e-3 * extent_factor(max(height, width))


def gradients_agree_in_bulk(got, reference, height, width):
    """A per-Gaussian gradient (P, ...) against the CPU's on a whole image: within
    bulk_gradient_rtol in norm, once the thousandth of the Gaussians (at least one) that differ
    most are set apart. The bulk comparisons keep the pixels and Gaussians within rounding of a
    threshold, and one ill-conditioned Gaussian may differ by more than all the others together:
    on 1920x1080 (the emulation built with fused multiply-adds, at full size), one Gaussian held
    2.1e-2 of the norm of the scales' gradient, the CPU's float32 as far from float64 there."""
    P = reference.shape[0]
    if P == 0:
        return True
    error = (got - reference).reshape(P, -1).norm(dim=1)
    kept = error.sort().values[:P - max(1, P // 1000)]
    return bool(kept.norm() <= bulk_gradient_rtol(height, width) * reference.norm())


def agree_in_bulk(got, reference):
    """Maps (..., H, W): at most a thousandth of the values beyond BULK_ATOL on the scales of
    forward_atol."""
    limit = forward_atol(reference, BULK_ATOL, max(reference.shape[-2:]))
    return bool(((got - reference).abs() > limit).float().mean() < 1e-3)
