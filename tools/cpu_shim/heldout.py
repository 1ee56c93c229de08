"""What the held-out geometry checks of forks' training codes share (rade_gs_check.py,
pgsr_check.py, run from the shim, which puts this folder on the path): the trained model loaded
by the fork's own Scene on the scene of `tools/make_nerf_scene.py --colmap`, that scene's
ground truth (`scenes.demo_scene`) and Gaussians rendered by the package, the pixels to score,
and the mean over views. A check runs from the shim with the fork's directory as its own:

    cp tools/cpu_shim/pgsr_check.py /tmp/pgsr/          # or rade_gs_check.py into /tmp/rade/
    python tools/cpu_shim/run.py /tmp/pgsr/pgsr_check.py -m MODEL --iteration 3000 \
        --data_device cpu [--gaussians 8000 --seed 0 (make_nerf_scene's)]
"""
import math
from argparse import ArgumentParser

import torch
from arguments import ModelParams, PipelineParams, get_combined_args
from scene import GaussianModel, Scene

from diff_gaussian_rasterization_depth import GaussianRasterizationSettings, GaussianRasterizer
from diff_gaussian_rasterization_depth.scenes import demo_scene


def load_model():
    """(args, pipeline, gaussians, scene, truth, background) from the command line: the fork's
    model options, --iteration, and make_nerf_scene's --gaussians and --seed."""
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
    return args, pipeline.extract(args), gaussians, scene, truth, background


def package_depth(camera, background, means, opacities, sh, scales, rotations, sh_degree):
    """The package's expected depth and weight (H, W) of these Gaussians in this view."""
    settings = GaussianRasterizationSettings(
        image_height=camera.image_height, image_width=camera.image_width,
        tanfovx=math.tan(camera.FoVx * 0.5), tanfovy=math.tan(camera.FoVy * 0.5),
        bg=background, scale_modifier=1.0, viewmatrix=camera.world_view_transform,
        projmatrix=camera.full_proj_transform, sh_degree=sh_degree,
        campos=camera.camera_center)
    _, _, depth, weight = GaussianRasterizer(settings)(
        means3D=means, means2D=None, opacities=opacities, shs=sh, scales=scales,
        rotations=rotations)
    return depth, weight


def true_depth(camera, truth, background):
    """The ground-truth Gaussians' expected depth and weight in this view."""
    return package_depth(camera, background, truth.means, truth.opacities, truth.sh,
                         truth.scales, truth.rotations, 1)


def interior(mask):
    """The mask without its two-pixel border (where depth normals have no neighbours)."""
    mask = mask.clone()
    mask[:2] = mask[-2:] = False
    mask[:, :2] = mask[:, -2:] = False
    return mask


def angle_deg(a, b, mask):
    """Mean angle in degrees between two maps of unit vectors (3, H, W) over the mask."""
    cosine = (a * b).sum(0).clamp(-1, 1)[mask]
    return torch.rad2deg(torch.acos(cosine)).mean().item()


def print_means(rows, gaussians):
    for key in rows[0]:
        print(f"{key}: {sum(r[key] for r in rows) / len(rows):.4f}")
    print(f"({len(rows)} held-out views, {gaussians.get_xyz.shape[0]} Gaussians)")
