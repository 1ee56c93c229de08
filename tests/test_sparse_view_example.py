"""The parts of examples/sparse_view_depth.py: exact ray caster, camera split, monocular-like
prior, losses and metrics, the Gaussian parameterisation, and (with the compiled backend) that
the rasterizer's depth is the ray caster's view-space z and that a short fit runs.
"""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from diff_gaussian_rasterization_depth import _backend, depth_losses, scenes
from diff_gaussian_rasterization_depth.cameras import Camera, look_at

needs_backend = pytest.mark.skipif(
    _backend._C is None,
    reason="the compiled extension diff_gaussian_rasterization_depth._C is not built "
           "(pip install --no-build-isolation -e .); rendering tests need it")

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                     "sparse_view_depth.py")
_spec = importlib.util.spec_from_file_location("sparse_view_depth", _PATH)
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


def _camera(eye, target, W=31, H=23, fov=60.0, up=(0.0, 0.0, 1.0)):
    return Camera.looking_at(eye, target, W, H, fov, up)


# ---------------------------------------------------------------------------------------------
# Ray caster
# ---------------------------------------------------------------------------------------------

def test_raycast_plane_depth_is_exact_view_z():
    """Camera at distance D facing a wall: every pixel's view-space depth is D; the ray length
    grows towards the corners."""
    D = 3.7
    scene = sv.AnalyticScene([sv.Plane((0, 2.0, 0), (0, -1, 0), "wall")], [])
    cam = _camera((0.3, 2.0 - D, 0.8), (0.3, 2.0, 0.8))
    rc = sv.raycast(scene, cam)
    assert rc["depth"].dtype == torch.float64
    torch.testing.assert_close(rc["depth"], torch.full((23, 31), D, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    d = torch.as_tensor(cam.pixel_directions()).norm(dim=-1)
    torch.testing.assert_close(rc["distance"], D * d, rtol=1e-12, atol=0)
    assert rc["distance"][0, 0] > 1.1 * D                 # z-depth is not the ray length
    assert (rc["object"] == 0).all()


def test_raycast_sphere_matches_the_closed_form():
    """A sphere of radius r at distance L on the optical axis: pixel (u, v) with camera ray
    (u, v, 1) hits at z = (L - sqrt(L^2 - q (L^2 - r^2))) / q, q = u^2 + v^2 + 1."""
    L, r = 5.0, 1.3
    scene = sv.AnalyticScene([], [sv.Sphere((1.0, L - 1.0, 0.5), r, "bands")])
    cam = _camera((1.0, -1.0, 0.5), (1.0, L - 1.0, 0.5))
    rc = sv.raycast(scene, cam)
    dirs = torch.as_tensor(cam.pixel_directions())
    q = (dirs ** 2).sum(-1)
    disc = L ** 2 - q * (L ** 2 - r ** 2)
    hit = disc >= 0
    z = (L - torch.sqrt(disc.clamp(min=0))) / q
    assert torch.equal(rc["object"] == 0, hit) and (~hit).any() and hit.any()
    torch.testing.assert_close(rc["depth"][hit], z[hit], rtol=1e-12, atol=1e-12)
    assert rc["depth"][11, 15].item() == pytest.approx(L - r, abs=1e-12)   # centre pixel
    assert (rc["depth"][~hit] == 0).all()


def test_raycast_hits_lie_on_their_pixels_and_the_nearest_object_wins():
    scene = sv.default_scene()
    cam = _camera((1.5, -4.0, 2.0), sv.SCENE_TARGET, W=40, H=30)
    rc = sv.raycast(scene, cam)
    origin, dirs = cam.world_rays()
    pts = origin + dirs * rc["depth"].numpy()[..., None]
    proj = cam.project(pts.reshape(-1, 3))
    rows, cols = np.meshgrid(np.arange(30), np.arange(40), indexing="ij")
    np.testing.assert_allclose(proj[:, 0], cols.reshape(-1), atol=1e-8)
    np.testing.assert_allclose(proj[:, 1], rows.reshape(-1), atol=1e-8)
    np.testing.assert_allclose(proj[:, 2], rc["depth"].reshape(-1).numpy(), rtol=1e-12)
    # The hit point lies on the reported object, and no object is hit earlier.
    flat = pts.reshape(-1, 3)
    objs = list(scene.planes) + list(scene.spheres)
    for i, o in enumerate(objs):
        sel = (rc["object"].reshape(-1) == i).numpy()
        if isinstance(o, sv.Plane):
            resid = (flat[sel] - np.array(o.point)) @ np.array(o.normal, dtype=float)
        else:
            resid = np.linalg.norm(flat[sel] - np.array(o.center), axis=1) - o.radius
        np.testing.assert_allclose(resid, 0.0, atol=1e-9)
    o64, d64 = torch.as_tensor(origin), torch.as_tensor(dirs)
    for o in objs:
        t = (sv.intersect_plane(o64, d64, o) if isinstance(o, sv.Plane)
             else sv.intersect_sphere(o64, d64, o))
        assert (t >= rc["depth"] - 1e-9).all()
    assert (rc["object"] >= 0).all()                   # the scene fills every view
    assert rc["color"].shape == (3, 30, 40)
    assert 0 <= rc["color"].min() and rc["color"].max() <= 1


def test_supersampling_changes_colour_only():
    scene = sv.default_scene()
    cam = _camera((0.5, -4.5, 1.5), sv.SCENE_TARGET, W=24, H=18)
    a, b = sv.raycast(scene, cam), sv.raycast(scene, cam, supersample=3)
    assert torch.equal(a["depth"], b["depth"]) and torch.equal(a["object"], b["object"])
    assert not torch.equal(a["color"], b["color"])
    assert (a["color"] - b["color"]).abs().mean() < 0.1


# ---------------------------------------------------------------------------------------------
# Cameras and split
# ---------------------------------------------------------------------------------------------

def test_cameras_and_split_follow_the_protocol():
    cams = sv.make_cameras(64, 48)
    assert len(cams) == 24
    train, test = sv.split_views(24, 3, 8)
    assert test == [0, 8, 16]
    assert len(train) == 3 and not set(train) & set(test)
    assert train[0] < train[1] < train[2] and train[-1] - train[0] >= 20   # spread out
    target = np.array(sv.SCENE_TARGET)
    for c in cams:
        np.testing.assert_allclose(c.project(target[None])[0, :2], [31.5, 23.5], atol=1e-9)
    eyes = np.stack([c.center for c in cams])
    assert np.min(np.linalg.norm(eyes[1:] - eyes[:-1], axis=1)) > 0.1


# ---------------------------------------------------------------------------------------------
# The monocular-like prior
# ---------------------------------------------------------------------------------------------

def _true_depth(W=48, H=36):
    cam = sv.make_cameras(W, H)[5]
    return sv.raycast(sv.default_scene(), cam)["depth"]


def _affine_fit(x, y):
    A = torch.stack([x.reshape(-1), torch.ones_like(x.reshape(-1))], dim=1)
    coef = torch.linalg.lstsq(A, y.reshape(-1, 1)).solution[:, 0]
    return coef, (y.reshape(-1) - A @ coef).reshape(y.shape)


def test_noise_free_prior_is_affine_in_inverse_depth():
    depth = _true_depth()
    g = torch.Generator().manual_seed(3)
    prior, info = sv.monocular_prior(depth, g, noise=0.0)
    coef, resid = _affine_fit(1.0 / depth, prior)
    assert resid.abs().max() < 1e-10
    assert coef[0].item() == pytest.approx(info["scale"], rel=1e-9)
    assert coef[1].item() == pytest.approx(info["shift"], rel=1e-9, abs=1e-12)
    assert 0.5 <= info["scale"] <= 2.0
    # Another draw: another scale and shift, as for another view of a depth network.
    _, info2 = sv.monocular_prior(depth, g, noise=0.0)
    assert (info2["scale"], info2["shift"]) != (info["scale"], info["shift"])


def test_prior_noise_is_bounded_and_smooth():
    depth = _true_depth()
    H, W = depth.shape
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        prior, info = sv.monocular_prior(depth, g, noise=0.05)
        noise = prior - (info["scale"] / depth + info["shift"])
        inv_range = (1.0 / depth).max() - (1.0 / depth).min()
        assert noise.abs().max() <= 0.05 * info["scale"] * inv_range + 1e-12
        torch.testing.assert_close(noise, info["amplitude"] * info["field"])
        field = info["field"]
        assert field.abs().max() <= 1.0
        # Smooth: a plane wave of at most 2 cycles per image changes by at most 2 pi 2 / size
        # per pixel.
        assert (field[:, 1:] - field[:, :-1]).abs().max() <= 2 * math.pi * 2 / W + 1e-12
        assert (field[1:] - field[:-1]).abs().max() <= 2 * math.pi * 2 / H + 1e-12
        # Still a good prior: it correlates strongly with the true inverse depth.
        assert 1.0 - depth_losses.pearson_depth_loss(depth, torch.ones_like(depth),
                                                     prior).item() > 0.95


# ---------------------------------------------------------------------------------------------
# Losses and metrics
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["pearson", "patch", "ranking", "ssi", "ssi_patch"])
def test_depth_prior_loss_vanishes_at_the_true_geometry(kind):
    """Each depth loss of the example (the package's depth_losses) is 0 at the true geometry
    whatever the prior's scale and shift (the ranking's at most its margin, 1e-4: pairs the
    prior orders alike cost at most that), positive for a tilted one, blind to pixels of weight
    <= 0.5, and the same on the inverse-depth render."""
    assert set(sv.DEPTH_LOSSES) == {"pearson", "patch", "ranking", "ssi", "ssi_patch"}
    depth = _true_depth()
    prior, _ = sv.monocular_prior(depth, torch.Generator().manual_seed(4), noise=0.0)
    weight = torch.ones_like(depth)
    at_truth = sv.depth_prior_loss(depth, weight, prior, kind=kind, step=3).item()
    assert at_truth <= (1e-4 if kind == "ranking" else 1e-12)
    # ... and is positive for a wrong geometry, e.g. a tilted version of the depth.
    tilt = torch.linspace(0.5, 1.5, depth.shape[1], dtype=torch.float64)[None, :]
    assert sv.depth_prior_loss(depth * tilt, weight, prior, kind=kind, step=3).item() > \
        max(10 * at_truth, 1e-3 if kind != "ranking" else 1e-4)
    # Pixels with weight <= 0.5 neither count nor receive gradient.
    d = (depth * tilt).clone().requires_grad_(True)
    weight = weight.clone()
    weight[:, :10] = 0.3
    sv.depth_prior_loss(d, weight, prior, kind=kind, step=3).backward()
    assert (d.grad[:, :10] == 0).all() and (d.grad[:, 10:] != 0).any()
    # An inverse-depth map (inverse=True) is compared as it is: 1 / depth gives the same loss.
    inv = 1 / (depth * tilt)
    assert sv.depth_prior_loss(inv, weight, prior, inverse=True, kind=kind,
                               step=3).item() == pytest.approx(
        sv.depth_prior_loss(depth * tilt, weight, prior, kind=kind, step=3).item(), rel=1e-12)


def test_ssim_of_identical_images_is_one_and_matches_a_direct_sum():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(3, 20, 24, generator=g, dtype=torch.float64)
    assert sv.ssim(a, a).item() == pytest.approx(1.0, abs=1e-12)
    b = (a + 0.1 * torch.randn(3, 20, 24, generator=g, dtype=torch.float64)).clamp(0, 1)
    s = sv.ssim(a, b).item()
    assert 0 < s < 0.99
    assert sv.ssim(b, a).item() == pytest.approx(s, abs=1e-12)
    # One interior pixel computed by hand: Gaussian-weighted means, variances, covariance.
    x = torch.arange(11, dtype=torch.float64) - 5
    w1 = torch.exp(-x * x / (2 * 1.5 ** 2))
    w = (w1[:, None] * w1[None, :]) / w1.sum() ** 2
    pa, pb = a[1, 5:16, 6:17], b[1, 5:16, 6:17]         # window centred on pixel (10, 11)
    mu_a, mu_b = (w * pa).sum(), (w * pb).sum()
    va, vb = (w * pa * pa).sum() - mu_a ** 2, (w * pb * pb).sum() - mu_b ** 2
    cov = (w * pa * pb).sum() - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                       * (va + vb + c2))
    assert sv.ssim_map(a, b)[1, 10, 11].item() == pytest.approx(want.item(), rel=1e-10)


def test_psnr_and_abs_rel():
    gt = torch.full((3, 4, 5), 0.5)
    assert sv.psnr(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-4)
    true = torch.full((4, 5), 2.0)
    pred = true * 1.1
    weight = torch.ones(4, 5)
    assert sv.abs_rel(pred, true, weight) == pytest.approx(0.1, rel=1e-6)
    pred[0] = 100.0                # pixels with low weight do not count
    weight[0] = 0.2
    assert sv.abs_rel(pred, true, weight) == pytest.approx(0.1, rel=1e-6)
    assert math.isnan(sv.abs_rel(pred, true, torch.zeros(4, 5)))


# ---------------------------------------------------------------------------------------------
# The Gaussian model
# ---------------------------------------------------------------------------------------------

def test_random_init_and_activations():
    cams = [sv.make_cameras(40, 30)[i] for i in (1, 12, 23)]
    g = torch.Generator().manual_seed(0)
    model = sv.random_init(cams, 500, g, depth_range=(2.0, 10.0), opacity=0.1)
    act = model.activated()
    assert isinstance(act, scenes.Gaussians) and act.sh_degree == 0
    assert act.sh.shape == (500, 1, 3) and act.means.dtype == torch.float32
    torch.testing.assert_close(act.opacities, torch.full((500, 1), 0.1))
    assert (act.scales > 0).all()
    torch.testing.assert_close(act.rotations.norm(dim=1), torch.ones(500))
    rgb = scenes.SH_C0 * act.sh[:, 0] + 0.5
    assert ((rgb > 0.39) & (rgb < 0.61)).all()
    # Every Gaussian lies in front of, and inside the image of, at least one training camera.
    pts = act.means.detach().double().numpy()
    inside = np.zeros(500, bool)
    for c in cams:
        p = c.project(pts)
        inside |= ((p[:, 2] >= 2.0 - 1e-4) & (p[:, 2] <= 10.0 + 1e-4) & (p[:, 0] > -1)
                   & (p[:, 0] < c.width) & (p[:, 1] > -1) & (p[:, 1] < c.height))
    assert inside.all()
    # The same seed gives the same model.
    again = sv.random_init(cams, 500, torch.Generator().manual_seed(0))
    assert torch.equal(again.means, model.means)


@needs_backend
def test_rendered_depth_is_the_ray_casters_view_z():
    """Gaussians spread over a wall that faces the camera all have the same view-space z, so
    the rendered depth must equal the ray caster's depth exactly, although the ray length
    varies over the image: the example's depth errors compare like with like."""
    D = 4.0
    scene = sv.AnalyticScene([sv.Plane((0, 3, 0), (0, -1, 0), "wall")], [])
    cam = Camera(look_at((0.4, 3 - D, 0.9), (0.4, 3.0, 0.9)), 48, 36, 40.0, 40.0)
    rc = sv.raycast(scene, cam)
    fine = cam.scaled(48 * 3, 36 * 3)                  # one Gaussian per fine ray's hit
    rf = sv.raycast(scene, fine)
    o, d = fine.world_rays()
    pts = torch.as_tensor(o + d * rf["depth"].numpy()[..., None]).reshape(-1, 3).float()
    P = pts.shape[0]
    sigma = torch.full((P,), 1.0 * D / fine.fx)
    quats = torch.as_tensor(scenes._quaternion_z_to(np.tile([0.0, -1.0, 0.0], (P, 1)))).float()
    g = scenes.Gaussians(pts, torch.zeros(P, 1, 3), torch.full((P, 1), 0.9),
                         torch.stack([sigma, sigma, 0.05 * sigma], 1), quats)
    with torch.no_grad():
        r = scenes.render(g, cam)
    m = r.weight > 0.5
    assert m.float().mean() > 0.95
    torch.testing.assert_close(r.depth[m], rc["depth"].float()[m], rtol=2e-6, atol=0)
    corner_gap = (rc["distance"][0, 0] - rc["depth"][0, 0]) / rc["depth"][0, 0]
    assert corner_gap > 0.2                            # the ray length is something else


@needs_backend
def test_short_fit_runs_and_the_depth_loss_reaches_the_gaussians():
    cfg = sv.ExperimentConfig(width=32, height=24, gaussians=300, iterations=12)
    cams = sv.make_cameras(cfg.width, cfg.height)
    train_ids, test_ids = sv.split_views()
    g = torch.Generator().manual_seed(0)
    scene = sv.default_scene()
    train = sv.make_views(scene, cams, train_ids, "cpu", prior_generator=g)
    test = sv.make_views(scene, cams, test_ids[:1], "cpu")
    assert all(v.prior is not None for v in train) and test[0].prior is None
    init = sv.random_init([v.camera for v in train], cfg.gaussians, g)

    # The depth loss has a gradient for positions, opacities and scales (through z and the
    # projection), none for colour.
    r = scenes.render(init.activated(), train[0].camera)
    loss = sv.depth_prior_loss(r.depth, r.weight, train[0].prior)
    loss.backward()
    assert init.means.grad.abs().sum() > 0 and init.opacity_logits.grad.abs().sum() > 0
    assert init.log_scales.grad.abs().sum() > 0
    assert init.sh_dc.grad is None or init.sh_dc.grad.abs().sum() == 0
    init.zero_grad(set_to_none=True)

    photo = sv.fit(init, train, sv.FitConfig(iterations=cfg.iterations), seed=0)
    depth = sv.fit(init, train, sv.FitConfig(iterations=cfg.iterations, depth_weight=0.5),
                   seed=0)
    inverse = sv.fit(init, train, sv.FitConfig(iterations=cfg.iterations, depth_weight=0.5,
                                               inverse_depth=True), seed=0)
    assert not torch.equal(photo.means, init.means)          # fit works on a copy
    assert not torch.equal(photo.means, depth.means)
    assert not torch.equal(inverse.means, depth.means) and not torch.equal(inverse.means,
                                                                            photo.means)
    for model in (photo, depth, inverse):
        metrics, renders = sv.evaluate(model, test)
        assert math.isfinite(metrics["psnr"]) and 0 <= metrics["coverage"] <= 1
        assert renders[0].color.shape == (3, 24, 32)


# ---------------------------------------------------------------------------------------------
# Noisy poses: perturbation, refinement, and the alignment that scores a fit in the true frame
# ---------------------------------------------------------------------------------------------

def _random_similarity(gen: np.random.Generator):
    """(scale, R, t): x_true = scale R x + t, a random similarity."""
    q = gen.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    return float(gen.uniform(0.5, 2.0)), R, gen.normal(size=3)


def _pose_in_fit_frame(V: np.ndarray, scale: float, R: np.ndarray, t: np.ndarray):
    """The world-to-camera B of camera V in a frame where x_true = scale R x + t: B x is V's
    view coordinates of x_true divided by scale (a rigid motion)."""
    B = np.eye(4)
    B[:3, :3] = V[:3, :3] @ R
    B[:3, 3] = (V[:3, :3] @ t + V[:3, 3]) / scale
    return B


def test_frame_alignment_undoes_a_similarity_exactly():
    """Training poses expressed in a random similar frame (rotated, moved, scaled): the
    alignment recovers the scale, carries every fitted pose back onto its true one, and its
    held-out camera sees the fit's points where the true camera sees the true points."""
    gen = np.random.default_rng(11)
    cams = sv.make_cameras(40, 30)
    true = [cams[i].world_to_camera for i in (1, 5, 12, 23)]
    for _ in range(3):
        scale, R, t = _random_similarity(gen)
        fitted = [_pose_in_fit_frame(V, scale, R, t) for V in true]
        al = sv.FrameAlignment.of(true, fitted)
        assert al.scale == pytest.approx(scale, rel=1e-10)
        for B, V in zip(fitted, true):
            np.testing.assert_allclose(al.pose(B), V, atol=1e-10)
        assert sv.pose_error(al, fitted, true) == pytest.approx((0.0, 0.0), abs=1e-5)
        x_fit = gen.normal(size=(50, 3)) + np.array(sv.SCENE_TARGET)
        x_true = scale * x_fit @ R.T + t
        held_out = cams[16]
        seen = al.camera(held_out).project(x_fit)
        expected = held_out.project(x_true)
        np.testing.assert_allclose(seen[:, :2], expected[:, :2], atol=1e-8)
        np.testing.assert_allclose(seen[:, 2] * al.scale, expected[:, 2], rtol=1e-10)


def test_frame_alignment_is_the_identity_on_the_true_poses_and_scores_errors():
    cams = sv.make_cameras(40, 30)
    true = [cams[i].world_to_camera for i in (1, 12, 23)]
    al = sv.FrameAlignment.of(true, true)
    assert al.scale == pytest.approx(1.0, abs=1e-12)
    cam = cams[8]
    np.testing.assert_allclose(al.camera(cam).world_to_camera, cam.world_to_camera, atol=1e-12)
    # A pose off the truth (the first one kept: it anchors the frame) scores its own error.
    moved = [true[0]] + [sv.perturbed_pose(V, 0.05, 1.5, np.random.default_rng(k))
                         for k, V in enumerate(true[1:])]
    rot, dist = sv.pose_error(sv.FrameAlignment(true[0], true[0], 1.0), moved, true)
    assert rot == pytest.approx(1.5, rel=1e-6) and dist == pytest.approx(0.05, rel=1e-6)


def test_pose_noise_moves_every_view_by_the_amounts_asked():
    cams = sv.make_cameras(40, 30)
    views = [sv.View(cams[i], torch.zeros(3, 30, 40), torch.ones(30, 40)) for i in (1, 12, 23)]
    noisy = sv.with_pose_noise(views, 2.0, 0.1, seed=4)
    for v, n in zip(views, noisy):
        assert v.pose is None and n.camera is v.camera and n.color is v.color
        dist, deg = sv.pose_errors(n.pose, v.camera.world_to_camera)
        assert deg == pytest.approx(2.0, rel=1e-6) and dist == pytest.approx(0.1, rel=1e-6)
    again = sv.with_pose_noise(views, 2.0, 0.1, seed=4)
    other = sv.with_pose_noise(views, 2.0, 0.1, seed=5)
    assert all(np.array_equal(a.pose, b.pose) for a, b in zip(noisy, again))
    assert not np.allclose(noisy[1].pose, other[1].pose)


@needs_backend
def test_pose_refinement_recovers_training_poses_against_a_fitted_model():
    """A model fitted with the true poses; then views 1 and 2 are given poses 2 degrees and
    0.1 off and only their corrections are optimized (view 0 anchors the frame): the camera
    gradients through `render_view` must bring them back, and the fit's given poses stay as
    given. A joint fit with refine_poses moves the corrections, one without does not."""
    W, H = 48, 36
    cams = sv.make_cameras(W, H)
    train_ids, _ = sv.split_views()
    g = torch.Generator().manual_seed(0)
    train = sv.make_views(sv.default_scene(), cams, train_ids, "cpu", prior_generator=g,
                          supersample=1)
    model = sv.fit(sv.random_init([v.camera for v in train], 1500, g), train,
                   sv.FitConfig(iterations=150, depth_weight=0.5), seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    noisy = sv.with_pose_noise(train, 2.0, 0.1, seed=0)
    noisy[0] = sv.View(train[0].camera, train[0].color, train[0].depth, train[0].prior,
                       train[0].camera.world_to_camera.copy())
    given = [v.pose.copy() for v in noisy]
    true = [v.camera.world_to_camera for v in train]
    poses = sv.PoseCorrections(3)
    opt = torch.optim.Adam([poses.xi], lr=3e-3)

    def error():
        fitted = poses.refined(noisy)
        return sv.pose_error(sv.FrameAlignment.of(true, fitted), fitted, true)

    before = error()
    for it in range(200):
        k = 1 + it % 2
        loss = sv.photometric_loss(sv.render_view(model, noisy[k], k, poses).color,
                                   noisy[k].color)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error()
    # Measured: 2.0 deg / 0.097 -> 0.33 deg / 0.037.
    assert before[0] > 1.5 and after[0] < 0.3 * before[0], (before, after)
    assert after[1] < 0.6 * before[1], (before, after)
    assert all(np.array_equal(v.pose, p) for v, p in zip(noisy, given))
    np.testing.assert_array_equal(poses.refined(noisy)[0], given[0])

    for p in model.parameters():
        p.requires_grad_(True)
    cfg = sv.FitConfig(iterations=6, depth_weight=0.5)
    fixed, joint = sv.PoseCorrections(3), sv.PoseCorrections(3)
    sv.fit(model, noisy, cfg, seed=0, poses=fixed)
    sv.fit(model, noisy, sv.FitConfig(iterations=6, depth_weight=0.5, refine_poses=True),
           seed=0, poses=joint)
    assert torch.count_nonzero(fixed.xi) == 0
    assert torch.count_nonzero(joint.xi) > 0 and torch.isfinite(joint.xi).all()


@needs_backend
def test_run_seed_with_pose_noise_reports_every_variant_and_its_pose_error(tmp_path):
    """The whole experiment at a tiny size: the noisy-pose fits are added, the fixed one ends
    with the given poses' error, the refined one with another, and the table has the column."""
    cfg = sv.ExperimentConfig(width=24, height=18, gaussians=200, iterations=8,
                              pose_noise=(2.0, 0.1), test_time_steps=3)
    res = sv.run_seed(0, cfg, "cpu", out_dir=None, progress=False)
    assert list(res) == ["photometric", "+ depth", "+ depth, noisy poses",
                         "+ depth, poses refined"]
    fixed, refined = res["+ depth, noisy poses"], res["+ depth, poses refined"]
    assert "pose_error" not in res["+ depth"]
    assert fixed["pose_error"] == pytest.approx(fixed["pose_error_given"], abs=1e-9)
    assert refined["pose_error_given"] == fixed["pose_error_given"]
    assert refined["pose_error"] != fixed["pose_error"]
    assert fixed["pose_error_given"][0] > 1.0 and fixed["pose_error_given"][1] > 0.05
    for m in res.values():
        assert math.isfinite(m["psnr"]) and 0 <= m["coverage"] <= 1
        assert math.isfinite(m["psnr_test_time_pose"])
    table = sv.format_table({0: res})
    assert "training pose error" in table and "->" in table.splitlines()[-1]
    assert "test-time poses" in table
    plain = sv.format_table({0: {k: res[k] for k in ("photometric", "+ depth")}})
    assert "pose error" not in plain


@needs_backend
def test_run_seed_fits_once_per_depth_loss():
    """--depth-losses: one "+ depth" fit per loss named (the same start and views), each its
    own model, and the command line takes the names."""
    cfg = sv.ExperimentConfig(width=24, height=18, gaussians=200, iterations=6,
                              depth_losses=sv.DEPTH_LOSSES)
    res = sv.run_seed(1, cfg, "cpu", out_dir=None, progress=False)
    assert list(res) == ["photometric", "+ depth", "+ depth (patch)", "+ depth (ranking)",
                         "+ depth (ssi)", "+ depth (ssi_patch)"]
    for m in res.values():
        assert math.isfinite(m["psnr"]) and math.isfinite(m["abs_rel"])
    assert len({round(m["abs_rel"], 12) for m in res.values()}) == len(res)
    with pytest.raises(SystemExit):
        sv.main(["--depth-losses", "pearson", "median"])


@needs_backend
def test_test_time_pose_recovers_a_held_out_camera():
    """The held-out view's pose corrected against a fixed model: from 2 degrees and 0.1 off it
    comes back near the pose that rendered the target, and the model takes no gradient."""
    g = scenes.demo_scene(4000, seed=0, sh_degree=0)
    true = scenes.demo_cameras(8, 64, 48)[3]
    with torch.no_grad():
        target = scenes.render(g, true).color
    view = sv.View(true, target, torch.ones(48, 64))
    start = Camera(sv.perturbed_pose(true.world_to_camera, 0.1, 2.0, np.random.default_rng(2)),
                   64, 48, true.fx, true.fy)
    fixed = scenes.Gaussians(*(t.clone() for t in (g.means, g.sh, g.opacities, g.scales,
                                                    g.rotations)))
    fixed.means.requires_grad_(False)
    moved = sv.test_time_pose(fixed, view, start, steps=150)
    before = sv.pose_errors(start.world_to_camera, true.world_to_camera)
    after = sv.pose_errors(moved.world_to_camera, true.world_to_camera)
    assert after[1] < 0.25 * before[1] and after[0] < 0.5 * before[0], (before, after)
    assert torch.equal(fixed.means, g.means) and fixed.means.grad is None
    with torch.no_grad():
        assert (sv.psnr(scenes.render(g, moved).color, target)
                > sv.psnr(scenes.render(g, start).color, target) + 5)


@pytest.mark.parametrize("args, message", [
    (["--train-views", "0"], "--train-views: expected 1 to 21"),
    (["--train-views", "22"], "--train-views: expected 1 to 21"),
    (["--pose-noise", "2", "-0.1"], "--pose-noise: expected an angle and a distance >= 0"),
])
def test_command_line_rejects_bad_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sv.main(args + ["--no-progress"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
