"""The opacity field at 3D points (`points3D=`, Gaussian Opacity Fields' `integrate`): the CPU
backend and the CUDA targets against the reference's dense twin, the field behind everything
against the weight map, one Gaussian's fade against its closed form, monotony along rays, points
no pixel sees, the inputs' checks, and that asking for it changes nothing else.

Where the reference and the backends may differ: the backends walk the tile list of the point's
pixel, which holds the splats that reach 1/255 at some pixel centre of the tile; a splat reaching
1/255 only between the tile's outermost pixel centres and its border is not in it. The reference
tests every Gaussian whose 3-sigma tile rectangle holds the point's tile. The comparisons take
points at pixel centres, and points within the hull of their tile's pixel centres (with splats
whose reach boxes are at least a pixel wide, as every splat of these scenes is: the dilation of
0.3 px^2 and opacities of 0.05 and more), where the two sets agree.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, has_cuda_backend
from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from diff_gaussian_rasterization_depth.surface import _pixel_to_view, depth_to_points
from robust_helpers import axis_camera, settings_on

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64


def world_points(view_points, settings):
    """World positions (N, 3) of view-space points (N, 3) of the settings' camera."""
    view = settings.viewmatrix.to(view_points.dtype).reshape(4, 4)
    ones = torch.ones_like(view_points[:, :1])
    return (torch.cat([view_points, ones], 1) @ torch.linalg.inv(view))[:, :3]


def pixel_points(settings, depth):
    """World points (H W, 3) on the rays through the pixel centres, at view depths depth (H, W)."""
    return world_points(depth_to_points(depth, settings).reshape(3, -1).T, settings)


def hull_points(settings, n, gen, dtype):
    """n world points on rays through random screen positions, each within the hull of its
    tile's pixel centres (see the module's docstring), at view depths 0.3 .. 9."""
    H, W = settings.image_height, settings.image_width
    f64 = torch.float64

    def coordinate(size):
        tile = torch.randint(0, (size + 15) // 16, (n,), generator=gen)
        span = torch.clamp(size - 1 - 16 * tile, max=15).to(f64)
        return 16 * tile.to(f64) + torch.rand(n, generator=gen, dtype=f64) * span

    px, py = coordinate(W), coordinate(H)
    z = 0.3 + 8.7 * torch.rand(n, generator=gen, dtype=f64)
    # On the ray of screen position (px, py): NDC (2 px + 1) / W - 1 (the pixel mapping's
    # inverse), through the projection that the settings imply.
    view = settings.viewmatrix.to(f64).reshape(4, 4)
    projection = torch.linalg.solve(view, settings.projmatrix.to(f64).reshape(4, 4))
    ndc_x, ndc_y = (2 * px + 1) / W - 1, (2 * py + 1) / H - 1
    x, y = _pixel_to_view(ndc_x, ndc_y, z, projection)
    view_points = torch.stack([x, y, z], 1)
    return world_points(view_points, settings._replace(viewmatrix=settings.viewmatrix.to(f64))
                        ).to(dtype)


def render(scene, device, points, **extra):
    """The scene's outputs on `device` (a CUDA target or "cpu") with point_opacity last."""
    i = {k: None if v is None else v.to(device) for k, v in scene.inputs.items()}
    settings = settings_on(scene.settings, device)
    with active(device), torch.no_grad():
        return GaussianRasterizer(settings)(
            i["means3D"], i["means2D"], i["opacities"], shs=i["shs"],
            colors_precomp=i["colors_precomp"], scales=i["scales"], rotations=i["rotations"],
            cov3D_precomp=i["cov3D_precomp"], points3D=points.to(device), **extra)


def reference_opacity(scene, points):
    with torch.no_grad():
        return rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                                   points3D=points)[-1]


def check_close(got, want, dtype):
    """float64: to rounding. float32: to rounding but for a few points where an alpha rounds to
    the other side of 1/255 (about 1/255 of the transmittance) or the early stop moves."""
    got = got.cpu().to(want.dtype)
    assert got.shape == want.shape
    if dtype == F64:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
        return
    err = (got - want).abs()
    assert err.max() <= 5e-3, err.max()
    assert (err > 2e-5).float().mean() <= 0.01, (err > 2e-5).sum()


def scene_cases():
    return [pytest.param(F64, "cpu", id="f64-cpu"), pytest.param(F32, "cpu", id="f32-cpu")] + [
        pytest.param(F32, p.values[0], id=p.id, marks=p.marks) for p in cuda_targets()]


@pytest.mark.parametrize("dtype,device", scene_cases())
@pytest.mark.parametrize("seed", range(3))
def test_point_opacity_matches_reference(seed, dtype, device):
    scene = scenes.make_scene(4200 + seed, P=150, height=40, width=56, sh_degree=1,
                              dtype=dtype, precomp_cov=seed == 1, antialiasing=seed == 2,
                              scale_modifier=1.2 if seed == 2 else 1.0)
    s = scene.settings
    gen = torch.Generator().manual_seed(seed)
    depth = (0.3 + 8.7 * torch.rand((s.image_height, s.image_width), generator=gen,
                                    dtype=F64)).to(dtype)
    points = torch.cat([pixel_points(s, depth), hull_points(s, 4000, gen, dtype)])
    want = reference_opacity(scene, points)
    got = render(scene, device, points)[-1]
    check_close(got, want, dtype)
    # Not vacuous: points in free space, inside surfaces and between.
    assert (want < 0.5).float().mean() > 0.05 and (want > 0.9).float().mean() > 0.05
    assert ((want > 0.1) & (want < 0.9)).float().mean() > 0.05


@pytest.mark.parametrize("distortion", [None, (0.05, -0.02, 0.004, -0.0005), (-0.3, 0, 0, 0)],
                         ids=["equidistant", "distorted", "folding"])
@pytest.mark.parametrize("dtype,device", scene_cases())
def test_fisheye_point_opacity(dtype, device, distortion):
    """Through a wide fisheye (settings `fisheye=True`, 80 degrees each side, the Gaussians up
    to 70-80 off its axis): each point lands on its pixel by the fisheye and fades along its
    own ray, as a pinhole's does; against the reference at pixel centres of random depths,
    and behind everything the field is the weight map. With OpenCV's distortion too, and one
    that folds 60 degrees off the axis (the pixels past it have no ray)."""
    scene = scenes.fisheye(scenes.make_scene(4250, P=150, height=40, width=56, sh_degree=1,
                                             dtype=dtype),
                           half_angle=1.4, yaw=0.87, shift=(4.5, -2.5), distortion=distortion)
    s = scene.settings
    gen = torch.Generator().manual_seed(5)
    depth = (0.3 + 8.7 * torch.rand((s.image_height, s.image_width), generator=gen,
                                    dtype=F64)).to(dtype)
    far = torch.full_like(depth, 1e3)
    points = torch.cat([pixel_points(s, depth), pixel_points(s, far)])
    want = reference_opacity(scene, points)
    out = render(scene, device, points)
    check_close(out[-1], want, dtype)
    # Pixels 90 degrees off the axis or more (the corners), or past the fold, have their points
    # on the axis, where they land on the principal point's pixel.
    rays = depth_to_points(torch.ones_like(depth), s)
    on_ray = (rays[0] != 0) | (rays[1] != 0)
    # Not vacuous (the wide view's splats cover less of it than a pinhole's do).
    seen = want[:depth.numel()].cpu()[on_ray.reshape(-1)]
    assert (seen < 0.5).float().mean() > 0.05 and (seen > 0.9).float().mean() > 0.02
    # Behind everything, the others are the weight map.
    behind = out[-1][depth.numel():].cpu().reshape(depth.shape)
    weight = out[3].cpu()
    # float32: a point at depth 1e3 lands on its pixel to about 1e-5 px through the fisheye's
    # atan (the pinhole's projection gives the pixel back to the last bit or so)
    atol = 1e-10 if dtype == F64 else 3e-5
    torch.testing.assert_close(behind[on_ray], weight[on_ray], rtol=0, atol=atol)
    assert (weight[on_ray] > 0.5).any()


@pytest.mark.parametrize("dtype,device", scene_cases())
def test_behind_everything_the_field_is_the_weight_map(dtype, device):
    """At a pixel centre behind every Gaussian each splat is whole: 1 - T is the weight."""
    scene = scenes.make_scene(4300, P=200, height=37, width=45, dtype=dtype)
    s = scene.settings
    points = pixel_points(s, torch.full((s.image_height, s.image_width), 1e3, dtype=dtype))
    out = render(scene, device, points)
    weight = out[3].cpu()
    opacity = out[-1].cpu().reshape(weight.shape)
    atol = 1e-10 if dtype == F64 else 3e-6
    torch.testing.assert_close(opacity, weight, rtol=0, atol=atol)
    assert (weight > 0.99).any() and ((weight > 0.05) & (weight < 0.95)).any()


@pytest.mark.parametrize("dtype,device", scene_cases())
def test_one_gaussian_fades_in_as_its_closed_form(dtype, device):
    """A Gaussian on the optical axis with an axis-aligned covariance: along the central ray
    (d = (0, 0, 1)) its exponent is (z - z0)^2 / sz^2, so a point at depth z sees
    alpha0 exp(-(z - z0)^2 / (2 sz^2)) in front of z0 and alpha0 from z0 on, alpha0 being the
    render's alpha (its weight) at the central pixel."""
    settings = axis_camera(33, 33, dtype=dtype)
    z0, sz = 3.0, 0.25
    means3D = torch.tensor([[0.0, 0.0, z0]], dtype=dtype)
    scales = torch.tensor([[0.05, 0.08, sz]], dtype=dtype)
    rotations = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    opacities = torch.tensor([[0.7]], dtype=dtype)
    z = torch.linspace(2.0, 4.0, 41, dtype=F64)
    points = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], 1).to(dtype)
    settings = settings_on(settings, device)
    with active(device), torch.no_grad():
        out = GaussianRasterizer(settings)(
            means3D.to(device), None, opacities.to(device),
            colors_precomp=torch.ones((1, 3), dtype=dtype).to(device), scales=scales.to(device),
            rotations=rotations.to(device), points3D=points.to(device))
    alpha0 = float(out[3][16, 16])
    assert 0.6 < alpha0 <= 0.7
    want = torch.where(z < z0, alpha0 * torch.exp(-0.5 * (z - z0) ** 2 / sz ** 2),
                       torch.full_like(z, alpha0))
    want = torch.where(want >= 1 / 255, want, torch.zeros_like(want))  # skipped below 1/255
    got = out[-1].cpu().double()
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == F32 else 1e-12,
                               atol=1e-6 if dtype == F32 else 1e-14)


@pytest.mark.parametrize("dtype,device", scene_cases())
def test_opacity_grows_along_each_ray(dtype, device):
    """Deeper on a ray, every splat's alpha is as large or larger, so the opacity does not
    fall; only the early stop (at T < 1e-2 at most, alphas being at most 0.99) may take a
    hundredth back; float32's rounding of the transmittance a few units more, and the
    projection's epsilon (ndc = hom / (w + 1e-7), as the means') moves a point at depth z by
    about 1e-7 / z of its offset from the image centre, a few 1e-8 of an alpha here."""
    scene = scenes.make_scene(4400, P=150, height=24, width=40, dtype=dtype)
    s = scene.settings
    depths = torch.linspace(0.25, 12.0, 48, dtype=dtype)
    points = torch.cat([pixel_points(s, torch.full((s.image_height, s.image_width), float(d),
                                                   dtype=dtype)) for d in depths])
    field = render(scene, device, points)[-1].cpu().reshape(len(depths), -1)
    step = field[1:] - field[:-1]
    assert (step >= -1e-2).all()
    assert (step[field[:-1] < 0.99] >= (-1e-6 if dtype == F64 else -1e-5)).all()
    assert (field[-1] - field[0]).max() > 0.9


def device_cases():
    """The CPU, the GPU and the emulation in its first thread order."""
    return [pytest.param("cpu", id="cpu")] + cuda_targets()[:2]


@pytest.mark.parametrize("device", device_cases())
def test_points_no_pixel_sees_have_opacity_one(device):
    dtype = F32
    scene = scenes.make_scene(4500, P=60, height=30, width=40, dtype=dtype)
    s = scene.settings
    z = torch.full((s.image_height, s.image_width), 4.0, dtype=dtype)
    inside = pixel_points(s, z)[:5]
    view = depth_to_points(z, s).reshape(3, -1).T[:5]
    behind = world_points(view * torch.tensor([1.0, 1.0, -1.0], dtype=dtype), s)
    near = world_points(view * 0.19 / 4.0, s)               # in front of the near plane
    off = world_points(view * torch.tensor([40.0, 1.0, 1.0], dtype=dtype), s)  # off the image
    nan = torch.full((2, 3), float("nan"), dtype=dtype)
    points = torch.cat([inside, behind, near, off, nan])
    got = render(scene, device, points)[-1].cpu()
    assert torch.equal(got[5:], torch.ones(17, dtype=dtype))
    torch.testing.assert_close(got[:5], reference_opacity(scene, points)[:5], atol=2e-5, rtol=0)


@pytest.mark.parametrize("device", device_cases())
def test_asking_for_the_field_changes_nothing_else(device):
    scene = scenes.make_scene(4600, P=80, height=30, width=40, dtype=F32)
    gen = torch.Generator().manual_seed(3)
    points = hull_points(scene.settings, 500, gen, F32)
    plain = render(scene, device, points[:0])
    with_field = render(scene, device, points)
    assert plain[-1].shape == (0,)
    for a, b in zip(plain[:4], with_field[:4]):
        assert torch.equal(a, b)


def test_points_are_checked():
    scene = scenes.make_scene(4700, P=20, height=16, width=16, dtype=F32)
    i = scene.inputs
    rasterizer = GaussianRasterizer(scene.settings)

    def call(points):
        return rasterizer(i["means3D"], None, i["opacities"], shs=i["shs"], scales=i["scales"],
                          rotations=i["rotations"], points3D=points)

    with pytest.raises(ValueError, match="points3D: expected shape"):
        call(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="points3D: expected dtype"):
        call(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(TypeError, match="points3D: expected a tensor"):
        call([[0.0, 0.0, 1.0]])
    # Another device than the Gaussians' (a meta tensor stands in for any other device).
    with pytest.raises(ValueError, match="points3D: expected device"):
        call(torch.zeros(4, 3, device="meta"))
    # A gradient-taking input is taken as a constant: the field has none.
    points = torch.zeros(3, 3, requires_grad=True)
    assert not call(points)[-1].requires_grad


def plane_of_discs(dtype, depth=3.0, thickness=0.002):
    """Flat, nearly opaque discs tiling the plane z = depth before the axis camera (view space
    is world space), seen by it and by two views turned about the y axis."""
    from diff_gaussian_rasterization_depth.mesh import OpacityField
    xs = torch.arange(-1.2, 1.2001, 0.05, dtype=F64)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    means3D = torch.cat([grid, torch.full_like(grid[:, :1], depth)], 1).to(dtype)
    n = means3D.shape[0]
    scales = torch.tensor([[0.04, 0.04, thickness]], dtype=dtype).expand(n, 3).contiguous()
    rotations = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype).expand(n, 4).contiguous()
    opacities = torch.full((n, 1), 0.95, dtype=dtype)
    views = []
    for angle in (0.0, 0.3, -0.3):
        c, s = torch.cos(torch.tensor(angle, dtype=F64)), torch.sin(torch.tensor(angle, dtype=F64))
        # A camera at the same distance from the plane's centre, turned by `angle` about y.
        rotation = torch.tensor([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=F64)
        centre = torch.tensor([0.0, 0.0, depth], dtype=F64) - depth * rotation.T[:, 2]
        w2c = torch.eye(4, dtype=F64)
        w2c[:3, :3] = rotation
        w2c[:3, 3] = -rotation @ centre
        settings = axis_camera(64, 64, dtype=dtype)
        view = w2c.T
        proj = view @ scenes.perspective_matrix(settings.tanfovx, settings.tanfovy).T
        views.append(settings._replace(viewmatrix=view.to(dtype), projmatrix=proj.to(dtype),
                                       campos=centre.to(dtype)))
    return OpacityField(views, means3D, opacities, scales, rotations)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_opacity_mesh_of_a_plane(dtype):
    """GOF's mesh: the field's 0.5 level set lies just in front of the discs (alpha 0.95 fades
    to 0.5 about 1.1 thicknesses before their peak), within a few thousandths of the plane once
    bisected, where the linear interpolation between grid points is off by up to a fraction of
    the voxel; faces point to the cameras; the cubes no view sees are not meshed."""
    from diff_gaussian_rasterization_depth.mesh import extract_opacity_mesh
    field = plane_of_discs(dtype)
    lower, upper, voxel = (-0.6, -0.6, 2.8), (0.6, 0.6, 3.2), 0.04
    mesh = extract_opacity_mesh(field, voxel, lower=lower, upper=upper)
    linear = extract_opacity_mesh(field, voxel, lower=lower, upper=upper, refine_steps=0)
    assert mesh.faces.shape[0] > 1000 and mesh.faces.shape == linear.faces.shape
    error = (mesh.vertices[:, 2] - 3.0).abs()
    assert error.max() < 0.006, error.max()
    assert (linear.vertices[:, 2] - 3.0).abs().max() > 2 * error.max()
    # The vertices cover the box's face, and the faces look at the cameras (-z).
    assert (mesh.vertices[:, :2].abs().max(0).values > 0.55).all()
    a, b, c = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    normals = torch.linalg.cross(b - a, c - a)
    assert (normals[:, 2] < 0).all()
    # Points no view sees have opacity 1 exactly; those seen stay below it.
    seen = field(torch.tensor([[0.0, 0.0, 3.5], [0.0, 0.0, 2.0]], dtype=dtype))
    unseen = field(torch.tensor([[0.0, 0.0, -1.0], [30.0, 0.0, 3.0]], dtype=dtype))
    assert (seen < 1).all() and torch.equal(unseen, torch.ones(2, dtype=dtype))
    assert seen[0] > 0.9 and seen[1] < 0.01


def test_opacity_mesh_of_a_sphere_of_splats():
    """GOF's mesh of the sphere of 10,000 flat splats that test_mesh.py fuses from depth maps
    (18 views): closed, outward, and on the sphere's outside to a fraction of a voxel (the
    splats, 0.9 opaque and overlapping, reach 0.5 a little in front of their peaks). Measured
    at voxel 0.04 with 8 bisections: 0.18 voxel out on average, none beyond 1.3 voxels, where
    the TSDF of the plane depth gives 0.28 and of the expected depth 0.92."""
    from diff_gaussian_rasterization_depth.mesh import OpacityField, extract_opacity_mesh
    from test_mesh import edge_counts, face_normals, sphere_views, tangent_sphere_gaussians
    centre, radius, voxel = torch.tensor([0.2, -0.1, 0.3]), 0.8, 0.05
    means, rotations, scales = tangent_sphere_gaussians(10000, centre, radius, seed=4)
    views = [camera.raster_settings() for camera in sphere_views(centre.tolist())]
    field = OpacityField(views, means, torch.full((means.shape[0], 1), 0.9),
                         scales.contiguous(), rotations)
    mesh = extract_opacity_mesh(field, voxel, refine_steps=4)
    error = (mesh.vertices - centre).norm(dim=1) - radius
    assert mesh.faces.shape[0] > 10000
    assert 0 < error.mean() < 0.35 * voxel and error.abs().max() < 2 * voxel, error
    undirected, directed = edge_counts(mesh.faces)
    assert (undirected == 2).all() and (directed == 1).all()  # closed, consistently oriented
    normal, centroid = face_normals(mesh)
    assert ((normal * (centroid.float() - centre).double()).sum(1) > 0).float().mean() > 0.99


@pytest.mark.parametrize("lens", [None, (-0.3, 0.1, 0.01, -0.01)], ids=["pinhole", "distorted"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_vertex_colors_come_from_the_view_that_sees_best(dtype, lens):
    """GOF's vertex colours: per point, the rendered colour (background included) of its pixel
    in the view of least opacity, white where no view sees it. Against a walk of the views
    written here: each view's image by the rasterizer, the pixel by the camera's own
    projection (cameras.Camera, float64; through OpenCV's formula, written out, where the
    views have a pinhole_distortion), the opacity by the field's view_opacity."""
    field = plane_of_discs(dtype)
    field.views = [v._replace(pinhole_distortion=lens) for v in field.views]
    n = field.gaussians["means3D"].shape[0]
    gen = torch.Generator().manual_seed(11)
    colors = torch.rand(n, 3, generator=gen, dtype=F64).to(dtype)
    bg = torch.tensor([0.1, 0.6, 0.3], dtype=dtype)
    field.views = [v._replace(bg=bg) for v in field.views]
    # Points about the plane (in front, on and behind it), and two that no view sees.
    points = torch.cat([torch.rand(300, 2, generator=gen, dtype=F64) * 1.6 - 0.8,
                        2.9 + 0.2 * torch.rand(300, 1, generator=gen, dtype=F64)], 1)
    points = torch.cat([points, torch.tensor([[0.0, 0.0, -1.0], [30.0, 0.0, 3.0]],
                                             dtype=F64)]).to(dtype)
    got = field.vertex_colors(points, colors_precomp=colors)

    least = torch.ones(points.shape[0], dtype=F64)
    want = torch.ones(points.shape[0], 3, dtype=F64)
    for view in field.views:
        image = GaussianRasterizer(view)(
            field.gaussians["means3D"], None, field.gaussians["opacities"],
            colors_precomp=colors, scales=field.gaussians["scales"],
            rotations=field.gaussians["rotations"])[0].double()
        w2c = view.viewmatrix.double().T
        camera = Camera(w2c.numpy(), view.image_width, view.image_height,
                        view.image_width / (2 * view.tanfovx),
                        view.image_height / (2 * view.tanfovy))
        col, row, _ = torch.as_tensor(camera.project(points.double().numpy())).unbind(1)
        if lens is not None:   # OpenCV's distortion of the normalized point
            cx, cy = (camera.width - 1) / 2, (camera.height - 1) / 2
            a, b = (col - cx) / camera.fx, (row - cy) / camera.fy
            k1, k2, p1, p2 = lens
            u = a * a + b * b
            L = 1 + k1 * u + k2 * u * u
            col = camera.fx * (a * L + 2 * p1 * a * b + p2 * (u + 2 * a * a)) + cx
            row = camera.fy * (b * L + p1 * (u + 2 * b * b) + 2 * p2 * a * b) + cy
        col = col.round().long().clamp(0, view.image_width - 1)
        row = row.round().long().clamp(0, view.image_height - 1)
        opacity = field.view_opacity(points, view).double()
        for i in range(points.shape[0]):
            if opacity[i] < least[i]:
                least[i] = opacity[i]
                want[i] = image[:, row[i], col[i]]
    tol = 1e-5 if dtype == F32 else 1e-12
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
    assert torch.equal(got[-2:], torch.ones(2, 3, dtype=dtype))     # seen by no view
    seen = least < 1
    assert seen[:-2].all()
    # Behind the opaque discs a point's colour is the discs' blend, not the background; the
    # three views give it different pixels, so the colours are not all alike.
    assert (got[:300] - bg).abs().amax(1).min() > 0.01
    assert got[:300].std(0).min() > 0.05
    with pytest.raises(ValueError, match="exactly one"):
        field.vertex_colors(points)


@pytest.mark.parametrize("target", cuda_targets())
def test_vertex_colors_on_cuda_targets(target):
    """The vertex colours on a CUDA target are the CPU backend's: the same views, renders and
    opacity walks (float32; a colour may move by the two backends' rounding of a blend)."""
    from diff_gaussian_rasterization_depth.mesh import OpacityField
    cpu = plane_of_discs(F32)
    gen = torch.Generator().manual_seed(12)
    n = cpu.gaussians["means3D"].shape[0]
    colors = torch.rand(n, 3, generator=gen)
    points = torch.cat([torch.rand(200, 2, generator=gen) * 1.6 - 0.8,
                        2.9 + 0.2 * torch.rand(200, 1, generator=gen)], 1)
    want = cpu.vertex_colors(points, colors_precomp=colors)
    g = {k: None if v is None else v.to(target) for k, v in cpu.gaussians.items()}
    field = OpacityField([settings_on(v, target) for v in cpu.views], g["means3D"],
                         g["opacities"], g["scales"], g["rotations"])
    with active(target):
        got = field.vertex_colors(points.to(target), colors_precomp=colors.to(target))
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-4)
    assert (want < 1).any(dim=1).all()  # every point seen, none left white


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not has_cuda_backend(),
                    reason="needs a CUDA GPU and the CUDA backend")
def test_points_on_another_device_than_the_gaussians_cuda():
    """CUDA Gaussians with CPU points, and CPU Gaussians with CUDA points: a ValueError naming
    points3D, before any work."""
    scene = scenes.make_scene(4710, P=20, height=16, width=16, dtype=F32)
    i = scene.inputs
    for gaussians, points in (("cuda", "cpu"), ("cpu", "cuda")):
        settings = settings_on(scene.settings, gaussians)
        with pytest.raises(ValueError, match="points3D: expected device"):
            GaussianRasterizer(settings)(
                i["means3D"].to(gaussians), None, i["opacities"].to(gaussians),
                shs=i["shs"].to(gaussians), scales=i["scales"].to(gaussians),
                rotations=i["rotations"].to(gaussians),
                points3D=torch.zeros(4, 3, device=points))
