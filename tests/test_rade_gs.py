"""RaDe-GS's API (`.rade_gs`) and the median Gaussian it reads (`median_gaussian=True`): the
median Gaussian against the reference and against the weights it is defined by; the ray-space
planes against a first-principles solve (the ray-space covariance inverted); the eight maps and
their gradients against a per-pixel blend of those planes with the reference's per-Gaussian
weights in float64; a slanted surface's depth, points and normals; the switches, the means2D
carrier, gradcheck and the CUDA targets.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, rade_gs
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from robust_helpers import settings_on
from test_surface import slanted_surfels

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
NAMES = ("means3D", "means2D", "opacities", "shs", "scales", "rotations")
OUTPUTS = ("color", "radii", "expected_coord", "median_coord", "expected_depth", "median_depth",
           "alpha", "normal")


def rade_settings(settings, kernel_size=0.0, require_depth=True, require_coord=True):
    s = settings
    return rade_gs.GaussianRasterizationSettings(
        image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
        tanfovy=s.tanfovy, kernel_size=kernel_size, bg=s.bg, scale_modifier=s.scale_modifier,
        viewmatrix=s.viewmatrix, projmatrix=s.projmatrix, sh_degree=s.sh_degree,
        campos=s.campos, prefiltered=False, require_depth=require_depth,
        require_coord=require_coord, debug=False)


def rade_call(inputs, settings):
    """The call as RaDe-GS's renderer makes it, by keyword."""
    return rade_gs.GaussianRasterizer(raster_settings=settings)(
        means3D=inputs["means3D"], means2D=inputs["means2D"], shs=inputs["shs"],
        colors_precomp=None, opacities=inputs["opacities"], scales=inputs["scales"],
        rotations=inputs["rotations"], cov3D_precomp=None)


# ----------------------------------------------------------------------------------------------
# The median Gaussian
# ----------------------------------------------------------------------------------------------

def blend_weights(inputs, settings):
    """(P, H, W) each Gaussian's weight at each pixel (identity features through the reference,
    with autograd), and the Gaussians' view depths."""
    P = inputs["means3D"].shape[0]
    eye = torch.eye(P, dtype=inputs["means3D"].dtype)
    out = rasterize_reference(**inputs, raster_settings=settings, features=eye)
    z = rade_gs.ray_planes(inputs["means3D"].detach(), settings,
                           inputs["scales"].detach(), inputs["rotations"].detach()).view_points
    return out, z[:, 2]


def median_of_weights(w, z):
    """(H, W) the last Gaussian in depth order blended (w > 0) with T > 0.5 in front of it, -1
    where none; and a mask of the pixels where T in front of some blended Gaussian lies within
    1e-9 of 0.5 (left out of comparisons)."""
    order = torch.argsort(z)
    ws = w.detach()[order]
    T_before = 1 - torch.cumsum(ws, 0) + ws
    blended = ws > 0
    front = blended & (T_before > 0.5)
    position = torch.arange(len(order))[:, None, None].expand_as(ws)
    last = torch.where(front, position, torch.full_like(position, -1)).amax(0)
    median = torch.where(last >= 0, order[last.clamp_min(0)], last)
    near = (blended & ((T_before - 0.5).abs() < 1e-9)).any(0)
    return median, near


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(4))
def test_median_gaussian_matches_the_reference(seed, dtype):
    """The CPU backend's median Gaussian is the reference's at every pixel (scenes with
    Gaussians behind, beside and far off the image); with and without median_depth and
    features, the outputs keep their places."""
    scene = scenes.make_scene(33000 + seed, P=300, height=41, width=67, dtype=dtype)
    want = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                               median_gaussian=True)[-1]
    got = GaussianRasterizer(scene.settings)(**scene.inputs, median_gaussian=True)
    assert len(got) == 5 and got[-1].dtype == torch.int32
    assert torch.equal(got[-1], want)
    assert (want >= 0).any() and (want < scene.P).all()
    features = torch.randn(scene.P, 2, dtype=dtype)
    both = GaussianRasterizer(scene.settings)(**scene.inputs, features=features,
                                              median_depth=True, median_gaussian=True,
                                              dominant=True)
    assert len(both) == 8 and both[5].shape == want.shape and both[5].dtype == dtype
    assert both[6].dtype == torch.int32 and torch.equal(both[-1], want)


@pytest.mark.parametrize("seed", range(3))
def test_median_gaussian_is_defined_by_the_weights(seed):
    """In float64: the median Gaussian is the last blended one with T > 0.5 in front of it, by
    the per-Gaussian weights; where T reaches 0.5 its z is the median depth; where nothing is
    blended it is -1."""
    scene = scenes.make_scene(33100 + seed, P=60, height=33, width=45, dtype=F64)
    out, z = blend_weights(scene.inputs, scene.settings)
    median, near = median_of_weights(out[4], z)
    got = GaussianRasterizer(scene.settings)(**scene.inputs, median_depth=True,
                                             median_gaussian=True)
    gaussian, median_depth, weight = got[5], got[4], got[3]
    assert torch.equal(gaussian[~near], median.to(torch.int32)[~near])
    crossed = median_depth != 0
    assert crossed.sum() > 50 and (~crossed & (gaussian >= 0)).sum() > 20   # both cases seen
    torch.testing.assert_close(z[gaussian[crossed].long()], median_depth[crossed], rtol=1e-12,
                               atol=1e-12)
    assert torch.equal(gaussian < 0, weight == 0)
    culled = scenes.make_scene(33150 + seed, P=20, height=9, width=13, dtype=F64,
                               all_culled=True)
    none = GaussianRasterizer(culled.settings)(**culled.inputs, median_gaussian=True)[-1]
    assert torch.equal(none, torch.full((9, 13), -1, dtype=torch.int32))


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("split_length", [0, 256])
def test_median_gaussian_on_cuda(target, split_length):
    """The CUDA kernels' median positions, lists split into parts or not, give the reference's
    median Gaussian (float32)."""
    scene = scenes.make_scene(33200 + split_length, P=900, height=40, width=56)
    want = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                               median_gaussian=True)[-1]
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    with active(target):
        _backend.set_cuda_tuning(split_length=split_length)
        try:
            got = GaussianRasterizer(settings_on(scene.settings, target))(
                **moved, median_gaussian=True)[-1]
        finally:
            _backend.set_cuda_tuning()
    ambiguous_pixels, _ = scenes.ambiguous_checked(scene)
    differ = (got.cpu() != want) & ~ambiguous_pixels
    assert not differ.any(), differ.nonzero()[:5]


# ----------------------------------------------------------------------------------------------
# The ray-space planes
# ----------------------------------------------------------------------------------------------

def quaternion_matrix(q):
    """The rotation polynomial of (w, x, y, z), as given (RaDe-GS's kernel and the package's,
    like the original's, leave the normalization to the training code)."""
    r, x, y, z = q.unbind(1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - r * z), 2 * (x * z + r * y)], 1),
        torch.stack([2 * (x * y + r * z), 1 - 2 * (x * x + z * z), 2 * (y * z - r * x)], 1),
        torch.stack([2 * (x * z - r * y), 2 * (y * z + r * x), 1 - 2 * (x * x + y * y)], 1)], 1)


def solved_planes(means3D, scales, rotations, settings):
    """The planes from first principles, in float64: the view-space covariance taken to ray
    space (u, v, r) = (x / z, y / z, |x|) by the Jacobian J at the centre (u, v clamped as the
    rasterizer's Jacobian), Q its inverse; along a ray the Gaussian is densest at r(u, v) = l +
    r_u du + r_v dv with r_u = -Q_ru / Q_rr, r_v = -Q_rv / Q_rr; the point there moves by
    J^-1 (du, dv, dr); the plane's normal is J^T (r_u, r_v, -1)."""
    view = settings.viewmatrix.reshape(4, 4).to(F64)
    t = means3D @ view[:3, :3] + view[3, :3]
    rotation = view[:3, :3].T
    m = quaternion_matrix(rotations) * (settings.scale_modifier * scales)[:, None, :]
    cov = rotation @ (m @ m.transpose(1, 2)) @ rotation.T
    z = t[:, 2]
    u = (t[:, 0] / z).clamp(-1.3 * settings.tanfovx, 1.3 * settings.tanfovx)
    v = (t[:, 1] / z).clamp(-1.3 * settings.tanfovy, 1.3 * settings.tanfovy)
    tc = torch.stack([u * z, v * z, z], 1)
    l = tc.norm(dim=1)
    zero = torch.zeros_like(z)
    J = torch.stack([torch.stack([1 / z, zero, -tc[:, 0] / z ** 2], 1),
                     torch.stack([zero, 1 / z, -tc[:, 1] / z ** 2], 1),
                     tc / l[:, None]], 1)
    Q = torch.linalg.inv(J @ cov @ J.transpose(1, 2))
    r_u, r_v = -Q[:, 2, 0] / Q[:, 2, 2], -Q[:, 2, 1] / Q[:, 2, 2]
    fx = settings.image_width / (2 * settings.tanfovx)
    fy = settings.image_height / (2 * settings.tanfovy)
    per_pixel = torch.stack([torch.stack([1 / fx + zero, zero], 1),
                             torch.stack([zero, 1 / fy + zero], 1),
                             torch.stack([r_u / fx, r_v / fy], 1)], 1)      # d(u, v, r)/d(px)
    coord_slopes = -torch.linalg.inv(J) @ per_pixel                         # towards mu2D - p
    normal = (J.transpose(1, 2) @ torch.stack([r_u, r_v, -torch.ones_like(r_u)], 1)[:, :, None])
    normal = normal[:, :, 0] / normal[:, :, 0].norm(dim=1, keepdim=True)
    return t, t.norm(dim=1), torch.stack([-r_u / fx, -r_v / fy], 1), coord_slopes, normal


@pytest.mark.parametrize("seed", range(3))
def test_ray_planes_match_the_solve(seed):
    """The closed forms (adjugate, no inverse) equal the ray-space solve for Gaussians in front,
    centres off the image included (their Jacobian clamped); normals face the camera and are
    -Sigma^-1 t's direction."""
    scene = scenes.make_scene(33300 + seed, P=200, height=40, width=60, dtype=F64)
    i, s = scene.inputs, rade_settings(scene.settings)
    planes = rade_gs.ray_planes(i["means3D"], s, i["scales"], i["rotations"])
    front = planes.view_points[:, 2] > 0.2
    assert front.sum() > 150
    want = solved_planes(i["means3D"], i["scales"], i["rotations"], s)
    got = (planes.view_points, planes.distance, planes.ray_slope, planes.coord_slopes,
           planes.normals)
    for name, a, b in zip(("view_points", "distance", "ray_slope", "coord_slopes", "normals"),
                          got, want):
        torch.testing.assert_close(a[front], b[front], rtol=1e-8, atol=1e-10, msg=name)
    ratio = planes.view_points[:, :2] / planes.view_points[:, 2:]
    clamped = front & ((ratio[:, 0].abs() > 1.3 * s.tanfovx) | (ratio[:, 1].abs() > 1.3 * s.tanfovy))
    assert clamped.any()     # the clamp was exercised
    # Facing the camera along the centre's ray (the clamped ones: along the clamped ray).
    assert ((planes.normals * planes.view_points).sum(1)[front & ~clamped] < 0).all()
    # cov3D_precomp gives the same planes.
    m = quaternion_matrix(i["rotations"]) * i["scales"][:, None, :]
    full = m @ m.transpose(1, 2)
    upper = full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    again = rade_gs.ray_planes(i["means3D"], s, cov3D_precomp=upper)
    for a, b in zip(again[:5], got):
        torch.testing.assert_close(a[front], b[front], rtol=1e-8, atol=1e-10)


def test_ray_planes_of_degenerate_gaussians():
    """A Gaussian flat in one axis keeps finite planes (continuous with a thin one); flat in two
    axes, or flat and seen edge-on, it gets zero slopes and normal, as RaDe-GS's; behind the
    camera, finite values."""
    s = rade_settings(scenes.make_scene(33400, P=4, dtype=F64).settings)
    view = s.viewmatrix.reshape(4, 4)
    centre = (torch.tensor([[0.1, -0.2, 5.0]], dtype=F64) - view[3, :3]) @ torch.linalg.inv(
        view[:3, :3])
    q = torch.tensor([[0.9, 0.2, -0.3, 0.1]], dtype=F64)
    planes = [rade_gs.ray_planes(centre, s, torch.tensor([[0.3, 0.2, flat]], dtype=F64), q)
              for flat in (1e-6, 0.0)]
    for a, b in zip(planes[0][:5], planes[1][:5]):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    line = rade_gs.ray_planes(centre, s, torch.tensor([[0.3, 0.0, 0.0]], dtype=F64), q)
    assert torch.equal(line.ray_slope, torch.zeros_like(line.ray_slope))
    assert torch.equal(line.normals, torch.zeros_like(line.normals))
    behind = rade_gs.ray_planes(-centre * 3, s, torch.tensor([[0.3, 0.2, 0.1]], dtype=F64), q)
    assert all(torch.isfinite(x).all() for x in behind)


# ----------------------------------------------------------------------------------------------
# The maps and their gradients against a per-pixel blend
# ----------------------------------------------------------------------------------------------

def blended_maps(inputs, settings, require_depth=True, require_coord=True):
    """RaDe-GS's eight maps from the solved planes and the reference's per-Gaussian weights:
    each pixel's sums over Gaussians written out (float64, autograd throughout)."""
    package = rade_gs.package_settings(settings)
    H, W = settings.image_height, settings.image_width
    means2D = inputs["means2D"]
    carrier = torch.cat([means2D[:, :2], means2D[:, 2:3].expand(-1, 2)], 1)
    wide = dict(inputs, means2D=carrier)
    P = inputs["means3D"].shape[0]
    color, radii, _, weight, w = rasterize_reference(
        **wide, raster_settings=package, features=torch.eye(P, dtype=F64))
    t, distance, ray_slope, coord_slopes, normals = solved_planes(
        inputs["means3D"], inputs["scales"], inputs["rotations"], settings)
    view = settings.projmatrix.reshape(4, 4).to(F64)
    clip = inputs["means3D"] @ view[:3] + view[3]
    ndc = clip[:, :2] / (clip[:, 3:] + 1e-7)
    mean2d = ((ndc + 1) * torch.tensor([W, H], dtype=F64) - 1) / 2
    # means2D's values are ignored (the rasterizer's convention); its gradient is dL/d NDC.
    shift = means2D[:, :2] - means2D[:, :2].detach()
    mean2d = mean2d + shift * torch.tensor([W / 2, H / 2], dtype=F64)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    d = mean2d[:, None, None, :] - torch.stack([xs, ys], -1)                # (P, H, W, 2)
    along = distance[:, None, None] + (ray_slope[:, None, None, :] * d).sum(-1)
    coord = t[:, :, None, None] + torch.einsum("pkj,phwj->pkhw", coord_slopes, d)
    seen = weight > 0
    fx, fy = W / (2 * settings.tanfovx), H / (2 * settings.tanfovy)
    ln = (((xs - W / 2) / fx) ** 2 + ((ys - H / 2) / fy) ** 2 + 1).sqrt()
    safe = torch.where(seen, weight, torch.ones_like(weight))
    zero = torch.zeros_like(weight)
    median, _ = median_of_weights(w, t[:, 2].detach())
    has = median >= 0
    m = median.clamp_min(0)
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    normal_sum = (w[:, None] * normals[:, :, None, None]).sum(0)
    normal = torch.where(seen, normal_sum / normal_sum.norm(dim=0).clamp_min(1e-12),
                         torch.zeros_like(normal_sum))
    if require_depth:
        expected_depth = torch.where(seen, (w * along).sum(0) / safe / ln, zero)[None]
        median_depth = torch.where(has, along[m, rows, cols] / ln, zero)[None]
    else:
        expected_depth = median_depth = zero[None]
    if require_coord:
        expected_coord = torch.where(seen, (w[:, None] * coord).sum(0) / safe, zero)
        median_coord = torch.where(has, coord[m, :, rows, cols].permute(2, 0, 1), zero)
    else:
        expected_coord = median_coord = torch.zeros_like(color)
    if not (require_depth or require_coord):
        normal = torch.zeros_like(color)
    return (color, radii, expected_coord, median_coord, expected_depth, median_depth,
            weight[None], normal)


def random_loss(maps, seed):
    gen = torch.Generator().manual_seed(seed)
    return sum((m * torch.randn(m.shape, generator=gen, dtype=F64).to(m)).sum()
               for k, m in enumerate(maps) if k != 1)


def leaves_of(inputs, dtype=F64, device="cpu"):
    return {k: None if v is None else v.detach().to(dtype).to(device).clone().requires_grad_(
        k in NAMES) for k, v in inputs.items()}


@pytest.mark.parametrize("switches", [(True, True), (True, False), (False, True),
                                      (False, False)])
@pytest.mark.parametrize("seed", range(2))
def test_maps_and_gradients_match_the_per_pixel_blend(seed, switches):
    """Every map and every gradient (means2D's three columns included) of the call on the CPU
    backend equals the written-out blend of the solved planes, float64, 1e-8; what a switch
    leaves out is zeros."""
    scene = scenes.make_scene(33500 + seed, P=50, height=30, width=42, sh_degree=1, dtype=F64,
                              outliers=False)
    settings = rade_settings(scene.settings, kernel_size=0.1 * seed, require_depth=switches[0],
                             require_coord=switches[1])
    want_leaves, got_leaves = leaves_of(scene.inputs), leaves_of(scene.inputs)
    want = blended_maps(want_leaves, settings, *switches)
    got = rade_call(got_leaves, settings)
    assert len(got) == 8
    for name, a, b in zip(OUTPUTS, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b.detach(), rtol=1e-8, atol=1e-9, msg=name)
    if switches[0]:
        assert (got[4] > 0).sum() > 300 and (got[5] > 0).sum() > 300
    if switches[1]:
        assert got[2].abs().amax() > 0.5
    random_loss(want, seed).backward()
    random_loss(got, seed).backward()
    assert_gradients_match(got_leaves, want_leaves, NAMES)


def assert_gradients_match(got_leaves, want_leaves, names):
    """Each named leaf's gradient is the written-out blend's (float64), none of them vanishing."""
    for name in names:
        a, b = got_leaves[name].grad, want_leaves[name].grad
        assert b.abs().max() > 1e-4, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().max(), msg=name)


def test_means2D_carries_the_planes_and_the_absolute_gradient():
    """means2D.grad[:, 2] is the sum of the absolute columns of the package's (P, 4) carrier
    (|x| + |y|, as RaDe-GS's densification reads it) and [:, :2] the same as with that carrier;
    a loss on the median depth alone, which no weight carries, reaches means2D through the
    planes' offsets d = mu2D - p: sum over the Gaussian's median pixels of its slope / ln(p), in
    NDC units (times W/2, H/2)."""
    scene = scenes.make_scene(33600, P=80, height=30, width=42, dtype=F64, outliers=False)
    settings = rade_settings(scene.settings, require_coord=False)
    H, W = settings.image_height, settings.image_width
    leaves, wide = leaves_of(scene.inputs), leaves_of(scene.inputs)
    wide["means2D"] = torch.zeros(scene.P, 4, dtype=F64, requires_grad=True)
    for inputs in (leaves, wide):
        out = rade_call(inputs, settings)
        (out[0].sum() + out[4].sum()).backward()
    narrow, grad4 = leaves["means2D"].grad, wide["means2D"].grad
    assert (grad4[:, 2:] >= 0).all() and grad4[:, 2:].sum() > 0
    torch.testing.assert_close(narrow[:, 2], grad4[:, 2] + grad4[:, 3])
    torch.testing.assert_close(narrow[:, :2], grad4[:, :2])

    median_only = leaves_of(scene.inputs)
    out = rade_call(median_only, settings)
    out[5].sum().backward()
    gaussian = GaussianRasterizer(rade_gs.package_settings(settings))(
        **{k: v.detach() if v is not None else None for k, v in scene.inputs.items()},
        median_gaussian=True)[-1]
    planes = rade_gs.ray_planes(scene.inputs["means3D"], settings, scene.inputs["scales"],
                                scene.inputs["rotations"])
    fx, fy = W / (2 * settings.tanfovx), H / (2 * settings.tanfovy)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    ln = (((xs - W / 2) / fx) ** 2 + ((ys - H / 2) / fy) ** 2 + 1).sqrt()
    want = torch.zeros(scene.P, 2, dtype=F64)
    has = gaussian >= 0
    want.index_add_(0, gaussian[has].long(), planes.ray_slope[gaussian[has].long()]
                    / ln[has][:, None])
    want *= torch.tensor([W / 2, H / 2], dtype=F64)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(median_only["means2D"].grad[:, :2], want, rtol=1e-9, atol=1e-12)
    assert torch.equal(median_only["means2D"].grad[:, 2], torch.zeros(scene.P, dtype=F64))
    no_weight = median_only["opacities"].grad       # a selection: no gradient to opacities
    assert no_weight is None or not no_weight.any()


def test_gradcheck_f64():
    """Finite differences of the depth, coordinate and normal maps, expected and median, in
    every Gaussian input (a smooth scene, float64, the CPU backend)."""
    scene = scenes.make_smooth_scene(33700, P=4, height=12, width=10, sh_degree=1)
    settings = rade_settings(scene.settings)
    names = ("means3D", "opacities", "scales", "rotations")
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}

    def fn(*tensors):
        inputs = dict(fixed, **dict(zip(names, tensors)))
        out = rade_call(inputs, settings)
        return tuple(out[k] for k in (2, 3, 4, 5, 7))

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# A slanted surface
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F64, F32])
def test_slanted_surface(dtype):
    """3,000 flat Gaussians on a plane seen at 60 degrees: where the weight is above 0.99, the
    expected and median depths lie within 0.012 and 0.017 of the surface's (mean 0.006; half of
    it is RaDe-GS's principal point at W/2, half a pixel off the render's (W - 1)/2: measured
    0.0029 and 0.0022 with the render's), where the package's expected depth (centres blended)
    is off by 0.075 on average; the expected and median points lie on the plane, and the normal
    map is the plane's normal."""
    inputs, settings, plane_z, normal = slanted_surfels(3000, dtype)
    s = rade_settings(settings)
    out = rade_gs.GaussianRasterizer(s)(**inputs)
    color, radii, coord, median_coord, depth, median_depth, alpha, normal_map = out
    solid = alpha[0] > 0.99
    assert solid.sum() > 5000
    package_depth = GaussianRasterizer(rade_gs.package_settings(s))(**inputs)[2]
    package_error = (package_depth.double() - plane_z)[solid].abs().mean()
    assert package_error > 0.07
    for name, got, bound in (("expected", depth[0], 0.014), ("median", median_depth[0], 0.02)):
        error = (got.double() - plane_z)[solid].abs()
        assert error.max() < bound and error.mean() < 0.007, (name, error.max(), error.mean())
        assert error.mean() < package_error / 10
    n = -normal.to(F64)
    for points in (coord, median_coord):
        off_plane = (n[:, None, None] * (points.double() - torch.tensor(
            [0, 0, 5.0], dtype=F64)[:, None, None])).sum(0)[solid].abs()
        assert off_plane.max() < 0.01, off_plane.max()
    cosine = (normal_map.double() * normal[:, None, None]).sum(0)[solid]
    assert cosine.min() > 0.9999, cosine.min()


# ----------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------

def test_settings_mark_visible_and_integrate():
    """RaDe-GS's settings fields in its order; markVisible as the package's; `integrate` names
    what replaces it."""
    assert rade_gs.GaussianRasterizationSettings._fields == (
        "image_height", "image_width", "tanfovx", "tanfovy", "kernel_size", "bg",
        "scale_modifier", "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered",
        "require_depth", "require_coord", "debug")
    scene = scenes.make_scene(33800, P=60)
    s = rade_settings(scene.settings)
    want = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert torch.equal(rade_gs.GaussianRasterizer(s).markVisible(scene.inputs["means3D"]),
                       want)
    assert 0 < want.sum() < scene.P
    with pytest.raises(NotImplementedError, match="points3D"):
        rade_gs.GaussianRasterizer(s).integrate(points3D=scene.inputs["means3D"])


@pytest.mark.parametrize("target", cuda_targets())
def test_rade_gs_on_cuda(target):
    """The call on a CUDA target against the CPU backend's (float32): the maps to the CUDA
    tolerance, the gradients to 1e-3 of their scale."""
    scene = scenes.make_scene(33900, P=120, height=36, width=52, sh_degree=1, outliers=False)
    settings = rade_settings(scene.settings, kernel_size=0.1)
    cpu_leaves = leaves_of(scene.inputs, F32)
    want = rade_call(cpu_leaves, settings)
    random_loss(want, 5).backward()
    leaves = leaves_of(scene.inputs, F32, target)
    with active(target):
        got = rade_call(leaves, settings._replace(
            **{f: getattr(settings, f).to(target)
               for f in ("bg", "viewmatrix", "projmatrix", "campos")}))
        random_loss(got, 5).backward()
    for name, a, b in zip(OUTPUTS, got, want):
        tol = 1e-4 * max(1.0, float(b.detach().abs().max()))
        torch.testing.assert_close(a.cpu().to(b.dtype), b.detach(), rtol=0, atol=tol, msg=name)
    for name in NAMES:
        a, b = leaves[name].grad.cpu(), cpu_leaves[name].grad
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3 * scale, msg=name)


def test_bad_inputs_are_named():
    """A wrong shape, dtype or device of the planes' inputs, or a means2D of the wrong shape,
    raises an error naming the argument before anything is rendered; `median_gaussian` must be
    a bool."""
    scene = scenes.make_scene(34000, P=30)
    s = rade_settings(scene.settings)
    i = {k: v for k, v in scene.inputs.items() if k in NAMES}
    rasterizer = rade_gs.GaussianRasterizer(s)
    for name, bad, error in (("scales", i["scales"][:, :2], ValueError),
                             ("rotations", i["rotations"][:-1], ValueError),
                             ("scales", i["scales"].double(), ValueError),
                             ("means3D", i["means3D"][:, :2], ValueError),
                             ("means2D", i["means2D"][:, :1], ValueError)):
        with pytest.raises(error, match=name):
            rasterizer(**dict(i, **{name: bad}))
    with pytest.raises(ValueError, match="cov3D_precomp"):
        rasterizer(**dict(i, scales=None))
    with pytest.raises(TypeError, match="median_gaussian"):
        GaussianRasterizer(scene.settings)(**scene.inputs, median_gaussian=1)
