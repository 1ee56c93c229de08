"""The touch count (`touch_count=True`, MonoGS's n_touched) and MonoGS's API
(`diff_gaussian_rasterization_depth.monogs`): the CPU backend and the CUDA targets against the
reference, identities, and the pose gradients (theta, rho) against autograd through the
reference with the pose moved by the matrix exponential; and SplaTAM's depth-and-silhouette
render (the w-depth fork's second call) taken from the colour call's outputs.

A Gaussian touches a pixel where it is blended and the transmittance behind it stays above 0.5.
A correct float32 implementation may round an alpha or a transmittance to the other side of a
threshold at a few pixels (scenes.ambiguous, and T within 1e-4 of 0.5): there each Gaussian of
the pixel's tile list may gain or lose that pixel, so a Gaussian's count may differ from the
reference's by at most the ambiguous pixels of its tiles; everywhere else they are equal.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, monogs
from diff_gaussian_rasterization_depth.reference import ALPHA_MIN, rasterize_reference
from robust_helpers import axis_camera, settings_on

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64


def touch_slack(scene):
    """(the reference's touch count (P,), how far a correct count may differ from it (P,))."""
    out, everyone, blend, idx, settings = scenes.reference_internals(scene)
    pixels, gaussians = scenes.ambiguous(scene)
    pixels = pixels | (blend["blended"] & ((blend["T_after"] - 0.5).abs() <= 1e-4)).any(dim=0)
    scenes.check_ambiguity_rare(pixels, gaussians, scene)
    slack = torch.zeros(scene.P, dtype=torch.int64)
    # Where a Gaussian's alpha may reach 1/255 at all: elsewhere no rounding makes it touch.
    reach = blend["considered"] & (blend["raw_alpha"] >= ALPHA_MIN * (1 - 1e-4))
    slack[idx[blend["order"]]] = (reach & pixels).flatten(1).sum(dim=1)
    slack[gaussians] = 2 ** 30  # a radius on a knife's edge: its tiles are the backend's
    return out["touch_count"].long(), slack


def check_counts(got, want, slack):
    got = got.cpu().long()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert ((got - want).abs() <= slack).all(), (got - want)[(got - want).abs() > slack]
    exact = slack == 0
    assert exact.float().mean() > 0.6 and torch.equal(got[exact], want[exact])
    # Not vacuous: Gaussians with many touches, some with none on screen.
    assert want.max() >= 10 and (want == 0).any()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("seed", range(4))
def test_touch_count_matches_reference(seed, dtype):
    scene = scenes.make_scene(9100 + seed, P=160, height=40, width=56, sh_degree=1,
                              dtype=dtype, antialiasing=seed == 3)
    want, slack = touch_slack(scene)
    with torch.no_grad():
        out = GaussianRasterizer(scene.settings)(**scene.inputs, touch_count=True)
    assert len(out) == 5 and out[-1].dtype == torch.int32
    check_counts(out[-1], want, slack)
    if dtype == F64:  # no threshold within float64's rounding on these scenes
        assert torch.equal(out[-1].long(), want)


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("seed", range(3))
def test_touch_count_cuda_matches_reference(seed, target):
    """The CUDA kernel (its own walk of the compact state's tile lists) against the reference,
    lists long enough to be split for the backward and the forward (P = 900 over 6 tiles)."""
    scene = scenes.make_scene(9200 + seed, P=900 if seed == 2 else 200, height=33, width=47,
                              sh_degree=2)
    want, slack = touch_slack(scene)
    with active(target), torch.no_grad():
        inputs = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
        out = GaussianRasterizer(settings_on(scene.settings, target))(**inputs, touch_count=True)
    check_counts(out[-1], want, slack)


@pytest.mark.parametrize("power_bound", [True, False])
def test_touch_count_lanes_and_per_pixel_loop_agree(power_bound):
    """The float CPU path counts on the render's eight lanes; the per-pixel loop (float64's, and
    float's where the lanes do not run) gives the same counts, bit for bit, with the power bound
    before the exponential or without it."""
    scene = scenes.make_scene(9250, P=600, height=45, width=70, sh_degree=1)
    ext = _backend._ext()
    counts = []
    try:
        for lanes in (True, False):
            ext.set_cpu_tuning(lanes=lanes, power_bound=power_bound)
            with torch.no_grad():
                counts.append(GaussianRasterizer(scene.settings)(**scene.inputs,
                                                                 touch_count=True)[-1])
    finally:
        ext.set_cpu_tuning(lanes=True, power_bound=True)
    assert counts[0].sum() > 1000 and torch.equal(counts[0], counts[1])


def with_bad_gaussians(target, **options):
    """The last output of a call (with `options`) on a scene of 120 Gaussians, on the same with 6
    bad ones appended (NaN and inf in means, opacities, scales and rotations; one behind the
    camera), and on none: (alone, together, nothing), on the CPU."""
    scene = scenes.make_scene(9900, P=120, height=29, width=37, sh_degree=1, outliers=False)
    nan, inf = float("nan"), float("inf")
    bad = {k: (None if v is None else v[:6].clone()) for k, v in scene.inputs.items()}
    bad["means3D"][0, 1] = nan
    bad["means3D"][1, 2] = inf
    bad["opacities"][2, 0] = nan
    bad["scales"][3, 1] = inf
    bad["rotations"][4, 0] = nan
    forward = scene.settings.viewmatrix.reshape(4, 4)[:3, 2]  # the camera's z axis, in world
    bad["means3D"][5] = scene.settings.campos - 5 * forward   # behind the camera
    joined = {k: None if v is None else torch.cat([scene.inputs[k], bad[k]])
              for k, v in scene.inputs.items()}
    empty = {k: None if v is None else v[:0] for k, v in scene.inputs.items()}
    settings = settings_on(scene.settings, target)
    with active(target), torch.no_grad():
        def last(inputs):
            on = {k: None if v is None else v.to(target) for k, v in inputs.items()}
            return GaussianRasterizer(settings)(**on, **options)[-1].cpu()
        return last(scene.inputs), last(joined), last(empty)


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_touch_count_of_culled_and_non_finite_gaussians(target):
    """Gaussians culled or with non-finite values (behind the camera, NaN and inf in means,
    opacities, scales and rotations) touch nothing and leave the others' counts as they are;
    an empty scene gives an empty count."""
    alone, together, nothing = with_bad_gaussians(target, touch_count=True)
    assert alone.sum() > 100
    assert torch.equal(together[:120], alone)
    assert torch.equal(together[120:], torch.zeros(6, dtype=torch.int32))
    assert nothing.shape == (0,) and nothing.dtype == torch.int32


def lone_gaussian(opacity, dtype=F32):
    """One Gaussian in front of an axis camera, wider than a tile."""
    settings = axis_camera(40, 48, dtype=dtype)
    inputs = dict(means3D=torch.tensor([[0.05, -0.03, 3.0]], dtype=dtype),
                  means2D=torch.zeros(1, 3, dtype=dtype),
                  opacities=torch.tensor([[opacity]], dtype=dtype),
                  colors_precomp=torch.tensor([[0.3, 0.6, 0.9]], dtype=dtype),
                  scales=torch.tensor([[0.3, 0.2, 0.25]], dtype=dtype),
                  rotations=torch.tensor([[0.9, 0.1, -0.2, 0.3]], dtype=dtype))
    return settings, inputs


@pytest.mark.parametrize("opacity", [0.3, 0.8, 0.99])
def test_touch_count_of_a_lone_gaussian(opacity):
    """Alone, a Gaussian's weight at a pixel is its alpha and T behind it 1 - alpha: it touches
    the pixels where 0 < weight < 0.5 (every blended one when its opacity is below 0.5)."""
    settings, inputs = lone_gaussian(opacity)
    color, radii, depth, weight, touched = GaussianRasterizer(settings)(**inputs,
                                                                        touch_count=True)
    blended = weight > 0
    assert blended.sum() > 100 and radii[0] > 8  # over several tiles
    assert touched.tolist() == [int((blended & (weight < 0.5)).sum())]
    if opacity > 0.5:  # the centre is not touched, the rim is
        assert 0 < touched[0] < blended.sum()


def test_touch_count_costs_the_render_nothing():
    """Outputs and gradients with the count are those without it, bit for bit; the count takes
    no gradient, also under no_grad."""
    scene = scenes.make_scene(9300, P=120, height=29, width=37, sh_degree=1)

    def run(**flags):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                  for k, v in scene.inputs.items()}
        out = GaussianRasterizer(scene.settings)(**leaves, **flags)
        gen = torch.Generator().manual_seed(0)
        loss = sum((o * torch.randn(o.shape, generator=gen)).sum()
                   for o in (out[0], out[2], out[3]))
        loss.backward()
        return out, {k: v.grad for k, v in leaves.items() if v is not None}

    (plain, plain_grads), (counted, counted_grads) = run(), run(touch_count=True)
    assert len(counted) == 5 and not counted[-1].requires_grad
    for a, b in zip(plain, counted):
        assert torch.equal(a, b)
    for k in plain_grads:
        assert torch.equal(plain_grads[k], counted_grads[k])
    with torch.no_grad():
        again = GaussianRasterizer(scene.settings)(**scene.inputs, touch_count=True)
    assert torch.equal(again[-1], counted[-1])
    # After the feature map and the median, in that order.
    features = torch.rand(scene.P, 2)
    with torch.no_grad():
        full = GaussianRasterizer(scene.settings)(**scene.inputs, features=features,
                                                  median_depth=True, touch_count=True)
    assert len(full) == 7 and full[4].shape == (2, 29, 37) and full[5].shape == (29, 37)
    assert torch.equal(full[-1], counted[-1])
    with pytest.raises(TypeError, match="touch_count"):
        GaussianRasterizer(scene.settings)(**scene.inputs, touch_count=1)


# ----------------------------------------------------------------------------------------------
# MonoGS's API
# ----------------------------------------------------------------------------------------------

def monogs_settings(scene, dtype=F64, device="cpu"):
    """MonoGS's settings of a scene, built by keyword as MonoGS's renderer builds them."""
    s = scene.settings
    view = s.viewmatrix.reshape(4, 4).to(F64)
    raw = torch.linalg.solve(view, s.projmatrix.reshape(4, 4).to(F64))  # view @ raw = full
    put = lambda t: t.to(dtype).to(device)  # noqa: E731
    return monogs.GaussianRasterizationSettings(
        image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
        tanfovy=s.tanfovy, bg=put(s.bg), scale_modifier=s.scale_modifier,
        viewmatrix=put(view), projmatrix=put(view @ raw), projmatrix_raw=put(raw),
        sh_degree=s.sh_degree, campos=put(s.campos), prefiltered=False, debug=False)


def monogs_call(settings, inputs, theta=None, rho=None):
    """MonoGS's call, by keyword."""
    return monogs.GaussianRasterizer(raster_settings=settings)(
        means3D=inputs["means3D"], means2D=inputs["means2D"], shs=inputs.get("shs"),
        colors_precomp=inputs.get("colors_precomp"), opacities=inputs["opacities"],
        scales=inputs["scales"], rotations=inputs["rotations"], cov3D_precomp=None,
        theta=theta, rho=rho)


def test_monogs_outputs():
    """(color, radii, depth, opacity, n_touched): depth the unnormalized sum_i w_i z_i and
    opacity the weight, both (1, H, W), n_touched the touch count."""
    scene = scenes.make_scene(9400, P=150, height=31, width=45, sh_degree=2, dtype=F64)
    settings = monogs_settings(scene)
    with torch.no_grad():
        color, radii, depth, opacity, n_touched = monogs_call(settings, scene.inputs)
        ref = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                                  touch_count=True)
    torch.testing.assert_close(color, ref[0], rtol=1e-10, atol=1e-12)
    assert torch.equal(radii, ref[1]) and torch.equal(n_touched, ref[4])
    assert depth.shape == opacity.shape == (1, 31, 45)
    torch.testing.assert_close(depth[0], ref[2] * ref[3], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(opacity[0], ref[3], rtol=1e-10, atol=1e-12)
    visible = monogs.GaussianRasterizer(settings).markVisible(scene.inputs["means3D"])
    assert visible.dtype == torch.bool and (radii[~visible] == 0).all()


def pose_oracle(scene, settings, upstream):
    """dL/d(rho, theta) at 0 by autograd through the reference, world-to-camera moved to
    matrix_exp([rho, theta]^) @ world-to-camera, the full projection and the camera centre
    rebuilt from it (float64)."""
    tau = torch.zeros(6, dtype=F64, requires_grad=True)
    z = torch.zeros((), dtype=F64)
    r, w = tau[:3], tau[3:]
    tangent = torch.stack([torch.stack([z, -w[2], w[1], r[0]]),
                           torch.stack([w[2], z, -w[0], r[1]]),
                           torch.stack([-w[1], w[0], z, r[2]]),
                           torch.stack([z, z, z, z])])
    w2c = torch.linalg.matrix_exp(tangent) @ settings.viewmatrix.cpu().to(F64).T
    view = w2c.T
    moved = scene.settings._replace(viewmatrix=view,
                                    projmatrix=view @ settings.projmatrix_raw.cpu().to(F64),
                                    campos=-w2c[:3, :3].T @ w2c[:3, 3], bg=scene.settings.bg.to(F64))
    inputs = {k: None if v is None else v.detach().to(F64) for k, v in scene.inputs.items()}
    color, _, depth, weight = rasterize_reference(**inputs, raster_settings=moved)
    loss = ((color * upstream[0]).sum() + (depth * weight * upstream[1]).sum()
            + (weight * upstream[2]).sum())
    loss.backward()
    return tau.grad[:3], tau.grad[3:]


def monogs_pose_grads(scene, settings, upstream, device, theta_value=0.0):
    with active(device):
        inputs = {k: None if v is None else v.detach().to(settings.viewmatrix.dtype).to(device)
                  for k, v in scene.inputs.items()}
        theta = torch.full((3,), theta_value, dtype=F32, device=device, requires_grad=True)
        rho = torch.zeros(3, dtype=F32, device=device, requires_grad=True)
        color, _, depth, opacity, _ = monogs_call(settings, inputs, theta, rho)
        up = [u.to(color.dtype).to(device) for u in upstream]
        loss = (color * up[0]).sum() + (depth[0] * up[1]).sum() + (opacity[0] * up[2]).sum()
        loss.backward()
        return rho.grad.cpu().to(F64), theta.grad.cpu().to(F64), color.detach().cpu()


def random_upstream(scene, seed):
    H, W = scene.settings.image_height, scene.settings.image_width
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, H, W, generator=gen, dtype=F64),
            torch.randn(H, W, generator=gen, dtype=F64) * 0.1,
            torch.randn(H, W, generator=gen, dtype=F64)]


def assert_pose_close(got, want, rtol):
    for g, w in zip(got, want):
        scale = max(w.abs().max().item(), 1.0)
        torch.testing.assert_close(g, w, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(3))
def test_monogs_pose_gradient_matches_reference(seed, dtype):
    """theta and rho get the total derivative at zero: through the view matrix, the full
    projection and the camera centre (SH of degree 2 reads the centre)."""
    scene = scenes.make_scene(9500 + seed, P=150, height=31, width=45, sh_degree=2,
                              smooth=True)
    upstream = random_upstream(scene, seed)
    want = pose_oracle(scene, monogs_settings(scene), upstream)
    got = monogs_pose_grads(scene, monogs_settings(scene, dtype), upstream, "cpu")[:2]
    assert min(w.abs().max().item() for w in want) > 0.1  # not vacuous
    # float64: within the float32 rounding of the scene's camera centre (the oracle's is
    # computed from the pose).
    assert_pose_close(got, want, 1e-6 if dtype == F64 else 2e-4)


def test_monogs_without_projmatrix_raw():
    """projmatrix_raw None: the projection is solved from the two matrices, same gradients."""
    scene = scenes.make_scene(9550, P=120, height=29, width=37, sh_degree=1, smooth=True)
    settings, upstream = monogs_settings(scene), random_upstream(scene, 3)
    given = monogs_pose_grads(scene, settings, upstream, "cpu")
    solved = monogs_pose_grads(scene, settings._replace(projmatrix_raw=None), upstream, "cpu")
    for a, b in zip(given, solved):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_monogs_bad_pose_inputs_are_named():
    scene = scenes.make_scene(9560, P=20, height=17, width=19, sh_degree=1)
    settings = monogs_settings(scene, F32)
    zero = torch.zeros(3, requires_grad=True)
    for kwargs, error, name in [
            (dict(theta=torch.zeros(4, requires_grad=True), rho=zero), ValueError, "theta"),
            (dict(theta=zero, rho=torch.zeros(2, 3)), ValueError, "rho"),
            (dict(theta=torch.zeros(3, dtype=torch.int64), rho=zero), TypeError, "theta"),
            (dict(theta=[0.0, 0.0, 0.0], rho=zero), TypeError, "theta")]:
        with pytest.raises(error, match=name):
            monogs_call(settings, scene.inputs, **kwargs)
    with pytest.raises(ValueError, match="projmatrix_raw"):
        monogs_call(settings._replace(projmatrix_raw=torch.eye(3)), scene.inputs, zero, zero)


def test_monogs_pose_values_are_not_read():
    """As in MonoGS, the render does not read theta and rho (its pose update folds them into
    the camera and zeroes them): values of 0.3 give the image and the gradients of 0."""
    scene = scenes.make_scene(9600, P=120, height=29, width=37, sh_degree=1, smooth=True)
    settings, upstream = monogs_settings(scene), random_upstream(scene, 1)
    zero = monogs_pose_grads(scene, settings, upstream, "cpu")
    moved = monogs_pose_grads(scene, settings, upstream, "cpu", theta_value=0.3)
    for a, b in zip(zero, moved):
        assert torch.equal(a, b)
    # Without theta and rho (or with them not requiring grad) the call is the package's plain
    # one: no camera gradient is computed.
    with torch.no_grad():
        plain = monogs_call(settings, {k: None if v is None else v.to(F64)
                                       for k, v in scene.inputs.items()})
    assert torch.equal(plain[0], zero[2])


@pytest.mark.parametrize("target", cuda_targets())
def test_monogs_pose_gradient_cuda(target):
    """The pose gradients on a CUDA target (float32) against the float64 reference."""
    scene = scenes.make_scene(9700, P=150, height=31, width=45, sh_degree=2, smooth=True)
    upstream = random_upstream(scene, 2)
    want = pose_oracle(scene, monogs_settings(scene), upstream)
    got = monogs_pose_grads(scene, monogs_settings(scene, F32, target), upstream, target)[:2]
    assert_pose_close(got, want, 5e-4)


# ----------------------------------------------------------------------------------------------
# The w-depth fork's two renders (SplaTAM, Dynamic 3D Gaussians) in one call
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(2))
def test_depth_silhouette_render_in_one_call(seed):
    """SplaTAM renders its depth, silhouette and depth^2 as the colours [z, 1, z^2] of a second
    call with a black background; the colour call alone gives them: depth * weight, weight and
    the feature map of z^2 (doc/migration.md). Values and every gradient, float64, CPU."""
    scene = scenes.make_scene(9800 + seed, P=80, height=29, width=37, sh_degree=1, dtype=F64)
    H, W = scene.settings.image_height, scene.settings.image_width
    gen = torch.Generator().manual_seed(seed)
    up = torch.randn(3, H, W, generator=gen, dtype=F64)
    names = ("means3D", "opacities", "scales", "rotations")

    def view_z(means3D):
        view = scene.settings.viewmatrix.reshape(4, 4).to(F64)
        return torch.cat([means3D, torch.ones_like(means3D[:, :1])], dim=1) @ view[:, 2]

    a = scene.with_grad(names)
    z = view_z(a["means3D"])
    _, _, depth, weight, z2_map = GaussianRasterizer(scene.settings)(
        **a, features=(z * z)[:, None])
    one = torch.stack([depth * weight, weight, z2_map[0]])
    (one * up).sum().backward()

    b = scene.with_grad(names)
    z = view_z(b["means3D"])
    geometry = {k: v for k, v in b.items() if k not in ("shs", "dc", "colors_precomp")}
    black = scene.settings._replace(bg=torch.zeros(3, dtype=F64))
    two = GaussianRasterizer(black)(**geometry, colors_precomp=torch.stack(
        [z, torch.ones_like(z), z * z], dim=1))[0]
    (two * up).sum().backward()

    assert weight.max() > 0.5
    torch.testing.assert_close(one, two.detach(), rtol=1e-10, atol=1e-12)
    for name in names:
        assert a[name].grad.abs().max() > 0, name
        torch.testing.assert_close(a[name].grad, b[name].grad, rtol=1e-9,
                                   atol=1e-9 * a[name].grad.abs().max().item())
