"""Surface regularization of 3D Gaussians: do the surface terms give better geometry?

The analytic scene of examples/sparse_view_depth.py (a floor, a wall and three spheres, ray-cast
exactly, with true depths and normals) is seen by 24 cameras; every 8th is held out and the
other 21 are the training views. Gaussians start from a random initialization and are fitted
three times, with the same seed, views and iteration count:

  photometric   0.8 L1 + 0.2 (1 - SSIM)
  + surface     the same plus, after the first third of the iterations, the terms of
                diff_gaussian_rasterization_depth.surface (as 2DGS / PGSR use them):
                  lambda_normal  mean of weight * (1 - <normal map, normals of the depth>)
                  lambda_dist    mean of the depth distortion (2DGS's, NDC-mapped depth)
                  lambda_flat    mean of each Gaussian's smallest scale (flat Gaussians, so
                                 that their shortest axis is a normal)
  + surface, plane depth   the same with the normals of the plane depth (PGSR's: where each
                ray meets the blended tangent plane) in the normal term
  + surface, RaDe-GS depth the same with RaDe-GS's depth (each splat's depth a plane over the
                screen, surface.intersection_planes) and its normal map (those planes'
                normals blended) in the normal term

All are scored on the held-out views: PSNR, AbsRel of the expected, the plane and the RaDe-GS
depth, and the angle between the true surface normal and the normals of each depth and of the
normal map, in degrees, over pixels with weight > 0.5 away from object edges. Then each fit's
training views are rendered and fused into a mesh (diff_gaussian_rasterization_depth.mesh: TSDF
of each depth, marching tetrahedra), scored by its Chamfer distance to the true scene: the
mean of its accuracy (each vertex's distance to the nearest true surface) and completeness
(each held-out view's true surface point's distance to the nearest vertex), in a box around the
spheres. With --opacity-mesh each fit is also meshed from its opacity field over the training
views (Gaussian Opacity Fields: mesh.extract_opacity_mesh, no depth maps), scored alike (about
a minute more a fit on a CPU). Run:

    python examples/surface_regularization.py                 # one seed, about two minutes on a CPU
    python examples/surface_regularization.py --seeds 0 1 2   # the table of doc/surface.md

Writes OUT/normals_seed{S}.png, OUT/results.md and OUT/results.json (default OUT: out/surface),
with --save-meshes the meshes too (OUT/mesh_seed{S}_{fit}_{depth}.ply). Needs the package's
[demo] extra (matplotlib, tqdm).
"""
import argparse
import copy
import importlib.util
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from diff_gaussian_rasterization_depth import GaussianRasterizer, scenes, surface
from diff_gaussian_rasterization_depth.mesh import (Mesh, OpacityField, TSDFVolume,
                                                    extract_opacity_mesh)
from diff_gaussian_rasterization_depth.cameras import Camera, choose_device

# The scene, cameras, model, photometric loss and metrics are the sparse-view example's.
_spec = importlib.util.spec_from_file_location(
    "sparse_view_depth", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "sparse_view_depth.py"))
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


# =============================================================================================
# Rendering with the surface outputs
# =============================================================================================

@dataclass
class SurfaceRender:
    color: torch.Tensor          # (3,H,W)
    depth: torch.Tensor          # (H,W)
    weight: torch.Tensor         # (H,W)
    normal_map: torch.Tensor     # (3,H,W) view space, unit where weight > 0
    depth_normals: torch.Tensor  # (3,H,W) normals of the depth map, view space
    plane_depth: torch.Tensor    # (H,W) PGSR's depth: where the ray meets the blended plane
    plane_normals: torch.Tensor  # (3,H,W) normals of the plane depth
    distortion: torch.Tensor     # (H,W)
    rade_depth: Optional[torch.Tensor] = None         # (H,W) RaDe-GS's: the splats' planes
    rade_normals: Optional[torch.Tensor] = None       # (3,H,W) normals of the RaDe-GS depth
    rade_normal_map: Optional[torch.Tensor] = None    # (3,H,W) the planes' normals blended


def render_surface(gaussians: scenes.Gaussians, camera: Camera,
                   rade: bool = False) -> SurfaceRender:
    """One call (`surface.render_surface`: colour, depth, weight and 6 feature channels), and
    the normals of both depths; with `rade`, 6 more channels in the same call (RaDe-GS's depth
    planes and their normals) and that depth's normals."""
    settings = camera.raster_settings(device=gaussians.means.device)
    maps = surface.render_surface(
        GaussianRasterizer(settings), settings, intersection=rade, means3D=gaussians.means,
        means2D=None, opacities=gaussians.opacities, shs=gaussians.sh, scales=gaussians.scales,
        rotations=gaussians.rotations)
    return SurfaceRender(maps.color, maps.depth, maps.weight, maps.normal_map,
                         surface.depth_to_normal(maps.depth, settings), maps.plane_depth,
                         surface.depth_to_normal(maps.plane_depth, settings), maps.distortion,
                         maps.rade_depth, None if maps.rade_depth is None else
                         surface.depth_to_normal(maps.rade_depth, settings),
                         maps.rade_normal_map)


def surface_terms(r: SurfaceRender, gaussians: scenes.Gaussians,
                  depth: str = "expected") -> Dict[str, torch.Tensor]:
    """The three terms; the normal consistency against the normals of the expected depth, of
    the plane depth (depth="plane", as PGSR) or, for the planes' normal map, of the RaDe-GS
    depth (depth="rade", a render made with rade=True)."""
    normal_map = r.rade_normal_map if depth == "rade" else r.normal_map
    of_depth = {"plane": r.plane_normals, "rade": r.rade_normals}.get(depth, r.depth_normals)
    consistency = r.weight * (1 - (normal_map * of_depth).sum(0))
    return dict(normal=consistency.mean(), dist=r.distortion.mean(),
                flat=gaussians.scales.min(dim=1).values.mean())


# =============================================================================================
# Fitting and evaluation
# =============================================================================================

@dataclass
class SurfaceConfig:
    iterations: int = 1000
    lambda_normal: float = 0.1
    lambda_dist: float = 100.0
    lambda_flat: float = 10.0
    start: float = 1 / 3         # the surface terms from this fraction of the iterations on


def fit(model: sv.GaussianModel, train: Sequence[sv.View], cfg: SurfaceConfig, seed: int,
        surface: Optional[str], progress: Optional[str] = None) -> sv.GaussianModel:
    """sparse_view_depth.fit's Adam and schedule, with the surface terms where asked (surface
    "expected", "plane" or "rade": the depth whose normals the normal map is held to; None:
    none)."""
    fc = sv.FitConfig(iterations=cfg.iterations)
    model = copy.deepcopy(model)
    opt = sv.make_optimizer(model, fc)
    order = np.random.default_rng(seed).integers(0, len(train), size=cfg.iterations)
    steps = range(cfg.iterations)
    if progress is not None:
        from tqdm import tqdm
        steps = tqdm(steps, desc=progress, leave=False, dynamic_ncols=True)
    for it in steps:
        frac = it / max(cfg.iterations - 1, 1)
        opt.param_groups[0]["lr"] = fc.lr_means * fc.lr_means_final_ratio ** frac
        view = train[order[it]]
        g = model.activated()
        r = render_surface(g, view.camera, rade=surface == "rade")
        loss = sv.photometric_loss(r.color, view.color, fc.lambda_ssim)
        if surface and frac >= cfg.start:
            terms = surface_terms(r, g, surface)
            loss = (loss + cfg.lambda_normal * terms["normal"] + cfg.lambda_dist * terms["dist"]
                    + cfg.lambda_flat * terms["flat"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


def true_view_normals(view_normal_world: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(3,H,W) world normals of the ray caster in view space (they face the camera already:
    the rays hit the planes' and spheres' outer sides)."""
    R = torch.as_tensor(camera.rotation, dtype=view_normal_world.dtype,
                        device=view_normal_world.device)
    return torch.einsum("ij,jhw->ihw", R, view_normal_world)


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos((a * b).sum(0).clamp(-1, 1)))


def interior(objects: torch.Tensor) -> torch.Tensor:
    """(H,W) pixels whose object is that of their four neighbours (no edge, no border)."""
    same = torch.zeros_like(objects, dtype=torch.bool)
    o = objects
    same[1:-1, 1:-1] = ((o[1:-1, 1:-1] == o[1:-1, 2:]) & (o[1:-1, 1:-1] == o[1:-1, :-2])
                        & (o[1:-1, 1:-1] == o[2:, 1:-1]) & (o[1:-1, 1:-1] == o[:-2, 1:-1])
                        & (o[1:-1, 1:-1] >= 0))
    return same


METRICS = ("psnr", "abs_rel", "plane_abs_rel", "rade_abs_rel", "depth_normal_deg",
           "plane_normal_deg", "rade_normal_deg", "normal_map_deg", "distortion", "chamfer",
           "plane_chamfer", "rade_chamfer")
DEPTHS = (("expected", ""), ("plane", "plane_"), ("rade", "rade_"))   # and their metrics' prefix
MESH_VOXEL = 0.04     # scene units: about a pixel's footprint at the cameras' distance
# The region the meshes are scored in: the spheres and the floor and wall around them (the
# floor runs on past what the training views see).
SCORED_BOX = ((-3.0, -2.0, -0.1), (3.0, 3.1, 2.5))


def world_points(depth: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(H*W, 3) world points of a depth map of view z (its rays have view z = 1)."""
    origin, dirs = camera.world_rays()
    dirs = torch.as_tensor(dirs, dtype=depth.dtype, device=depth.device)
    return (torch.as_tensor(origin, dtype=depth.dtype, device=depth.device)
            + dirs * depth[..., None]).reshape(-1, 3)


def fuse_depths(depths: Sequence[torch.Tensor], cameras: Sequence[Camera],
                masks: Sequence[torch.Tensor],
                colors: Optional[Sequence[torch.Tensor]] = None) -> Mesh:
    """Depth maps (H,W) of view z fused into a TSDF (the pixels of `masks`), over the box their
    points span (2nd to 98th percentile, plus 4 voxels), and its mesh."""
    points = torch.cat([world_points(d, c)[m.reshape(-1)]
                        for d, c, m in zip(depths, cameras, masks)]).double().cpu()
    lower = torch.quantile(points[::7], 0.02, dim=0) - 4 * MESH_VOXEL
    upper = torch.quantile(points[::7], 0.98, dim=0) + 4 * MESH_VOXEL
    volume = TSDFVolume(lower.tolist(), upper.tolist(), MESH_VOXEL, device=depths[0].device)
    for k, (depth, camera, mask) in enumerate(zip(depths, cameras, masks)):
        volume.integrate(depth, camera.raster_settings(device=depth.device), mask=mask,
                         color=None if colors is None else colors[k])
    return volume.extract_mesh()


@torch.no_grad()
def fuse_meshes(model: sv.GaussianModel, views: Sequence[sv.View],
                min_weight: float = 0.5, opacity: bool = False) -> Dict[str, Mesh]:
    """Each training view's expected, plane and RaDe-GS depths fused apart (the pixels with
    weight > min_weight): {"expected": mesh, "plane": mesh, "rade": mesh}; with `opacity`,
    also "opacity": the mesh of the opacity field over the views (in the scored box)."""
    g = model.activated()
    renders = [render_surface(g, v.camera, rade=True) for v in views]
    cameras = [v.camera for v in views]
    masks = [r.weight > min_weight for r in renders]
    colors = [r.color for r in renders]
    depths = {"expected": [r.depth for r in renders], "plane": [r.plane_depth for r in renders],
              "rade": [r.rade_depth for r in renders]}
    meshes = {name: fuse_depths(d, cameras, masks, colors) for name, d in depths.items()}
    if opacity:
        field = OpacityField([c.raster_settings(device=g.means.device) for c in cameras],
                             g.means, g.opacities, g.scales, g.rotations)
        meshes["opacity"] = extract_opacity_mesh(field, MESH_VOXEL, lower=SCORED_BOX[0],
                                                 upper=SCORED_BOX[1])
    return meshes


def scene_distance(points: torch.Tensor, scene: sv.AnalyticScene) -> torch.Tensor:
    """Each point's distance to the nearest of the scene's surfaces (planes and spheres)."""
    d = [((points - sv._as64(p.point)) @ sv._as64(p.normal)).abs() for p in scene.planes]
    d += [((points - sv._as64(s.center)).norm(dim=1) - s.radius).abs() for s in scene.spheres]
    return torch.stack(d).min(0).values


def nearest_distance(points: torch.Tensor, targets: torch.Tensor, chunk: int = 512):
    """Each point's distance to the nearest of `targets` (inf when there are none)."""
    if targets.shape[0] == 0:
        return torch.full((points.shape[0],), float("inf"), dtype=points.dtype)
    return torch.cat([torch.cdist(points[i:i + chunk], targets).min(1).values
                      for i in range(0, points.shape[0], chunk)])


def in_scored_box(points: torch.Tensor) -> torch.Tensor:
    lower, upper = (torch.tensor(b, dtype=points.dtype) for b in SCORED_BOX)
    return ((points >= lower) & (points <= upper)).all(1)


def mesh_scores(mesh: Mesh, scene: sv.AnalyticScene, truth_points: torch.Tensor) -> dict:
    """In SCORED_BOX: accuracy, the mean distance of the mesh's vertices to the scene's
    surfaces; completeness, of the true points to the mesh's vertices; chamfer, their mean."""
    vertices = mesh.vertices.double().cpu()
    vertices = vertices[in_scored_box(vertices)]
    truth_points = truth_points[in_scored_box(truth_points)]
    accuracy = float(scene_distance(vertices, scene).mean()) if vertices.shape[0] else math.inf
    completeness = float(nearest_distance(truth_points, vertices).mean())
    return dict(accuracy=accuracy, completeness=completeness,
                chamfer=(accuracy + completeness) / 2)


def chamfer(mesh: Mesh, scene: sv.AnalyticScene, truth_points: torch.Tensor) -> float:
    return mesh_scores(mesh, scene, truth_points)["chamfer"]


@torch.no_grad()
def evaluate(model: sv.GaussianModel, views: Sequence[sv.View], truth: Sequence[dict],
             min_weight: float = 0.5):
    """Held-out means: PSNR, AbsRel of the three depths, the normal angles (of the three
    depths, of the normal map) in degrees, the distortion; and the renders. The normal
    angles are taken over the pixels where the expected and the plane depth have normals (and,
    for the RaDe-GS depth's, where it has one too)."""
    g = model.activated()
    rows, renders = [], []
    for v, rc in zip(views, truth):
        r = render_surface(g, v.camera, rade=True)
        n_true = true_view_normals(rc["normal"].to(r.depth), v.camera)
        mask = (r.weight > min_weight) & interior(rc["object"].to(r.depth.device))
        mask &= (r.depth_normals.norm(dim=0) > 0.5) & (r.plane_normals.norm(dim=0) > 0.5)
        rade_mask = mask & (r.rade_normals.norm(dim=0) > 0.5)
        rows.append((sv.psnr(r.color, v.color), sv.abs_rel(r.depth, v.depth, r.weight),
                     sv.abs_rel(r.plane_depth, v.depth, r.weight),
                     sv.abs_rel(r.rade_depth, v.depth, r.weight),
                     float(angle_deg(r.depth_normals, n_true)[mask].mean()),
                     float(angle_deg(r.plane_normals, n_true)[mask].mean()),
                     float(angle_deg(r.rade_normals, n_true)[rade_mask].mean()),
                     float(angle_deg(r.normal_map, n_true)[mask].mean()),
                     float(r.distortion.mean())))
        renders.append((r, n_true))
    a = np.array(rows)
    keys = METRICS[:len(rows[0])]
    return {k: float(np.nanmean(a[:, i])) for i, k in enumerate(keys)}, renders


@dataclass
class ExperimentConfig:
    width: int = 96
    height: int = 72
    gaussians: int = 3000
    n_cameras: int = 24
    test_every: int = 8
    surface: SurfaceConfig = None

    def __post_init__(self):
        if self.surface is None:
            self.surface = SurfaceConfig()


VARIANTS = (("photometric", None), ("+ surface", "expected"),
            ("+ surface, plane depth", "plane"), ("+ surface, RaDe-GS depth", "rade"))


def run_seed(seed: int, cfg: ExperimentConfig, device, out_dir: Optional[str] = None,
             progress: bool = True, save_meshes: bool = False, opacity_mesh: bool = False):
    """The four fits for one seed; returns {variant: metrics} (and writes a figure)."""
    scene = sv.default_scene()
    cams = sv.make_cameras(cfg.width, cfg.height, cfg.n_cameras)
    test_ids = list(range(0, cfg.n_cameras, cfg.test_every))
    train_ids = [i for i in range(cfg.n_cameras) if i not in test_ids]
    gen = torch.Generator().manual_seed(seed)
    train = sv.make_views(scene, cams, train_ids, device)
    test = sv.make_views(scene, cams, test_ids, device)
    truth = [sv.raycast(scene, cams[i]) for i in test_ids]
    init = sv.random_init([v.camera for v in train], cfg.gaussians, gen).to(device)
    # The true surface the meshes are scored against: 1,500 of the held-out views' hits.
    truth_points = torch.cat([world_points(rc["depth"], cams[i])[
        (rc["object"] >= 0).reshape(-1)] for rc, i in zip(truth, test_ids)])
    truth_points = truth_points[in_scored_box(truth_points)]
    truth_points = truth_points[torch.linspace(0, truth_points.shape[0] - 1, 1500).long()]
    results, renders = {}, {}
    for name, surface in VARIANTS:
        t0 = time.perf_counter()
        model = fit(init, train, cfg.surface, seed, surface,
                    progress=f"seed {seed} {name}" if progress else None)
        seconds = time.perf_counter() - t0
        results[name], renders[name] = evaluate(model, test, truth)
        results[name]["seconds"] = seconds
        meshes = fuse_meshes(model, train, opacity=opacity_mesh)
        for depth, prefix in DEPTHS + ((("opacity", "opacity_"),) if opacity_mesh else ()):
            scores = mesh_scores(meshes[depth], scene, truth_points)
            for k, v in scores.items():
                results[name][prefix + k] = v
        if out_dir is not None and save_meshes:
            from diff_gaussian_rasterization_depth.ply import save_mesh_ply
            for depth, mesh in meshes.items():
                tag = name.replace("+ ", "").replace(", ", "-").replace(" ", "-")
                save_mesh_ply(os.path.join(out_dir, f"mesh_seed{seed}_{tag}_{depth}.ply"), mesh)
    if out_dir is not None:
        write_figure(os.path.join(out_dir, f"normals_seed{seed}.png"), test, renders, results,
                     seed)
    return results


def write_figure(path, test: Sequence[sv.View], renders, results, seed):
    """For one held-out view: the truth's colour and normals, then per fit the colour, the
    normals of the three depths and the normal map (view-space normals as RGB = (n + 1) / 2)."""
    from diff_gaussian_rasterization_depth import viz
    k = len(test) // 2
    as_rgb = lambda n: ((n + 1) / 2).clamp(0, 1)  # noqa: E731
    first = renders["photometric"][k]
    panels = [[viz.Panel("rgb", test[k].color, "held-out view"),
               viz.Panel("rgb", as_rgb(first[1]), "true normals"), None, None, None]]
    for name, rs in renders.items():
        r, _ = rs[k]
        m = results[name]
        panels.append([viz.Panel("rgb", r.color, f"{name}: PSNR {m['psnr']:.2f}"),
                       viz.Panel("rgb", as_rgb(r.depth_normals),
                                 f"depth's normals {m['depth_normal_deg']:.1f} deg"),
                       viz.Panel("rgb", as_rgb(r.plane_normals),
                                 f"plane depth's {m['plane_normal_deg']:.1f} deg"),
                       viz.Panel("rgb", as_rgb(r.rade_normals),
                                 f"RaDe-GS depth's {m['rade_normal_deg']:.1f} deg"),
                       viz.Panel("rgb", as_rgb(r.normal_map),
                                 f"normal map {m['normal_map_deg']:.1f} deg")])
    viz.save_figure(path, panels, suptitle=f"surface terms, seed {seed}")


def format_table(per_seed: Dict[int, Dict[str, dict]]) -> str:
    lines = ["| seed | fit | PSNR dB | AbsRel | AbsRel, plane depth | AbsRel, RaDe-GS depth | "
             "normal error of the depth, deg | of the plane depth | of the RaDe-GS depth | of "
             "the normal map | distortion | mesh Chamfer | of the plane depth's mesh | of the "
             "RaDe-GS depth's mesh |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = ("{:.2f}", "{:.4f}", "{:.4f}", "{:.4f}", "{:.1f}", "{:.1f}", "{:.1f}", "{:.1f}",
           "{:.2e}", "{:.4f}", "{:.4f}", "{:.4f}")
    metrics = METRICS
    names = list(next(iter(per_seed.values())))
    if "opacity_chamfer" in next(iter(per_seed.values()))[names[0]]:
        lines[0] += " of the opacity field's mesh |"
        lines[1] += "---|"
        fmt, metrics = fmt + ("{:.4f}",), METRICS + ("opacity_chamfer",)
    rows = [(str(s), name, res[name]) for s, res in per_seed.items() for name in names]
    if len(per_seed) > 1:
        rows += [("mean", name, {c: np.mean([per_seed[s][name][c] for s in per_seed])
                                 for c in metrics}) for name in names]
    for s, name, m in rows:
        lines.append(f"| {s} | {name} | " + " | ".join(
            f.format(m[c]) for f, c in zip(fmt, metrics)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sv.common_arguments(p, SurfaceConfig.iterations, ExperimentConfig.gaussians,
                        ExperimentConfig.width, ExperimentConfig.height,
                        os.path.join("out", "surface"))
    p.add_argument("--lambda-normal", type=float, default=SurfaceConfig.lambda_normal)
    p.add_argument("--lambda-dist", type=float, default=SurfaceConfig.lambda_dist)
    p.add_argument("--lambda-flat", type=float, default=SurfaceConfig.lambda_flat)
    p.add_argument("--save-meshes", action="store_true",
                   help="write each fit's meshes as OUT/mesh_seed{S}_{fit}_{depth}.ply")
    p.add_argument("--opacity-mesh", action="store_true",
                   help="also mesh each fit's opacity field (Gaussian Opacity Fields) and score it")
    args = p.parse_args(argv)
    device = choose_device(args.device)
    cfg = ExperimentConfig(width=args.width, height=args.height, gaussians=args.gaussians,
                           surface=SurfaceConfig(iterations=args.iterations,
                                                 lambda_normal=args.lambda_normal,
                                                 lambda_dist=args.lambda_dist,
                                                 lambda_flat=args.lambda_flat))
    os.makedirs(args.out, exist_ok=True)
    print(f"{cfg.n_cameras} cameras, every {cfg.test_every}th held out; {cfg.gaussians} "
          f"Gaussians, {args.iterations} iterations, {cfg.width}x{cfg.height}, device {device}; "
          f"surface terms {cfg.surface}")
    t0 = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(seed, cfg, device, args.out, progress=not args.no_progress,
                                  save_meshes=args.save_meshes,
                                  opacity_mesh=args.opacity_mesh)
        for name, m in per_seed[seed].items():
            print(f"seed {seed} {name:22s} PSNR {m['psnr']:6.2f} dB  AbsRel {m['abs_rel']:.4f}"
                  f" (plane depth {m['plane_abs_rel']:.4f})  normal errors: depth "
                  f"{m['depth_normal_deg']:5.1f}, plane depth {m['plane_normal_deg']:5.1f}, map "
                  f"{m['normal_map_deg']:5.1f} deg  mesh Chamfer {m['chamfer']:.4f} = (accuracy "
                  f"{m['accuracy']:.4f} + completeness {m['completeness']:.4f}) / 2, of the "
                  f"plane depth {m['plane_chamfer']:.4f} = ({m['plane_accuracy']:.4f} + "
                  f"{m['plane_completeness']:.4f}) / 2; RaDe-GS depth: AbsRel "
                  f"{m['rade_abs_rel']:.4f}, normal error {m['rade_normal_deg']:5.1f} deg, mesh "
                  f"Chamfer {m['rade_chamfer']:.4f}"
                  + (f"; opacity field's mesh Chamfer {m['opacity_chamfer']:.4f}"
                     if "opacity_chamfer" in m else "") + f"  ({m['seconds']:.1f} s)")
    sv.write_results(args.out, format_table(per_seed),
                     {**cfg.__dict__, "surface": cfg.surface.__dict__}, per_seed,
                     "normals_seed*.png", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
