"""Run CUDA-only 3DGS training code on the CPU, unchanged: a test aid, not part of the package.

    python tools/cpu_shim/run.py /path/to/gaussian-splatting/train.py --data_device cpu ...

Before running the script as __main__ (with its own directory first on sys.path, as
`python train.py` would), this makes every CUDA request of that code land on the CPU:
`.cuda()` and `.to("cuda")` keep the tensor where it is, `device="cuda"` in tensor factories
becomes the CPU, `torch.cuda.Event` times with the wall clock, `torch.cuda.set_device` and
`empty_cache` do nothing, and `simple_knn._C.distCUDA2` (3DGS's initial scale: the mean squared
distance to the 3 nearest other points) is computed with torch.cdist. Nothing else changes,
so the training code, its optimizer and the rasterizer run as they would on a GPU.
"""
import functools
import os
import runpy
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    return False


def _cpu_device_kwarg(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return fn(*args, **kwargs)
    return wrapper


FACTORIES = ("tensor", "as_tensor", "zeros", "ones", "empty", "full", "rand", "randn", "randint",
             "eye", "arange", "linspace", "zeros_like", "ones_like", "empty_like", "full_like",
             "rand_like", "randn_like")


class _WallClockEvent:
    """torch.cuda.Event with enable_timing: elapsed_time in milliseconds."""

    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, *args, **kwargs):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def install():
    for name in FACTORIES:
        setattr(torch, name, _cpu_device_kwarg(getattr(torch, name)))

    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.cuda.Event = _WallClockEvent
    torch.cuda.set_device = lambda *args, **kwargs: None
    torch.cuda.empty_cache = lambda: None
    sys.path.insert(0, HERE)   # the CPU simple_knn


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    script = os.path.abspath(sys.argv[1])
    install()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
