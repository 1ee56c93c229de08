"""Command line: `python -m diff_gaussian_rasterization_depth demo|render|mesh ...`.

demo    renders a built-in procedural scene (no download) and writes colour, depth and weight
        PNGs plus one side-by-side figure, with timings.
render  renders a trained 3DGS point_cloud.ply from an orbit of cameras around the scene.
mesh    meshes a trained model: its training views' depth fused into a sparse TSDF, or
        (--method opacity) its opacity field over those views (Gaussian Opacity Fields).

The pictures need matplotlib and the PLY reader needs plyfile (the package's [demo] extra).
"""
import argparse
import json
import math
import os
import re
import sys
import time
from typing import List, Sequence

import numpy as np
import torch

from . import cameras as cams_mod
from . import scenes
from .cameras import Camera
from ._validation import KERNEL_SIZE_DEFAULT
from .ply import PlyFormatError


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    try:
        return cams_mod.choose_device(name)
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e)) from None


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def render_views(gaussians: scenes.Gaussians, views: Sequence[Camera], bg, device,
                 antialiasing: bool = False,
                 kernel_size: float = KERNEL_SIZE_DEFAULT):
    """Render every view without gradients; returns (renders on the CPU, seconds per view)."""
    out, seconds = [], []
    with torch.no_grad():
        for cam in views:
            _sync(device)
            t0 = time.perf_counter()
            r = scenes.render(gaussians, cam, bg=bg, antialiasing=antialiasing,
                              kernel_size=kernel_size)
            _sync(device)
            seconds.append(time.perf_counter() - t0)
            out.append(scenes.Render(r.color.cpu(), r.depth.cpu(), r.weight.cpu(),
                                     r.radii.cpu(), r.means2D.detach().cpu()))
    return out, seconds


def time_forward_backward(gaussians: scenes.Gaussians, cam: Camera, bg, device) -> float:
    """Seconds for one forward + backward with a loss on colour, depth and weight."""
    g = scenes.Gaussians(*(t.detach().clone().requires_grad_(True) for t in
                           (gaussians.means, gaussians.sh, gaussians.opacities,
                            gaussians.scales, gaussians.rotations)))
    _sync(device)
    t0 = time.perf_counter()
    r = scenes.render(g, cam, bg=bg)
    loss = r.color.mean() + 0.1 * (r.depth * r.weight).mean() + r.weight.mean()
    loss.backward()
    _sync(device)
    return time.perf_counter() - t0


def shared_depth_range(renders) -> tuple:
    from .viz import depth_range
    d = torch.cat([r.depth.reshape(-1) for r in renders])
    w = torch.cat([r.weight.reshape(-1) for r in renders])
    return depth_range(d, w)


def write_view_images(out_dir: str, stem: str, r: scenes.Render, vmin, vmax,
                      write_npy: bool = False) -> List[str]:
    from . import viz
    paths = [os.path.join(out_dir, f"{stem}_color.png"),
             os.path.join(out_dir, f"{stem}_depth.png"),
             os.path.join(out_dir, f"{stem}_weight.png")]
    viz.save_color(paths[0], r.color)
    viz.save_depth(paths[1], r.depth, r.weight, vmin, vmax,
                   title=f"{stem}: depth, colour range {vmin:.3g}..{vmax:.3g} scene units")
    viz.save_weight(paths[2], r.weight)
    if write_npy:
        for name, t in (("depth", r.depth), ("weight", r.weight)):
            p = os.path.join(out_dir, f"{stem}_{name}.npy")
            np.save(p, t.numpy())
            paths.append(p)
    return paths


def write_views_json(path: str, views: Sequence[Camera]):
    data = [{"index": i, "width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy,
             "world_to_camera": c.world_to_camera.tolist(), "campos": c.center.tolist()}
            for i, c in enumerate(views)]
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def read_views_json(path: str) -> List[Camera]:
    """Cameras as written by `write_views_json` (the `render` and `demo` commands' views.json)."""
    with open(path) as f:
        data = json.load(f)
    return [Camera(np.array(e["world_to_camera"]), e["width"], e["height"], e["fx"], e["fy"])
            for e in data]


def _parse_bg(text: str):
    named = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
    if text in named:
        return named[text]
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError:
        v = ()
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"expected black, white or R,G,B in [0,1], got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

def cmd_demo(args) -> int:
    from . import viz
    device = _device(args.device)
    out = args.out
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    scene = scenes.demo_scene(args.gaussians, seed=args.seed).to(device)
    build_s = time.perf_counter() - t0
    views = scenes.demo_cameras(args.views, args.width, args.height)
    bg = (0.0, 0.0, 0.0)
    print(f"demo scene: {len(scene)} Gaussians (SH degree {scene.sh_degree}), built in "
          f"{build_s:.2f} s; rendering {len(views)} views at {args.width}x{args.height} on "
          f"{_device_text(device)}")

    scenes.render(scene, views[0], bg=bg)            # warm-up: first-call allocations
    renders, seconds = render_views(scene, views, bg, device)
    fb = time_forward_backward(scene, views[0], bg, device)

    written = []
    vmin, vmax = shared_depth_range(renders)
    for k, r in enumerate(renders):
        written += write_view_images(out, f"view_{k}", r, vmin, vmax)
    figure = os.path.join(out, "demo.png")
    rows = []
    for k, r in enumerate(renders):
        rows.append([viz.Panel("rgb", r.color, f"view {k}: colour"),
                     viz.Panel("depth", r.depth, f"view {k}: depth", weight=r.weight,
                               vmin=vmin, vmax=vmax),
                     viz.Panel("weight", r.weight, f"view {k}: weight")])
    viz.save_figure(figure, rows, suptitle=f"{len(scene)} Gaussians, "
                                            f"{args.width}x{args.height}")
    written.append(figure)
    views_json = os.path.join(out, "views.json")
    write_views_json(views_json, views)
    written.append(views_json)
    if args.save_ply:
        from .ply import save_ply
        ply_path = os.path.join(out, "scene.ply")
        save_ply(ply_path, scene)
        written.append(ply_path)

    print("wrote:")
    for p in written:
        print(f"  {p}")
    ms = [1000 * s for s in seconds]
    covered = np.mean([float((r.weight > 0.5).float().mean()) for r in renders])
    print(f"depth range {vmin:.3f} .. {vmax:.3f} scene units; {100 * covered:.0f}% of pixels "
          f"have weight > 0.5")
    print(f"render (forward, colour + depth + weight): {np.mean(ms):.1f} ms per view "
          f"(min {np.min(ms):.1f}, {len(ms)} views); forward + backward: {1000 * fb:.1f} ms")
    if args.save_ply:
        print(f"try: python -m diff_gaussian_rasterization_depth render {written[-1]} "
              f"--out {os.path.join(out, 'orbit')}")
    return 0


# --------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------

_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0),
         "+z": (0, 0, 1), "-z": (0, 0, -1)}


def _find_model_file(ply_path: str, name: str):
    """The official layout is MODEL/point_cloud/iteration_N/point_cloud.ply + MODEL/`name`
    (cameras.json, cfg_args)."""
    d = os.path.dirname(os.path.abspath(ply_path))
    for _ in range(4):
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate):
            return candidate
        d = os.path.dirname(d)
    return None


def _find_training_cameras(ply_path: str):
    return _find_model_file(ply_path, "cameras.json")


def _mip_filter(ply_path: str):
    """(kernel_size, where it came from) of a Mip-Splatting model's 2D filter: the training's
    `--kernel_size` as its cfg_args records it (a printed argparse Namespace), else 0.1, its
    default."""
    cfg = _find_model_file(ply_path, "cfg_args")
    if cfg is not None:
        with open(cfg, encoding="utf-8", errors="replace") as f:
            found = re.search(r"\bkernel_size=([-+0-9.eE]+)", f.read())
        try:
            kernel = float(found.group(1)) if found else math.nan
        except ValueError:
            kernel = math.nan
        if math.isfinite(kernel) and kernel >= 0:
            return kernel, f"kernel_size from {cfg}"
    return 0.1, "Mip-Splatting's default kernel_size"


def orbit_for_scene(gaussians: scenes.Gaussians, ply_path: str, n_views: int, width: int,
                    height: int, up: str, fov: float, elevation: float, radius_scale: float):
    """Choose the orbit; returns (cameras, a sentence saying how)."""
    if up == "auto":
        cam_json = _find_training_cameras(ply_path)
        if cam_json is not None:
            try:
                with open(cam_json) as f:
                    training = cams_mod.training_cameras_from_json(json.load(f))
            except (ValueError, OSError) as e:
                raise CliError(f"{cam_json}: could not read the training cameras ({e}); pass "
                               "--up to orbit without them") from None
            if training:
                views = cams_mod.orbit_like(training, n_views, width, height, fov)
                if radius_scale != 1.0:
                    views = _rescale_orbit(views, cams_mod.focus_point(
                        [c.center for c in training], [c.rotation[2] for c in training]),
                        radius_scale)
                return views, (f"orbit through the {len(training)} training cameras of "
                               f"{cam_json}")
    points = gaussians.means.detach().cpu().numpy()
    center = scenes.robust_center(gaussians.means)
    if up == "auto":
        up_vec = cams_mod.estimate_up_from_points(points, center)
        up_text = (f"up ({', '.join(f'{c:.2f}' for c in up_vec)}) estimated from the point "
                   "layout (no cameras.json found; pass --up to choose)")
    else:
        up_vec = np.array(_AXES[up], dtype=np.float64)
        up_text = f"up {up}"
    radius = radius_scale * cams_mod.fit_orbit_radius(points, center, fov, width, height)
    views = cams_mod.orbit_cameras(center, radius, n_views, width, height,
                                   elevation_deg=elevation, fov_x_deg=fov, up=up_vec)
    how = (f"orbit of radius {radius:.3g} around the median position "
           f"({', '.join(f'{c:.3g}' for c in center)}), {up_text}")
    return views, how


def _rescale_orbit(views, center, factor):
    out = []
    for c in views:
        eye = center + factor * (c.center - center)
        w2c = c.world_to_camera.copy()
        w2c[:3, 3] = -c.rotation @ eye
        out.append(Camera(w2c, c.width, c.height, c.fx, c.fy))
    return out


def _check_filter_options(args):
    if args.kernel_size is not None and not (math.isfinite(args.kernel_size)
                                             and args.kernel_size >= 0):
        raise CliError(f"--kernel-size: expected a number >= 0, got {args.kernel_size}")


def _load_model(args):
    """(Gaussians on the device, antialiasing, kernel_size, a note on the filter or None,
    seconds to load) for the commands that read a trained PLY: the 2D filter as the options
    say, or, for a Mip-Splatting model (load_ply applied its 3D filter), as it was trained."""
    from .ply import FILTER_3D, load_ply, vertex_properties
    t0 = time.perf_counter()
    gaussians = load_ply(args.scene)
    load_s = time.perf_counter() - t0
    antialiasing, kernel_size, filter_note = args.antialiasing, args.kernel_size, None
    if FILTER_3D in vertex_properties(args.scene) and not antialiasing and kernel_size is None:
        kernel_size, source = _mip_filter(args.scene)
        antialiasing = True
        filter_note = (f"Mip-Splatting's filters: the PLY's 3D filter, the compensated 2D "
                       f"filter of {kernel_size:g} px^2 ({source})")
    kernel_size = KERNEL_SIZE_DEFAULT if kernel_size is None else kernel_size
    if args.sh_degree is not None:
        try:
            gaussians = gaussians.with_sh_degree(args.sh_degree)
        except ValueError as e:
            raise CliError(str(e)) from None
    return gaussians.to(_device(args.device)), antialiasing, kernel_size, filter_note, load_s


def cmd_render(args) -> int:
    device = _device(args.device)
    if not 1.0 <= args.fov <= 170.0:
        raise CliError(f"--fov: expected degrees in [1, 170], got {args.fov}")
    if not args.radius_scale > 0:
        raise CliError(f"--radius-scale: expected a positive number, got {args.radius_scale}")
    _check_filter_options(args)
    width, height = args.width, args.height
    if height is None:
        height = max(1, int(round(width * 3 / 4)))
    gaussians, antialiasing, kernel_size, filter_note, load_s = _load_model(args)
    views, how = orbit_for_scene(gaussians, args.scene, args.views, width, height, args.up,
                                 args.fov, args.elevation, args.radius_scale)
    print(f"{args.scene}: {len(gaussians)} Gaussians, SH degree {gaussians.sh_degree}, loaded "
          f"in {load_s:.2f} s")
    print(f"cameras: {how}")
    if filter_note:
        print(filter_note)
    print(f"rendering {len(views)} views at {width}x{height} on {_device_text(device)}")
    renders, seconds = render_views(gaussians, views, args.bg, device, antialiasing,
                                    kernel_size)
    os.makedirs(args.out, exist_ok=True)
    vmin, vmax = shared_depth_range(renders)
    written = []
    for k, r in enumerate(renders):
        written += write_view_images(args.out, f"view_{k:03d}", r, vmin, vmax, args.npy)
    views_json = os.path.join(args.out, "views.json")
    write_views_json(views_json, views)
    written.append(views_json)
    per_view = 3 + (2 if args.npy else 0)
    print(f"wrote {len(written)} files to {args.out}: view_NNN_color.png, view_NNN_depth.png, "
          f"view_NNN_weight.png{', view_NNN_depth.npy, view_NNN_weight.npy' if args.npy else ''}"
          f" for NNN = 000..{len(views) - 1:03d} ({per_view} per view), views.json")
    ms = [1000 * s for s in seconds]
    print(f"depth range {vmin:.3g} .. {vmax:.3g} scene units; render {np.mean(ms):.1f} ms per "
          f"view (first {ms[0]:.1f} ms)")
    return 0


# --------------------------------------------------------------------------------------------
# mesh
# --------------------------------------------------------------------------------------------

def scene_radius(cameras: Sequence[Camera]) -> float:
    """3DGS's scene extent: 1.1 times the largest distance of a camera centre from their mean
    (its `nerf_normalization` radius)."""
    centres = np.stack([c.center for c in cameras])
    return 1.1 * float(np.linalg.norm(centres - centres.mean(0), axis=1).max())


def scaled_camera(camera: Camera, scale: float) -> Camera:
    """The camera at `scale` times its resolution (the field of view kept)."""
    width = max(1, int(round(camera.width * scale)))
    height = max(1, int(round(camera.height * scale)))
    return Camera(camera.world_to_camera, width, height, camera.fx * width / camera.width,
                  camera.fy * height / camera.height)


def fuse_render(volume, settings, color, weight, surface, min_weight: float = 0.5,
                 max_depth: float = math.inf) -> None:
    """Fuse one rendered view into a TSDF volume as the mesh command does: `surface` (the median
    or mean depth) and the colour as the model shows it over black (un-premultiplied by the
    weight), over the pixels of weight above `min_weight` with a depth below `max_depth`."""
    mask = (weight > min_weight) & (surface > 0) & (surface < max_depth)
    volume.integrate(surface, settings, color=(color / weight.clamp_min(1e-6)).clamp(0, 1),
                     mask=mask)


def cmd_mesh(args) -> int:
    from .mesh import SparseTSDFVolume
    device = _device(args.device)
    _check_filter_options(args)
    for name in ("scale", "voxel_size", "max_depth", "truncation"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CliError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    if args.components < 0:
        raise CliError(f"--components: expected a number >= 0, got {args.components}")
    if args.refine_steps < 0:
        raise CliError(f"--refine-steps: expected a number >= 0, got {args.refine_steps}")
    if not 0 <= args.min_weight < 1:
        raise CliError(f"--min-weight: expected a number in [0, 1), got {args.min_weight}")
    cam_json = args.cameras or _find_training_cameras(args.scene)
    if cam_json is None:
        raise CliError(f"{args.scene}: no cameras.json found beside the model (the official "
                       "layout); pass --cameras")
    try:
        with open(cam_json) as f:
            training = cams_mod.training_cameras_from_json(json.load(f))
    except (ValueError, OSError) as e:
        raise CliError(f"{cam_json}: could not read the training cameras ({e})") from None
    if not training:
        raise CliError(f"{cam_json}: no cameras")
    views = [scaled_camera(c, args.scale) for c in training[::args.every]]
    gaussians, antialiasing, kernel_size, filter_note, load_s = _load_model(args)
    # 2DGS's defaults for an unbounded scene: depths up to twice the scene's extent, the
    # voxel a `resolution`-th of that, the truncation 4 voxels (this package's).
    max_depth = args.max_depth or 2.0 * scene_radius(training)
    voxel = args.voxel_size or max_depth / args.resolution
    print(f"{args.scene}: {len(gaussians)} Gaussians, SH degree {gaussians.sh_degree}, loaded "
          f"in {load_s:.2f} s")
    if filter_note:
        print(filter_note)
    if args.method == "opacity":
        return _mesh_opacity_field(args, views, training, cam_json, gaussians, antialiasing,
                                   kernel_size, max_depth, voxel, device)
    volume = SparseTSDFVolume(voxel, args.truncation, device=device)
    print(f"fusing the {args.depth} depth of {len(views)} of the {len(training)} training views "
          f"of {cam_json} ({views[0].width}x{views[0].height}) on {_device_text(device)}: "
          f"voxel {voxel:.4g}, truncation {volume.truncation:.4g}, depths up to "
          f"{max_depth:.4g} scene units, pixels of weight > {args.min_weight:g}")
    t0 = time.perf_counter()
    render_s = 0.0
    with torch.no_grad():
        for camera in views:
            settings = camera.raster_settings(
                bg=(0.0, 0.0, 0.0), sh_degree=gaussians.sh_degree, device=device,
                antialiasing=antialiasing, kernel_size=kernel_size)
            t_render = time.perf_counter()
            color, _, depth, weight, median = scenes.rasterize(
                settings, means3D=gaussians.means, means2D=None,
                opacities=gaussians.opacities, shs=gaussians.sh, scales=gaussians.scales,
                rotations=gaussians.rotations, median_depth=True)
            _sync(device)
            render_s += time.perf_counter() - t_render
            fuse_render(volume, settings, color, weight,
                        median if args.depth == "median" else depth, args.min_weight, max_depth)
    fuse_s = time.perf_counter() - t0 - render_s
    t1 = time.perf_counter()
    mesh = volume.extract_mesh(min_weight=args.min_views)
    extract_s = time.perf_counter() - t1
    voxels = volume.num_blocks * volume.block_size ** 3
    print(f"{volume.num_blocks} blocks of {volume.block_size}^3 ({voxels / 1e6:.1f}M grid "
          f"points); rendering {render_s:.1f} s, fusion {fuse_s:.1f} s, meshing {extract_s:.1f} s")
    return _write_mesh(args, mesh)


def _write_mesh(args, mesh) -> int:
    """The mesh command's last steps: --components, then the PLY."""
    from .mesh import keep_largest_components
    from .ply import save_mesh_ply
    if args.components:
        faces_before = mesh.faces.shape[0]
        mesh = keep_largest_components(mesh, args.components)
        print(f"kept the {args.components} largest connected components of 50 faces or more: "
              f"{mesh.faces.shape[0]} of {faces_before} faces")
    save_mesh_ply(args.out, mesh)
    print(f"wrote {args.out}: {mesh.vertices.shape[0]} vertices, {mesh.faces.shape[0]} faces")
    return 0


def _mesh_opacity_field(args, views, training, cam_json, gaussians, antialiasing, kernel_size,
                        max_depth, voxel, device) -> int:
    """mesh --method opacity: Gaussian Opacity Fields' mesh (mesh.extract_opacity_mesh) of the
    Gaussians within max_depth of the cameras' mean centre, seen by the training views, with
    GOF's vertex colours (OpacityField.vertex_colors: the view that sees a vertex best)."""
    from .mesh import Mesh, OpacityField, extract_opacity_mesh
    settings = [camera.raster_settings(bg=(0.0, 0.0, 0.0), sh_degree=gaussians.sh_degree,
                                       device=device, antialiasing=antialiasing,
                                       kernel_size=kernel_size)
                for camera in views]
    centre = np.stack([c.center for c in training]).mean(0)
    field = OpacityField(settings, gaussians.means, gaussians.opacities, gaussians.scales,
                         gaussians.rotations)
    print(f"meshing the opacity field of {len(views)} of the {len(training)} training views of "
          f"{cam_json} ({views[0].width}x{views[0].height}) on {_device_text(device)}: voxel "
          f"{voxel:.4g}, level 0.5, {args.refine_steps} bisections, within {max_depth:.4g} "
          f"scene units of the cameras' centre")
    t0 = time.perf_counter()
    mesh = extract_opacity_mesh(field, voxel, refine_steps=args.refine_steps,
                                lower=(centre - max_depth).tolist(),
                                upper=(centre + max_depth).tolist())
    _sync(device)
    print(f"opacity field and mesh {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    mesh = Mesh(mesh.vertices, mesh.faces, field.vertex_colors(mesh.vertices, shs=gaussians.sh))
    _sync(device)
    print(f"vertex colours (each from the view that sees it best) {time.perf_counter() - t0:.1f} s")
    return _write_mesh(args, mesh)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diff_gaussian_rasterization_depth",
        description="Gaussian splatting rasterizer with depth and weight maps: demo and tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", help="render a built-in scene; write colour, depth and weight PNGs",
        description="Render a procedural scene (no download) from a few views and write "
                    "colour, depth (with a colour bar in scene units) and weight PNGs and one "
                    "side-by-side figure. Prints the files and the rendering time.")
    demo.add_argument("--out", default=os.path.join("out", "demo"),
                      help="output directory (default: %(default)s)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                      help="auto = CUDA when available (default: %(default)s)")
    demo.add_argument("--views", type=_positive_int, default=3, help="default: %(default)s")
    demo.add_argument("--width", type=_positive_int, default=480, help="default: %(default)s")
    demo.add_argument("--height", type=_positive_int, default=360, help="default: %(default)s")
    demo.add_argument("--gaussians", type=_positive_int, default=40000,
                      help="number of Gaussians (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    demo.add_argument("--save-ply", action="store_true",
                      help="also write the scene as a 3DGS point_cloud.ply (scene.ply)")
    demo.set_defaults(func=cmd_demo)

    render = sub.add_parser(
        "render", help="render a trained 3DGS point_cloud.ply from an orbit",
        description="Load a 3DGS point_cloud.ply as the official training code writes it, "
                    "orbit a camera around the scene and write colour, depth and weight PNGs "
                    "per view. With --up auto the orbit follows the training cameras when a "
                    "cameras.json sits in the model directory (the official layout), and "
                    "otherwise circles the median position with up estimated from the point "
                    "layout (the direction of least spread, e.g. the ground's normal).")
    _add_model_options(render)
    render.add_argument("--out", required=True, help="output directory")
    render.add_argument("--views", type=_positive_int, default=8, help="default: %(default)s")
    render.add_argument("--width", type=_positive_int, default=640, help="default: %(default)s")
    render.add_argument("--height", type=_positive_int, default=None,
                        help="default: 3/4 of the width")
    render.add_argument("--up", default="auto", choices=["auto"] + sorted(_AXES),
                        help="world up axis of the orbit (default: %(default)s)")
    render.add_argument("--fov", type=float, default=60.0,
                        help="horizontal field of view in degrees (default: %(default)s)")
    render.add_argument("--elevation", type=float, default=20.0,
                        help="orbit elevation in degrees without cameras.json "
                             "(default: %(default)s)")
    render.add_argument("--radius-scale", type=float, default=1.0,
                        help="move the orbit closer (<1) or farther (>1) (default: 1)")
    render.add_argument("--bg", type=_parse_bg, default=(0.0, 0.0, 0.0),
                        help="background: black, white or R,G,B (default: black)")
    render.add_argument("--npy", action="store_true",
                        help="also write the raw depth and weight maps as .npy")
    render.set_defaults(func=cmd_render)

    mesh = sub.add_parser(
        "mesh", help="mesh a trained 3DGS point_cloud.ply from its training views",
        description="Render the depth of each training view (cameras.json beside the model, "
                    "the official layout), fuse the maps into a sparse truncated signed "
                    "distance field and write its zero level set as a coloured PLY mesh "
                    "(marching tetrahedra), as 2DGS and PGSR mesh their models. The defaults "
                    "are 2DGS's for unbounded scenes: depths up to twice the cameras' extent, "
                    "the voxel a --resolution-th of that.")
    _add_model_options(mesh)
    mesh.add_argument("--out", required=True, help="the mesh's .ply path")
    mesh.add_argument("--cameras", default=None,
                      help="cameras.json (default: the one in the model directory)")
    mesh.add_argument("--depth", default="median", choices=["median", "mean"],
                      help="the depth map fused: the median (the first Gaussian past half "
                           "opacity: sharp edges) or the mean (default: %(default)s)")
    mesh.add_argument("--every", type=_positive_int, default=1,
                      help="fuse every N-th training view (default: %(default)s)")
    mesh.add_argument("--scale", type=float, default=1.0,
                      help="render at this fraction of the training resolution "
                           "(default: %(default)s)")
    mesh.add_argument("--resolution", type=_positive_int, default=512,
                      help="voxels across the depth range when --voxel-size is not given "
                           "(2DGS: 1024; default: %(default)s)")
    mesh.add_argument("--voxel-size", type=float, default=None,
                      help="grid spacing in scene units (default: max depth / resolution)")
    mesh.add_argument("--max-depth", type=float, default=None,
                      help="ignore pixels deeper than this (default: twice the extent of the "
                           "camera centres, 2DGS's depth_trunc)")
    mesh.add_argument("--truncation", type=float, default=None,
                      help="the TSDF's truncation in scene units (default: 4 voxels)")
    mesh.add_argument("--min-weight", type=float, default=0.5,
                      help="fuse the pixels whose accumulated opacity is above this "
                           "(default: %(default)s)")
    mesh.add_argument("--min-views", type=_positive_int, default=1,
                      help="mesh where at least this many views saw the grid point "
                           "(default: %(default)s)")
    mesh.add_argument("--method", default="tsdf", choices=["tsdf", "opacity"],
                      help="tsdf: fuse the depth maps (2DGS, PGSR); opacity: mesh the Gaussians' "
                           "opacity field at 0.5, no depth maps (Gaussian Opacity Fields; each "
                           "vertex coloured by the view that sees it best; --depth, "
                           "--truncation, --min-weight and --min-views do not apply) (default: "
                           "%(default)s)")
    mesh.add_argument("--refine-steps", type=int, default=8,
                      help="with --method opacity: bisections of each vertex's edge (GOF's "
                           "binary search; default: %(default)s)")
    mesh.add_argument("--components", type=int, default=0,
                      help="keep the N largest connected components of 50 faces or more, "
                           "dropping floaters (2DGS's post-processing: 50; default: keep all)")
    mesh.set_defaults(func=cmd_mesh)
    return parser


def _add_model_options(parser):
    """The arguments of the commands that read a trained model."""
    parser.add_argument("scene", help="path to point_cloud.ply")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto = CUDA when available (default: %(default)s)")
    parser.add_argument("--sh-degree", type=int, default=None,
                        help="use fewer SH degrees than the file has")
    parser.add_argument("--antialiasing", action="store_true",
                        help="the opacity compensation of the 2D filter, for models trained "
                             "with it (the 2024 code's --antialiasing, Mip-Splatting)")
    parser.add_argument("--kernel-size", type=float, default=None,
                        help="the 2D filter's variance in px^2 (default: 0.3; for a "
                             "Mip-Splatting PLY, which holds filter_3D, its training's, with "
                             "--antialiasing, unless either option is given)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (PlyFormatError, FileNotFoundError, ImportError) as e:
        # A bad input file or a missing optional dependency is the user's to fix, not a crash.
        print(f"error: {e}", file=sys.stderr)
        return 2
