"""Held-out check of a model trained by RaDe-GS's own code on `tools/make_nerf_scene.py --colmap`'s
scene (doc/migration.md, RaDe-GS): with RaDe-GS's Scene, render and depth_double_to_normal, on
its held-out views, the PSNR, its depth-normal consistency (1 - cos between the rendered normal
map and the normals of its expected and median depths, its loss's two terms), and the depths
and normals against the ground truth (the scene's Gaussians, `scenes.demo_scene`, rendered by
the package from the same cameras): AbsRel of the expected and median depth where both are
solid, and the angle between the median depth's normals and the ground truth depth's. Run from
the shim, with RaDe-GS's directory as the script's:

    cp tools/cpu_shim/rade_gs_check.py /tmp/rade/
    python tools/cpu_shim/run.py /tmp/rade/rade_gs_check.py -m MODEL --iteration 3000 \
        --data_device cpu [--gaussians 8000 --seed 0 (make_nerf_scene's)]
"""
import math
from argparse import ArgumentParser

import torch
from arguments import ModelParams, PipelineParams, get_combined_args
from gaussian_renderer import render
from scene import GaussianModel, Scene
from utils.graphics_utils import depth_double_to_normal
from utils.image_utils import psnr

from diff_gaussian_rasterization_depth import GaussianRasterizationSettings, GaussianRasterizer
from diff_gaussian_rasterization_depth.scenes import demo_scene

parser = ArgumentParser()
model, pipeline = ModelParams(parser, sentinel=True), PipelineParams(parser)
parser.add_argument("--iteration", default=-1, type=int)
parser.add_argument("--gaussians", default=8000, type=int)
parser.add_argument("--seed", default=0, type=int)
args = get_combined_args(parser)
gaussians = GaussianModel(args.sh_degree)
scene = Scene(model.extract(args), gaussians, load_iteration=args.iteration, shuffle=False)
truth = demo_scene(args.gaussians, seed=args.seed, sh_degree=1)
background = torch.tensor([1.0, 1.0, 1.0] if args.white_background else [0.0, 0.0, 0.0])


def true_depth(camera):
    """(median-free) expected depth and weight of the ground-truth Gaussians in this view."""
    settings = GaussianRasterizationSettings(
        image_height=camera.image_height, image_width=camera.image_width,
        tanfovx=math.tan(camera.FoVx * 0.5), tanfovy=math.tan(camera.FoVy * 0.5),
        bg=background, scale_modifier=1.0, viewmatrix=camera.world_view_transform,
        projmatrix=camera.full_proj_transform, sh_degree=1, campos=camera.camera_center)
    _, _, depth, weight = GaussianRasterizer(settings)(
        means3D=truth.means, means2D=None, opacities=truth.opacities, shs=truth.sh,
        scales=truth.scales, rotations=truth.rotations)
    return depth, weight


def angle_deg(a, b, mask):
    cosine = (a * b).sum(0).clamp(-1, 1)[mask]
    return torch.rad2deg(torch.acos(cosine)).mean().item()


rows = []
with torch.no_grad():
    for camera in scene.getTestCameras():
        out = render(camera, gaussians, pipeline.extract(args), background, args.kernel_size,
                     require_coord=False, require_depth=True)
        expected, median = out["expected_depth"], out["median_depth"]
        depth_normals = depth_double_to_normal(camera, expected, median)     # (2, 3, H, W)
        consistency = 1 - (out["normal"][None] * depth_normals).sum(1)       # (2, H, W)
        depth, weight = true_depth(camera)
        solid = (weight > 0.99) & (out["mask"][0] > 0.99)
        solid[:2] = solid[-2:] = False
        solid[:, :2] = solid[:, -2:] = False
        truth_normals = depth_double_to_normal(camera, depth[None], depth[None])[0]
        rows.append(dict(
            psnr=psnr(out["render"].clamp(0, 1), camera.original_image.clamp(0, 1)).mean().item(),
            consistency_expected=consistency[0][solid].mean().item(),
            consistency_median=consistency[1][solid].mean().item(),
            absrel_expected=((expected[0] - depth).abs() / depth)[solid].mean().item(),
            absrel_median=((median[0] - depth).abs() / depth)[solid].mean().item(),
            normal_error_median=angle_deg(depth_normals[1], truth_normals, solid),
            normal_error_rendered=angle_deg(out["normal"], truth_normals, solid),
            solid=solid.float().mean().item()))
for key in rows[0]:
    print(f"{key}: {sum(r[key] for r in rows) / len(rows):.4f}")
print(f"({len(rows)} held-out views, {gaussians.get_xyz.shape[0]} Gaussians)")
