"""Camera tracking through the rasterizer: recover a camera pose from one colour + depth frame.

A small scene (the package's demo still life) is rendered from a known camera: that colour and
depth frame is the target. The tracker starts from a pose perturbed by a few centimetres and
degrees and optimizes a 6-vector xi = (rho, omega), the SE(3) tangent of a correction applied to
the starting pose in camera coordinates,

    world_to_camera(xi) = exp(xi) @ world_to_camera_start,

with Adam on an L1 colour loss plus an L1 depth loss (where the target has weight > 0.5). The
exponential map and the matrices the rasterizer takes (viewmatrix = W2C^T, projmatrix =
W2C^T @ P^T, campos = camera centre) are built in PyTorch from xi, so the rasterizer's camera
gradients reach xi. The scene is 1 unit = 1 metre; it prints the translation error (cm) and the
rotation error (degrees) as it goes. With --focal-error F the tracker also starts from focal
lengths F (say 0.05: 5%) too long and refines them with the pose (a camera of unknown
intrinsics, as a SLAM system may have): the fields of view and P come from the focal length by
cameras.projection_from_intrinsics, and the rasterizer's gradient of the fields of view reaches
it. Run:

    python examples/camera_tracking.py                 # 120 iterations, 20-25 s of CPU time
    python examples/camera_tracking.py --iters 60 --quiet
    python examples/camera_tracking.py --focal-error 0.05

`track` is imported by tests/test_camera_tracking_example.py, which also tests the pose helpers
of `cameras` it uses.
"""
import argparse
import math
import time
from typing import Dict, Optional

import numpy as np
import torch

from diff_gaussian_rasterization_depth import GaussianRasterizationSettings, scenes
from diff_gaussian_rasterization_depth.cameras import (  # noqa: F401 (the tests' names)
    Camera, camera_matrices, perspective_matrix, perturbed_pose, pose_errors, pose_settings,
    se3_exp)


def perturbed(w2c: np.ndarray, translation: float, degrees: float, seed: int) -> np.ndarray:
    """w2c with its centre moved by `translation` and its rotation turned by `degrees`, about
    and along random directions (seeded)."""
    return perturbed_pose(w2c, translation, degrees, np.random.default_rng(seed))


# =============================================================================================
# Tracking
# =============================================================================================

def render(gaussians: scenes.Gaussians, settings: GaussianRasterizationSettings):
    color, _, depth, weight = scenes.rasterize(
        settings, means3D=gaussians.means, means2D=None, opacities=gaussians.opacities,
        shs=gaussians.sh, scales=gaussians.scales, rotations=gaussians.rotations)
    return color, depth, weight


def track(iters: int = 120, width: int = 128, height: int = 96, n_gaussians: int = 10000,
          translation: float = 0.05, degrees: float = 3.0, depth_weight: float = 0.2,
          lr: float = 3e-3, seed: int = 0, log_every: Optional[int] = 20,
          focal_error: Optional[float] = None) -> Dict:
    """Recover the pose of one frame (and with focal_error, its focal lengths from that
    relative error); returns the errors before and after, and the run time."""
    torch.manual_seed(seed)
    gaussians = scenes.demo_scene(n_gaussians, seed=seed, sh_degree=1)
    camera = scenes.demo_cameras(8, width, height)[seed % 8]
    w2c_true = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
    with torch.no_grad():
        target_color, target_depth, target_weight = render(
            gaussians, pose_settings(w2c_true, camera, gaussians.sh_degree))
    mask = target_weight > 0.5

    w2c_start = torch.as_tensor(perturbed(camera.world_to_camera, translation, degrees, seed),
                                dtype=torch.float32)
    xi = torch.zeros(6, requires_grad=True)
    parameters = [xi]
    # The focal lengths as the true ones times exp(log_focal): a relative error, refined in
    # log space (Adam's steps are then fractions of the focal length).
    log_focal = None
    if focal_error is not None:
        log_focal = torch.tensor(math.log1p(focal_error), requires_grad=True)
        parameters.append(log_focal)
    optimizer = torch.optim.Adam(parameters, lr=lr)

    def errors(w2c):
        focal = 0.0 if log_focal is None else math.expm1(float(log_focal.detach()))
        return pose_errors(w2c, w2c_true) + (abs(focal),)

    history = [(0,) + errors(w2c_start)]
    if log_every:
        print(f"start: translation error {100 * history[0][1]:6.2f} cm, "
              f"rotation error {history[0][2]:5.2f} deg"
              + (f", focal error {100 * history[0][3]:.2f}%" if log_focal is not None else ""))
    start = time.perf_counter()
    for it in range(1, iters + 1):
        w2c = se3_exp(xi) @ w2c_start
        focal_scale = None if log_focal is None else torch.exp(log_focal)
        color, depth, weight = render(gaussians, pose_settings(w2c, camera, gaussians.sh_degree,
                                                               focal_scale=focal_scale))
        loss = ((color - target_color).abs().mean()
                + depth_weight * (depth - target_depth).abs()[mask].mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % (log_every or iters) == 0 or it == iters:
            with torch.no_grad():
                history.append((it,) + errors(se3_exp(xi) @ w2c_start))
            if log_every:
                print(f"iter {it:4d}: loss {loss.item():.5f}, translation error "
                      f"{100 * history[-1][1]:6.2f} cm, rotation error {history[-1][2]:5.2f} deg"
                      + (f", focal error {100 * history[-1][3]:.3f}%"
                         if log_focal is not None else ""))
    seconds = time.perf_counter() - start
    return dict(initial_translation=history[0][1], initial_rotation_deg=history[0][2],
                final_translation=history[-1][1], final_rotation_deg=history[-1][2],
                initial_focal_error=history[0][3], final_focal_error=history[-1][3],
                seconds=seconds, iters=iters, history=history)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--gaussians", type=int, default=10000)
    parser.add_argument("--translation", type=float, default=0.05,
                        help="start offset of the camera centre (scene units = metres)")
    parser.add_argument("--degrees", type=float, default=3.0, help="start rotation offset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--focal-error", type=float, default=None,
                        help="also refine the focal lengths, starting this fraction too long")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    result = track(iters=args.iters, width=args.width, height=args.height,
                   n_gaussians=args.gaussians, translation=args.translation,
                   degrees=args.degrees, seed=args.seed, log_every=None if args.quiet else 20,
                   focal_error=args.focal_error)
    focal = (f", focal error {100 * result['initial_focal_error']:.2f}% -> "
             f"{100 * result['final_focal_error']:.3f}%" if args.focal_error is not None else "")
    print(f"translation error {100 * result['initial_translation']:.2f} cm -> "
          f"{100 * result['final_translation']:.3f} cm, rotation error "
          f"{result['initial_rotation_deg']:.2f} deg -> {result['final_rotation_deg']:.3f} deg"
          f"{focal}, {result['iters']} iterations in {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
