"""Surface terms (diff_gaussian_rasterization_depth.surface): the depth distortion against 2DGS's
own front-to-back accumulation, normals against the covariance's eigenvectors, points of a depth
map against the rasterizer's projection, a rendered plane's normals, and the gradients of the
surface losses through each backend against autograd through the reference."""
import math

import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, reference, surface
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from diff_gaussian_rasterization_depth.surface import (
    depth_distortion, depth_to_normal, depth_to_points, distortion_features, gaussian_normals,
    ndc_depth, normalized, plane_depth, plane_distances, render_surface, view_points)
from robust_helpers import axis_camera, settings_on

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64


def render(run, inputs, settings, features):
    """(color, radii, depth, weight, feature_map) of the backend or the reference."""
    if run == "backend":
        return GaussianRasterizer(settings)(**inputs, features=features)
    return rasterize_reference(**inputs, raster_settings=settings, features=features)


# ----------------------------------------------------------------------------------------------
# Depth distortion
# ----------------------------------------------------------------------------------------------

def distortion_2dgs(scene):
    """2DGS's distortion map as its kernel accumulates it, front to back over the reference's
    blended splats: w (m^2 A + M2 - 2 m M1), A = 1 - T before the splat, then M1 += w m,
    M2 += w m^2; in float64."""
    wide = scenes.Scene({k: None if v is None else v.to(F64) for k, v in scene.inputs.items()},
                        scene.settings)
    _, _, blend, idx, settings = scenes.reference_internals(wide)
    m = ndc_depth(view_points(wide.inputs["means3D"], settings)[:, 2])[idx][blend["order"]]
    T_after = blend["T_after"]
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]])
    w = torch.where(blend["blended"], T_before - T_after, torch.zeros_like(T_after))
    distortion = M1 = M2 = torch.zeros_like(T_after[0])
    for i in range(len(m)):
        distortion = distortion + w[i] * (m[i] ** 2 * (1 - T_before[i]) + M2 - 2 * m[i] * M1)
        M1 = M1 + w[i] * m[i]
        M2 = M2 + w[i] * m[i] ** 2
    return distortion


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(3))
def test_distortion_equals_2dgs_accumulation(seed, dtype):
    """W M2 - M1^2 from two feature channels is 2DGS's front-to-back distortion."""
    scene = scenes.make_scene(14000 + seed, P=160, height=33, width=47, sh_degree=1,
                              dtype=dtype)
    want = distortion_2dgs(scene)
    z = view_points(scene.inputs["means3D"], scene.settings)[:, 2]
    with torch.no_grad():
        _, _, _, weight, moments = render("backend", scene.inputs, scene.settings,
                                          distortion_features(z))
        got = depth_distortion(weight, moments)
    assert got.shape == want.shape and got.dtype == dtype
    # Not vacuous: most pixels spread over several depths.
    assert (want > 1e-4).float().mean() > 0.5
    if dtype == F64:
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    else:
        pixels, _ = scenes.ambiguous_checked(scene)
        keep = ~pixels
        # float32: W M2 - M1^2 loses the digits of M1^2 (m < 1 here, so about 1e-7).
        torch.testing.assert_close(got[keep], want[keep].float(), rtol=1e-4, atol=1e-6)


def test_depth_variance_recipe():
    """doc/depth_and_weight.md's depth variance, E[z^2] - E[z]^2 over a pixel's weights, from
    the feature channels [z, z^2]: the weighted variance of the reference's blended splats, and
    the distortion of those channels divided by weight^2."""
    scene = scenes.make_scene(14050, P=160, height=33, width=47, sh_degree=1, dtype=F64)
    view_z = view_points(scene.inputs["means3D"], scene.settings)[:, 2]
    with torch.no_grad():
        *_, weight, moments = render("backend", scene.inputs, scene.settings,
                                     torch.stack([view_z, view_z ** 2], 1))
    W = weight.clamp_min(1e-6)
    variance = (moments[1] / W - (moments[0] / W) ** 2).clamp_min(0) * (weight > 0)
    _, _, blend, idx, _ = scenes.reference_internals(scene)
    T_after = blend["T_after"]
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]])
    w = torch.where(blend["blended"], T_before - T_after, torch.zeros_like(T_after))
    z = view_z[idx][blend["order"]][:, None, None]
    total = w.sum(0)
    mean = (w * z).sum(0) / total.clamp_min(1e-300)
    want = torch.where(total > 0, (w * (z - mean) ** 2).sum(0) / total.clamp_min(1e-300),
                       torch.zeros_like(total))
    solid = weight > 1e-3
    assert solid.float().mean() > 0.5 and want[solid].max() > 0.1
    torch.testing.assert_close(variance[solid], want[solid], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(depth_distortion(weight, moments)[solid] / weight[solid] ** 2,
                               want[solid], rtol=1e-7, atol=1e-9)


def test_distortion_of_one_depth_is_zero():
    """Splats all at one depth have no spread, whatever their weights; the clamp keeps the
    rounding of W M2 - M1^2 from going negative."""
    scene = scenes.make_scene(14100, P=120, height=29, width=37, sh_degree=0)
    means = scene.inputs["means3D"]
    view = scene.settings.viewmatrix.reshape(4, 4)
    t = view_points(means, scene.settings)
    flat = torch.cat([t[:, :2] / t[:, 2:] * 5.0, torch.full_like(t[:, :1], 5.0)], 1)
    inputs = dict(scene.inputs, means3D=(flat - view[3, :3]) @ torch.linalg.inv(view[:3, :3]))
    z = view_points(inputs["means3D"], scene.settings)[:, 2]
    torch.testing.assert_close(z, torch.full_like(z, 5.0))
    with torch.no_grad():
        _, _, _, weight, moments = render("backend", inputs, scene.settings,
                                          distortion_features(z))
    d = depth_distortion(weight, moments)
    assert (weight > 0.5).any() and (d >= 0).all() and d.max() < 1e-6


# ----------------------------------------------------------------------------------------------
# Normals of the Gaussians
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_gaussian_normals_are_the_shortest_axes(seed):
    scene = scenes.make_scene(14200 + seed, P=200, dtype=F64, normalize_rotations=False)
    scales, rotations = scene.inputs["scales"], scene.inputs["rotations"]
    t = view_points(scene.inputs["means3D"], scene.settings)
    n = gaussian_normals(scales, rotations, t, scene.settings)
    # The eigenvector of the covariance's smallest eigenvalue, rotated into view space.
    q = torch.nn.functional.normalize(rotations, dim=1)
    R = scenes.rotation_matrices(q)
    cov = R @ torch.diag_embed(scales ** 2) @ R.transpose(1, 2)
    axis = torch.linalg.eigh(cov).eigenvectors[:, :, 0]
    want = axis @ scene.settings.viewmatrix.reshape(4, 4)[:3, :3]
    torch.testing.assert_close(n.norm(dim=1), torch.ones(len(n), dtype=F64))
    torch.testing.assert_close((n * want).sum(1).abs(), torch.ones(len(n), dtype=F64),
                               rtol=0, atol=1e-9)
    assert ((n * t).sum(1) <= 0).all()  # facing the camera
    # The gradient reaches the rotations (the axis chosen is fixed nearby).
    rot = rotations.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda r: gaussian_normals(scales, r, t, scene.settings), (rot,))


# ----------------------------------------------------------------------------------------------
# Points and normals of a depth map
# ----------------------------------------------------------------------------------------------

def shifted_camera(H, W, shift):
    """axis_camera's settings with the principal point moved by `shift` (NDC units) and a
    skew: a projection the symmetric frustum formulas would get wrong."""
    P = scenes.perspective_matrix(0.6, 0.6 * H / W)
    P[0, 2] += shift[0]
    P[1, 2] += shift[1]
    P[0, 1] += 0.05
    return axis_camera(H, W, tanfovx=0.6, dtype=F64, projmatrix=P.T.contiguous())


@pytest.mark.parametrize("camera", ["look-at", "shifted"])
def test_depth_to_points_inverts_the_projection(camera):
    """Each pixel's point, taken back to the world and projected as the rasterizer projects a
    mean (reference._transform_point, _ndc2pix), lands on that pixel's centre at that depth."""
    H, W = 23, 31
    if camera == "look-at":
        settings = scenes.make_scene(14300, P=1, height=H, width=W, dtype=F64).settings
    else:
        settings = shifted_camera(H, W, (0.13, -0.21))
    gen = torch.Generator().manual_seed(3)
    depth = 0.5 + 9 * torch.rand(H, W, generator=gen, dtype=F64)
    q = depth_to_points(depth, settings).reshape(3, -1).T
    view = settings.viewmatrix.reshape(4, 4)
    world = (q - view[3, :3]) @ torch.linalg.inv(view[:3, :3])
    proj = settings.projmatrix.reshape(-1)
    hx, hy, hw = (reference._transform_point(world, proj, c) for c in (0, 1, 3))
    x = reference._ndc2pix(hx / hw, W).reshape(H, W)
    y = reference._ndc2pix(hy / hw, H).reshape(H, W)
    z = reference._transform_point(world, settings.viewmatrix.reshape(-1), 2).reshape(H, W)
    cols = torch.arange(W, dtype=F64).expand(H, W)
    rows = torch.arange(H, dtype=F64)[:, None].expand(H, W)
    torch.testing.assert_close(x, cols, rtol=0, atol=1e-9)
    torch.testing.assert_close(y, rows, rtol=0, atol=1e-9)
    torch.testing.assert_close(z, depth, rtol=1e-12, atol=0)
    # Differentiable in the depth.
    small = depth[:4, :5].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: depth_to_points(d, settings), (small,))


def test_normalized_is_functional_normalize():
    """`normalized` gives F.normalize(dim=0)'s values where |v| > eps, and 0 with a zero
    gradient where it is not (F.normalize's gradient there is 1/eps); its gradient elsewhere
    passes gradcheck."""
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(3, 7, 9, generator=gen, dtype=F64)
    v[:, 2, 3] = 0
    v[:, 4, 4] = 1e-14
    small = torch.zeros(7, 9, dtype=torch.bool)
    small[2, 3] = small[4, 4] = True
    got = normalized(v)
    torch.testing.assert_close(got[:, ~small], torch.nn.functional.normalize(v, dim=0)[:, ~small],
                               rtol=1e-15, atol=1e-15)
    assert (got[:, small] == 0).all()
    leaf = v.clone().requires_grad_()
    normalized(leaf).sum().backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[:, small] == 0).all()
    assert (leaf.grad[:, ~small] != 0).any()
    assert torch.autograd.gradcheck(normalized, (v[:, :2, :2].clone().requires_grad_(),))


@pytest.mark.parametrize("camera", ["axis", "shifted"])
def test_depth_to_normal_of_a_plane(camera):
    """The exact depth map of a plane (each pixel's ray cut with it, the rays written here from
    the camera's own model) gives the plane's normal, facing the camera, inside the image, and
    zeros on the border and next to pixels of no depth."""
    H, W = 40, 52
    shift = (0.0, 0.0) if camera == "axis" else (0.13, -0.21)
    settings = shifted_camera(H, W, shift)
    P = settings.projmatrix.reshape(4, 4).T
    ndc_x = (2 * torch.arange(W, dtype=F64) + 1) / W - 1
    ndc_y = (2 * torch.arange(H, dtype=F64) + 1) / H - 1
    # ndc_x = (P00 x + P01 y + P02) and ndc_y = (P11 y + P12), with x, y = X/Z, Y/Z.
    ray_y = ((ndc_y - P[1, 2]) / P[1, 1])[:, None].expand(H, W)
    ray_x = (ndc_x[None, :] - P[0, 2] - P[0, 1] * ray_y) / P[0, 0]
    rays = torch.stack([ray_x, ray_y, torch.ones(H, W, dtype=F64)])
    n = torch.nn.functional.normalize(torch.tensor([0.3, -0.4, -1.0], dtype=F64), dim=0)
    depth = (n @ torch.tensor([0.0, 0.0, 4.0], dtype=F64)) / (n[:, None, None] * rays).sum(0)
    depth[5:9, 20:30] = 0                                   # a hole: nothing blended there
    normals = depth_to_normal(depth, settings)
    hole = torch.zeros(H, W, dtype=torch.bool)   # the hole and its four neighbours' pixels
    hole[4:10, 20:30] = True
    hole[5:9, 19:31] = True
    inner = torch.zeros(H, W, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    good = inner & ~hole
    torch.testing.assert_close(normals[:, good], n[:, None].expand(3, int(good.sum())),
                               rtol=0, atol=1e-9)
    assert (normals[:, ~good] == 0).all()


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_rendered_plane(target):
    """Small flat Gaussians on a tilted plane. The blended normal map is the plane's normal
    (every Gaussian has it); the plane depth is the plane's exact depth at every pixel, and its
    normals the plane's; the expected depth blends the splats' centre depths, so its normals
    scatter by degrees around the plane's and lean a few degrees off it on average."""
    H, W = 48, 64
    settings = settings_on(axis_camera(H, W, tanfovx=0.6), target)
    gen = torch.Generator().manual_seed(7)
    n = torch.nn.functional.normalize(torch.tensor([0.3, -0.4, -1.0], dtype=F64), dim=0)
    basis = torch.linalg.svd(torch.eye(3, dtype=F64) - n[:, None] * n[None]).U[:, :2]
    P = 6000
    uv = (2 * torch.rand(P, 2, generator=gen, dtype=F64) - 1) * 4
    centre = torch.tensor([0.0, 0.0, 4.0], dtype=F64)
    means = centre + uv @ basis.T
    z_axis = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    angle = torch.acos(z_axis @ n)
    axis = torch.nn.functional.normalize(torch.linalg.cross(z_axis, n), dim=0)
    q = torch.cat([torch.cos(angle / 2)[None], torch.sin(angle / 2) * axis])  # z -> n
    inputs = dict(means3D=means, means2D=None, opacities=torch.full((P, 1), 0.8, dtype=F64),
                  colors_precomp=torch.rand(P, 3, generator=gen, dtype=F64),
                  scales=torch.tensor([0.06, 0.06, 0.001], dtype=F64).expand(P, 3),
                  rotations=q.expand(P, 4))
    inputs = {k: None if v is None else v.float().to(target) for k, v in inputs.items()}
    t = view_points(inputs["means3D"], settings)
    normals = gaussian_normals(inputs["scales"], inputs["rotations"], t, settings)
    with torch.no_grad(), active(target):
        _, _, depth, weight, fmap = GaussianRasterizer(settings)(
            **inputs, features=torch.cat([normals, plane_distances(normals, t)], 1))
    weight = weight.cpu()
    normal_map = torch.nn.functional.normalize(fmap[:3], dim=0).cpu()
    surface = plane_depth(fmap[:3], fmap[3], settings).cpu()
    rays = depth_to_points(torch.ones(H, W, dtype=F64), settings_on(
        axis_camera(H, W, tanfovx=0.6, dtype=F64), "cpu"))
    exact = (n @ centre) / (n[:, None, None] * rays).sum(0)
    solid = weight > 0.5
    assert solid.float().mean() > 0.9
    nf = n.float()[:, None]
    assert ((normal_map[:, solid] * nf).sum(0) > math.cos(1e-3)).all()
    torch.testing.assert_close(surface[solid].double(), exact[solid], rtol=2e-6, atol=0)
    assert (surface[weight == 0] == 0).all()
    angles = {}
    for name, d in (("expected", depth.cpu()), ("plane", surface)):
        normals_of_depth = depth_to_normal(d, settings_on(settings, "cpu"))
        inner = (weight > 0.99) & (normals_of_depth.norm(dim=0) > 0.5)
        assert inner.sum() > 500
        cos = (normals_of_depth[:, inner] * nf).sum(0).clamp(-1, 1)
        mean = torch.nn.functional.normalize(normals_of_depth[:, inner].sum(1), dim=0)
        angles[name] = (torch.rad2deg(torch.acos(cos)).median().item(),
                        math.degrees(math.acos(min(1.0, float(mean @ nf[:, 0])))))
    assert angles["plane"][0] < 0.05 and angles["plane"][1] < 0.05, angles
    assert 1 < angles["expected"][0] < 10 and angles["expected"][1] < 8, angles


def test_plane_depth_where_no_plane_is_seen():
    """0, with finite gradients, where nothing is blended (N = 0, D = 0) or the blended plane is
    seen edge-on or from behind (N . r >= 0); the plane's depth elsewhere."""
    H, W = 9, 11
    settings = axis_camera(H, W, tanfovx=0.6, dtype=F64)
    rays = depth_to_points(torch.ones(H, W, dtype=F64), settings)
    n = torch.nn.functional.normalize(torch.tensor([0.2, 0.1, -1.0], dtype=F64), dim=0)
    normal_sum = (0.7 * n[:, None, None]).expand(3, H, W).clone()
    distance_sum = torch.full((H, W), 0.7 * float(n @ torch.tensor([0.0, 0.0, 3.0],
                                                                     dtype=F64)), dtype=F64)
    normal_sum[:, 0, :] = 0
    distance_sum[0, :] = 0                            # row 0: nothing blended
    normal_sum[:, 1, :] = -normal_sum[:, 1, :]        # row 1: the plane's back
    normal_sum.requires_grad_()
    distance_sum.requires_grad_()
    z = plane_depth(normal_sum, distance_sum, settings)
    assert (z[:2] == 0).all()
    want = (n @ torch.tensor([0.0, 0.0, 3.0], dtype=F64)) / (n[:, None, None] * rays).sum(0)
    torch.testing.assert_close(z[2:], want[2:], rtol=1e-12, atol=0)
    z.sum().backward()
    assert torch.isfinite(normal_sum.grad).all() and torch.isfinite(distance_sum.grad).all()
    assert (normal_sum.grad[:, :2] == 0).all() and (distance_sum.grad[:2] == 0).all()


def test_surface_inputs_are_checked():
    """A map or a per-Gaussian tensor of the wrong shape (the whole feature map where two of its
    channels are meant, the view points where their z is) raises a ValueError naming the
    argument, instead of broadcasting into a wrong answer; a non-tensor a TypeError."""
    settings = axis_camera(9, 11, dtype=F64)
    P = 5
    gen = torch.Generator().manual_seed(2)
    t = torch.rand(P, 3, generator=gen, dtype=F64) + 1
    scales, rotations = torch.rand(P, 3, dtype=F64), torch.rand(P, 4, dtype=F64)
    fmap, weight = torch.rand(6, 9, 11, dtype=F64), torch.rand(9, 11, dtype=F64)
    for call, name in [
            (lambda: view_points(t[:, :2], settings), "means3D"),
            (lambda: gaussian_normals(scales[:, :2], rotations, t, settings), "scales"),
            (lambda: gaussian_normals(scales, rotations[:4], t, settings), "rotations"),
            (lambda: gaussian_normals(scales, rotations, t[:4], settings), "view_t"),
            (lambda: distortion_features(t), "z"),
            (lambda: depth_distortion(weight, fmap), "moments"),
            (lambda: depth_distortion(weight[None], fmap[4:]), "weight"),
            (lambda: plane_distances(t[:, :2], t), "normals"),
            (lambda: plane_depth(fmap[:3], fmap[3:4], settings), "distance_sum"),
            (lambda: plane_depth(fmap[:4], fmap[3], settings), "normal_sum"),
            (lambda: depth_to_points(weight[None], settings), "depth"),
            (lambda: depth_to_normal(fmap[:2], settings), "depth"),
            (lambda: normalized(fmap), "vectors")]:
        with pytest.raises(ValueError, match=f"^{name}: expected shape"):
            call()
    with pytest.raises(TypeError, match="^depth: expected a tensor"):
        depth_to_points([[1.0]], settings)
    # The right shapes pass.
    depth_distortion(weight, fmap[4:])
    plane_depth(fmap[:3], fmap[3], settings)


# ----------------------------------------------------------------------------------------------
# Gradients of the surface losses
# ----------------------------------------------------------------------------------------------

NAMES = ("means3D", "opacities", "shs", "colors_precomp", "scales", "rotations")


def surface_loss(run, inputs, settings, upstream):
    """The module docstring's recipe (`render_surface`: normals, plane offsets and distortion as
    features), the normal-consistency loss against the normals of the depth map and of the
    plane depth, the distortion's mean, the plane depth's, plus a colour term."""
    def rasterize(features, **given):
        return render(run, given, settings, features)

    m = render_surface(rasterize, settings, **inputs)
    consistency = m.weight * (1 - (m.normal_map * depth_to_normal(m.depth, settings)).sum(0))
    plane_consistency = m.weight * (1 - (m.normal_map
                                         * depth_to_normal(m.plane_depth, settings)).sum(0))
    return ((m.color * upstream).sum() + consistency.mean() + plane_consistency.mean()
            + 100 * m.distortion.mean() + 0.1 * m.plane_depth.mean())


def surface_gradients(run, scene, inputs, settings, upstream):
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(k in NAMES)
              for k, v in inputs.items()}
    loss = surface_loss(run, leaves, settings, upstream)
    names = [k for k in NAMES if leaves.get(k) is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return dict(zip(names, grads))


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(2))
def test_surface_loss_gradients_match_reference(seed, dtype):
    check_surface_gradients(seed, "cpu", dtype)


def gradcheck_through_backend(loss_of, scene_seed, upstream_seed):
    """gradcheck of loss_of("backend", inputs, settings, upstream) through the CPU backend in
    float64, with respect to the means, scales, rotations and opacities, on a smooth scene (no
    threshold nearby)."""
    scene = scenes.make_smooth_scene(scene_seed, P=4, height=12, width=10, sh_degree=0)
    upstream = torch.randn(3, 12, 10, generator=torch.Generator().manual_seed(upstream_seed),
                           dtype=F64)
    names = ("means3D", "scales", "rotations", "opacities")
    leaves = [scene.inputs[k].detach().clone().requires_grad_() for k in names]

    def loss(*values):
        inputs = dict(scene.inputs, **dict(zip(names, values)))
        return loss_of("backend", inputs, scene.settings, upstream)

    assert torch.autograd.gradcheck(loss, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_surface_loss_gradcheck():
    """gradcheck of the whole surface loss (gradcheck_through_backend)."""
    gradcheck_through_backend(surface_loss, 14500, 3)


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("seed", range(2))
def test_surface_loss_gradients_cuda(seed, target):
    check_surface_gradients(seed, target, F32)


def scene_on(scene, dtype, target):
    """The scene's inputs and settings in `dtype` on `target`."""
    inputs = {k: None if v is None else v.to(dtype).to(target) for k, v in scene.inputs.items()}
    s = scene.settings
    settings = settings_on(s._replace(viewmatrix=s.viewmatrix.to(dtype),
                                      projmatrix=s.projmatrix.to(dtype), bg=s.bg.to(dtype),
                                      campos=s.campos.to(dtype)), target)
    return inputs, settings


def check_surface_gradients(seed, target, dtype):
    scene = scenes.make_smooth_scene(14400 + seed, P=40, height=26, width=34, sh_degree=1)
    want = surface_gradients("reference", scene, scene.inputs, scene.settings,
                             torch.randn(3, 26, 34, generator=torch.Generator().manual_seed(seed),
                                         dtype=F64))
    upstream = torch.randn(3, 26, 34, generator=torch.Generator().manual_seed(seed),
                           dtype=F64).to(dtype).to(target)
    inputs, settings = scene_on(scene, dtype, target)
    with active(target):
        got = surface_gradients("backend", scene, inputs, settings, upstream)
    tol = 1e-8 if dtype == F64 else 2e-4
    assert set(got) == set(want) and "scales" in got and "rotations" in got
    for name, ref in want.items():
        scale = ref.abs().max().item()
        assert scale > 1e-3, name  # not vacuous
        torch.testing.assert_close(got[name].cpu().to(F64), ref, rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seed", range(2))
def test_dominant_points_are_densest_on_their_rays(seed):
    """surface.dominant_points: each valid point lies on its pixel's ray (through the camera
    centre and the point the projection maps to the pixel's centre), and along that ray its
    dominant Gaussian is densest there (against a fine search of the ray); the covariance given
    as cov3D_precomp gives the same points."""
    from diff_gaussian_rasterization_depth.surface import dominant_points
    scene = scenes.make_scene(5100 + seed, P=60, height=30, width=42, sh_degree=0, dtype=F64)
    i, s = scene.inputs, scene.settings
    dominant = GaussianRasterizer(s)(**i, dominant=True)[-1]
    points, valid = dominant_points(dominant, i["means3D"], s, scales=i["scales"],
                                    rotations=i["rotations"])
    assert points.shape == (3, 30, 42) and valid.sum() > 200
    assert torch.equal(valid & (dominant < 0), torch.zeros_like(valid))
    # The projection of each point is its pixel's centre (pixel = ((ndc + 1) W - 1) / 2).
    p = points.permute(1, 2, 0)[valid]
    hom = torch.cat([p, torch.ones_like(p[:, :1])], 1) @ s.projmatrix.reshape(4, 4)
    ndc = hom[:, :2] / hom[:, 3:]
    rows, cols = torch.nonzero(valid, as_tuple=True)
    pixel_x = ((ndc[:, 0] + 1) * 42 - 1) / 2
    pixel_y = ((ndc[:, 1] + 1) * 30 - 1) / 2
    assert torch.allclose(pixel_x, cols.double(), atol=1e-8)
    assert torch.allclose(pixel_y, rows.double(), atol=1e-8)
    # Densest there: the Mahalanobis distance along the ray, sampled finely around the point.
    ids = dominant[valid].long()
    cov = reference._covariance_3d(i["scales"][ids], i["rotations"][ids], None,
                                   float(s.scale_modifier))
    view = s.viewmatrix.reshape(4, 4)
    centre = -view[3, :3] @ torch.linalg.inv(view[:3, :3])
    direction = p - centre
    steps = torch.linspace(0.9, 1.1, 2001, dtype=F64)
    along = centre + steps[:, None, None] * direction[None]                 # (S, N, 3)
    offset = along - i["means3D"][ids][None]
    maha = (offset[..., None, :] @ torch.linalg.solve(cov, offset[..., None]))[..., 0, 0]
    assert torch.equal(maha.argmin(0), torch.full_like(ids, 1000))
    # The same covariance as cov3D_precomp (its upper triangle, which the modifier leaves).
    full = reference._covariance_3d(i["scales"], i["rotations"], None, float(s.scale_modifier))
    upper = full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    again, valid_again = dominant_points(dominant, i["means3D"], s, cov3D_precomp=upper)
    assert torch.equal(valid, valid_again)
    torch.testing.assert_close(again, points, rtol=1e-9, atol=1e-9)
    # Bad input, each named.
    for args, kwargs, error, text in [
            ((dominant.float(), i["means3D"], s), {"cov3D_precomp": upper}, TypeError, "int32"),
            ((dominant[:-1], i["means3D"], s), {"cov3D_precomp": upper}, ValueError,
             "settings' image"),
            ((dominant, i["means3D"], s), {}, ValueError, "either scales"),
            ((dominant, i["means3D"], s), {"cov3D_precomp": upper, "scales": i["scales"],
                                           "rotations": i["rotations"]}, ValueError, "either"),
            ((dominant, i["means3D"][:, :2], s), {"cov3D_precomp": upper}, ValueError,
             "means3D")]:
        with pytest.raises(error, match=text):
            dominant_points(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# RaDe-GS's depth planes (intersection_planes, intersection_depth)
# ----------------------------------------------------------------------------------------------

def densest_depth_on_ray(ray, t, cov_view):
    """The view depth where the ray r (view space, r_z = 1) meets the Gaussian (centre t,
    covariance cov_view, view space) at its densest: s = r^T C^-1 t / r^T C^-1 r, by a solve."""
    precision_t = torch.linalg.solve(cov_view, t)
    precision_r = torch.linalg.solve(cov_view.expand(len(ray), 3, 3), ray[:, :, None])[:, :, 0]
    return (ray @ precision_t) / (precision_r * ray).sum(1)


@pytest.mark.parametrize("seed", range(2))
def test_intersection_planes_are_the_tangents_of_the_densest_depth(seed):
    """float64, a look-at camera: along rays through points at distance d of the centre's pixel
    (in 8 directions) the plane's depth departs from the depth where the ray meets the Gaussian
    at its densest (a solve, not the code's adjugate) by O(d^2): the error shrinks about 4x
    when d halves, and is tiny at d = 1/8 px; the normals are -Sigma^-1 t's direction, facing
    the camera; cov3D_precomp gives the same planes as scales and rotations."""
    scene = scenes.make_scene(9400 + seed, P=40, height=60, width=80, sh_degree=0, dtype=F64,
                              outliers=False, normalize_rotations=False)
    i, s = scene.inputs, scene.settings
    planes = surface.intersection_planes(i["means3D"], s, i["scales"], i["rotations"])
    assert planes.features.shape == (40, 3) and planes.normals.shape == (40, 3)
    view = s.viewmatrix.reshape(4, 4)
    projection = torch.linalg.solve(view, s.projmatrix.reshape(4, 4))
    t = i["means3D"] @ view[:3, :3] + view[3, :3]
    cov = reference._covariance_3d(i["scales"], i["rotations"], None, float(s.scale_modifier))
    cov_view = view[:3, :3].T @ cov @ view[:3, :3]
    hom = torch.cat([i["means3D"], torch.ones(40, 1, dtype=F64)], 1) @ s.projmatrix.reshape(4, 4)
    centre = torch.stack([((hom[:, 0] / hom[:, 3] + 1) * 80 - 1) / 2,
                          ((hom[:, 1] / hom[:, 3] + 1) * 60 - 1) / 2], 1)
    angles = torch.arange(8, dtype=F64) * (math.pi / 4) + 0.3
    directions = torch.stack([angles.cos(), angles.sin()], 1)
    checked = 0
    for g in range(40):
        if t[g, 2] <= 0.5:
            continue
        errors = []
        for d in (4.0, 2.0, 1.0, 0.5, 0.125):
            p = centre[g] + d * directions                                   # (8, 2) pixels
            ndc_x, ndc_y = (2 * p[:, 0] + 1) / 80 - 1, (2 * p[:, 1] + 1) / 60 - 1
            x, y = surface._pixel_to_view(ndc_x, ndc_y, torch.ones(8, dtype=F64), projection)
            ray = torch.stack([x, y, torch.ones(8, dtype=F64)], 1)
            exact = densest_depth_on_ray(ray, t[g], cov_view[g])
            f = planes.features[g]
            plane = f[0] + (p[:, 0] - 39.5) * f[1] + (p[:, 1] - 29.5) * f[2]
            errors.append((plane - exact).abs().max().item())
        scale = t[g, 2].item()
        if errors[0] < 1e-9 * scale:
            continue                     # a plane the rays meet linearly (no curvature to see)
        for coarse, fine in zip(errors[:3], errors[1:4]):
            assert 2.5 < coarse / fine < 6.5, (g, errors)
        assert errors[-1] < 2e-3 * errors[0], (g, errors)
        checked += 1
        normal = -torch.linalg.solve(cov_view[g], t[g])
        torch.testing.assert_close(planes.normals[g], normal / normal.norm(), rtol=1e-9,
                                   atol=1e-9)
    assert checked >= 20
    assert ((planes.normals * t).sum(1) < 0).all()
    full = reference._covariance_3d(i["scales"], i["rotations"], None, float(s.scale_modifier))
    upper = full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    again = surface.intersection_planes(i["means3D"], s, cov3D_precomp=upper)
    torch.testing.assert_close(again.features, planes.features, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(again.normals, planes.normals, rtol=1e-9, atol=1e-9)


def slanted_surfels(P, dtype, flat_scale=1e-4, seed=0):
    """Flat Gaussians (scales 0.08, 0.08, flat_scale) on the plane through (0, 0, 5) whose
    normal is tilted 60 degrees from the view axis, seen by axis_camera(96, 128); and the
    plane's depth along each pixel's ray."""
    gen = torch.Generator().manual_seed(seed)
    settings = axis_camera(96, 128, tanfovx=0.5, dtype=dtype)
    angle = math.radians(60)
    u = torch.tensor([math.cos(angle), 0.0, math.sin(angle)], dtype=F64)
    v = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    n = torch.linalg.cross(u, v)                                  # (-sin, 0, cos): away from camera
    ab = (torch.rand(P, 2, generator=gen, dtype=F64) * 2 - 1) * torch.tensor([3.5, 2.0], dtype=F64)
    means = torch.tensor([0, 0, 5.0], dtype=F64) + ab[:, :1] * u + ab[:, 1:] * v
    r = torch.stack([u, v, n], 1)                                 # a rotation: columns u, v, n
    w = math.sqrt(1 + r[0, 0] + r[1, 1] + r[2, 2]) / 2
    q = torch.tensor([w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w),
                      (r[1, 0] - r[0, 1]) / (4 * w)], dtype=F64)
    inputs = dict(means3D=means, means2D=torch.zeros(P, 3, dtype=F64),
                  opacities=torch.full((P, 1), 0.9, dtype=F64),
                  colors_precomp=torch.rand(P, 3, generator=gen, dtype=F64),
                  scales=torch.tensor([0.08, 0.08, flat_scale], dtype=F64).expand(P, 3).clone(),
                  rotations=q.expand(P, 4).clone())
    inputs = {k: t.to(dtype) for k, t in inputs.items()}
    ray = depth_to_points(torch.ones(96, 128, dtype=F64), settings._replace(
        viewmatrix=settings.viewmatrix.double(), projmatrix=settings.projmatrix.double()))
    plane_z = (n @ torch.tensor([0, 0, 5.0], dtype=F64)) / (n[:, None, None] * ray).sum(0)
    return inputs, settings, plane_z, -n


@pytest.mark.parametrize("dtype", [F64, F32])
def test_intersection_depth_of_a_slanted_surface(dtype):
    """3,000 flat Gaussians on a plane seen at 60 degrees, rendered by the CPU backend: where
    the weight is above 0.99, the blended depth planes lie within 0.006 (mean 0.003) of the
    surface's depth, where the expected depth (centres blended) is off by 0.09 on average; the
    blended normals are the plane's; a scale of exactly 0 on the flat axis gives planes and
    normals continuous with 1e-4's."""
    inputs, settings, plane_z, normal = slanted_surfels(3000, dtype)
    planes = surface.intersection_planes(inputs["means3D"], settings, inputs["scales"],
                                         inputs["rotations"])
    features = torch.cat([planes.features, planes.normals], 1)
    color, radii, depth, weight, fmap = GaussianRasterizer(settings)(**inputs, features=features)
    rade = surface.intersection_depth(fmap[:3], weight, settings)
    solid = weight > 0.99
    assert solid.sum() > 5000
    error = (rade.double() - plane_z)[solid].abs()
    expected_error = (depth.double() - plane_z)[solid].abs()
    assert error.max() < 0.006 and error.mean() < 0.003, (error.max(), error.mean())
    assert expected_error.mean() > 0.08 and expected_error.mean() > 25 * error.mean()
    cosine = (normalized(fmap[3:]).double() * normal[:, None, None]).sum(0)[solid]
    assert cosine.min() > 0.99999
    assert torch.equal(rade[weight == 0], torch.zeros_like(rade[weight == 0]))
    flat = dict(inputs, scales=inputs["scales"].clone())
    flat["scales"][:, 2] = 0
    exact = surface.intersection_planes(flat["means3D"], settings, flat["scales"],
                                        flat["rotations"])
    assert torch.isfinite(exact.features).all() and torch.isfinite(exact.normals).all()
    torch.testing.assert_close(exact.features, planes.features, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exact.normals, planes.normals, rtol=1e-5, atol=1e-5)


def intersection_loss(run, inputs, settings, upstream):
    """A RaDe-GS-style loss: colour, the depth planes' map against a target, and the normal
    consistency of the blended plane normals with the normals of that depth map."""
    planes = surface.intersection_planes(inputs["means3D"], settings, inputs["scales"],
                                         inputs["rotations"])
    color, _, _, weight, fmap = render(run, inputs, settings,
                                       torch.cat([planes.features, planes.normals], 1))
    rade = surface.intersection_depth(fmap[:3], weight, settings)
    consistency = weight * (1 - (normalized(fmap[3:])
                                 * depth_to_normal(rade, settings)).sum(0))
    return (color * upstream).sum() + (rade - 4.0).abs().mean() + consistency.mean()


def check_intersection_gradients(seed, target, dtype):
    scene = scenes.make_smooth_scene(14600 + seed, P=40, height=26, width=34, sh_degree=1)
    gen = torch.Generator().manual_seed(seed)
    upstream = torch.randn(3, 26, 34, generator=gen, dtype=F64)
    names = ("means3D", "opacities", "shs", "scales", "rotations")

    def gradients(run, inputs, settings, upstream):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_(k in names)
                  for k, v in inputs.items()}
        loss = intersection_loss(run, leaves, settings, upstream)
        return dict(zip(names, torch.autograd.grad(loss, [leaves[k] for k in names])))

    want = gradients("reference", scene.inputs, scene.settings, upstream)
    inputs, settings = scene_on(scene, dtype, target)
    with active(target):
        got = gradients("backend", inputs, settings, upstream.to(dtype).to(target))
    tol = 1e-8 if dtype == F64 else 2e-4
    for name, ref in want.items():
        scale = ref.abs().max().item()
        assert scale > 1e-3, name  # not vacuous
        torch.testing.assert_close(got[name].cpu().to(F64), ref, rtol=tol, atol=tol * scale,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [F64, F32])
def test_intersection_loss_gradients_match_reference(dtype):
    """The loss on the depth planes' map and normals: every gradient through the CPU backend
    against autograd through the reference (float64 to 1e-8, float32 to 2e-4 of each scale)."""
    check_intersection_gradients(0, "cpu", dtype)


@pytest.mark.parametrize("target", cuda_targets())
def test_intersection_loss_gradients_cuda(target):
    check_intersection_gradients(1, target, F32)


def test_intersection_loss_gradcheck():
    """gradcheck of the RaDe-GS loss (the planes' depth against a target, the planes' normal map
    against that depth's normals, colour; gradcheck_through_backend)."""
    gradcheck_through_backend(intersection_loss, 14700, 5)


def test_intersection_planes_of_culled_and_odd_gaussians_are_finite():
    """A scene with Gaussians behind the camera, on the near plane and far off screen: the
    planes, the normals and the gradients of a loss on them are finite everywhere, and the
    culled Gaussians get no gradient; bad input is named."""
    scene = scenes.make_scene(9500, P=200, height=30, width=40, sh_degree=0, outliers=True)
    i, s = scene.with_grad(), scene.settings
    planes = surface.intersection_planes(i["means3D"], s, i["scales"], i["rotations"])
    assert torch.isfinite(planes.features).all() and torch.isfinite(planes.normals).all()
    radii = GaussianRasterizer(s)(**i)[1]
    assert (radii == 0).any()
    color, _, _, weight, fmap = GaussianRasterizer(s)(**i, features=planes.features)
    rade = surface.intersection_depth(fmap, weight, s)
    (rade.sum() + color.sum()).backward()
    for name in ("means3D", "scales", "rotations"):
        assert torch.isfinite(i[name].grad).all(), name
        assert torch.equal(i[name].grad[radii == 0], torch.zeros_like(i[name].grad[radii == 0]))
    for args, kwargs, error, text in [
            ((i["means3D"], s), {}, ValueError, "either scales"),
            ((i["means3D"][:, :2], s), {"scales": i["scales"], "rotations": i["rotations"]},
             ValueError, "means3D"),
            ((i["means3D"], s), {"scales": i["scales"][:-1], "rotations": i["rotations"]},
             ValueError, "scales"),
            ((i["means3D"], s), {"scales": i["scales"], "rotations": i["rotations"][:, :3]},
             ValueError, "rotations"),
            ((i["means3D"], s), {"scales": i["scales"].double(), "rotations": i["rotations"]},
             ValueError, "scales: expected torch.float32"),
            ((i["means3D"], s), {"cov3D_precomp": torch.zeros(200, 5)}, ValueError,
             "cov3D_precomp")]:
        with pytest.raises(error, match=text):
            surface.intersection_planes(*args, **kwargs)
    with pytest.raises(ValueError, match="feature_map"):
        surface.intersection_depth(fmap[:2], weight, s)


def test_render_surface_with_the_depth_planes():
    """render_surface(intersection=True): the six surface maps as without it, and rade_depth and
    rade_normal_map those of intersection_planes rendered and evaluated by hand."""
    scene = scenes.make_scene(9600, P=120, height=30, width=40, sh_degree=1, outliers=False)
    i, s = scene.inputs, scene.settings
    inputs = {k: v for k, v in i.items() if k != "dc"}
    rasterizer = GaussianRasterizer(s)
    plain = render_surface(rasterizer, s, **inputs)
    both = render_surface(rasterizer, s, intersection=True, **inputs)
    assert plain.rade_depth is None and plain.rade_normal_map is None
    for name in ("color", "radii", "depth", "weight", "normal_map", "plane_depth", "distortion"):
        torch.testing.assert_close(getattr(both, name), getattr(plain, name), rtol=1e-6,
                                   atol=1e-6, msg=name)
    planes = surface.intersection_planes(i["means3D"], s, i["scales"], i["rotations"])
    _, _, _, weight, fmap = rasterizer(**inputs, features=torch.cat([planes.features,
                                                                     planes.normals], 1))
    torch.testing.assert_close(both.rade_depth, surface.intersection_depth(fmap[:3], weight, s),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(both.rade_normal_map, normalized(fmap[3:]), rtol=1e-6, atol=1e-6)
    assert (both.rade_depth[weight > 0.5] > 0).all() and (weight > 0.5).sum() > 100


@pytest.mark.parametrize("dtype", [F32, F64])
def test_dominant_points_of_flat_gaussians(dtype):
    """Flat Gaussians (a scale of exactly 0, and of 1e-7), whose covariance a solve finds
    singular: each valid point is where the pixel's ray meets the Gaussian's plane (through its
    centre, normal its flat axis), as the densest point of a flat Gaussian is."""
    from diff_gaussian_rasterization_depth.surface import dominant_points
    inputs, settings, _, _ = slanted_surfels(400, dtype, flat_scale=0.0, seed=3)
    inputs["scales"][::2, 2] = 1e-7
    dominant = GaussianRasterizer(settings)(**inputs, dominant=True)[-1]
    points, valid = dominant_points(dominant, inputs["means3D"], settings,
                                    scales=inputs["scales"], rotations=inputs["rotations"])
    assert valid.sum() > 3000 and torch.isfinite(points).all()
    ids = dominant[valid].long()
    axis = reference._rotation_matrix(inputs["rotations"][ids].double())[:, :, 2]
    distance = ((points.permute(1, 2, 0)[valid].double() - inputs["means3D"][ids].double())
                * axis).sum(1)
    assert distance.abs().max() < (1e-4 if dtype == F32 else 1e-10)
