"""LangSplat's own training on the package, both of its stages, and its held-out language
features: the check in doc/migration.md.

LangSplat trains in two steps: an RGB model (its README uses the original 3DGS code for it, since
its own command line cannot turn `include_feature` off), then, from that model's checkpoint, the
language features with the geometry frozen. Here LangSplat's own `training` runs both, the flag
set in code, on the COLMAP layout of `tools/make_nerf_scene.py --colmap`, whose object masks
become LangSplat's `language_features_dim3` (each view's segment maps at its four levels, one
unit 3-vector per object as the segment's feature: what its autoencoder would give for a
CLIP feature). Then each held-out view's rendered features are classified by the nearest
object vector. Run from the shim, with LangSplat's directory as the script's:

    cp tools/cpu_shim/langsplat_check.py /tmp/ls/
    python tools/cpu_shim/run.py /tmp/ls/langsplat_check.py -s /tmp/cscene -m /tmp/outls \
        --eval --data_device cpu --densify_until_iter 900

(`--densify_until_iter` below `--rgb_iterations`: LangSplat saves its checkpoint after the step's
densification, so one taken at a densifying step holds Gaussians split and never trained; and
the language stage needs many steps, `--feature_iterations` 15000 by default, since its
features start at zero through a normalization whose first gradient fills Adam's second
moment.)
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

parser = ArgumentParser()
model, optimization, pipeline = (ModelParams(parser), OptimizationParams(parser),
                                 PipelineParams(parser))
parser.add_argument("--rgb_iterations", type=int, default=1500)
parser.add_argument("--feature_iterations", type=int, default=15000)
args = parser.parse_args(sys.argv[1:])
OBJECTS = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator()
                                                    .manual_seed(0)), dim=1)

# LangSplat's language features from the object masks: segments = objects at every level.
features_dir = os.path.join(args.source_path, args.language_features_name)
os.makedirs(features_dir, exist_ok=True)
for mask_name in sorted(os.listdir(os.path.join(args.source_path, "object_mask"))):
    mask = np.array(Image.open(os.path.join(args.source_path, "object_mask", mask_name)))
    segments = mask.astype(np.int64) - 1                        # -1 where no object
    stem = os.path.join(features_dir, mask_name.split(".")[0])
    np.save(stem + "_s.npy", np.stack([segments] * 4))
    np.save(stem + "_f.npy", OBJECTS.numpy())

# LangSplat's checkpoints hold a NumPy scalar (its spatial_lr_scale), which torch.load refuses
# since PyTorch 2.6 unless allowed: its own `torch.load(checkpoint)` needs this on new PyTorch.
torch.serialization.add_safe_globals([np._core.multiarray.scalar, np.dtype] + [
    type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)])

base = args.model_path
args.feature_level = 1
dataset, opt, pipe = model.extract(args), optimization.extract(args), pipeline.extract(args)

dataset.model_path, opt.include_feature, opt.iterations = base + "_rgb", False, args.rgb_iterations
training(dataset, opt, pipe, [args.rgb_iterations], [args.rgb_iterations], [args.rgb_iterations],
         None, -1)
rgb_checkpoint = os.path.join(base + "_rgb", f"chkpnt{args.rgb_iterations}.pth")

dataset, opt = model.extract(args), optimization.extract(args)
dataset.model_path, opt.include_feature, opt.iterations = (base + "_1", True,
                                                           args.feature_iterations)
training(dataset, opt, pipe, [args.feature_iterations], [args.feature_iterations],
         [args.feature_iterations], rgb_checkpoint, -1)

gaussians = GaussianModel(dataset.sh_degree)
scene = Scene(dataset, gaussians, shuffle=False)
params, _ = torch.load(os.path.join(base + "_1", f"chkpnt{args.feature_iterations}.pth"),
                       weights_only=False)
gaussians.restore(params, opt, mode="test")
with torch.no_grad():
    for name, cameras in (("test", scene.getTestCameras()), ("train", scene.getTrainCameras())):
        right = total = 0
        cosine = 0.0
        for camera in cameras:
            out = render(camera, gaussians, pipe, torch.zeros(3), opt)
            rendered = out["language_feature_image"]                      # (3, H, W)
            truth, seen = camera.get_language_feature(dataset.lf_path, dataset.feature_level)
            seen = seen[0]
            nearest = torch.einsum("kc,chw->khw", OBJECTS, rendered).argmax(dim=0)
            truth_id = torch.einsum("kc,chw->khw", OBJECTS, truth).argmax(dim=0)
            right += (nearest == truth_id)[seen].sum().item()
            cosine += torch.nn.functional.cosine_similarity(rendered, truth, dim=0)[seen].sum()
            total += seen.sum().item()
        print(f"{name}: language features' object accuracy {100 * right / total:.1f}%, mean "
              f"cosine to the truth {float(cosine) / total:.3f}, over {total} pixels of "
              f"{len(cameras)} views")
