"""Held-out check of a model trained by RaDe-GS's own code (doc/migration.md, RaDe-GS; how to
run: heldout.py): on its held-out views, with RaDe-GS's render and depth_double_to_normal, the
PSNR, its depth-normal consistency (1 - cos between the rendered normal map and the normals of
its expected and median depths, its loss's two terms), AbsRel of the expected and median depth
against the ground truth's where both are solid, and the angles of the median depth's normals
and of the rendered normals to the ground truth depth's."""
import torch
from gaussian_renderer import render
from utils.graphics_utils import depth_double_to_normal
from utils.image_utils import psnr

from heldout import angle_deg, interior, load_model, print_means, true_depth

args, pipeline, gaussians, scene, truth, background = load_model()
rows = []
with torch.no_grad():
    for camera in scene.getTestCameras():
        out = render(camera, gaussians, pipeline, background, args.kernel_size,
                     require_coord=False, require_depth=True)
        expected, median = out["expected_depth"], out["median_depth"]
        depth_normals = depth_double_to_normal(camera, expected, median)     # (2, 3, H, W)
        consistency = 1 - (out["normal"][None] * depth_normals).sum(1)       # (2, H, W)
        depth, weight = true_depth(camera, truth, background)
        solid = interior((weight > 0.99) & (out["mask"][0] > 0.99))
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
print_means(rows, gaussians)
