"""Orthographic cameras (settings `orthographic=True`, gsplat's camera_model="ortho"): the
projection's Jacobian is the constant diag(focal_x, focal_y), tanfovx and tanfovy the view's
half-extents, projmatrix the orthographic projection (cameras.orthographic_matrix).

Against autograd through the reference: outputs, the Gaussians' gradients and the camera's,
float32 and float64; finite differences; what only an orthographic view does (moving the
camera along its axis changes the depth by as much and nothing else; the perspective render
changes); the CUDA kernels against the CPU backend; the checks. gsplat's own orthographic
camera: tests/test_gsplat_api.py.
"""
import pytest
import torch

import scenes
from cuda_target import cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, surface
from test_camera_gradients import make_camera_gradcheck_fn, projection_failures
from test_cpu_backend import run_backend

F32, F64 = torch.float32, torch.float64

CONFIGS = {
    "sh1": dict(sh_degree=1),
    "sh3-aa": dict(sh_degree=3, antialiasing=True),
    "colors-cov": dict(precomp_colors=True, precomp_cov=True),
    "mip-kernel0.1": dict(sh_degree=2, antialiasing=True, kernel_size=0.1),
    "size-64x40": dict(sh_degree=2, height=40, width=64, P=120),
    "float64": dict(sh_degree=2, dtype=F64),
    "float64-aa-cov": dict(sh_degree=1, antialiasing=True, precomp_cov=True, dtype=F64),
}


def scene_for(config, seed):
    return scenes.orthographic(scenes.config_scene("ortho", CONFIGS, config, seed))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(config):
    """Outputs, every Gaussian input's gradient and the camera's, against the reference."""
    failures = []
    for seed in range(3):
        scene = scene_for(config, seed)
        found, radii, wants = projection_failures(scene, seed)
        failures += found
        assert (radii > 0).sum() > scene.P // 3
        for name in ("viewmatrix", "projmatrix"):
            assert wants[0]["all"][name].abs().max() > 0
    assert not failures, "\n".join(failures)


def smooth_orthographic_scene(seed, **kwargs):
    """The first orthographic view of make_scene(seed + 1000 k, smooth=True) that passes
    scenes.smooth_margin (no value within 1e-3 of a threshold), float64."""
    for attempt in range(50):
        scene = scenes.orthographic(scenes.make_scene(seed + 1000 * attempt, smooth=True,
                                                      dtype=F64, **kwargs))
        if scenes.smooth_margin(scene):
            return scene
    raise RuntimeError(f"no smooth scene found from seed {seed}")


def test_gradcheck():
    """Finite differences, float64: the Gaussians' inputs and the camera's matrices."""
    scene = smooth_orthographic_scene(910, P=5, height=13, width=18, sh_degree=1,
                                      antialiasing=True)
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def moved_back(settings, back):
    """The settings' camera moved back along its axis by `back` (every view-space z grows by
    it), its projection unchanged."""
    view = settings.viewmatrix.reshape(4, 4)
    projection = torch.linalg.solve(view.double(), settings.projmatrix.reshape(4, 4).double())
    moved = view.clone()
    moved[3, 2] += back
    return settings._replace(
        viewmatrix=moved.reshape(settings.viewmatrix.shape),
        projmatrix=(moved.double() @ projection).to(view.dtype).reshape(
            settings.projmatrix.shape))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_moving_along_the_axis_changes_only_depth(dtype):
    """An orthographic camera moved back along its axis by d sees the same image and weight,
    and every depth d farther; the Gaussians' gradients from colour and weight stay the same.
    A perspective camera moved so sees a smaller image."""
    perspective = scenes.make_scene(7700, P=120, height=40, width=48, precomp_colors=True,
                                    dtype=dtype, outliers=False)
    scene = scenes.orthographic(perspective)
    back = 0.75
    leaves = scene.with_grad()
    color, radii, depth, weight = GaussianRasterizer(scene.settings)(**leaves)
    (color.sum() + weight.sum()).backward()
    far = scene.with_grad()
    color2, radii2, depth2, weight2 = GaussianRasterizer(moved_back(scene.settings, back))(
        **far)
    (color2.sum() + weight2.sum()).backward()
    tol = 1e-5 if dtype == F32 else 1e-12
    assert torch.equal(radii, radii2)
    assert torch.allclose(color, color2, atol=tol) and torch.allclose(weight, weight2, atol=tol)
    seen = weight > 0.05
    assert seen.sum() > 200
    assert torch.allclose(depth2[seen], depth[seen] + back, atol=10 * tol, rtol=tol)
    rtol = 1e-4 if dtype == F32 else 1e-10
    for name in ("means3D", "opacities", "scales", "rotations", "colors_precomp"):
        g = leaves[name].grad
        assert torch.allclose(far[name].grad, g, rtol=rtol, atol=rtol * g.abs().max()), name
    # The perspective camera of the same view matrix, moved the same way, renders otherwise.
    with torch.no_grad():
        near_weight = GaussianRasterizer(perspective.settings)(**scene.inputs)[3]
        far_weight = GaussianRasterizer(moved_back(perspective.settings, back))(
            **scene.inputs)[3]
    assert (near_weight - far_weight).abs().max() > 0.1


def test_depth_to_points_on_parallel_rays():
    """surface.depth_to_points (and so depth_to_normal) reads any projection: with an
    orthographic one, a pixel's points at every depth share x and y, and project back to it."""
    scene = scenes.orthographic(scenes.make_scene(7850, P=10, height=20, width=24, dtype=F64))
    s = scene.settings
    depth = 1.0 + torch.rand(20, 24, generator=torch.Generator().manual_seed(1), dtype=F64)
    points = surface.depth_to_points(depth, s)
    twice = surface.depth_to_points(2 * depth, s)
    assert torch.allclose(points[:2], twice[:2], atol=1e-12)
    assert torch.equal(points[2], depth)
    view = s.viewmatrix.reshape(4, 4)
    projection = torch.linalg.solve(view, s.projmatrix.reshape(4, 4))
    homogeneous = torch.cat([points.reshape(3, -1).T, torch.ones(20 * 24, 1, dtype=F64)], 1)
    clip = homogeneous @ projection
    cols = ((clip[:, 0] / clip[:, 3] + 1) * 24 - 1) / 2
    rows = ((clip[:, 1] / clip[:, 3] + 1) * 20 - 1) / 2
    assert torch.allclose(cols.reshape(20, 24), torch.arange(24, dtype=F64).expand(20, 24))
    assert torch.allclose(rows.reshape(20, 24), torch.arange(20, dtype=F64)[:, None].expand(20, 24))


def test_checked():
    scene = scenes.orthographic(scenes.make_scene(7800, P=30, height=20, width=24))
    # A flag read as the others are (bool()): 1 as True, through the Python checks.
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(
            GaussianRasterizer(scene.settings._replace(orthographic=1))(**scene.inputs),
            GaussianRasterizer(scene.settings)(**scene.inputs)))
    with pytest.raises(NotImplementedError, match="points3D"):
        GaussianRasterizer(scene.settings)(**scene.inputs, points3D=torch.zeros(4, 3))
    # The surface helpers whose rays pass through the camera centre.
    with pytest.raises(NotImplementedError, match="plane_depth"):
        surface.plane_depth(torch.zeros(3, 20, 24), torch.zeros(20, 24), scene.settings)
    with pytest.raises(NotImplementedError, match="intersection_planes"):
        surface.intersection_planes(scene.inputs["means3D"], scene.settings,
                                    scene.inputs["scales"], scene.inputs["rotations"])
    with pytest.raises(NotImplementedError, match="dominant_points"):
        surface.dominant_points(torch.zeros(20, 24, dtype=torch.int32), scene.inputs["means3D"],
                                scene.settings, scene.inputs["scales"],
                                scene.inputs["rotations"])
    # The default, and settings classes without the field, are perspective.
    plain = scenes.make_scene(7800, P=30, height=20, width=24)
    assert plain.settings.orthographic is False


@pytest.mark.cuda
@pytest.mark.parametrize("target", cuda_targets())
def test_cuda_matches_cpu(target):
    """The CUDA preprocess and its backward (the camera's gradient included) with the constant
    Jacobian, against the CPU backend."""
    import test_cuda
    for seed in range(2):
        scene = scenes.orthographic(scenes.make_scene(7900 + seed, P=100, height=40, width=64,
                                                      sh_degree=2, antialiasing=bool(seed)))
        test_cuda.check_projection_against_cpu(scene, target, seed)
