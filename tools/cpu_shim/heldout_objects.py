"""Held-out object segmentation of a model trained by Gaussian Grouping's own code, with its
Scene, render and saved classifier: the check in doc/migration.md. Per held-out view, the
rendered identity encodings go through the classifier and the argmax is compared with the view's
object mask (pixels with an object only), beside the majority-class baseline. Run from the shim
with Gaussian Grouping's directory as the script's:

    cp tools/cpu_shim/heldout_objects.py /tmp/gg/
    python tools/cpu_shim/run.py /tmp/gg/heldout_objects.py -m MODEL --iteration 1200 \
        --data_device cpu
"""
import os
from argparse import ArgumentParser

import torch
from arguments import ModelParams, PipelineParams, get_combined_args
from gaussian_renderer import GaussianModel, render
from scene import Scene

parser = ArgumentParser()
model, pipeline = ModelParams(parser, sentinel=True), PipelineParams(parser)
parser.add_argument("--iteration", default=-1, type=int)
args = get_combined_args(parser)
dataset = model.extract(args)
gaussians = GaussianModel(dataset.sh_degree)
scene = Scene(dataset, gaussians, load_iteration=args.iteration, shuffle=False)
classifier = torch.nn.Conv2d(gaussians.num_objects, dataset.num_classes, kernel_size=1)
classifier.load_state_dict(torch.load(os.path.join(
    dataset.model_path, "point_cloud", f"iteration_{scene.loaded_iter}", "classifier.pth")))
background = torch.zeros(3)
with torch.no_grad():
    for name, cameras in (("test", scene.getTestCameras()), ("train", scene.getTrainCameras())):
        right = total = majority = 0
        for camera in cameras:
            objects = render(camera, gaussians, pipeline.extract(args), background)
            predicted = classifier(objects["render_object"]).argmax(dim=0)
            truth = camera.objects.long()
            seen = truth > 0
            right += (predicted == truth)[seen].sum().item()
            majority += (truth[seen] == 1).sum().item()   # the ground, the largest object
            total += seen.sum().item()
        print(f"{name}: object accuracy {100 * right / total:.1f}% over {total} pixels of "
              f"{len(cameras)} views (the majority class alone: {100 * majority / total:.1f}%)")
