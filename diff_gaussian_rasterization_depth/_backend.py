"""Thin bridge to the compiled extension `_C`: packs settings and tensors, dispatches by device."""
import contextlib
import functools
import sys

import torch

try:
    from . import _C
    _IMPORT_ERROR = None
except ImportError as e:  # a source checkout that was never built
    _C = None
    _IMPORT_ERROR = e


# Tests only: while set (by `emulated_cuda`), every call goes to the CUDA backend's kernels run
# on CPU tensors by the emulation of the CUDA execution model (module `_emulated_cuda`).
_emulated = None


def _ext():
    if _C is None:
        raise RuntimeError(
            "diff_gaussian_rasterization_depth: the compiled extension is missing "
            f"({_IMPORT_ERROR}). Install the package with "
            "`pip install --no-build-isolation .` from its source directory.")
    return _C


def _compile_api(name):
    """torch.compiler's `name` (PyTorch 2.1+; torch._dynamo's before), or None before 2.0."""
    for module in ("compiler", "_dynamo"):
        found = getattr(getattr(torch, module, None), name, None)
        if found is not None:
            return found
    return None


_is_compiling = _compile_api("is_compiling") or (lambda: False)
_untraced = {}


def compiling() -> bool:
    """True while torch.compile traces the caller. PyTorch imports TorchDynamo for
    torch.compile alone, so a program that never compiles pays one dictionary lookup."""
    return "torch._dynamo" in sys.modules and _is_compiling()


def untraced(fn):
    """`fn` as torch.compile should meet a function that calls into `_C`: one graph break, the
    call run by the interpreter as without torch.compile (autograd included). TorchDynamo
    cannot trace into a compiled extension; left to try, it broke the graph at each call into
    `_C` and warned of each. Made at the first compiled call (making it imports TorchDynamo, a
    second on every import of the package), then kept."""
    if fn not in _untraced:
        _untraced[fn] = _compile_api("disable")(fn)
    return _untraced[fn]


def run_eagerly_under_compile(fn):
    """Decorator: `fn` called through `untraced` under torch.compile, itself otherwise."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return untraced(fn)(*args, **kwargs) if compiling() else fn(*args, **kwargs)
    return call


def _renderer():
    """The module that renders: `_C`, or the emulated CUDA backend inside `emulated_cuda`."""
    return _ext() if _emulated is None else _emulated


@contextlib.contextmanager
def emulated_cuda(order=None):
    """Tests only: run every render inside the block on the emulated CUDA backend (CPU tensors,
    float32), with threads between sync points in `order` ('asc', 'desc', 'random:SEED'; None
    keeps the current one, DGRD_EMU_ORDER or 'asc')."""
    global _emulated
    from . import _emulated_cuda
    previous_module, previous_order = _emulated, _emulated_cuda.thread_order()
    if order is not None:
        _emulated_cuda.set_thread_order(order)
    _emulated = _emulated_cuda
    try:
        yield _emulated_cuda
    finally:
        _emulated = previous_module
        _emulated_cuda.set_thread_order(previous_order)


def set_cuda_tuning(warp_skip=True, scatter_reduce=True, depth_first_sort=True, split_tiles=True,
                    split_forward=None, short_forward_parts=True, parts_first=True,
                    split_length=0, feature_split_bytes=None, compact_state=True):
    """Benchmarks and tests: switch the CUDA backend's techniques (all on by default) of the
    backend that renders now (the emulated one inside `emulated_cuda`); see gpu::CudaTuning in
    cuda_rasterizer/cuda_backend.h. `split_forward` acts with `split_tiles` only: True always,
    False never, None (the default) where the image's tiles fill at most two waves of the
    forward's blocks (gpu::split_forward); `short_forward_parts` acts with `split_forward`;
    `parts_first`: the backward launches the blocks of split lists' parts before the tiles'
    (TileSplits::parts_first); `split_length` (tests): the positions per part of a split tile
    list, a multiple of 256 up to 2^24 (the forward's half of it where it is a multiple of 512,
    with `short_forward_parts`); 0: chosen; `feature_split_bytes` (tests): the feature kernels
    walk whole lists where their buffers for parts would exceed it; None: the backend's default
    (64 MiB); `compact_state` (with `depth_first_sort`): the render's state holds the Gaussians
    with tiles alone."""
    switches = dict(warp_skip=warp_skip, scatter_reduce=scatter_reduce,
                    depth_first_sort=depth_first_sort, split_tiles=split_tiles,
                    split_forward=-1 if split_forward is None else split_forward,
                    short_forward_parts=short_forward_parts, parts_first=parts_first,
                    split_length=split_length, compact_state=compact_state)
    if feature_split_bytes is not None:
        switches["feature_split_bytes"] = feature_split_bytes
    _renderer().set_cuda_tuning({name: int(value) for name, value in switches.items()})


def set_cuda_stage_timing(on: bool):
    """Benchmarks: time each CUDA stage of the following forwards and backwards (off by
    default), on the backend that renders now; `cuda_stage_ms` reads the last of each."""
    _renderer().set_cuda_stage_timing(on)


def cuda_stage_ms() -> dict:
    """{"forward/<stage>": ms, "backward/<stage>": ms} of the last timed forward and backward, in
    the order the stages ran; waits for them to finish."""
    return dict(_renderer().cuda_stage_ms())


def has_emulated_cuda() -> bool:
    """Whether the emulated CUDA backend (a test-only module) was built."""
    try:
        from . import _emulated_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def has_cuda() -> bool:
    return _C is not None and _C.has_cuda()


def _check_device(device: torch.device):
    if device.type == "cuda" and not _ext().has_cuda():
        raise RuntimeError(
            "diff_gaussian_rasterization_depth was built without CUDA, but the inputs are CUDA "
            "tensors. Rebuild with a CUDA-enabled PyTorch and nvcc on PATH: "
            "`pip install --no-build-isolation --force-reinstall .` (set TORCH_CUDA_ARCH_LIST "
            "to choose GPU architectures).")


def pack_camera(parts, device, dtype, keep_grad):
    """`_validation.pack_camera` (its PyTorch twin and oracle) in one call into C++
    (pack_camera in rasterize_points.cpp) instead of a dozen torch calls from Python."""
    return _ext().pack_camera(parts, empty(device, dtype), keep_grad)


def empty(device, dtype):
    """An empty tensor of (device, dtype), made once: it carries them to C++, and stands in for
    the absent inputs the Function saves."""
    t = _empty.get((device, dtype))
    if t is None:
        t = _empty[(device, dtype)] = torch.empty((0,), device=device, dtype=dtype)
    return t


_empty = {}


# Tests: False sends every call through the Python checks alone.
common_check = True


# Whether a TorchFunctionMode is active (PyTorch 2.0 and later; None before).
_function_mode_active = getattr(torch._C, "_is_torch_function_mode_enabled", None)


def check_common(means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                 cov3D_precomp, dc, features, settings, median_depth, inverse_depth):
    """The common call checked in C++ (check_common in ext.cpp): (opacities (P, 1), the
    RasterConfig), as the Python checks and `make_config` make them; None where the call is not
    the common one (or has an error), for the Python checks to take it. Also None under a
    TorchFunctionMode (tracing, logging): the Python checks' torch calls (a flat opacity's
    reshape) go through the mode, the C++ ones would not."""
    if _C is None or not common_check or (_function_mode_active and _function_mode_active()):
        return None
    return _C.check_common(means3D, means2D, opacities, shs, colors_precomp, scales, rotations,
                           cov3D_precomp, dc, features, settings, median_depth, inverse_depth)


def make_config(settings, median_depth=False, inverse_depth=False):
    """settings: a CheckedSettings; its tensors are private copies on the right device. The
    C++ RasterConfig reads its fields (those of the same names) in one call."""
    return _ext().RasterConfig(settings, bool(median_depth), bool(inverse_depth))


def make_gaussians(means3D, opacities, sh, colors_precomp, scales, rotations, cov3D_precomp,
                   dc=None, features=None):
    """Absent inputs (None) become empty tensors and every present one is made contiguous, in
    C++ (GaussianInputs' constructor in ext.cpp)."""
    _check_device(means3D.device)
    return _ext().GaussianInputs(means3D, opacities, sh, colors_precomp, scales, rotations,
                                 cov3D_precomp, dc, features)


def forward(config, gaussians):
    return _renderer().forward(config, gaussians)


def count_touches(config, state):
    """The touch count (P,) int32 of the forward whose state this is (a walk of its own)."""
    return _renderer().count_touches(config, state)


def gaussian_contributions(config, state, statistics=True):
    """((P, 5): each Gaussian's weight sum, weight max, pixels, dominated pixels and
    opacity-transmittance sum; (H, W) int32: each pixel's dominant Gaussian, -1 where none),
    from the forward whose state this is (a walk of its own). `statistics`: whether the caller
    reads the statistics (on CUDA under torch.use_deterministic_algorithms, their float sums
    are then summed per pair and gathered in a fixed order; the dominant map alone is exact)."""
    return _renderer().gaussian_contributions(config, state, statistics)


def median_gaussians(state):
    """(H, W) int32: each pixel's median Gaussian in the forward whose state this is (one that
    tracked the median depth): the Gaussian of the median's list position where the
    transmittance reached 0.5, else of the last blended splat's, -1 where nothing was blended.
    Plain PyTorch on the state the backward keeps (ForwardState in rasterize_points.h): a gather
    per pixel through its tile's list, on whatever device the state is."""
    from .reference import TILE_SIZE   # config.h's kTileSize
    point_list, tile_ranges, n_contrib, median_contrib, gaussian_ids = (
        state[4], state[5], state[7], state[8], state[11])
    if median_contrib.numel() == 0:
        raise RuntimeError("median_gaussians: the forward did not track the median")
    height, width = n_contrib.shape
    device = n_contrib.device
    position = torch.where(median_contrib > 0, median_contrib, n_contrib).long()  # 1 + list pos
    if point_list.numel() == 0:
        return torch.full((height, width), -1, dtype=torch.int32, device=device)
    tiles_x = -(-width // TILE_SIZE)
    rows = torch.arange(height, device=device) // TILE_SIZE
    cols = torch.arange(width, device=device) // TILE_SIZE
    tile = rows[:, None] * tiles_x + cols[None, :]
    begin = tile_ranges.reshape(-1, 2)[:, 0].long()[tile]
    row = point_list.long()[(begin + position - 1).clamp(0, point_list.numel() - 1)]
    gaussian = gaussian_ids.long()[row] if gaussian_ids.numel() > 0 else row
    return torch.where(position > 0, gaussian, torch.full_like(gaussian, -1)).to(torch.int32)


def point_opacity(config, gaussians, state, points):
    """(N,): the opacity field of the forward whose state this is at points (N, 3): each point's
    opacity in the view, 1 where the view does not see it (a walk of its own)."""
    return _renderer().point_opacity(config, gaussians, state, points)


def backward(config, gaussians, state, grad_color, grad_depth, grad_weight,
             grad_feature_map=None, grad_median=None, release_state=False):
    """None for a map no loss reaches; contiguity and the empty stand-ins are settled in C++.
    release_state: `state` (the forward's list) is emptied, and the backward frees its buffers
    as it is done with them: for a graph that is not kept (`graph_is_freed`)."""
    return _renderer().backward(config, gaussians, state, grad_color, grad_depth, grad_weight,
                                grad_feature_map, grad_median, release_state)


def graph_is_freed():
    """Whether the running backward frees the graph after it (no retain_graph or
    create_graph), so that a Function may free its state as it goes. False where this torch
    cannot tell (the query, `_get_current_graph_task_keep_graph`, is private and absent from
    older versions)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None:
        return False
    try:
        return not keep_graph()
    except RuntimeError:  # not inside a graph task
        return False


def mark_visible(positions, settings):
    _check_device(positions.device)
    return _renderer().mark_visible(positions, settings.viewmatrix)


def sparse_adam_step(param, grad, exp_avg, exp_avg_sq, visible, lr, beta1, beta2, eps):
    _check_device(param.device)
    _renderer().sparse_adam_step(param, grad, exp_avg, exp_avg_sq, visible, lr, beta1, beta2, eps)


def compute_relocation(opacity, scale, copies):
    _check_device(opacity.device)
    return _renderer().compute_relocation(opacity, scale, copies)


def ssim_forward(a, b, c1, c2, partials):
    return _renderer().ssim_forward(a, b, c1, c2, partials)


def ssim_backward(a, b, grad_map, partials, need_a, need_b):
    return _renderer().ssim_backward(a, b, grad_map, partials, need_a, need_b)
