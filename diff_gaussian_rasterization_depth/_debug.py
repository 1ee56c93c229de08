"""What `debug=True` adds: inputs checked for NaN and Inf, and snapshots of failing calls.

With `raster_settings.debug` set,
- every input is checked for non-finite values before the backend runs; a ValueError names each
  offending argument and index (`means3D[17]`), where without debug such a Gaussian is culled;
- an error raised by the backend (forward or backward) writes a snapshot, a `torch.save` file
  holding the call's inputs, settings and upstream gradients, and the error message names it.
  `replay_snapshot(path)` runs the same call again.

Snapshots go to $DGRD_SNAPSHOT_DIR when set, else the current directory when it is writable,
else the system's temporary directory. Inputs on a GPU are copied to the host before the backend
runs (debug mode only), so that an error that leaves the CUDA context unusable loses nothing.
"""
import inspect
import itertools
import os
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

SNAPSHOT_FORMAT = 1
_MAX_LISTED = 10                 # indices listed per argument in the non-finite report
_snapshot_counter = itertools.count()
_replaying = 0                   # > 0 while replay_snapshot runs: no snapshots of snapshots

# The Gaussian inputs in the order of the autograd Function, as the snapshot names them.
INPUT_NAMES = ("means3D", "opacities", "shs", "colors_precomp", "scales", "rotations",
               "cov3D_precomp", "dc")
SETTINGS_FIELDS = ("image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
                   "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "debug",
                   "antialiasing", "kernel_size", "orthographic", "fisheye", "fisheye_distortion",
                   "pinhole_distortion", "subpixel_offset")


# ---------------------------------------------------------------------------- non-finite inputs

def _nonfinite_entries(name: str, t: torch.Tensor, by_row: bool) -> List[str]:
    """`name[i]` for each row (Gaussian) i, or `name[i, j]` for each element, not finite."""
    if t is None or t.numel() == 0 or not t.is_floating_point():
        return []
    bad = ~torch.isfinite(t.detach())
    if by_row:
        bad = bad.reshape(t.shape[0], -1).any(dim=1)
    where = bad.nonzero().tolist()       # one host sync per argument; debug mode only
    entries = [f"{name}[{', '.join(str(i) for i in idx)}]" for idx in where[:_MAX_LISTED]]
    if len(where) > _MAX_LISTED:
        entries.append(f"{len(where) - _MAX_LISTED} more in {name}")
    return entries


def raise_if_nonfinite(gaussians: Sequence[Tuple[str, Optional[torch.Tensor]]], settings):
    """ValueError naming every non-finite value among the Gaussians' inputs (by Gaussian index)
    and the settings' tensors (by element index in the shape they were given in)."""
    entries = []
    for name, t in gaussians:
        entries += _nonfinite_entries(name, t, by_row=True)
    for field in ("bg", "viewmatrix", "projmatrix", "campos"):
        t = getattr(settings, field)
        entries += _nonfinite_entries(f"raster_settings.{field}", t, by_row=False)
    if entries:
        raise ValueError(
            "debug: non-finite values (NaN or Inf) in the inputs: " + ", ".join(entries) +
            ". (Index = Gaussian for per-Gaussian inputs. Without debug=True such Gaussians "
            "are culled.)")


# ---------------------------------------------------------------------------- snapshots

def _host_copy(t):
    return None if t is None else t.detach().to("cpu", copy=True)


class Capture:
    """The inputs of one backend call, held so that a snapshot can be written if it fails.

    GPU tensors are copied to the host at once; host tensors are referenced and copied only
    when a snapshot is written (they cannot change during the call).
    """

    def __init__(self, stage: str, inputs: Dict[str, Optional[torch.Tensor]], checked,
                 grads: Optional[Dict[str, Optional[torch.Tensor]]] = None,
                 median_depth: bool = False, inverse_depth: bool = False):
        self.stage = stage
        self.median_depth = median_depth
        self.inverse_depth = inverse_depth
        self.device = str(inputs["means3D"].device)
        on_gpu = inputs["means3D"].device.type != "cpu"
        keep = _host_copy if on_gpu else (lambda t: t)
        self.inputs = {k: keep(v) for k, v in inputs.items()}
        self.grads = None if grads is None else {k: keep(v) for k, v in grads.items()}
        self.settings = {f: getattr(checked, f) for f in SETTINGS_FIELDS}
        self.settings = {f: keep(v) if isinstance(v, torch.Tensor) else v
                         for f, v in self.settings.items()}

    def payload(self, error: BaseException) -> dict:
        from . import __version__

        def host(d):
            return None if d is None else {k: _host_copy(v) for k, v in d.items()}
        return dict(format=SNAPSHOT_FORMAT, stage=self.stage, device=self.device,
                    error=f"{type(error).__name__}: {error}", inputs=host(self.inputs),
                    settings={f: _host_copy(v) if isinstance(v, torch.Tensor) else v
                              for f, v in self.settings.items()},
                    grads=host(self.grads), median_depth=self.median_depth,
                    inverse_depth=self.inverse_depth,
                    versions=dict(package=str(__version__), torch=str(torch.__version__)))

    def reraise(self, error: BaseException):
        """Writes the snapshot and raises `error` again (same type) with the path appended."""
        if _replaying:
            raise error
        try:
            path = _write(self.payload(error))
            note = (f"[debug] a snapshot of this call was written to {path}; reproduce it with "
                    f"diff_gaussian_rasterization_depth.replay_snapshot({path!r})")
        except Exception as write_error:  # the original error matters more
            note = f"[debug] writing a snapshot of this call failed: {write_error!r}"
        message = f"{error}\n{note}"
        try:
            annotated = type(error)(message)
        except Exception:
            annotated = RuntimeError(message)
        raise annotated from error


def guarded(enabled: bool, capture: Callable[[], Capture], call: Callable):
    """call(); with `enabled`, the inputs are captured first and a failure writes a snapshot."""
    if not enabled:
        return call()
    held = capture()
    try:
        return call()
    except Exception as error:
        held.reraise(error)


def _snapshot_dir() -> str:
    chosen = os.environ.get("DGRD_SNAPSHOT_DIR")
    if chosen:
        return chosen
    here = os.getcwd()
    return here if os.access(here, os.W_OK) else tempfile.gettempdir()


def _write(payload: dict) -> str:
    directory = _snapshot_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        name = f"dgrd_snapshot_{stamp}_{os.getpid()}_{next(_snapshot_counter)}.pt"
        path = os.path.abspath(os.path.join(directory, name))
        try:
            with open(path, "xb") as f:   # never overwrite an earlier snapshot
                torch.save(payload, f)
            return path
        except FileExistsError:
            continue


def load_snapshot(path):
    """A snapshot file's dict, on the CPU. Loaded with `weights_only` (tensors and plain data
    only: unpickling runs no code from the file) by any torch that has it (1.13 on); torch 1.12,
    3DGS's own environment, lacks it and unpickles in full: replay only snapshots you trust."""
    if "weights_only" in inspect.signature(torch.load).parameters:
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu")


def replay_snapshot(path: str, device=None, debug: Optional[bool] = None) -> dict:
    """Re-run the call saved in a snapshot written by `debug=True`.

    device: where to run (default: where the call ran, or the CPU when that device is missing).
    debug: override the snapshot's debug setting. A forward snapshot runs the forward; a
    backward snapshot runs the forward and then the backward with the saved upstream gradients.
    Raises whatever the call raises. Returns dict(outputs=(color, radii, depth, weight[,
    feature_map][, median]), grads={input name: gradient} (backward snapshots only),
    snapshot=the loaded file).
    """
    global _replaying
    from . import GaussianRasterizationSettings, rasterize_gaussians

    snap = load_snapshot(path)
    if snap.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"{path}: not a diff_gaussian_rasterization_depth snapshot "
                         f"(format {snap.get('format')!r}, expected {SNAPSHOT_FORMAT})")
    if device is None:
        device = torch.device(snap["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
    backward = snap["stage"] == "backward"

    def move(t, grad=False):
        if t is None:
            return None
        t = t.to(device)
        return t.requires_grad_(True) if grad and t.is_floating_point() else t

    inputs = {k: move(v, backward) for k, v in snap["inputs"].items()}
    fields = {f: move(v) if isinstance(v, torch.Tensor) else v
              for f, v in snap["settings"].items()}
    if debug is not None:
        fields["debug"] = bool(debug)
    settings = GaussianRasterizationSettings(**fields)
    means3D = inputs["means3D"]
    means2D = torch.zeros((means3D.shape[0], 3), dtype=means3D.dtype, device=means3D.device,
                          requires_grad=backward)
    features = inputs.get("features")
    median_depth = bool(snap.get("median_depth", False))
    inverse_depth = bool(snap.get("inverse_depth", False))
    _replaying += 1
    try:
        outputs = rasterize_gaussians(means3D, means2D, inputs["shs"], inputs["colors_precomp"],
                                      inputs["opacities"], inputs["scales"], inputs["rotations"],
                                      inputs["cov3D_precomp"], settings,
                                      dc=inputs.get("dc"), features=features,
                                      median_depth=median_depth, inverse_depth=inverse_depth)
        grads = None
        if backward:
            names = (["color", None, "depth", "weight"]
                     + (["feature_map"] if features is not None else [])
                     + (["median"] if median_depth else []))
            pairs = [(o, move(snap["grads"].get(k))) for o, k in zip(outputs, names)
                     if k is not None]
            pairs = [(o, g) for o, g in pairs if g is not None]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
            grads = {k: v.grad for k, v in inputs.items() if v is not None and v.requires_grad}
            grads["means2D"] = means2D.grad
    finally:
        _replaying -= 1
    return dict(outputs=outputs, grads=grads, snapshot=snap)
