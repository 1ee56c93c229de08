"""Held-out check of a model trained by PGSR's own code (doc/migration.md, PGSR; how to run:
heldout.py): on its held-out views, with PGSR's render and render_normal, the PSNR, its
single-view consistency (1 - cos between the rendered normal map and the normals of its plane
depth, what its single-view loss pulls together), AbsRel of the plane depth and of the
package's expected depth of the trained Gaussians against the ground truth's where both are
solid, and the angles of the plane depth's normals and of the rendered normals to the ground
truth depth's."""
import torch
from gaussian_renderer import render, render_normal
from utils.image_utils import psnr

from heldout import angle_deg, interior, load_model, package_depth, print_means, true_depth

args, pipeline, gaussians, scene, truth, background = load_model()
rows = []
with torch.no_grad():
    for camera in scene.getTestCameras():
        out = render(camera, gaussians, pipeline, background)
        plane = out["plane_depth"][0]
        normal = torch.nn.functional.normalize(out["rendered_normal"], dim=0)
        depth_normal = render_normal(camera, plane)
        depth, weight = true_depth(camera, truth, background)
        expected, alpha = package_depth(camera, background, gaussians.get_xyz,
                                        gaussians.get_opacity, gaussians.get_features,
                                        gaussians.get_scaling, gaussians.get_rotation,
                                        gaussians.active_sh_degree)
        solid = interior((weight > 0.99) & (alpha > 0.99))
        truth_normals = render_normal(camera, depth)
        gt_image, _ = camera.get_image()
        rows.append(dict(
            psnr=psnr(out["render"].clamp(0, 1), gt_image.clamp(0, 1)).mean().item(),
            consistency=(1 - (normal * depth_normal).sum(0))[solid].mean().item(),
            absrel_plane=((plane - depth).abs() / depth)[solid].mean().item(),
            absrel_expected=((expected - depth).abs() / depth)[solid].mean().item(),
            normal_error_plane=angle_deg(depth_normal, truth_normals, solid),
            normal_error_rendered=angle_deg(normal, truth_normals, solid),
            solid=solid.float().mean().item()))
print_means(rows, gaussians)
