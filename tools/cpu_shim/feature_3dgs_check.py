"""Feature 3DGS's own training on the package, and its held-out feature maps: the check in
doc/migration.md. Feature 3DGS distils a 2D foundation model's feature maps (LSeg's 512
channels, SAM's 256) into per-Gaussian features, rendered beside the colour. Here its own
`training` runs on the COLMAP layout of `tools/make_nerf_scene.py --colmap`, whose object masks
become its `rgb_feature_langseg` maps: at each pixel the unit D-vector of the object there, 0
where there is none (D = 128, its default NUM_SEMANTIC_CHANNELS; any D renders here). Then each
held-out view's rendered feature map is classified by the nearest object vector. Run from the
shim, with Feature 3DGS's directory as the script's:

    cp tools/cpu_shim/feature_3dgs_check.py /tmp/f3/
    python tools/cpu_shim/run.py /tmp/f3/feature_3dgs_check.py -s /tmp/cscene -m /tmp/outf3 \
        --eval --data_device cpu --foundation_model lseg --iterations 1200
"""
import os
import sys
from argparse import ArgumentParser

import numpy as np
import torch
from PIL import Image

from arguments import ModelParams, OptimizationParams, PipelineParams
from gaussian_renderer import render
from scene import GaussianModel, Scene
from train import training
from utils.image_utils import psnr

parser = ArgumentParser()
model, optimization, pipeline = (ModelParams(parser), OptimizationParams(parser),
                                 PipelineParams(parser))
parser.add_argument("--channels", type=int, default=128)
args = parser.parse_args(sys.argv[1:])
OBJECTS = torch.nn.functional.normalize(torch.randn(4, args.channels, generator=torch.Generator()
                                                    .manual_seed(0)), dim=1)

# The "foundation model's" feature maps: each object's vector, zero where there is none.
features_dir = os.path.join(args.source_path, "rgb_feature_langseg")
os.makedirs(features_dir, exist_ok=True)
for mask_name in sorted(os.listdir(os.path.join(args.source_path, "object_mask"))):
    mask = torch.from_numpy(np.array(Image.open(os.path.join(args.source_path, "object_mask",
                                                             mask_name)))).long()
    table = torch.cat([torch.zeros(1, args.channels), OBJECTS])      # row 0: nothing there
    torch.save(table[mask].permute(2, 0, 1).contiguous(),
               os.path.join(features_dir, mask_name.split(".")[0] + "_fmap_CxHxW.pt"))

dataset, opt, pipe = model.extract(args), optimization.extract(args), pipeline.extract(args)
training(dataset, opt, pipe, [opt.iterations], [opt.iterations], [], None, -1)

gaussians = GaussianModel(dataset.sh_degree)
scene = Scene(dataset, gaussians, load_iteration=opt.iterations, shuffle=False)
with torch.no_grad():
    for name, cameras in (("test", scene.getTestCameras()), ("train", scene.getTrainCameras())):
        right = total = 0
        psnrs = []
        for camera in cameras:
            out = render(camera, gaussians, pipe, torch.zeros(3))
            truth = camera.semantic_feature
            seen = truth.abs().sum(dim=0) > 0
            nearest = torch.einsum("kc,chw->khw", OBJECTS, out["feature_map"]).argmax(dim=0)
            truth_id = torch.einsum("kc,chw->khw", OBJECTS, truth).argmax(dim=0)
            right += (nearest == truth_id)[seen].sum().item()
            total += seen.sum().item()
            psnrs.append(psnr(out["render"].clamp(0, 1), camera.original_image).mean().item())
        print(f"{name}: PSNR {sum(psnrs) / len(psnrs):.2f} dB, feature map's object accuracy "
              f"{100 * right / total:.1f}% over {total} pixels of {len(cameras)} views, "
              f"{gaussians.get_xyz.shape[0]} Gaussians")
