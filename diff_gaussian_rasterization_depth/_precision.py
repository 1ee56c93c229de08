"""Mixed precision: float16 and bfloat16 inputs computed in float32, and torch.autocast kept out of
the package's own matrix products (doc/api.md, "Mixed precision")."""
import contextlib
import functools

import torch

# What the compiled backends do not compute in: such a tensor is converted to the call's dtype
# first (exactly: float32 holds every float16 and bfloat16 value), by a differentiable cast, so
# its gradient comes back in its own dtype.
LOW_PRECISION = (torch.float16, torch.bfloat16)

# The devices whose autocast the package turns off around its own matrix products: the
# backends' (an autocast on another device leaves these tensors alone).
AUTOCAST_DEVICES = ("cuda", "cpu")


def _autocast_query():
    """device_type -> whether autocast is on there: torch.is_autocast_enabled(device_type) from
    PyTorch 2.4, the per-device functions before."""
    try:
        torch.is_autocast_enabled("cpu")
        return torch.is_autocast_enabled
    except TypeError:
        cpu = getattr(torch, "is_autocast_cpu_enabled", lambda: False)
        return lambda device_type: cpu() if device_type == "cpu" else torch.is_autocast_enabled()


autocast_enabled = _autocast_query()


def autocast_devices():
    """The devices of AUTOCAST_DEVICES where an autocast region is in force now."""
    return [d for d in AUTOCAST_DEVICES if autocast_enabled(d)]


def full_precision(fn):
    """fn run with autocast off. Why: inside `torch.autocast`, matrix products (`@`, matmul,
    addmm, mv) run in float16 or bfloat16, which would round camera matrices, projected points
    and normals to 3 significant digits (a pixel position near 1000 to 0.5-4 px); the package's
    helpers compute in their inputs' dtype instead, as the rasterizer does. Costs two flag reads
    where autocast is off."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        devices = autocast_devices()
        if not devices:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device_type in devices:
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return fn(*args, **kwargs)
    return wrapper


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a call led by `t` (the means) computes in: float32 for float16 and bfloat16,
    else t's own (float32 or float64; any other, or a t that is no tensor, the checks
    refuse)."""
    if not isinstance(t, torch.Tensor) or t.dtype in LOW_PRECISION:
        return torch.float32
    return t.dtype


def upcast(t, dtype: torch.dtype):
    """t converted to dtype where it is a float16 or bfloat16 tensor, else t itself."""
    if isinstance(t, torch.Tensor) and t.dtype in LOW_PRECISION:
        return t.to(dtype)
    return t


def has_low_precision(*values) -> bool:
    """Whether any of values is a float16 or bfloat16 tensor."""
    return any(isinstance(v, torch.Tensor) and v.dtype in LOW_PRECISION for v in values)
