"""Held-out PSNR of a model trained by a 3DGS fork's own code, with that code's Scene, render and
psnr but without its LPIPS (which needs torchvision and VGG weights from the network): the
LightGaussian and Mini-Splatting checks in doc/migration.md. Run from the shim, with the fork's
directory as the script's (its `gaussian_renderer.render` is the original's plain call):

    cp tools/cpu_shim/heldout_psnr.py /tmp/lg/
    python tools/cpu_shim/run.py /tmp/lg/heldout_psnr.py -m MODEL --iteration 1200 \
        --data_device cpu
"""
from argparse import ArgumentParser

import torch
from arguments import ModelParams, PipelineParams, get_combined_args
from gaussian_renderer import render
from scene import GaussianModel, Scene
from utils.image_utils import psnr

parser = ArgumentParser()
model, pipeline = ModelParams(parser, sentinel=True), PipelineParams(parser)
parser.add_argument("--iteration", default=-1, type=int)
args = get_combined_args(parser)
gaussians = GaussianModel(args.sh_degree)
scene = Scene(model.extract(args), gaussians, load_iteration=args.iteration, shuffle=False)
background = torch.tensor([1.0, 1.0, 1.0] if args.white_background else [0.0, 0.0, 0.0])
with torch.no_grad():
    for name, cameras in (("test", scene.getTestCameras()),
                          ("train", scene.getTrainCameras()[:5])):
        values = [psnr(torch.clamp(render(c, gaussians, pipeline.extract(args), background)
                                   ["render"], 0, 1),
                       torch.clamp(c.original_image, 0, 1)).mean().item() for c in cameras]
        print(f"{name} PSNR {sum(values) / len(values):.2f} over {len(values)} views, "
              f"{gaussians.get_xyz.shape[0]} Gaussians")
