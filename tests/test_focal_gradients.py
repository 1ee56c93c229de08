"""Focal-length and principal-point gradients: settings whose fields of view (tanfovx, tanfovy)
are tensors that require grad, built with `cameras.projection_from_intrinsics` from (fx, fy, cx,
cy) leaves, against autograd through the reference and finite differences; points land where
the intrinsics say; Gaussians past the frustum clamp; and a camera's intrinsics recovered from
a wrong start by gradient descent (self-calibration). The CUDA backend's sums of the same shares
are checked against the CPU's in test_cuda_camera.py (the fields of view are camera leaves
there, as in test_camera_gradients.py)."""
import math

import numpy as np
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer
from diff_gaussian_rasterization_depth.cameras import (orthographic_matrix, perspective_matrix,
                                                       projection_from_intrinsics)
from robust_helpers import axis_camera
from test_cpu_backend import F32, F64, run_backend, run_reference

INTRINSICS = ("fx", "fy", "cx", "cy")


def intrinsics_of(settings, shift=(0.0, 0.0)):
    """(fx, fy, cx, cy) of the settings' fields of view, the principal point moved by `shift`
    px from the image's centre."""
    W, H = settings.image_width, settings.image_height
    return (W / (2.0 * float(settings.tanfovx)), H / (2.0 * float(settings.tanfovy)),
            (W - 1) / 2.0 + shift[0], (H - 1) / 2.0 + shift[1])


def with_intrinsics(settings, fx, fy, cx, cy):
    """The settings of the same pose and projection model with these intrinsics (tensors or
    numbers): fields of view and projmatrix from projection_from_intrinsics."""
    W, H = settings.image_width, settings.image_height
    tanfovx, tanfovy, P = projection_from_intrinsics(fx, fy, cx, cy, W, H,
                                                     orthographic=settings.orthographic)
    view = settings.viewmatrix.reshape(4, 4)
    return settings._replace(tanfovx=tanfovx, tanfovy=tanfovy,
                             projmatrix=view @ P.to(view.dtype).T)


def intrinsics_gradients(run, scene, values, upstream, dtype=None):
    """(4,) gradient of the upstream-weighted colour, depth and weight by (fx, fy, cx, cy)
    float64 leaves; the Gaussians in `dtype` (default: the scene's)."""
    inputs = {k: (None if v is None else v.detach().to(dtype or v.dtype))
              for k, v in scene.inputs.items()}
    leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in values]
    color, _, depth, weight = run(inputs, with_intrinsics(scene.settings, *leaves))
    loss = sum((out.double() * upstream[k]).sum()
               for k, out in (("color", color), ("depth", depth), ("weight", weight)))
    return torch.stack(torch.autograd.grad(loss, leaves))


def random_upstream(settings, seed, keep):
    H, W = settings.image_height, settings.image_width
    gen = torch.Generator().manual_seed(seed)
    return {"color": torch.randn(3, H, W, generator=gen, dtype=F64) * keep,
            "depth": torch.randn(H, W, generator=gen, dtype=F64) * keep,
            "weight": torch.randn(H, W, generator=gen, dtype=F64) * keep}


def test_projection_from_intrinsics_is_the_package_camera():
    """From numbers, centred: perspective_matrix and orthographic_matrix exactly, the fields of
    view W / (2 fx), H / (2 fy); a moved principal point moves column 2 (perspective) or 3
    (orthographic) alone; from tensors, the same values, differentiable, in their dtype."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    W, H = (int(v) for v in torch.randint(16, 400, (2,), generator=gen))
    fx, fy = (float(v) for v in 20.0 + 500.0 * torch.rand(2, generator=gen, dtype=F64))
    for ortho, matrix, column in ((False, perspective_matrix, 2),
                                  (True, orthographic_matrix, 3)):
        tanfovx, tanfovy, P = projection_from_intrinsics(fx, fy, (W - 1) / 2, (H - 1) / 2, W, H,
                                                         orthographic=ortho)
        assert (tanfovx, tanfovy) == (W / (2 * fx), H / (2 * fy))
        assert P.dtype == F64 and np.array_equal(P.numpy(), matrix(tanfovx, tanfovy))
        moved = projection_from_intrinsics(fx, fy, (W - 1) / 2 + 3.0, (H - 1) / 2 - 5.0, W, H,
                                           orthographic=ortho)[2]
        changed = (moved != P).nonzero().tolist()
        assert changed == [[0, column], [1, column]]
        assert moved[0, column] == pytest.approx(6.0 / W) and moved[1, column] == pytest.approx(
            -10.0 / H)
        leaves = [torch.tensor(v, dtype=F32, requires_grad=True)
                  for v in (fx, fy, (W - 1) / 2 + 3.0, (H - 1) / 2 - 5.0)]
        t_x, t_y, P32 = projection_from_intrinsics(*leaves, W, H, orthographic=ortho)
        assert P32.dtype == F32 and P32.requires_grad and t_x.dim() == 0
        torch.testing.assert_close(P32.double(), moved, rtol=1e-6, atol=1e-7)
        (P32.sum() + t_x + t_y).backward()
        assert all(leaf.grad is not None and leaf.grad != 0 for leaf in leaves)


@pytest.mark.parametrize("ortho", [False, True], ids=["perspective", "orthographic"])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_a_point_lands_where_the_intrinsics_say(ortho, dtype):
    """A small round splat at view (x, y, z) lands (the peak of its weight) at (cx + fx x / z,
    cy + fy y / z), or (cx + fx x, cy + fy y) for the orthographic camera, within 1e-3 px, for
    random focal lengths and a principal point off the centre (pixel centres at integers)."""
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    W, H = 96, 72
    fx, fy = (float(v) for v in 60.0 + 60.0 * torch.rand(2, generator=gen, dtype=F64))
    cx, cy = (float(v) for v in torch.tensor([W / 2.0, H / 2.0], dtype=F64)
              + 8.0 * (torch.rand(2, generator=gen, dtype=F64) - 0.5))
    settings = with_intrinsics(axis_camera(H, W, dtype=dtype, orthographic=ortho),
                               fx, fy, cx, cy)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    for _ in range(4):
        u, v = (float(t) for t in torch.rand(2, generator=gen, dtype=F64) * 0.6 + 0.2)
        z = 3.0 + 2.0 * float(torch.rand((), generator=gen, dtype=F64))
        want = (u * W, v * H)  # the pixel aimed at
        scale = 1.0 if ortho else z
        point = torch.tensor([[(want[0] - cx) / fx * scale, (want[1] - cy) / fy * scale, z]],
                             dtype=dtype)
        sigma = 1.5 * scale / fx  # about 1.5 px
        inputs = dict(means3D=point, means2D=torch.zeros(1, 3, dtype=dtype),
                      opacities=torch.full((1, 1), 0.9, dtype=dtype),
                      colors_precomp=torch.ones(1, 3, dtype=dtype),
                      scales=torch.full((1, 3), sigma, dtype=dtype),
                      rotations=torch.tensor([[1.0, 0, 0, 0]], dtype=dtype))
        with torch.no_grad():
            weight = GaussianRasterizer(settings)(**inputs)[3].double()
        got = gaussian_peak(weight, xs, ys)
        assert abs(got[0] - want[0]) < 1e-3 and abs(got[1] - want[1]) < 1e-3, (got, want)


def gaussian_peak(weight, xs, ys):
    """(x, y) where the one splat of a weight map is centred: its log, o exp(-d^T conic d / 2),
    is quadratic in the pixel's coordinates wherever it is not 0, so the least-squares quadratic
    through those pixels peaks there (a weighted centroid would be biased by the pixels the 1/255
    cut-off and the tile rectangle leave out on one side)."""
    seen = weight > 0
    x, y = xs[seen], ys[seen]
    basis = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], 1)
    a, b, c, d, e, f = torch.linalg.lstsq(basis, weight[seen].log()[:, None]).solution[:, 0]
    peak = torch.linalg.solve(torch.stack([torch.stack([2 * d, e]), torch.stack([e, 2 * f])]),
                              -torch.stack([b, c]))
    return float(peak[0]), float(peak[1])


def projection_scene(kind, seed, dtype):
    scene = scenes.make_scene(seed, P=60, height=30, width=42, sh_degree=1, dtype=dtype)
    if kind == "orthographic":
        scene = scenes.orthographic(scene)
    elif kind == "fisheye":
        scene = scenes.fisheye(scene, half_angle=1.2)
    return scene


@pytest.mark.parametrize("kind", ["perspective", "orthographic", "fisheye"])
def test_intrinsics_gradients_match_reference(kind):
    """d/d(fx, fy, cx, cy) through the fields of view and projmatrix, against autograd through
    the reference: float64 within 1e-8 of the four's scale; float32 within 1e-3 of it against
    the float64 reference (the principal point's gradient sums every Gaussian's screen-space
    gradient, which mostly cancel: float32 rounding shows larger against the result)."""
    for seed in range(2):
        scene64 = projection_scene(kind, 7300 + seed, F64)
        values = intrinsics_of(scene64.settings, shift=(2.5, -1.5))
        pixels, _ = scenes.ambiguous_checked(scenes.Scene(
            scene64.inputs, with_intrinsics(scene64.settings, *values)))
        upstream = random_upstream(scene64.settings, seed, (~pixels).double())
        want = intrinsics_gradients(run_reference, scene64, values, upstream)
        got = intrinsics_gradients(run_backend, scene64, values, upstream)
        scale = float(want.abs().max())
        assert (want != 0).all(), want
        torch.testing.assert_close(got, want, rtol=0, atol=1e-8 * scale)
        got32 = intrinsics_gradients(run_backend, scene64, values, upstream, dtype=F32)
        torch.testing.assert_close(got32, want, rtol=0, atol=1e-3 * scale)


@pytest.mark.parametrize("kind", ["perspective", "orthographic", "fisheye"])
def test_gradcheck_intrinsics(kind):
    """Finite differences (float64, the CPU backend) by fx, fy, cx, cy on a smooth scene."""
    scene = scenes.make_smooth_scene(7400, P=5, height=13, width=18, sh_degree=1)
    if kind == "orthographic":
        scene = scenes.orthographic(scene)
    elif kind == "fisheye":
        scene = scenes.fisheye(scene, half_angle=0.9)
    values = intrinsics_of(scene.settings, shift=(0.7, -0.4))

    def render(fx, fy, cx, cy):
        color, _, depth, weight = run_backend(
            scene.inputs, with_intrinsics(scene.settings, fx, fy, cx, cy))
        return color, depth, weight

    leaves = [torch.tensor(v, dtype=F64, requires_grad=True) for v in values]
    assert torch.autograd.gradcheck(render, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_focal_gradient_past_the_frustum_clamp():
    """Gaussians whose centres lie past 1.3 tan(fov) off the axis but whose footprints reach the
    image: their Jacobian's x / z is held at the clamp, -focal 1.3 tanfov / z, which does not
    change with the focal; the gradient by the fields of view is the reference's (float64) and
    the finite differences' (away from the clamp's edge)."""
    gen = torch.Generator().manual_seed(7500)
    W, H, tanfov = 40, 30, 0.5
    settings = axis_camera(H, W, tanfovx=tanfov, dtype=F64)
    P = 12
    z = 3.0 + 2.0 * torch.rand(P, generator=gen, dtype=F64)
    side = torch.where(torch.rand(P, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    # Half of them past the clamp in x (1.4 to 1.7 tan(fov)), the others inside the view.
    past = torch.arange(P) % 2 == 0
    u = torch.where(past, (1.4 + 0.3 * torch.rand(P, generator=gen, dtype=F64)) * tanfov,
                    (torch.rand(P, generator=gen, dtype=F64) - 0.5) * tanfov) * side
    v = (torch.rand(P, generator=gen, dtype=F64) - 0.5) * 0.6 * tanfov * H / W
    means = torch.stack([u * z, v * z, z], 1)
    q = torch.randn(P, 4, generator=gen, dtype=F64)
    inputs = dict(means3D=means, means2D=torch.zeros(P, 3, dtype=F64),
                  opacities=0.05 + 0.25 * torch.rand(P, 1, generator=gen, dtype=F64),
                  colors_precomp=torch.rand(P, 3, generator=gen, dtype=F64),
                  scales=(0.25 + 0.2 * torch.rand(P, 3, generator=gen, dtype=F64)) * z[:, None]
                  * tanfov, rotations=q / q.norm(dim=1, keepdim=True))
    upstream = random_upstream(settings, 3, 1.0)
    fields = (tanfov, tanfov * H / W)

    def gradient(run, inputs):
        leaves = [torch.tensor(t, dtype=F64, requires_grad=True) for t in fields]
        color, radii, depth, weight = run(inputs, settings._replace(tanfovx=leaves[0],
                                                                    tanfovy=leaves[1]))
        loss = sum((out * upstream[k]).sum()
                   for k, out in (("color", color), ("depth", depth), ("weight", weight)))
        return torch.stack(torch.autograd.grad(loss, leaves)), radii

    got, radii = gradient(run_backend, inputs)
    want, _ = gradient(run_reference, inputs)
    assert (radii[past] > 0).all()  # clamped, and on screen
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9 * float(want.abs().max()))
    assert (want != 0).all()

    def render(tx, ty):
        color, _, depth, weight = run_backend(inputs, settings._replace(tanfovx=tx, tanfovy=ty))
        return color, depth, weight

    assert torch.autograd.gradcheck(render, [torch.tensor(t, dtype=F64, requires_grad=True)
                                             for t in fields], eps=1e-7, atol=1e-6, rtol=1e-5)


def test_self_calibration_recovers_the_intrinsics():
    """Renders of a scene from three views with true intrinsics; the same Gaussians rendered
    with focal lengths 6% off and the principal point 3 px off: Adam on the intrinsics alone
    (an L1 colour loss) brings the focal lengths within 0.2% and the principal point within
    0.1 px of the truth. Float32, the CPU backend."""
    gen = torch.Generator().manual_seed(7600)
    W, H = 64, 48
    base = axis_camera(H, W, tanfovx=0.6)
    truth = torch.tensor(intrinsics_of(base, shift=(1.5, -1.0)), dtype=F64)
    P = 400
    z = 3.0 + 3.0 * torch.rand(P, generator=gen, dtype=F64)
    uv = (torch.rand(P, 2, generator=gen, dtype=F64) - 0.5) * 1.6 * torch.tensor(
        [0.6, 0.6 * H / W], dtype=F64)
    inputs = dict(means3D=torch.cat([uv * z[:, None], z[:, None]], 1).float(),
                  means2D=torch.zeros(P, 3),
                  opacities=0.3 + 0.6 * torch.rand(P, 1, generator=gen),
                  colors_precomp=torch.rand(P, 3, generator=gen),
                  scales=((0.01 + 0.02 * torch.rand(P, 3, generator=gen, dtype=F64))
                          * z[:, None]).float(),
                  rotations=torch.nn.functional.normalize(torch.randn(P, 4, generator=gen), dim=1))
    # Three views: the camera turned about y by -0.1, 0, 0.1 rad.
    views = []
    for angle in (-0.1, 0.0, 0.1):
        c, s = math.cos(angle), math.sin(angle)
        w2c = torch.tensor([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]])
        views.append(base._replace(viewmatrix=w2c.T.contiguous()))
    with torch.no_grad():
        targets = [run_backend(inputs, with_intrinsics(v, *truth.float()))[0] for v in views]
    estimate = (truth * torch.tensor([1.06, 0.94, 1.0, 1.0], dtype=F64)
                + torch.tensor([0.0, 0.0, -3.0, 2.0], dtype=F64)).float().requires_grad_()
    # Steps in the units of each: a focal length's percent is a few px, a principal point's px.
    optimizer = torch.optim.Adam([estimate], lr=0.3)
    for step in range(150):
        view = views[step % 3]
        color = run_backend(inputs, with_intrinsics(view, *estimate.unbind()))[0]
        loss = (color - targets[step % 3]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = estimate.detach().double()
    assert ((final[:2] - truth[:2]).abs() / truth[:2]).max() < 2e-3, (final, truth)
    assert (final[2:] - truth[2:]).abs().max() < 0.1, (final, truth)


def test_number_and_tensor_fields_of_view_render_alike():
    """A field of view given as a tensor that takes no gradient (or under no_grad) renders bit
    for bit as the same number does; one that takes a gradient does too, and its gradient
    arrives in its own dtype and shape; the Gaussians' gradients are those of the number's."""
    scene = scenes.make_scene(7700, P=50, sh_degree=1)
    number = scene.settings
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(3, 29, 37, generator=gen), torch.randn(29, 37, generator=gen)]
    runs = []
    for mode in ("number", "tensor", "grad"):
        fov = torch.tensor([float(number.tanfovx)], dtype=F64, requires_grad=mode == "grad")
        settings = number if mode == "number" else number._replace(tanfovx=fov)
        inputs = scene.with_grad()
        color, radii, depth, weight = run_backend(inputs, settings)
        ((color * weights[0]).sum() + (depth * weights[1]).sum()).backward()
        runs.append(((color, radii, depth, weight), {k: v.grad for k, v in inputs.items()
                                                     if v is not None}, fov))
    for outputs, grads, _ in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outputs, runs[0][0]))
        assert all(torch.equal(grads[k], runs[0][1][k]) for k in grads)
    fov = runs[2][2]
    assert fov.grad.dtype == F64 and fov.grad.shape == (1,) and fov.grad.abs().item() > 0
    assert runs[1][2].grad is None


@pytest.mark.parametrize("bad,error", [(torch.tensor([0.5, 0.5]), TypeError),
                                       (torch.tensor(-0.5, requires_grad=True), ValueError),
                                       (torch.tensor(float("nan"), requires_grad=True),
                                        ValueError)])
def test_bad_field_of_view_tensors(bad, error):
    scene = scenes.make_scene(7800, P=10)
    with pytest.raises(error, match="raster_settings.tanfovx"):
        run_backend(scene.inputs, scene.settings._replace(tanfovx=bad))


def test_surface_helpers_take_the_focal_gradient():
    """The surface helpers that read the focal lengths pass the fields of view's gradient on:
    RaDe-GS's depth planes (`intersection_planes`: the slope a = -z^2 (n / f) / (n . t)) and a
    fisheye's pixel rays (`depth_to_points`), by finite differences (float64); the helpers of
    the forks that read them as numbers (RaDe-GS's own call) take tensors without a warning."""
    import warnings

    from diff_gaussian_rasterization_depth import rade_gs, surface
    scene = scenes.make_scene(7900, P=30, height=24, width=32, sh_degree=0, dtype=F64,
                              outliers=False)
    i = scene.inputs
    fields = [torch.tensor(float(getattr(scene.settings, n)), dtype=F64, requires_grad=True)
              for n in ("tanfovx", "tanfovy")]

    def planes(tx, ty):
        return surface.intersection_planes(i["means3D"], scene.settings._replace(
            tanfovx=tx, tanfovy=ty), scales=i["scales"], rotations=i["rotations"]).features

    assert torch.autograd.gradcheck(planes, fields, eps=1e-7, atol=1e-7, rtol=1e-6)
    fish = scenes.fisheye(scene, half_angle=1.0)
    depth = 2.0 + torch.rand(24, 32, generator=torch.Generator().manual_seed(3), dtype=F64)

    def points(tx, ty):
        return surface.depth_to_points(depth, fish.settings._replace(tanfovx=tx, tanfovy=ty))

    leaves = [torch.tensor(float(getattr(fish.settings, n)), dtype=F64, requires_grad=True)
              for n in ("tanfovx", "tanfovy")]
    assert torch.autograd.gradcheck(points, leaves, eps=1e-7, atol=1e-7, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scene.settings
        settings = rade_gs.GaussianRasterizationSettings(
            image_height=s.image_height, image_width=s.image_width, tanfovx=fields[0],
            tanfovy=fields[1], kernel_size=0.0, bg=s.bg, scale_modifier=1.0,
            viewmatrix=s.viewmatrix, projmatrix=s.projmatrix, sh_degree=0, campos=s.campos)
        out = rade_gs.GaussianRasterizer(settings)(
            means3D=i["means3D"], means2D=torch.zeros_like(i["means3D"]),
            opacities=i["opacities"], shs=i["shs"], scales=i["scales"],
            rotations=i["rotations"])
    out[0].sum().backward()
    assert fields[0].grad is not None and fields[0].grad != 0
