#!/usr/bin/env python3
"""Time this rasterizer, and gsplat and the original rasterizer where present, on the garden scenes.

    python benchmarks/bench.py                                  # CUDA: all scenes x resolutions
    python benchmarks/bench.py --scenes 112k --scales 1 --reps 20 --json out.json
    python benchmarks/bench.py --quick --device cpu             # a tiny scene, for the harness

For each scene x resolution and each implementation it measures
- fwd:      forward without autograd (torch.no_grad);
- fwd_grad: forward with autograd recording, plus building the loss;
- bwd:      loss.backward() alone;
- fwd_bwd:  the two together, one training step of the rasterizer;
with the loss `(color * gc).sum() + (depth * gd).sum() + (weight * gw).sum()` on random upstream
gradients gc, gd, gw (gsplat: its expected depth and alpha maps). On CUDA each repetition is timed
with CUDA events after a synchronize (so it is the call's latency, host work included), after a
warm-up; the median over the repetitions is reported. Repetitions rotate among a few input sets
(camera i with attribute draw i) so that no cache sees the same scene twice in a row. Peak memory
is `torch.cuda.max_memory_allocated()` during one call minus the memory allocated before it. For
this package on CUDA, `stage_ms` splits one forward and backward by stage (CUDA events after each
stage: preprocess, binning and sort, render; render backward, preprocess backward).

Ratios are "time of the implementation / time of ours" from the same run (> 1: ours is faster).
`--impls ablation` times ours against itself with the CUDA techniques switched off
(gpu::CudaTuning: warp skipping, the scatter sum of gradients, the depth-first sort), one at a
time and all together: a ratio above 1 is what the technique gains; it also times the 2024
API's call (`ours-2024`: colour, radii, invdepth), whose ratio should be about 1.
`ours-surface` (also in the ablation) times doc/surface.md's recipe (6 feature channels, the
plane depth, its normals, the distortion; `surface_recipe`) beside the plain call: its ratio is
what the surface terms cost a step; `ours-contributions` (in the ablation too) the plain call
with `contributions=True`, whose ratio is what the contribution statistics cost.
`ours-rade` (not in the ablation) times RaDe-GS's depth planes and normals the same way
(`intersection_recipe`), and `ours-radegs` RaDe-GS's own call (`.rade_gs`) with its
depth-normal term (`rade_gs_recipe`).
The original `diff_gaussian_rasterization` has no weight map (and, depending on its version, no
depth): it is timed with a loss on what it returns, which the JSON notes.
"""
import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
# Appended, not prepended: with a non-editable install, the installed (built) package must win
# over the source tree's copy, which has no compiled extension.
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

import torch  # noqa: E402

from benchmarks.peak_memory import peak_extra_bytes  # noqa: E402
from benchmarks.scenes import Scene, garden_scene, load_garden  # noqa: E402

MIB = 1024.0 * 1024.0
DEFAULT_SCENES = "112k,1m,2.8m"
DEFAULT_SCALES = "1,2,3"
QUICK_SCENE = "20k"
QUICK_SCALE = "0.25"          # 162 x 105
N_SETS = 3                    # input sets rotated among (the file has three cameras)


# ----------------------------------------------------------------------------------------------
# Implementations: each turns a Scene into "forward" and "loss" callables
# ----------------------------------------------------------------------------------------------

class Impl:
    """One rasterizer under test. `prepare(scene)` returns a per-scene state object with
    `forward()` -> outputs and `loss(outputs)` -> scalar (the upstream gradients are drawn
    once per scene, in `prepare`)."""
    name = "?"
    note = ""

    cuda_module: Optional[str] = None  # set for peers that exist only as a CUDA extension

    def available(self, device: torch.device) -> Optional[str]:
        """None when usable on `device`, else why not."""
        if self.cuda_module is None:
            return None
        if device.type != "cuda":
            return f"{self.cuda_module} runs on CUDA only"
        try:
            importlib.import_module(self.cuda_module)
        except Exception as e:
            return f"import {self.cuda_module} failed: {e!r}"
        return None

    def version(self) -> Optional[str]:
        return None

    def prepare(self, scene: Scene, upstream: Dict[str, torch.Tensor]):
        raise NotImplementedError


class _Prepared:
    def __init__(self, forward: Callable, loss: Callable, visible: Callable = None):
        self.forward, self.loss, self.visible = forward, loss, visible


def _upstream(scene: Scene, seed: int) -> Dict[str, torch.Tensor]:
    """Random upstream gradients for colour (3,H,W), depth (H,W) and weight (H,W)."""
    H, W = scene.camera.height, scene.camera.width
    gen = torch.Generator().manual_seed(1_000_003 + seed)
    out = {"color": torch.randn(3, H, W, generator=gen), "depth": torch.randn(H, W, generator=gen),
           "weight": torch.randn(H, W, generator=gen)}
    return {k: v.to(scene.device) for k, v in out.items()}


class Ours(Impl):
    name = "ours"
    note = "loss on colour + depth + weight"
    # The CUDA backend's techniques (warp_skip, scatter_reduce, depth_first_sort, split_tiles,
    # split_forward, short_forward_parts, parts_first, compact_state): the defaults here
    # (split_forward None: by the image's waves); the ablation variants below switch one or all
    # off.
    cuda_tuning = (True, True, True, True, None, True, True, True)

    def available(self, device):
        try:
            import diff_gaussian_rasterization_depth as dgrd
        except Exception as e:  # pragma: no cover - the package is a requirement
            return f"import failed: {e!r}"
        if device.type == "cuda" and not dgrd.has_cuda_backend():
            return "built without the CUDA backend"
        return None

    def version(self):
        import diff_gaussian_rasterization_depth as dgrd
        return getattr(dgrd, "__version__", None)

    def apply_tuning(self, scene):
        """The CUDA techniques of this variant. Global to the backend; each implementation is
        prepared, checked and timed before the next is prepared, so setting it in prepare()
        holds for all of its calls."""
        if scene.device.type == "cuda":
            from diff_gaussian_rasterization_depth import _backend
            *positional, compact_state = self.cuda_tuning
            _backend.set_cuda_tuning(*positional, compact_state=compact_state)

    def prepare(self, scene, upstream):
        from diff_gaussian_rasterization_depth import GaussianRasterizer
        self.apply_tuning(scene)
        rasterizer = GaussianRasterizer(scene.raster_settings())
        gc, gd, gw = upstream["color"], upstream["depth"], upstream["weight"]

        def forward():
            color, radii, depth, weight = rasterizer(**scene.rasterizer_inputs())
            return color, radii, depth, weight

        def loss(out):
            color, _, depth, weight = out
            return (color * gc).sum() + (depth * gd).sum() + (weight * gw).sum()

        return _Prepared(forward, loss, visible=lambda out: int((out[1] > 0).sum()))


class Gsplat(Impl):
    name = "gsplat"
    note = ('gsplat.rasterization(render_mode="RGB+ED", packed=False, near_plane=0.2); loss on '
            "colour + expected depth + alpha")

    cuda_module = "gsplat"

    def version(self):
        import gsplat
        return getattr(gsplat, "__version__", None)

    def prepare(self, scene, upstream):
        import gsplat
        return self.prepared(gsplat.rasterization, scene, upstream)

    @staticmethod
    def prepared(rasterization, scene, upstream):
        kwargs = scene.gsplat_inputs()
        # gsplat's images are (1, H, W, C): lay the same upstream gradients out that way once.
        gc = upstream["color"].permute(1, 2, 0).contiguous()[None]
        gd = upstream["depth"][None, :, :, None]
        gw = upstream["weight"][None, :, :, None]

        def forward():
            # near_plane 0.2: the near culling of the 3DGS rasterizers (gsplat's default is 0.01).
            colors, alphas, meta = rasterization(
                **kwargs, render_mode="RGB+ED", packed=False, near_plane=0.2)
            return colors, alphas, meta

        def loss(out):
            colors, alphas, _ = out
            return ((colors[..., :3] * gc).sum() + (colors[..., 3:4] * gd).sum()
                    + (alphas * gw).sum())

        def visible(out):
            radii = out[2].get("radii")
            if radii is None:
                return None
            return int((radii.reshape(radii.shape[0], radii.shape[1], -1) > 0).any(-1).sum())

        return _Prepared(forward, loss, visible)


class GsplatApi(Gsplat):
    """gsplat's call on this package (diff_gaussian_rasterization_depth.gsplat): what a gsplat
    user pays for the glue around the package's render, on any device."""
    name = "gsplat-api"
    note = ('diff_gaussian_rasterization_depth.gsplat.rasterization(render_mode="RGB+ED", '
            "packed=False); loss on colour + expected depth + alpha")
    cuda_module = None

    def available(self, device):
        return Ours().available(device)

    def version(self):
        return Ours().version()

    def prepare(self, scene, upstream):
        from diff_gaussian_rasterization_depth import gsplat as gsplat_api
        Ours().apply_tuning(scene)
        return self.prepared(gsplat_api.rasterization, scene, upstream)


class Original(Impl):
    name = "original"
    note = "diff_gaussian_rasterization: loss on colour only (it returns no weight map)"

    cuda_module = "diff_gaussian_rasterization"

    def version(self):
        try:
            from importlib.metadata import version
            return version("diff_gaussian_rasterization")
        except Exception:
            return None

    def prepare(self, scene, upstream):
        import diff_gaussian_rasterization as dgr
        settings = scene.raster_settings(settings_class=dgr.GaussianRasterizationSettings)
        rasterizer = dgr.GaussianRasterizer(raster_settings=settings)
        gc = upstream["color"]

        def forward():
            return rasterizer(**scene.rasterizer_inputs())

        def loss(out):
            return (out[0] * gc).sum()

        return _Prepared(forward, loss, visible=lambda out: int((out[1] > 0).sum()))


class _OursAblated(Ours):
    """Ours with CUDA techniques switched off: its ratio to ours (> 1) is what they gain."""

    def available(self, device):
        if device.type != "cuda":
            return "an ablation of the CUDA kernels"
        return super().available(device)


def _ablated(name: str, what: str, cuda_tuning: tuple) -> type:
    return type(name, (_OursAblated,), {"name": name, "note": f"{Ours.note}; {what}",
                                        "cuda_tuning": tuple(None if f is None else bool(f)
                                                             for f in cuda_tuning)})


# (warp_skip, scatter_reduce, depth_first_sort, split_tiles, split_forward,
# short_forward_parts, parts_first, compact_state) off one at a time (split_forward and
# parts_first act only with split_tiles, short_forward_parts only with split_forward,
# compact_state only with depth_first_sort; split_forward None: by the image, as ours, 1:
# always, as before stop 48), then all off.
ABLATED = tuple(_ablated(name, what, tuning) for name, what, tuning in (
    ("ours-no-warp-skip", "warps evaluate every splat of the tile",
     (0, 1, 1, 1, None, 1, 1, 1)),
    ("ours-no-scatter", "warp gradient sums by one shuffle tree per value",
     (1, 0, 1, 1, None, 1, 1, 1)),
    ("ours-no-depth-sort", "one sort of 64-bit (tile, depth) keys",
     (1, 1, 0, 1, None, 1, 1, 0)),
    ("ours-no-compact-state", "the render's state of every Gaussian, not only those with tiles",
     (1, 1, 1, 1, None, 1, 1, 0)),
    ("ours-no-short-forward-parts", "the split forward, always, in the backward's parts",
     (1, 1, 1, 1, 1, 0, 1, 1)),
    ("ours-split-forward", "the split forward whatever the image's waves",
     (1, 1, 1, 1, 1, 1, 1, 1)),
    ("ours-tiles-first", "the backward launches split lists' parts after the tiles",
     (1, 1, 1, 1, None, 1, 0, 1)),
    ("ours-no-split-forward", "the forward walks each tile's list whole",
     (1, 1, 1, 1, 0, 0, 1, 1)),
    ("ours-no-split", "one block per tile, however long its list", (1, 1, 1, 0, 0, 0, 0, 1)),
    ("ours-none", "none of the switchable techniques", (0, 0, 0, 0, 0, 0, 0, 0))))


class Ours2024(Ours):
    """The 2024 upstream's API of this package (`upstream.GaussianRasterizer`: colour, radii,
    invdepth through the depth channel of 1/z): its ratio to ours should be about 1."""
    name = "ours-2024"
    note = "the 2024 API (colour, radii, invdepth); loss on colour + invdepth"

    def prepare(self, scene, upstream):
        from diff_gaussian_rasterization_depth import upstream as api2024
        self.apply_tuning(scene)
        rasterizer = api2024.GaussianRasterizer(scene.raster_settings())
        gc, gd = upstream["color"], upstream["depth"][None]
        sh = scene.gaussians.sh
        # With SH (--sh): dc and the rest as two leaves, as the 2024 training code keeps them
        # (features_dc, features_rest), so the call pays what it pays there.
        split = None if sh is None else [t.detach().clone().requires_grad_(sh.requires_grad)
                                         for t in (sh[:, :1], sh[:, 1:])]

        def forward():
            inputs = scene.rasterizer_inputs()
            if split is not None:
                for leaf in split:
                    leaf.grad = None  # what _zero_grads does for the scene's own leaves
                inputs.update(dc=split[0], shs=split[1])
            return rasterizer(**inputs)

        def loss(out):
            color, _, invdepth = out
            return (color * gc).sum() + (invdepth * gd).sum()

        return _Prepared(forward, loss, visible=lambda out: int((out[1] > 0).sum()))


def surface_recipe(rasterizer, settings, inputs):
    """doc/surface.md's recipe in one call: the surface maps (`surface.render_surface`: 6
    feature channels), the plane depth's normals, and the normal-consistency, distortion and
    flatness terms. Returns (color, radii, depth, weight, the surface terms' loss)."""
    from diff_gaussian_rasterization_depth.surface import depth_to_normal, render_surface
    maps = render_surface(rasterizer, settings, **inputs)
    normals_of_depth = depth_to_normal(maps.plane_depth, settings)
    consistency = maps.weight * (1 - (maps.normal_map * normals_of_depth).sum(0))
    loss = (0.1 * consistency.mean() + 100 * maps.distortion.mean()
            + 10 * inputs["scales"].min(dim=1).values.mean())
    return maps.color, maps.radii, maps.depth, maps.weight, loss


def intersection_recipe(rasterizer, settings, inputs):
    """doc/surface.md's RaDe-GS recipe in one call: the depth planes and their normals as 6
    feature channels (`surface.intersection_planes`), the planes' depth map, its normals and
    the normal-consistency term. Returns (color, radii, depth, weight, the term's loss)."""
    from diff_gaussian_rasterization_depth.surface import (
        depth_to_normal, intersection_depth, intersection_planes, normalized)
    planes = intersection_planes(inputs["means3D"], settings, inputs["scales"],
                                 inputs["rotations"])
    color, radii, depth, weight, fmap = rasterizer(
        **inputs, features=torch.cat([planes.features, planes.normals], 1))
    rade_depth = intersection_depth(fmap[:3], weight, settings)
    consistency = weight * (1 - (normalized(fmap[3:])
                                 * depth_to_normal(rade_depth, settings)).sum(0))
    return color, radii, depth, weight, 0.1 * consistency.mean()


def rade_gs_recipe(rasterizer, settings, inputs):
    """RaDe-GS's own call (`.rade_gs`: its ray-space planes as 6 feature channels with its depth
    switch, the median depth by a gather) and its training's depth-normal term on the normals of
    its expected and median depths (weights 0.4 and 0.6, times 0.05). `rasterizer` is not used:
    the call is the module's. Returns (color, radii, expected depth, alpha, the term's loss)."""
    from diff_gaussian_rasterization_depth import rade_gs
    from diff_gaussian_rasterization_depth.surface import depth_to_normal
    s = settings
    rade = rade_gs.GaussianRasterizationSettings(
        s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.kernel_size, s.bg,
        s.scale_modifier, s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, s.prefiltered,
        require_depth=True, require_coord=False, debug=s.debug)
    color, radii, _, _, depth, median, alpha, normal = rade_gs.GaussianRasterizer(rade)(**inputs)
    loss = sum(share * (1 - (normal * depth_to_normal(d[0], settings)).sum(0)).mean()
               for d, share in ((depth, 0.4), (median, 0.6)))
    return color, radii, depth[0], alpha[0], 0.05 * loss


def pgsr_recipe(rasterizer, settings, inputs, absolute=True):
    """PGSR's own call (`.pgsr` with render_geo: its 5 channels of normal, 1 and plane distance,
    the plane depth, out_observe) and its single-view term, |normal - the plane depth's
    normals| weighted by 0.015 (its multi-view terms are losses on the plane depth of a second
    view: the `depth` slot's upstream gradient stands in), with its absolute gradient
    (`means2D_abs`) unless `absolute` is False. `rasterizer` is not used: the call is the
    module's. Returns (color, radii, plane depth, alpha, the term's loss)."""
    from diff_gaussian_rasterization_depth import pgsr
    from diff_gaussian_rasterization_depth.surface import (depth_to_normal, gaussian_normals,
                                                           plane_distances, view_points)
    s = settings
    geo = pgsr.GaussianRasterizationSettings(
        s.image_height, s.image_width, s.tanfovx, s.tanfovy, s.bg, s.scale_modifier,
        s.viewmatrix, s.projmatrix, s.sh_degree, s.campos, s.prefiltered, render_geo=True,
        debug=s.debug)
    t = view_points(inputs["means3D"], settings)
    normals = gaussian_normals(inputs["scales"], inputs["rotations"], t, settings)
    all_map = torch.cat([normals, torch.ones_like(t[:, :1]),
                         plane_distances(normals, t).abs()], 1)
    means2D = inputs["means2D"]
    means2D_abs = (torch.zeros_like(means2D, requires_grad=True)
                   if absolute and means2D is not None else None)
    call = {k: v for k, v in inputs.items() if k != "means2D"}
    color, radii, _, all_map_pixels, plane = pgsr.GaussianRasterizer(geo)(
        means2D=means2D, means2D_abs=means2D_abs, all_map=all_map, **call)
    alpha = all_map_pixels[3]
    depth_normals = depth_to_normal(plane[0], settings) * alpha.detach()
    loss = 0.015 * (depth_normals - all_map_pixels[:3]).abs().sum(0).mean()
    return color, radii, plane[0], alpha, loss


def pgsr_recipe_without_absolute(rasterizer, settings, inputs):
    """pgsr_recipe without `means2D_abs`: with feature channels in the call, the absolute
    gradient is a walk of its own (render_absolute_grad_kernel), which this leaves out."""
    return pgsr_recipe(rasterizer, settings, inputs, absolute=False)


class OursSurface(Ours):
    """The surface recipe (doc/surface.md) around this package's call: its ratio to ours is what
    the surface terms cost a training step."""
    name = "ours-surface"
    note = ("loss on colour + depth + weight + doc/surface.md's terms (6 feature channels, "
            "plane depth, depth normals, distortion)")

    def prepare(self, scene, upstream):
        from diff_gaussian_rasterization_depth import GaussianRasterizer
        self.apply_tuning(scene)
        settings = scene.raster_settings()
        rasterizer = GaussianRasterizer(settings)
        gc, gd, gw = upstream["color"], upstream["depth"], upstream["weight"]

        def forward():
            return self.recipe(rasterizer, settings, scene.rasterizer_inputs())

        def loss(out):
            color, _, depth, weight, surface = out
            return (color * gc).sum() + (depth * gd).sum() + (weight * gw).sum() + surface

        return _Prepared(forward, loss, visible=lambda out: int((out[1] > 0).sum()))


OursSurface.recipe = staticmethod(surface_recipe)


class OursIntersection(OursSurface):
    """RaDe-GS's depth planes and normals around this package's call (doc/surface.md): its
    ratio to ours is what they cost a step."""
    name = "ours-rade"
    note = ("loss on colour + depth + weight + doc/surface.md's RaDe-GS terms (6 feature "
            "channels, the planes' depth, its normals, normal consistency)")
    recipe = staticmethod(intersection_recipe)


class OursRadeGS(OursSurface):
    """RaDe-GS's own call and depth-normal term (`.rade_gs`): its ratio to ours is what
    RaDe-GS's regularized step costs."""
    name = "ours-radegs"
    note = ("loss on colour + depth + weight through .rade_gs (6 feature channels, the median "
            "depth's gather) + its depth-normal term on its expected and median depths")
    recipe = staticmethod(rade_gs_recipe)


class OursPGSR(OursSurface):
    """PGSR's own call and single-view term (`.pgsr`): its ratio to ours is what PGSR's
    regularized step costs."""
    name = "ours-pgsr"
    note = ("loss on colour + plane depth + alpha through .pgsr (5 feature channels, the touch "
            "count and median for out_observe) + its single-view normal term")
    recipe = staticmethod(pgsr_recipe)


class OursPGSRWithoutAbsolute(OursSurface):
    """PGSR's step without its absolute gradient: its ratio to `ours-pgsr` is what the absolute
    gradient's own walk costs where feature channels are rendered."""
    name = "ours-pgsr-no-abs"
    note = "as ours-pgsr without means2D_abs (no absolute gradient, so no walk of its own)"
    recipe = staticmethod(pgsr_recipe_without_absolute)


class OursContributions(Ours):
    """This package's call with `contributions=True` (each Gaussian's weight sum, largest weight,
    pixels and dominated pixels, a walk of the tile lists of its own): its ratio to ours is what
    the statistics cost."""
    name = "ours-contributions"
    note = "loss on colour + depth + weight; with contributions=True (forward only)"

    def prepare(self, scene, upstream):
        from diff_gaussian_rasterization_depth import GaussianRasterizer
        self.apply_tuning(scene)
        rasterizer = GaussianRasterizer(scene.raster_settings())
        gc, gd, gw = upstream["color"], upstream["depth"], upstream["weight"]

        def forward():
            return rasterizer(**scene.rasterizer_inputs(), contributions=True)

        def loss(out):
            color, _, depth, weight, _ = out
            return (color * gc).sum() + (depth * gd).sum() + (weight * gw).sum()

        return _Prepared(forward, loss, visible=lambda out: int((out[1] > 0).sum()))


IMPLS = {"ours": Ours, "gsplat": Gsplat, "gsplat-api": GsplatApi, "original": Original,
         "ours-2024": Ours2024, "ours-surface": OursSurface, "ours-rade": OursIntersection,
         "ours-radegs": OursRadeGS, "ours-pgsr": OursPGSR,
         "ours-pgsr-no-abs": OursPGSRWithoutAbsolute,
         "ours-contributions": OursContributions,
         **{impl.name: impl for impl in ABLATED}}
ABLATION = ("ours," + ",".join(impl.name for impl in ABLATED)
            + ",ours-2024,ours-surface,ours-contributions,ours-radegs,ours-pgsr,ours-pgsr-no-abs")


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------

class Clock:
    """Per-repetition timer: CUDA events on a GPU, perf_counter on the CPU. `mark()` records a
    point in time; `elapsed(a, b)` gives milliseconds between two marks once `finish()` ran."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def finish(self):
        self.sync()

    def elapsed(self, a, b) -> float:
        if self.cuda:
            return a.elapsed_time(b)
        return (b - a) * 1000.0


def _stats(samples: List[float]) -> dict:
    s = sorted(samples)
    return {"median": statistics.median(s), "mean": statistics.mean(s), "min": s[0],
            "max": s[-1], "p10": s[int(0.1 * (len(s) - 1))], "p90": s[int(0.9 * (len(s) - 1))],
            "n": len(s)}


def _zero_grads(scene: Scene):
    scene.gaussians.zero_grad()


def measure(prepared: List[_Prepared], scenes: List[Scene], reps: int, warmup: int,
            device: torch.device) -> dict:
    """Time one implementation, rotating over the prepared input sets."""
    clock = Clock(device)
    n = len(prepared)

    def step(r: int, timed: bool, with_grad: bool):
        p, s = prepared[r % n], scenes[r % n]
        _zero_grads(s)
        clock.sync()
        if not with_grad:
            t0 = clock.mark()
            with torch.no_grad():
                out = p.forward()
            t1 = clock.mark()
            return (t0, t1), out
        t0 = clock.mark()
        out = p.forward()
        loss = p.loss(out)
        t1 = clock.mark()
        loss.backward()
        t2 = clock.mark()
        return (t0, t1, t2), None

    for r in range(warmup):
        step(r, False, False)
        step(r, False, True)

    fwd_marks = []
    for r in range(reps):
        marks, out = step(r, True, False)
        fwd_marks.append(marks)
        del out
    step_marks = []
    for r in range(reps):
        step_marks.append(step(r, True, True)[0])
    clock.finish()
    for s in scenes:
        _zero_grads(s)

    fwd = [clock.elapsed(a, b) for a, b in fwd_marks]
    fwd_grad = [clock.elapsed(a, b) for a, b, _ in step_marks]
    bwd = [clock.elapsed(b, c) for _, b, c in step_marks]
    fwd_bwd = [clock.elapsed(a, c) for a, _, c in step_marks]
    return {"fwd_ms": _stats(fwd), "fwd_grad_ms": _stats(fwd_grad), "bwd_ms": _stats(bwd),
            "fwd_bwd_ms": _stats(fwd_bwd)}


def stage_times(p: _Prepared, scene: Scene) -> dict:
    """Device milliseconds of each CUDA stage of this package's forward and backward
    (`cuda_stage_ms`: an event after every stage), from the second of two timed steps. The events
    cost a little, so the stages add up to slightly more than measure()'s times."""
    from diff_gaussian_rasterization_depth import _backend
    _backend.set_cuda_stage_timing(True)
    try:
        for _ in range(2):
            _zero_grads(scene)
            p.loss(p.forward()).backward()
        return _backend.cuda_stage_ms()
    finally:
        _backend.set_cuda_stage_timing(False)
        _zero_grads(scene)


def format_stages(stage_ms: dict) -> str:
    """'forward: preprocess 0.05, ... | backward: ...' in milliseconds."""
    parts = []
    for call in ("forward", "backward"):
        stages = [(k.split("/", 1)[1], v) for k, v in stage_ms.items() if k.startswith(call + "/")]
        parts.append(f"{call}: " + ", ".join(f"{name} {ms:.3f}" for name, ms in stages))
    return " | ".join(parts)


def peak_memory(p: _Prepared, scene: Scene, device: torch.device) -> dict:
    """Peak extra CUDA memory (MiB) of one forward, and of one forward + backward."""
    if device.type != "cuda":
        return {"peak_fwd_mib": None, "peak_fwd_bwd_mib": None}

    def forward():
        with torch.no_grad():
            p.forward()

    def forward_backward():
        p.loss(p.forward()).backward()

    out = {}
    for key, call in (("peak_fwd_mib", forward), ("peak_fwd_bwd_mib", forward_backward)):
        _zero_grads(scene)
        out[key] = peak_extra_bytes(call, device) / MIB
    _zero_grads(scene)
    return out


# ----------------------------------------------------------------------------------------------
# Agreement between implementations (a sanity check that they render the same scene)
# ----------------------------------------------------------------------------------------------

def _images(name: str, out) -> Optional[Dict[str, torch.Tensor]]:
    """(color (3,H,W), depth, weight) of an implementation's outputs; None where absent."""
    if name == "ours":
        return {"color": out[0], "depth": out[2], "weight": out[3]}
    if name in ("gsplat", "gsplat-api"):
        colors, alphas, _ = out
        return {"color": colors[0, ..., :3].permute(2, 0, 1), "depth": colors[0, ..., 3],
                "weight": alphas[0, ..., 0]}
    if name == "original":
        return {"color": out[0]}
    return None


def agreement(ours: Dict[str, torch.Tensor], other: Dict[str, torch.Tensor]) -> dict:
    res = {}
    for k in ("color", "weight"):
        if k in other:
            d = (ours[k].float() - other[k].float()).abs()
            res[f"{k}_mean_abs_diff"] = float(d.mean())
            res[f"{k}_max_abs_diff"] = float(d.max())
    if "depth" in other:
        both = (ours["weight"] > 0.5) & (other.get("weight", ours["weight"]) > 0.5)
        if bool(both.any()):
            rel = ((ours["depth"] - other["depth"]).abs() / ours["depth"].abs().clamp_min(1e-6))
            res["depth_mean_rel_diff_where_weight_gt_0.5"] = float(rel[both].mean())
    return res


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------

def _run(cmd: List[str]) -> Optional[str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        return r.stdout.strip() if r.returncode == 0 else None
    except Exception:
        return None


def _cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment(device: torch.device, impls: Dict[str, Impl]) -> dict:
    env = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # a copy without .git (a GPU machine's) gets the commit from run_gpu.sh
        "git_commit": _run(["git", "rev-parse", "HEAD"]) or os.environ.get("DGRD_COMMIT"),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
        "device": str(device),
    }
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        env.update({
            "gpu": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_mib": props.total_memory / MIB,
            "gpu_multiprocessors": props.multi_processor_count,
        })
        smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,"
                    "clocks.max.mem", "--format=csv,noheader", f"--id={idx}"])
        env["nvidia_smi"] = smi
        if smi:
            env["driver"] = smi.split(",")[1].strip()
        env["nvcc"] = _run(["nvcc", "--version"])
        if env["nvcc"]:
            env["nvcc"] = env["nvcc"].splitlines()[-1]
    for name, impl in impls.items():
        why = impl.available(device)
        env[f"{name}_available"] = why is None
        if why is None:
            env[f"{name}_version"] = impl.version()
        else:
            env[f"{name}_unavailable_because"] = why
    return env


def gpu_slug(device: torch.device) -> str:
    """File-name form of the GPU's (or CPU's) name: "NVIDIA H100 80GB HBM3" -> nvidia-h100-80gb-hbm3."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (_cpu_model() or "cpu")
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------

def _parse_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="default: cuda when available, else cpu")
    ap.add_argument("--scenes", default=None,
                    help=f"comma-separated: 112k, 1m, 2.8m or a point count such as 20k "
                         f"(default {DEFAULT_SCENES}; --quick: {QUICK_SCENE})")
    ap.add_argument("--scales", default=None,
                    help=f"resolution factors of 648x420 (default {DEFAULT_SCALES}; --quick: "
                         f"{QUICK_SCALE})")
    ap.add_argument("--configs", default=None,
                    help="comma-separated scene:scale pairs, timed in this order (instead of "
                         "every --scenes x --scales), e.g. 112k:1,1m:2,2.8m:3")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions (default: 50 on CUDA, 3 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed repetitions first (default: 5 on CUDA, 1 on the CPU)")
    ap.add_argument("--sets", type=int, default=N_SETS,
                    help="input sets rotated among (camera i, attribute draw i); at most 3")
    ap.add_argument("--impls", default="ours,gsplat,original",
                    help="which implementations to time, where available; 'ablation' stands "
                         f"for {ABLATION} (the CUDA kernels with techniques switched off)")
    ap.add_argument("--sh", action="store_true",
                    help="SH degree 3 (random coefficients) instead of precomputed colours")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="garden_points.npz (default: see scenes.py)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--json-dir", default=None,
                    help="write the results to DIR/<gpu-name>[-sh].json (e.g. benchmarks/results)")
    ap.add_argument("--quick", action="store_true",
                    help=f"one tiny scene ({QUICK_SCENE} Gaussians at 162x105) to test the harness")
    args = ap.parse_args(argv)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this PyTorch sees no CUDA device")
    cpu = args.device == "cpu"
    if args.scenes is None:
        args.scenes = QUICK_SCENE if args.quick else DEFAULT_SCENES
    if args.scales is None:
        args.scales = QUICK_SCALE if args.quick else DEFAULT_SCALES
    if args.reps is None:
        args.reps = 3 if (cpu or args.quick) else 50
    if args.warmup is None:
        args.warmup = 1 if (cpu or args.quick) else 5
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be >= 1 and --warmup >= 0")
    if not 1 <= args.sets <= 3:
        ap.error("--sets: expected 1..3 (the data file has three cameras)")
    args.scene_list = _parse_list(args.scenes)
    args.scale_list = [float(s) for s in _parse_list(args.scales)]
    if args.configs is None:
        args.config_list = [(s, k) for s in args.scene_list for k in args.scale_list]
    else:
        try:
            args.config_list = [(s, float(k)) for s, k in
                                (pair.split(":") for pair in _parse_list(args.configs))]
        except ValueError:
            ap.error(f"--configs: expected scene:scale pairs, got {args.configs!r}")
        args.scene_list = list(dict.fromkeys(s for s, _ in args.config_list))
        args.scale_list = list(dict.fromkeys(k for _, k in args.config_list))
    args.impl_list = _parse_list(args.impls.replace("ablation", ABLATION))
    unknown = [i for i in args.impl_list if i not in IMPLS]
    if unknown:
        ap.error(f"--impls: unknown {unknown}; expected some of {', '.join(IMPLS)}")
    return args


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: List[dict]):
    head = ("scene", "N", "resolution", "impl", "fwd ms", "fwd+bwd ms", "bwd ms", "peak MiB",
            "x fwd", "x fwd+bwd")
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append((r["scene"], str(r["n_gaussians"]), r["resolution"], r["impl"],
                          "error: " + r["error"].splitlines()[-1][:60], "", "", "", "", ""))
            continue
        lines.append((r["scene"], str(r["n_gaussians"]), r["resolution"], r["impl"],
                      _fmt(r["fwd_ms"]["median"]), _fmt(r["fwd_bwd_ms"]["median"]),
                      _fmt(r["bwd_ms"]["median"]), _fmt(r.get("peak_fwd_bwd_mib"), ".0f"),
                      _fmt(r.get("ratio_fwd")), _fmt(r.get("ratio_fwd_bwd"))))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" if i >= 4 else f"{{:<{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    print(fmt.format(*("-" * w for w in widths)))
    for l in lines:
        print(fmt.format(*l))
    print("times are medians; peak = extra memory of one fwd+bwd; x = time / ours' time "
          "(> 1: ours is faster)")


def run(args, checkpoint: Optional[Callable[[dict], None]] = None) -> dict:
    """Time every configuration; `checkpoint(result so far)` after each one, so that a run cut
    short (a time limit on a GPU machine) keeps what it measured."""
    device = torch.device(args.device)
    load_garden(args.data)      # fail early and clearly when the data file is missing
    impls = {name: IMPLS[name]() for name in args.impl_list}
    env = environment(device, impls)
    usable = {n: i for n, i in impls.items() if i.available(device) is None}
    config = {k: getattr(args, k) for k in ("device", "reps", "warmup", "sets", "sh", "seed",
                                            "quick")}
    config.update(scenes=args.scene_list, scales=args.scale_list,
                  configs=[f"{s}:{k:g}" for s, k in args.config_list], impls=list(impls),
                  loss="sum(color*gc) + sum(depth*gd) + sum(weight*gw), gc, gd, gw ~ N(0,1)",
                  notes={n: i.note for n, i in impls.items()})
    rows = []
    print(f"device {device} ({env.get('gpu') or env.get('cpu')}); torch {env['torch']}; "
          f"implementations: {', '.join(usable) or 'none'}"
          + "".join(f"; {n}: {env[f'{n}_unavailable_because']}" for n in impls
                    if n not in usable), flush=True)

    for scene_name, scale in args.config_list:
        t_build = time.perf_counter()
        scenes = [garden_scene(scene_name, camera=i, scale=scale, seed=args.seed + i,
                               sh=args.sh, device=device, requires_grad=True,
                               data=args.data) for i in range(args.sets)]
        upstream = [_upstream(s, args.seed + i) for i, s in enumerate(scenes)]
        cam = scenes[0].camera
        base = {"scene": scene_name, "n_gaussians": len(scenes[0].gaussians),
                "width": cam.width, "height": cam.height, "scale": scale,
                "resolution": f"{cam.width}x{cam.height}"}
        print(f"\n{scene_name}: {base['n_gaussians']} Gaussians at {base['resolution']} "
              f"(built in {time.perf_counter() - t_build:.1f} s)", flush=True)
        images = {}
        group = []
        for name, impl in usable.items():
            row = dict(base, impl=name, note=impl.note)
            try:
                prepared = [impl.prepare(s, u) for s, u in zip(scenes, upstream)]
                with torch.no_grad():
                    out = prepared[0].forward()
                row["visible_gaussians"] = (prepared[0].visible(out)
                                            if prepared[0].visible else None)
                images[name] = {k: v.detach().clone() for k, v in
                                (_images(name, out) or {}).items()}
                del out
                t0 = time.perf_counter()
                row.update(measure(prepared, scenes, args.reps, args.warmup, device))
                row.update(peak_memory(prepared[0], scenes[0], device))
                if device.type == "cuda" and isinstance(impl, Ours):
                    row["stage_ms"] = stage_times(prepared[0], scenes[0])
                row["wall_s"] = time.perf_counter() - t0
                print(f"  {name:8s} fwd {row['fwd_ms']['median']:9.2f} ms   fwd+bwd "
                      f"{row['fwd_bwd_ms']['median']:9.2f} ms   bwd "
                      f"{row['bwd_ms']['median']:9.2f} ms", flush=True)
                if row.get("stage_ms"):
                    print(f"           stages (ms) {format_stages(row['stage_ms'])}",
                          flush=True)
            except Exception as e:
                row["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
                row["traceback"] = traceback.format_exc()
                print(f"  {name:8s} failed: {row['error']}", flush=True)
                for s in scenes:
                    _zero_grads(s)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            group.append(row)
        ours = next((r for r in group if r["impl"] == "ours" and not r.get("error")), None)
        for r in group:
            if ours is not None and not r.get("error"):
                r["ratio_fwd"] = r["fwd_ms"]["median"] / ours["fwd_ms"]["median"]
                r["ratio_fwd_bwd"] = r["fwd_bwd_ms"]["median"] / ours["fwd_bwd_ms"]["median"]
                r["ratio_bwd"] = r["bwd_ms"]["median"] / ours["bwd_ms"]["median"]
            if r["impl"] != "ours" and "ours" in images and r["impl"] in images:
                r["agreement_with_ours"] = agreement(images["ours"], images[r["impl"]])
        rows.extend(group)
        del scenes, upstream, images
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if checkpoint is not None:
            checkpoint({"environment": env, "config": config, "results": rows,
                        "complete": False})

    print()
    print_table(rows)
    return {"environment": env, "config": config, "results": rows, "complete": True}


def json_paths(args) -> List[Path]:
    paths = [Path(args.json)] if args.json else []
    if args.json_dir:
        suffix = "-sh" if args.sh else ""
        paths.append(Path(args.json_dir) / f"{gpu_slug(torch.device(args.device))}{suffix}.json")
    return paths


def write_json(paths: List[Path], result: dict):
    """Write through a temporary file, so that a kill mid-write leaves the previous version."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = json_paths(args)
    result = run(args, checkpoint=lambda partial: write_json(paths, partial))
    write_json(paths, result)
    for path in paths:
        print(f"wrote {path}")
    failed = [r for r in result["results"] if r["impl"] == "ours" and r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
