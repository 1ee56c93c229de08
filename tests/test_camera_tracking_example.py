"""examples/camera_tracking.py: its SE(3) exponential and camera matrices, and a short tracking
run whose pose error must drop substantially (the camera gradients drive it)."""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from diff_gaussian_rasterization_depth import _backend, cameras
from diff_gaussian_rasterization_depth.cameras import Camera

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                     "camera_tracking.py")
_spec = importlib.util.spec_from_file_location("camera_tracking", _PATH)
ct = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ct)


def test_se3_exp_is_a_rigid_motion_with_the_right_derivative():
    gen = torch.Generator().manual_seed(3)
    for scale in (1e-5, 0.3, 2.0):     # the Taylor branch and the closed form
        xi = torch.randn(6, generator=gen, dtype=torch.float64) * scale
        T = ct.se3_exp(xi)
        R = T[:3, :3]
        torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)
        assert abs(float(torch.det(R)) - 1) < 1e-12
        torch.testing.assert_close(T[3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))
        # exp(xi) exp(-xi) = I
        torch.testing.assert_close(T @ ct.se3_exp(-xi), torch.eye(4, dtype=torch.float64),
                                   atol=1e-12, rtol=0)
    # At 0 the derivative is the generator: d/d(omega_z) of R is skew(e_z).
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(ct.se3_exp, xi)
    assert torch.isfinite(jac).all()
    torch.testing.assert_close(jac[:3, :3, 5], cameras._skew(torch.tensor([0, 0, 1.0],
                                                                     dtype=torch.float64)))
    torch.testing.assert_close(jac[:3, 3, :3], torch.eye(3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda x: ct.se3_exp(x), (xi.detach().clone().add_(1e-3)
                                                              .requires_grad_(),))


def test_camera_matrices_match_the_package_camera():
    cam = Camera.looking_at((3.0, -2.0, 1.5), (0.2, 0.1, 0.3), 40, 30, 55.0)
    w2c = torch.as_tensor(cam.world_to_camera)
    view, proj, campos = ct.camera_matrices(w2c, cam)
    torch.testing.assert_close(view, torch.as_tensor(cam.viewmatrix()))
    torch.testing.assert_close(proj, torch.as_tensor(cam.projmatrix()))
    torch.testing.assert_close(campos, torch.as_tensor(cam.center))


def test_pose_errors_of_a_known_offset():
    w2c = np.eye(4)
    moved = ct.perturbed(w2c, translation=0.07, degrees=4.0, seed=1)
    t_err, r_err = ct.pose_errors(torch.as_tensor(moved), torch.as_tensor(w2c))
    assert math.isclose(t_err, 0.07, rel_tol=1e-9) and math.isclose(r_err, 4.0, rel_tol=1e-9)


@pytest.mark.skipif(_backend._C is None, reason="needs the compiled extension")
def test_short_tracking_run_converges():
    result = ct.track(iters=50, width=96, height=72, n_gaussians=5000, seed=0, log_every=None)
    assert result["initial_translation"] > 0.04 and result["initial_rotation_deg"] > 2.5
    assert result["final_translation"] < 0.3 * result["initial_translation"], result
    assert result["final_rotation_deg"] < 0.2 * result["initial_rotation_deg"], result


@pytest.mark.skipif(_backend._C is None, reason="needs the compiled extension")
def test_tracking_with_unknown_focal_lengths_converges():
    """--focal-error: the pose and the focal lengths (5% too long at the start) together, the
    focal's gradient through the fields of view and projmatrix."""
    result = ct.track(iters=50, width=96, height=72, n_gaussians=5000, seed=0, log_every=None,
                      focal_error=0.05)
    assert result["initial_focal_error"] == pytest.approx(0.05)
    assert result["final_focal_error"] < 0.1 * result["initial_focal_error"], result
    assert result["final_translation"] < 0.3 * result["initial_translation"], result
    assert result["final_rotation_deg"] < 0.2 * result["initial_rotation_deg"], result


@pytest.mark.skipif(_backend._C is None, reason="needs the compiled extension")
def test_monogs_tracking_loop_converges():
    """MonoGS's tracking loop through `diff_gaussian_rasterization_depth.monogs`: theta and rho
    are zero Parameters, each step renders with them, steps Adam, folds them into the pose
    (world-to-camera <- exp([rho, theta]) @ world-to-camera, as MonoGS's update_pose) and
    zeroes them; the matrices in the settings take no gradient themselves."""
    from diff_gaussian_rasterization_depth import monogs
    gaussians = ct.scenes.demo_scene(5000, seed=0, sh_degree=1)  # the frame of the run above
    camera = ct.scenes.demo_cameras(8, 96, 72)[0]
    raw = torch.as_tensor(ct.perspective_matrix(camera.tanfovx, camera.tanfovy).T,
                          dtype=torch.float32)

    def render(w2c, theta=None, rho=None):
        view = w2c.T
        settings = monogs.GaussianRasterizationSettings(
            image_height=camera.height, image_width=camera.width, tanfovx=camera.tanfovx,
            tanfovy=camera.tanfovy, bg=torch.zeros(3), scale_modifier=1.0, viewmatrix=view,
            projmatrix=view @ raw, projmatrix_raw=raw, sh_degree=gaussians.sh_degree,
            campos=-w2c[:3, :3].T @ w2c[:3, 3], prefiltered=False, debug=False)
        color, radii, depth, opacity, n_touched = monogs.GaussianRasterizer(settings)(
            means3D=gaussians.means, means2D=None, opacities=gaussians.opacities,
            shs=gaussians.sh, scales=gaussians.scales, rotations=gaussians.rotations,
            theta=theta, rho=rho)
        return color, depth, opacity, n_touched

    w2c_true = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
    with torch.no_grad():
        target_color, target_depth, target_opacity, touched = render(w2c_true)
    assert (touched > 0).sum() > 100  # MonoGS's covisibility: the Gaussians the view touches
    mask = target_opacity > 0.5
    w2c = torch.as_tensor(ct.perturbed(camera.world_to_camera, 0.05, 3.0, seed=0),
                          dtype=torch.float32)
    theta = torch.nn.Parameter(torch.zeros(3))
    rho = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([{"params": [theta], "lr": 3e-3},
                                  {"params": [rho], "lr": 3e-3}])
    before = ct.pose_errors(w2c, w2c_true)
    for _ in range(80):
        color, depth, opacity, _ = render(w2c, theta, rho)
        loss = ((color - target_color).abs().mean()
                + 0.2 * (depth - target_depth).abs()[mask].mean())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # MonoGS's update_pose
            w2c = ct.se3_exp(torch.cat([rho, theta]).double()).float() @ w2c
            theta.zero_()
            rho.zero_()
    after = ct.pose_errors(w2c, w2c_true)
    assert before[0] > 0.04 and before[1] > 2.5
    assert after[0] < 0.3 * before[0] and after[1] < 0.2 * before[1], (before, after)


def test_pose_helpers_reject_bad_input_by_name():
    cam = Camera.looking_at((3.0, -2.0, 1.5), (0.2, 0.1, 0.3), 40, 30, 55.0)
    with pytest.raises(ValueError, match=r"se3_exp: xi: expected shape \(6,\)"):
        cameras.se3_exp(torch.zeros(7))
    with pytest.raises(TypeError, match="se3_exp: xi: expected a floating-point tensor"):
        cameras.se3_exp(torch.zeros(6, dtype=torch.int64))
    with pytest.raises(TypeError, match="camera_matrices: w2c: expected a floating-point"):
        cameras.camera_matrices(cam.world_to_camera, cam)      # an array, not a tensor
    with pytest.raises(ValueError, match=r"camera_matrices: w2c: expected shape \(4, 4\)"):
        cameras.pose_settings(torch.eye(4)[:3], cam)
    with pytest.raises(ValueError, match="perturbed_pose: expected a distance and an angle"):
        cameras.perturbed_pose(cam.world_to_camera, -0.1, 2.0, np.random.default_rng(0))
