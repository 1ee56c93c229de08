"""Pictures: colour, depth (colour-mapped, with a colour bar in scene units) and weight PNGs,
and multi-panel figures.

Uses matplotlib (extra `demo`), imported inside the functions, without pyplot, so nothing here
touches a GUI backend and the core package never imports it.
"""
import os
from typing import Optional, Sequence

import numpy as np
import torch

DEPTH_CMAP = "turbo_r"      # near = red, far = blue
WEIGHT_CMAP = "gray"
EMPTY_RGB = (0.93, 0.93, 0.93)  # where a depth is not shown (weight below the threshold)


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
        import matplotlib.image as mpimg
    except ImportError:
        raise ImportError("writing images needs matplotlib: pip install matplotlib "
                          "(or the package's [demo] extra)") from None
    return matplotlib, Figure, mpimg


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def as_hwc(image) -> np.ndarray:
    """(3,H,W) or (H,W,3) colour -> (H,W,3) float array clipped to [0,1]."""
    a = as_numpy(image)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"colour image: expected (3,H,W) or (H,W,3), got {a.shape}")
    return np.clip(a, 0.0, 1.0)


def _ensure_dir(path):
    d = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(d, exist_ok=True)


def to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_color(path, color):
    """Colour image ((3,H,W) or (H,W,3), values in [0,1]) as an 8-bit PNG at native size."""
    _, _, mpimg = _matplotlib()
    _ensure_dir(path)
    mpimg.imsave(os.fspath(path), to_uint8(as_hwc(color)))


def save_weight(path, weight):
    """Weight map (H,W) in [0,1] as an 8-bit grey PNG at native size (white = opaque)."""
    _, _, mpimg = _matplotlib()
    _ensure_dir(path)
    w = to_uint8(as_numpy(weight))
    mpimg.imsave(os.fspath(path), np.repeat(w[:, :, None], 3, axis=2))


def depth_range(depth, weight, min_weight: float = 0.5, lo_pct: float = 1.0,
                hi_pct: float = 99.0):
    """Robust display range (lo, hi) of the depth over pixels with weight > min_weight.

    Falls back to all pixels with any weight, then to (0, 1) for an empty image.
    """
    d, w = as_numpy(depth), as_numpy(weight)
    for thresh in (min_weight, 0.0):
        sel = d[(w > thresh) & np.isfinite(d)]
        if sel.size:
            lo, hi = np.percentile(sel, [lo_pct, hi_pct])
            if hi - lo < 1e-6 * max(1.0, abs(hi)):
                lo, hi = lo - 0.5, hi + 0.5
            return float(lo), float(hi)
    return 0.0, 1.0


def _depth_and_range(depth, weight=None, vmin=None, vmax=None, min_weight: float = 0.5):
    """(depth, weight, vmin, vmax) as numpy: weight defaults to all ones, and a missing vmin or
    vmax comes from `depth_range`."""
    d = as_numpy(depth)
    w = np.ones_like(d) if weight is None else as_numpy(weight)
    if vmin is None or vmax is None:
        lo, hi = depth_range(d, w, min_weight)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    return d, w, vmin, vmax


def colorize_depth(depth, weight=None, vmin=None, vmax=None, min_weight: float = 0.5,
                   cmap: str = DEPTH_CMAP) -> np.ndarray:
    """(H,W) depth -> (H,W,3) RGB; pixels with weight <= min_weight become light grey."""
    matplotlib, _, _ = _matplotlib()
    d, w, vmin, vmax = _depth_and_range(depth, weight, vmin, vmax, min_weight)
    t = np.clip((d - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](t)[..., :3]
    rgb[~((w > min_weight) & np.isfinite(d))] = EMPTY_RGB
    return rgb


class Panel:
    """One image of a figure: kind 'rgb', 'depth' or 'weight' (the last two get colour bars)."""

    def __init__(self, kind: str, image, title: str = "", weight=None,
                 vmin: Optional[float] = None, vmax: Optional[float] = None,
                 min_weight: float = 0.5, label: Optional[str] = None):
        if kind not in ("rgb", "depth", "weight", "scalar"):
            raise ValueError(f"panel kind: expected rgb, depth, weight or scalar, got {kind}")
        self.kind, self.title, self.label = kind, title, label
        self.min_weight = min_weight
        if kind == "rgb":
            self.image = as_hwc(image)
        else:
            self.image = as_numpy(image)
        self.weight = None if weight is None else as_numpy(weight)
        if kind == "depth":
            _, _, vmin, vmax = _depth_and_range(self.image, self.weight, vmin, vmax, min_weight)
        if kind == "weight":
            vmin, vmax = 0.0, 1.0
        if kind == "scalar" and (vmin is None or vmax is None):
            vmin = float(np.nanmin(self.image)) if vmin is None else vmin
            vmax = float(np.nanmax(self.image)) if vmax is None else vmax
        self.vmin, self.vmax = vmin, vmax


def save_figure(path, panels: Sequence[Sequence[Optional[Panel]]], suptitle: str = "",
                panel_width_in: float = 3.2, dpi: int = 100):
    """A grid of panels (rows of Panel or None), each depth/weight panel with its colour bar."""
    matplotlib, Figure, _ = _matplotlib()
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable
    rows = len(panels)
    ncols = max(len(r) for r in panels)
    first = next(p for r in panels for p in r if p is not None)
    h, w = first.image.shape[:2]
    panel_h = panel_width_in * h / w
    fig = Figure(figsize=(ncols * panel_width_in * 1.25, rows * (panel_h + 0.45)
                          + (0.4 if suptitle else 0.0)), dpi=dpi)
    for i, row in enumerate(panels):
        for j, p in enumerate(row):
            ax = fig.add_subplot(rows, ncols, i * ncols + j + 1)
            ax.set_axis_off()
            if p is None:
                continue
            _draw(ax, fig, p, matplotlib, Normalize, ScalarMappable)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    _ensure_dir(path)
    fig.savefig(os.fspath(path), dpi=dpi)


def _draw(ax, fig, p: Panel, matplotlib, Normalize, ScalarMappable):
    from mpl_toolkits.axes_grid1 import make_axes_locatable
    # Every panel reserves room for a colour bar, so that all images come out the same size.
    cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.05)
    if p.kind == "rgb":
        ax.imshow(p.image, interpolation="nearest")
        cax.set_axis_off()
    else:
        cmap_name = {"depth": DEPTH_CMAP, "weight": WEIGHT_CMAP}.get(p.kind, "viridis")
        if p.kind == "depth":
            img = colorize_depth(p.image, p.weight, p.vmin, p.vmax, p.min_weight, cmap_name)
        else:
            t = np.clip((p.image - p.vmin) / max(p.vmax - p.vmin, 1e-12), 0.0, 1.0)
            img = matplotlib.colormaps[cmap_name](t)[..., :3]
        ax.imshow(img, interpolation="nearest")
        sm = ScalarMappable(norm=Normalize(p.vmin, p.vmax), cmap=cmap_name)
        cb = fig.colorbar(sm, cax=cax)
        label = p.label or {"depth": "depth (scene units)", "weight": "weight"}.get(p.kind, "")
        cb.set_label(label, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    if p.title:
        ax.set_title(p.title, fontsize=9)


def save_depth(path, depth, weight=None, vmin=None, vmax=None, min_weight: float = 0.5,
               title: Optional[str] = None, min_height_px: int = 240):
    """Depth map as a colour-mapped PNG with a colour bar labelled in scene units.

    The image is shown at native resolution (integer nearest-neighbour upscaling when it is
    smaller than `min_height_px`, so the colour bar's labels stay legible). Pixels with weight
    <= min_weight are light grey. Returns the (vmin, vmax) used.
    """
    matplotlib, Figure, _ = _matplotlib()
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable
    d, w, vmin, vmax = _depth_and_range(depth, weight, vmin, vmax, min_weight)
    rgb = colorize_depth(d, w, vmin, vmax, min_weight)
    H, W = d.shape
    k = max(1, -(-min_height_px // H))
    rgb = np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)
    dpi = 100
    title_px, bar_px = 26, 95
    fig_w, fig_h = (W * k + bar_px) / dpi, (H * k + title_px) / dpi
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes([0, 0, W * k / (W * k + bar_px), H * k / (H * k + title_px)])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    cax = fig.add_axes([(W * k + 12) / (W * k + bar_px), 0.06, 14 / (W * k + bar_px),
                        0.82 * H * k / (H * k + title_px)])
    cb = fig.colorbar(ScalarMappable(norm=Normalize(vmin, vmax), cmap=DEPTH_CMAP), cax=cax)
    cb.set_label("depth (scene units)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    if title is None:
        title = f"depth {vmin:.3g} .. {vmax:.3g}"
    fig.text(0.01, 1 - 0.5 * title_px / (H * k + title_px), title, fontsize=9, va="center")
    _ensure_dir(path)
    fig.savefig(os.fspath(path), dpi=dpi)
    return vmin, vmax
