"""gsplat's `rasterization()` on the package (`diff_gaussian_rasterization_depth.gsplat`).

The oracle is `gsplat_twin` below: gsplat's classic (and antialiased) render written from its
documented formulas in its own conventions (OpenCV world-to-camera `viewmats`, intrinsics `K`
with any principal point, pixel (i, j) centred at (i + 0.5, j + 0.5), unnormalized quaternions,
channels last), by autograd in float64. Its scenes keep every splat's opacity at most 0.34, so
that the 3-sigma footprint of the 3DGS math (the one place where the two rasterizers cut
differently) holds every pixel where alpha reaches 1/255, and every mean inside the view (the
projection's clamp is not reached). Then the package's render must be the twin's, outputs and
gradients (means, quats, scales, opacities, colors, viewmats, and means2d's, in pixels).
The rest: render modes, N-D colours with backgrounds, SH, covariances, batches of cameras and
scenes, gsplat's packed meta, near and far planes, radius_clip, sparse gradients, absgrad, the
checks, and the same on the CUDA targets.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer
from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth.gsplat import rasterization

F64 = torch.float64
W, H = 48, 36


def quaternion_matrix(q):
    """(N, 3, 3) rotation of the unit quaternion along q = (w, x, y, z) (gsplat normalizes)."""
    return scenes.rotation_matrices(q / q.norm(dim=-1, keepdim=True))


def fisheye_twin(cam, fx, fy, cx, cy, radial=(0.0, 0.0, 0.0, 0.0)):
    """gsplat's fisheye of view-space points cam (N, 3): (means2d (N, 2), its Jacobian by cam
    (N, 2, 3)), theta = atan2(|(x, y)|, z) the angle off the axis, theta_d = theta (1 + k1
    theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8) with `radial` (OpenCV's k1-k4, gsplat's
    fisheye radial_coeffs) and means2d = c + f (x, y) theta_d / |(x, y)|; the Jacobian by
    autograd of that formula (with a graph, so that gradients pass through it)."""
    def project(points):
        x, y, z = points.unbind(-1)
        rho = torch.sqrt(x * x + y * y)
        theta = torch.atan2(rho, z)
        theta_d = theta * (1 + sum(k * theta ** (2 * i + 2) for i, k in enumerate(radial)))
        return torch.stack([fx * x * theta_d / rho + cx, fy * y * theta_d / rho + cy], -1)
    jac = torch.autograd.functional.jacobian(lambda p: project(p).sum(0), cam, create_graph=True)
    return project(cam), jac.permute(1, 0, 2)


def distorted_pinhole_twin(cam, fx, fy, cx, cy, radial, tangential):
    """gsplat's pinhole with OpenCV's coefficients (its radial_coeffs k1-k6, the rational model,
    and tangential_coeffs p1, p2) of view-space points cam (N, 3): (means2d (N, 2), its
    Jacobian by cam (N, 2, 3) by autograd, with a graph): (x', y') = (x, y) icD + delta with
    (x, y) = cam.xy / z, r2 = x^2 + y^2, icD = (1 + k1 r2 + k2 r2^2 + k3 r2^3) / (1 + k4 r2 +
    k5 r2^2 + k6 r2^3), delta = (p1 2 x y + p2 (r2 + 2 x^2), p1 (r2 + 2 y^2) + p2 2 x y)."""
    k1, k2, k3, k4, k5, k6 = radial
    p1, p2 = tangential

    def project(points):
        x, y = points[..., 0] / points[..., 2], points[..., 1] / points[..., 2]
        r2 = x * x + y * y
        icD = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        dx = p1 * 2 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + p2 * 2 * x * y
        return torch.stack([fx * (x * icD + dx) + cx, fy * (y * icD + dy) + cy], -1)
    jac = torch.autograd.functional.jacobian(lambda p: project(p).sum(0), cam, create_graph=True)
    return project(cam), jac.permute(1, 0, 2)


def gsplat_twin(means, quats, scales, opacities, colors, viewmat, K, width, height, eps2d=0.3,
                antialiased=False, background=None, delta=None, ortho=False, fisheye=False,
                radial=(0.0, 0.0, 0.0, 0.0), pinhole_coeffs=None):
    """gsplat's render of one camera, densely: (color (H, W, D), expected depth (H, W),
    alpha (H, W), means2d (N, 2)). `delta` (N, 2), zeros, is added to the projected means, so
    its gradient is dL/d(means2d) as gsplat defines it (the conics held). `ortho`: gsplat's
    camera_model="ortho" (means2d K (x, y), the Jacobian diag(fx, fy)); `fisheye`: its
    camera_model="fisheye" (fisheye_twin, with OpenCV's coefficients `radial`);
    `pinhole_coeffs`: (radial (6,), tangential (2,)), its distorted pinhole
    (distorted_pinhole_twin)."""
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    cam = means @ R.T + t
    x, y, z = cam.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    zero = torch.zeros_like(z)
    if fisheye:
        uv, J = fisheye_twin(cam, fx, fy, cx, cy, radial)
    elif pinhole_coeffs is not None:
        uv, J = distorted_pinhole_twin(cam, fx, fy, cx, cy, *pinhole_coeffs)
    elif ortho:
        uv = torch.stack([fx * x + cx, fy * y + cy], -1)
        J = torch.stack([torch.stack([fx + zero, zero, zero], -1),
                         torch.stack([zero, fy + zero, zero], -1)], -2)
    else:
        uv = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)
        J = torch.stack([torch.stack([fx / z, zero, -fx * x / z ** 2], -1),
                         torch.stack([zero, fy / z, -fy * y / z ** 2], -1)], -2)
    if delta is not None:
        uv = uv + delta
    M = quaternion_matrix(quats) * scales[:, None, :]
    cov_cam = R @ (M @ M.transpose(1, 2)) @ R.T
    cov2d = J @ cov_cam @ J.transpose(1, 2)
    det_before = torch.linalg.det(cov2d)
    cov2d = cov2d + eps2d * torch.eye(2, dtype=means.dtype)
    opacity = opacities
    if antialiased:
        opacity = opacity * torch.sqrt(det_before / torch.linalg.det(cov2d))
    conic = torch.linalg.inv(cov2d)
    px = torch.arange(width, dtype=means.dtype) + 0.5
    py = torch.arange(height, dtype=means.dtype) + 0.5
    d = torch.stack(torch.meshgrid(py, px, indexing="ij")[::-1], -1)[None] - uv[:, None, None]
    power = -0.5 * torch.einsum("nhwi,nij,nhwj->nhw", d, conic, d)
    alpha = opacity[:, None, None] * torch.exp(power)
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    T = torch.ones(height, width, dtype=means.dtype)
    color = torch.zeros(height, width, colors.shape[-1], dtype=means.dtype)
    depth = torch.zeros(height, width, dtype=means.dtype)
    for i in torch.argsort(z.detach()).tolist():
        w = alpha[i] * T
        color = color + w[..., None] * colors[i]
        depth = depth + w * z[i]
        T = T * (1 - alpha[i])
    weight = 1 - T
    if background is not None:
        color = color + T[..., None] * background
    expected = torch.where(weight > 0, depth / torch.where(weight > 0, weight, 1), 0 * depth)
    return color, expected, weight, uv, alpha


def twin_scene(seed, N=14, channels=3, dtype=F64, cameras=1, ortho=False, focal=(50, 70)):
    """Gaussians in front of `cameras` cameras with off-centre principal points: every mean
    inside every view, footprints of 1.5-4 px, opacities 0.05-0.34, quaternions not unit.
    `ortho`: placed and sized for orthographic cameras of the same K (pixel = K (x, y)).
    `focal`: the range of the focal lengths in px (50-70: 20 degrees from the centre to the
    image's edge)."""
    gen = torch.Generator().manual_seed(seed)

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=F64)

    Ks, viewmats = [], []
    for _ in range(cameras):
        f = u(2, lo=focal[0], hi=focal[1])
        K = torch.tensor([[f[0], 0, 0.4 * W], [0, f[1], 0.6 * H], [0, 0, 1]], dtype=F64)
        K[0, 2] += u(1, lo=-3, hi=3)[0]
        # Orthographic views move a point by the angle times its depth (up to 5), not
        # its distance from the axis: smaller turns keep the means inside every view.
        angle = u(3, lo=-0.05, hi=0.05) / (5.0 if ortho else 1.0)
        R = quaternion_matrix(torch.cat([torch.ones(1, dtype=F64), angle])[None])[0]
        viewmat = torch.eye(4, dtype=F64)
        viewmat[:3, :3] = R
        viewmat[:3, 3] = u(3, lo=-0.1, hi=0.1)
        Ks.append(K)
        viewmats.append(viewmat)
    # Drawn in camera 0's space, well inside its view (and, for small motions, the others').
    z = u(N, lo=2.0, hi=5.0)
    K0 = Ks[0]
    px = u(N, lo=0.3 * W, hi=0.7 * W)
    py = u(N, lo=0.3 * H, hi=0.7 * H)
    depth = torch.ones_like(z) if ortho else z  # the scale of a pixel, in view-space units
    cam = torch.stack([(px - K0[0, 2]) * depth / K0[0, 0], (py - K0[1, 2]) * depth / K0[1, 1], z],
                      -1)
    R0, t0 = viewmats[0][:3, :3], viewmats[0][:3, 3]
    means = (cam - t0) @ R0
    sigma_px = u(N, 3, lo=1.5, hi=4.0)
    scales = sigma_px * depth[:, None] / K0[0, 0]
    quats = torch.randn(N, 4, generator=gen, dtype=F64) * u(N, 1, lo=0.5, hi=2.0)
    opacities = u(N, lo=0.05, hi=0.34)
    colors = u(N, channels)
    tensors = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                   viewmats=torch.stack(viewmats), Ks=torch.stack(Ks))
    return {k: v.to(dtype) for k, v in tensors.items()}


# The inputs gsplat differentiates, and Ks, whose gradient (the focal lengths' and principal
# point's) the package's call gives where gsplat's own gives none.
WITH_KS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")


def leaves(scene, names=("means", "quats", "scales", "opacities", "colors", "viewmats")):
    return {k: v.detach().clone().requires_grad_(k in names) for k, v in scene.items()}


def test_matches_gsplat_twin_f64():
    """Outputs and every gradient against the twin by autograd, float64, two cameras, off-centre
    principal points, classic and antialiased, with a background."""
    scene = twin_scene(1)
    scene["viewmats"] = torch.cat([scene["viewmats"], scene["viewmats"]])
    scene["viewmats"][1, 0, 3] += 0.05
    scene["Ks"] = torch.cat([scene["Ks"], scene["Ks"]])
    bg = torch.tensor([[0.2, 0.5, 0.1], [0.9, 0.3, 0.4]], dtype=F64)
    gen = torch.Generator().manual_seed(7)
    for mode in ("classic", "antialiased"):
        ours = leaves(scene, WITH_KS)
        our_bg = bg.clone().requires_grad_()  # learnable backgrounds, as gsplat's take a gradient
        image, alpha, meta = rasterization(**ours, width=W, height=H, render_mode="RGB+ED",
                                           backgrounds=our_bg, rasterize_mode=mode, packed=False)
        assert image.shape == (2, H, W, 4) and alpha.shape == (2, H, W, 1)
        theirs = leaves(scene, WITH_KS)
        their_bg = bg.clone().requires_grad_()
        delta = torch.zeros(2, scene["means"].shape[0], 2, dtype=F64, requires_grad=True)
        want = [gsplat_twin(theirs["means"], theirs["quats"], theirs["scales"],
                            theirs["opacities"], theirs["colors"], theirs["viewmats"][c],
                            theirs["Ks"][c], W, H, antialiased=mode == "antialiased",
                            background=their_bg[c], delta=delta[c]) for c in range(2)]
        want_image = torch.stack([torch.cat([w[0], w[1][..., None]], -1) for w in want])
        want_alpha = torch.stack([w[2] for w in want])[..., None]
        # Within 1e-6, not float64's rounding: the original's projection divides by w + 1e-7
        # (SPEC 4), which moves a mean by about 1e-7 of its offset from the principal point.
        torch.testing.assert_close(image, want_image, rtol=0, atol=1e-6)
        torch.testing.assert_close(alpha, want_alpha, rtol=0, atol=1e-6)
        assert (alpha > 0.3).sum() > 50  # the splats are on screen
        torch.testing.assert_close(meta["means2d"], torch.stack([w[3] for w in want]).detach())
        torch.testing.assert_close(meta["depths"][0], (scene["means"] @ scene["viewmats"][0, :3, :3].T
                                                       + scene["viewmats"][0, :3, 3])[:, 2])

        r_image = torch.rand(image.shape, generator=gen, dtype=F64)
        r_alpha = torch.rand(alpha.shape, generator=gen, dtype=F64)
        ((image * r_image).sum() + (alpha * r_alpha).sum()).backward()
        ((want_image * r_image).sum() + (want_alpha * r_alpha).sum()).backward()
        for name in WITH_KS:
            torch.testing.assert_close(ours[name].grad, theirs[name].grad, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, n=name: f"{mode} {n}: {m}")
        assert theirs["Ks"].grad[:, [0, 1, 0, 1], [0, 1, 2, 2]].abs().min() > 0
        torch.testing.assert_close(our_bg.grad, their_bg.grad, rtol=1e-6, atol=1e-6)
        assert their_bg.grad.abs().min() > 0
        torch.testing.assert_close(meta["means2d"].grad, delta.grad, rtol=1e-5, atol=1e-6)
        assert delta.grad.abs().max() > 1e-3


@pytest.mark.parametrize("camera_model", ["ortho", "fisheye", "fisheye-distorted",
                                          "pinhole-distorted"])
def test_camera_model_matches_gsplat_twin_f64(camera_model):
    """camera_model="ortho" and "fisheye": outputs, means2d and every gradient (viewmats'
    included) against the twin of gsplat's camera, float64, an off-centre principal point;
    the fisheye with OpenCV's radial_coeffs (k1-k4) too, and the pinhole with its radial_coeffs
    (k1-k6) and tangential_coeffs (p1, p2), where gsplat takes them only with its unscented
    transform (their gradients as well)."""
    ortho = camera_model == "ortho"
    pinhole = camera_model == "pinhole-distorted"
    radial = (0.06, -0.03, 0.008, -0.001) if camera_model == "fisheye-distorted" \
        else (0.0, 0.0, 0.0, 0.0)
    if pinhole:  # (k1-k6), (p1, p2): a strong rational barrel (L = 0.96 ten degrees off the axis)
        radial, tangential = (0.1, 0.05, 0.01, 1.5, 0.5, 0.05), (0.01, -0.008)
    camera_model = camera_model.split("-")[0]
    # The fisheye's at 18-24 px: means up to 40 degrees off the axis.
    scene = twin_scene(6, ortho=ortho, focal=(18, 24) if camera_model == "fisheye" else (50, 70))
    gen = torch.Generator().manual_seed(8)
    ours = leaves(scene, WITH_KS)
    # The coefficients as leaves of both sides: their gradient is compared too.
    coeffs = [torch.tensor([radial], dtype=F64, requires_grad=True) for _ in range(2)]
    distortion = dict(radial_coeffs=coeffs[0]) if any(radial) else {}
    if pinhole:
        tangent = [torch.tensor([tangential], dtype=F64, requires_grad=True) for _ in range(2)]
        distortion["tangential_coeffs"] = tangent[0]
    image, alpha, meta = rasterization(**ours, width=W, height=H, render_mode="RGB+ED",
                                       packed=False, camera_model=camera_model, **distortion)
    theirs = leaves(scene, WITH_KS)
    delta = torch.zeros(scene["means"].shape[0], 2, dtype=F64, requires_grad=True)
    color, expected, weight, uv, twin_alpha = gsplat_twin(
        theirs["means"], theirs["quats"], theirs["scales"], theirs["opacities"],
        theirs["colors"], theirs["viewmats"][0], theirs["Ks"][0], W, H, delta=delta, ortho=ortho,
        fisheye=camera_model == "fisheye", radial=tuple(coeffs[1][0].unbind()),
        pinhole_coeffs=(coeffs[1][0].unbind(), tangent[1][0].unbind()) if pinhole else None)
    # No alpha within rounding of 1/255, where the two may blend a splat differently (SPEC 4's
    # w + 1e-7 moves our means by 1e-7 of their offset from the centre).
    assert ((twin_alpha - 1 / 255).abs() > 1e-6).all()
    want_image = torch.cat([color, expected[..., None]], -1)[None]
    torch.testing.assert_close(image, want_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(alpha, weight[None, ..., None], rtol=0, atol=1e-6)
    assert (alpha > 0.3).sum() > 50
    torch.testing.assert_close(meta["means2d"][0], uv.detach())
    r_image = torch.rand(image.shape, generator=gen, dtype=F64)
    ((image * r_image).sum() + alpha.sum()).backward()
    ((want_image * r_image).sum() + weight.sum()).backward()
    # Relative to each gradient's scale (an orthographic view's are a few hundred here).
    for name in WITH_KS:
        want = theirs[name].grad
        torch.testing.assert_close(ours[name].grad, want, rtol=1e-5,
                                   atol=1e-6 * want.abs().max().item(),
                                   msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(meta["means2d"].grad[0], delta.grad, rtol=1e-5,
                               atol=1e-6 * delta.grad.abs().max().item())
    compared = [coeffs] + ([tangent] if pinhole else [])
    for ours_, theirs_ in (compared if distortion else []):
        want = theirs_.grad
        assert want.abs().min() > 0
        torch.testing.assert_close(ours_.grad, want, rtol=1e-5,
                                   atol=1e-6 * want.abs().max().item())
    # The same Gaussians through the pinhole camera of the same K render otherwise (by a
    # sizeable part of the opacities of at most 0.34).
    pinhole, _, _ = rasterization(**leaves(scene), width=W, height=H, packed=False)
    assert (pinhole - image[..., :3]).abs().max() > 0.05


def test_gradcheck_f64():
    """Finite differences (float64, the CPU backend) of the whole call, RGB+ED and alpha, in
    means, quats, scales, opacities, colours, viewmats and Ks, an off-centre principal point."""
    scene = twin_scene(16, N=6)
    names = WITH_KS
    inputs = leaves(scene, names)

    def call(*tensors):
        image, alpha, _ = rasterization(**dict(inputs, **dict(zip(names, tensors))), width=W,
                                        height=H, render_mode="RGB+ED", packed=False)
        return image, alpha

    assert torch.autograd.gradcheck(call, [inputs[k] for k in names], eps=1e-6, atol=1e-5,
                                    rtol=1e-4, fast_mode=True)


def test_render_modes_agree():
    """D is ED times alpha; the colour channels are the same in every mode; alpha too."""
    scene = twin_scene(2)
    images = {mode: rasterization(**scene, width=W, height=H, render_mode=mode)[:2]
              for mode in ("RGB", "D", "ED", "RGB+D", "RGB+ED")}
    rgb, alpha = images["RGB"]
    assert rgb.shape == (1, H, W, 3)
    for mode, (image, a) in images.items():
        assert torch.equal(a, alpha), mode
    assert torch.equal(images["RGB+D"][0][..., :3], rgb)
    assert torch.equal(images["RGB+ED"][0][..., :3], rgb)
    assert torch.equal(images["RGB+D"][0][..., 3:], images["D"][0])
    assert torch.equal(images["RGB+ED"][0][..., 3:], images["ED"][0])
    torch.testing.assert_close(images["D"][0], images["ED"][0] * alpha, rtol=1e-12, atol=1e-12)
    assert (images["ED"][0] > 1.9).sum() > 50


def test_feature_channels_and_background():
    """D = 5 colours: the render's feature map plus (1 - alpha) background, whose first three
    channels are the RGB render of those three with the same background; per-camera colours."""
    scene = twin_scene(3, channels=5, cameras=2)
    bg = torch.rand(2, 5, dtype=F64)
    image, alpha, _ = rasterization(**scene, width=W, height=H, backgrounds=bg)
    assert image.shape == (2, H, W, 5)
    three = dict(scene, colors=scene["colors"][:, :3])
    rgb, _, _ = rasterization(**three, width=W, height=H, backgrounds=bg[:, :3])
    torch.testing.assert_close(image[..., :3], rgb, rtol=1e-12, atol=1e-12)
    for c in range(2):
        want = gsplat_twin(*(scene[k] for k in ("means", "quats", "scales", "opacities",
                                                "colors")), scene["viewmats"][c], scene["Ks"][c],
                           W, H, background=bg[c])[0]
        torch.testing.assert_close(image[c], want, rtol=0, atol=1e-6)
    # Per-camera colours (C, N, D): camera c reads colors[c].
    per_camera = torch.stack([scene["colors"], scene["colors"].flip(1)])
    image2, _, _ = rasterization(**dict(scene, colors=per_camera), width=W, height=H,
                                 backgrounds=bg)
    assert torch.equal(image2[0], image[0])
    flipped, _, _ = rasterization(**dict(scene, colors=scene["colors"].flip(1)), width=W,
                                  height=H, backgrounds=bg)
    assert torch.equal(image2[1], flipped[1])


def test_sh_colours_and_covariances():
    """sh_degree: the colour of each Gaussian from its SH along (mean - camera centre), plus 0.5,
    clamped at 0 (gsplat's and the original's rule); covars (N, 3, 3) render as quats and scales
    do."""
    scene = twin_scene(4)
    gen = torch.Generator().manual_seed(4)
    shs = torch.randn(scene["means"].shape[0], 16, 3, generator=gen, dtype=F64) * 0.3
    image, _, _ = rasterization(**dict(scene, colors=shs), width=W, height=H, sh_degree=1)
    viewmat = scene["viewmats"][0]
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    d = scene["means"] - campos
    x, y, z = (d / d.norm(dim=-1, keepdim=True)).unbind(-1)
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    rgb = c0 * shs[:, 0] - c1 * y[:, None] * shs[:, 1] + c1 * z[:, None] * shs[:, 2] \
        - c1 * x[:, None] * shs[:, 3]
    want, _, _ = rasterization(**dict(scene, colors=torch.clamp_min(rgb + 0.5, 0)), width=W,
                               height=H)
    torch.testing.assert_close(image, want, rtol=1e-10, atol=1e-10)

    M = quaternion_matrix(scene["quats"]) * scene["scales"][:, None, :]
    covars = M @ M.transpose(1, 2)
    by_covars, _, _ = rasterization(**dict(scene, quats=None, scales=None), covars=covars,
                                        width=W, height=H, render_mode="RGB+D")
    by_quats, _, _ = rasterization(**scene, width=W, height=H, render_mode="RGB+D")
    torch.testing.assert_close(by_covars, by_quats, rtol=1e-10, atol=1e-10)


def test_package_camera_convention():
    """A centred principal point is the package's own camera (cameras.Camera): the same image,
    and means2d is the package's pixel position plus half a pixel (gsplat's pixel centres)."""
    scene = twin_scene(5)
    K = scene["Ks"][0].clone()
    K[0, 2], K[1, 2] = W / 2, H / 2
    image, alpha, meta = rasterization(**dict(scene, Ks=K[None]), width=W, height=H,
                                       render_mode="RGB+ED", packed=False)
    cam = Camera(scene["viewmats"][0].numpy(), W, H, float(K[0, 0]), float(K[1, 1]))
    color, radii, depth, weight = GaussianRasterizer(cam.raster_settings(dtype=F64))(
        means3D=scene["means"], means2D=torch.zeros_like(scene["means"]),
        opacities=scene["opacities"][:, None], colors_precomp=scene["colors"],
        scales=scene["scales"],
        rotations=scene["quats"] / scene["quats"].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(image[0], torch.cat([color, depth[None]]).permute(1, 2, 0),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha[0, ..., 0], weight, rtol=1e-10, atol=1e-10)
    assert torch.equal(meta["radii"][0, :, 0], radii) and torch.equal(meta["radii"][0, :, 1], radii)
    projected = torch.as_tensor(cam.project(scene["means"].numpy()))
    torch.testing.assert_close(meta["means2d"][0], projected[:, :2] + 0.5)


def test_means2d_gradient_units():
    """means2d.grad times (W/2, H/2) is the package's means2D gradient (NDC units, which 3DGS's
    densification threshold assumes, and gsplat's strategies scale back to); absgrad the same
    for AbsGS's column."""
    scene = twin_scene(6)
    ours = leaves(scene)
    image, alpha, meta = rasterization(**ours, width=W, height=H, packed=False, absgrad=True)
    weights = torch.rand(image.shape, dtype=F64)
    (image * weights).sum().backward()
    screen = torch.zeros(scene["means"].shape[0], 4, dtype=F64, requires_grad=True)
    settings = ours_settings(scene, W, H)
    color = GaussianRasterizer(settings)(
        means3D=scene["means"], means2D=screen, opacities=scene["opacities"][:, None],
        colors_precomp=scene["colors"], scales=scene["scales"],
        rotations=scene["quats"] / scene["quats"].norm(dim=-1, keepdim=True))[0]
    (color * weights[0].permute(2, 0, 1)).sum().backward()
    half = torch.tensor([W / 2, H / 2], dtype=F64)
    torch.testing.assert_close(meta["means2d"].grad[0] * half, screen.grad[:, :2])
    torch.testing.assert_close(meta["means2d"].absgrad[0] * half, screen.grad[:, 2:])
    assert (meta["means2d"].absgrad >= meta["means2d"].grad.abs() - 1e-12).all()


def ours_settings(scene, width, height):
    """The package's settings of the scene's camera 0 (off-centre principal point)."""
    from diff_gaussian_rasterization_depth.gsplat import _settings
    K = scene["Ks"][0]
    return _settings(scene["viewmats"][0], [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]),
                                            float(K[1, 2])], width, height,
                     torch.zeros(3, dtype=scene["means"].dtype), None, 0.3, False)


def test_packed_meta_and_strategy_reads():
    """packed=True: the (camera, Gaussian) pairs with radii > 0, their radii, depths, means2d
    gradients and absgrad are the unpacked ones there; what gsplat's DefaultStrategy reads
    (retain_grad, .grad, width, height, n_cameras, radii, gaussian_ids) is all there."""
    scene = twin_scene(7, cameras=3)
    scene["opacities"][0] = 0.002  # below 1/255: never drawn, radius 0 as in gsplat
    out = {}
    for packed in (False, True):
        ours = leaves(scene)
        image, alpha, meta = rasterization(**ours, width=W, height=H, packed=packed,
                                           absgrad=True, render_mode="RGB+ED")
        meta["means2d"].retain_grad()
        (image.square().sum() + alpha.sum()).backward()
        out[packed] = image, meta, {k: v.grad for k, v in ours.items() if v.grad is not None}
    image, full, grads = out[False]
    image_p, packed, grads_p = out[True]
    assert torch.equal(image, image_p)
    for k in grads:
        torch.testing.assert_close(grads[k], grads_p[k], rtol=1e-12, atol=1e-14)
    sel = (full["radii"] > 0).all(dim=-1)
    assert not sel[:, 0].any() and sel.sum() > 20
    camera_ids, gaussian_ids = torch.where(sel)
    assert torch.equal(packed["camera_ids"], camera_ids)
    assert torch.equal(packed["gaussian_ids"], gaussian_ids)
    assert torch.equal(packed["radii"], full["radii"][sel])
    assert torch.equal(packed["depths"], full["depths"][sel])
    assert torch.equal(packed["means2d"].grad, full["means2d"].grad[sel])
    assert torch.equal(packed["means2d"].absgrad, full["means2d"].absgrad[sel])
    assert packed["width"] == W and packed["height"] == H and packed["n_cameras"] == 3
    assert full["gaussian_ids"] is None


def test_batches_of_scenes_and_cameras():
    """Leading batch dimensions: means (B, N, 3) with viewmats (B, C, 4, 4) render each scene
    by its own cameras, as separate calls do."""
    a, b = twin_scene(8, cameras=2), twin_scene(9, cameras=2)
    batched = {k: torch.stack([a[k], b[k]]) for k in a}
    image, alpha, meta = rasterization(**batched, width=W, height=H, render_mode="RGB+D",
                                       packed=False)
    assert image.shape == (2, 2, H, W, 4) and meta["radii"].shape == (2, 2, 14, 2)
    assert meta["n_batches"] == 2 and meta["n_cameras"] == 2
    for i, scene in enumerate((a, b)):
        one, one_alpha, one_meta = rasterization(**scene, width=W, height=H,
                                                 render_mode="RGB+D", packed=False)
        assert torch.equal(image[i], one) and torch.equal(alpha[i], one_alpha)
        assert torch.equal(meta["radii"][i], one_meta["radii"])


@pytest.mark.parametrize("lens", [
    {}, dict(camera_model="fisheye", radial_coeffs=torch.tensor([[0.05, -0.02, 0.004, 0.0]])),
    dict(radial_coeffs=torch.tensor([[-0.2, 0.05, 0.01, 0.1, 0.0, 0.0]]),
         tangential_coeffs=torch.tensor([[0.004, -0.003]]))],
    ids=["pinhole", "fisheye-distorted", "pinhole-distorted"])
def test_near_far_planes_and_radius_clip(lens):
    """near_plane, far_plane and radius_clip cull as rendering without those Gaussians does,
    and report radius 0 for them (radius_clip's radii from the twin through the lens too)."""
    scene = dict(twin_scene(10, N=30), **{k: v.to(F64) if isinstance(v, torch.Tensor) else v
                                          for k, v in lens.items()})
    image, _, meta = rasterization(**scene, width=W, height=H, render_mode="RGB+ED",
                                   packed=False)
    z = meta["depths"][0]
    radii = meta["radii"][0, :, 0]
    cases = [(dict(near_plane=3.0), z >= 3.0), (dict(far_plane=4.0), z <= 4.0),
             (dict(radius_clip=float(radii.float().median()) + 0.5),
              radii > float(radii.float().median()) + 0.5)]
    for options, kept in cases:
        assert 0 < kept.sum() < 30, options
        culled, _, culled_meta = rasterization(**scene, width=W, height=H,
                                               render_mode="RGB+ED", packed=False, **options)
        subset = {k: v[kept] if k in ("means", "quats", "scales", "opacities", "colors") else v
                  for k, v in scene.items()}
        want, _, _ = rasterization(**subset, width=W, height=H, render_mode="RGB+ED")
        torch.testing.assert_close(culled, want, rtol=1e-12, atol=1e-12, msg=str(options))
        assert (culled_meta["radii"][0, ~kept] == 0).all()
        assert torch.equal(culled_meta["radii"][0, kept], meta["radii"][0, kept])


def test_sparse_gradients():
    """sparse_grad=True (with packed): means, quats and scales take sparse COO gradients, the
    dense ones where Gaussians are drawn; torch.optim.SparseAdam steps on them."""
    scene = twin_scene(11)
    scene["means"][3, 2] = -1.0  # behind the camera: no gradient row
    dense, sparse = leaves(scene), leaves(scene)
    for inputs, flag in ((dense, False), (sparse, True)):
        image, _, _ = rasterization(**inputs, width=W, height=H, sparse_grad=flag)
        image.square().sum().backward()
    for name in ("means", "quats", "scales"):
        grad = sparse[name].grad
        assert grad.layout == torch.sparse_coo, name
        assert 3 not in grad.coalesce().indices()[0].tolist()
        torch.testing.assert_close(grad.to_dense(), dense[name].grad, rtol=0, atol=0)
    assert sparse["opacities"].grad.layout == torch.strided
    torch.optim.SparseAdam([sparse["means"]], lr=0.01).step()


def test_cameras_of_another_dtype():
    """float32 cameras and backgrounds with float64 Gaussians (and the other way round) render
    as cameras of the Gaussians' dtype, the camera's gradient in its own dtype."""
    scene = twin_scene(15)
    bg = torch.rand(1, 3, dtype=F64)
    want, _, _ = rasterization(**scene, width=W, height=H, backgrounds=bg)
    mixed = leaves(dict(scene, viewmats=scene["viewmats"].float()), names=("viewmats",))
    image, _, _ = rasterization(**mixed, width=W, height=H, backgrounds=bg.float())
    assert image.dtype == F64
    torch.testing.assert_close(image, want, rtol=0, atol=1e-6)
    image.sum().backward()
    assert mixed["viewmats"].grad.dtype == torch.float32
    single = {k: v.float() for k, v in scene.items()}
    image32, _, _ = rasterization(**dict(single, viewmats=scene["viewmats"]), width=W,
                                  height=H, backgrounds=bg)
    assert image32.dtype == torch.float32
    torch.testing.assert_close(image32.double(), want, rtol=0, atol=1e-5)


def test_no_grad_call():
    """Under no_grad (evaluation) means2d needs no gradient and nothing is hooked."""
    scene = leaves(twin_scene(12))
    with torch.no_grad():
        image, _, meta = rasterization(**scene, width=W, height=H)
    assert not meta["means2d"].requires_grad and not image.requires_grad


@pytest.mark.parametrize("bad, error, words", [
    (dict(render_mode="RGBD"), ValueError, "render_mode"),
    (dict(tile_size=8), ValueError, "tile_size"),
    (dict(distributed=True), NotImplementedError, "distributed"),
    (dict(camera_model="ftheta"), NotImplementedError, "camera_model"),
    (dict(with_ut=True), NotImplementedError, "with_ut"),
    (dict(radial_coeffs=torch.zeros(1, 4)), ValueError, r"radial_coeffs must be \(1, 6\)"),
    (dict(tangential_coeffs=torch.zeros(1, 3)), ValueError,
     r"tangential_coeffs must be \(1, 2\)"),
    (dict(thin_prism_coeffs=torch.zeros(1, 4)), NotImplementedError, "thin_prism_coeffs"),
    (dict(tangential_coeffs=torch.zeros(1, 2), camera_model="fisheye"), NotImplementedError,
     "tangential_coeffs"),
    (dict(radial_coeffs=torch.zeros(1, 6), camera_model="fisheye"), ValueError,
     r"radial_coeffs must be \(1, 4\)"),
    (dict(viewmats_rs=torch.eye(4)[None]), NotImplementedError, "viewmats_rs"),
    (dict(rasterize_mode="mip"), ValueError, "rasterize_mode"),
    (dict(opacities=torch.rand(14, 1)), ValueError, "opacities"),
    (dict(colors=torch.rand(13, 3)), ValueError, "colors"),
    (dict(Ks=torch.eye(3)), ValueError, "Ks"),
    (dict(viewmats=torch.eye(4)), ValueError, "viewmats"),
    (dict(sh_degree=3), ValueError, "sh_degree"),
    (dict(backgrounds=torch.zeros(1, 4)), ValueError, "backgrounds"),
    (dict(opacities=torch.ones(14, dtype=torch.int32)), TypeError, "opacities must be floating"),
    (dict(colors=[[0.5, 0.5, 0.5]] * 14), TypeError, "colors: expected a torch.Tensor"),
    # Another device than the means' (a meta tensor stands in for any other device).
    (dict(viewmats=torch.eye(4, device="meta")[None]), ValueError, "viewmats must be on"),
    (dict(quats=torch.ones(14, 4, device="meta")), ValueError, "quats must be on"),
])
def test_checks_name_the_argument(bad, error, words):
    scene = twin_scene(13, dtype=torch.float32)
    args = dict(scene, width=W, height=H)
    args.update(bad)
    with pytest.raises(error, match=words):
        rasterization(**args)


# ----------------------------------------------------------------------------------------------
# gsplat's own code as the oracle, where gsplat is installed (.ci/run installs its pure-Python
# 1.5.3 wheel; its CUDA is compiled only when a CUDA function is called, and none is here):
# tools/check_gsplat.py's checks, smaller.
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def check_gsplat():
    """tools/check_gsplat.py as a module: gsplat's PyTorch rasterizer (its CUDA-only pieces
    replaced by benchmarks/gsplat_cpu_twins.py) and its DefaultStrategy."""
    pytest.importorskip("gsplat", reason="gsplat is not installed (pip install --no-deps "
                                         "gsplat==1.5.3: the oracle of these two tests)")
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools",
                        "check_gsplat.py")
    spec = importlib.util.spec_from_file_location("check_gsplat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("camera_model", ["pinhole", "ortho", "fisheye"])
def test_matches_gsplats_own_rasterizer(check_gsplat, camera_model):
    """gsplat's PyTorch rasterizer against the package's call, float32, classic and
    antialiased, its pinhole, orthographic and fisheye cameras: pixels within 1e-4 (but for a
    splat's rim drawn apart, its alpha rounding across 1/255 or its tile listed by one
    rectangle and not the other, at 0.2% of pixels at most), means2d within 1e-4, the same
    splats drawn, every gradient within 1e-2 of its scale (measured: 1.7e-6 and 1e-6; the
    fisheye's seed 2, a rim down 4 pixels of a tile's first column: 6e-3)."""
    assert check_gsplat.check_api([1, 2, 3], camera_model)


def test_gsplats_default_strategy_trains_with_it(check_gsplat):
    """gsplat's DefaultStrategy, as simple_trainer calls it, densifies and trains with the
    package: the model grows, the held-out PSNR rises by 5 dB, packed and unpacked give the same
    model bit for bit (absgrad too)."""
    import argparse
    args = argparse.Namespace(steps=300, width=64, height=48, gaussians=1000, sh_degree=1)
    assert check_gsplat.check_strategy(args)


@pytest.mark.parametrize("target", cuda_targets())
def test_on_cuda_targets(target):
    """float32 on a CUDA target against the twin in float64: outputs within float32 rounding,
    gradients within 1e-3 of their scale (the twin's exact arithmetic against float32's)."""
    scene = twin_scene(14, cameras=2)
    gen = torch.Generator().manual_seed(14)
    ours = {k: v.to(torch.float32).to(target).requires_grad_() for k, v in scene.items()}
    with active(target):
        image, alpha, meta = rasterization(**ours, width=W, height=H, render_mode="RGB+ED",
                                           packed=False)
        r = torch.rand(image.shape, generator=gen, dtype=F64)
        (image.double().cpu() * r).sum().backward()
    theirs = leaves(scene, names=WITH_KS)
    want = torch.stack([torch.cat([w[0], w[1][..., None]], -1) for w in (
        gsplat_twin(theirs["means"], theirs["quats"], theirs["scales"], theirs["opacities"],
                    theirs["colors"], theirs["viewmats"][c], theirs["Ks"][c], W, H)
        for c in range(2))])
    torch.testing.assert_close(image.double().cpu(), want, rtol=0, atol=2e-5 * 5.0)
    (want * r).sum().backward()
    for name in WITH_KS:
        got, expected = ours[name].grad.double().cpu(), theirs[name].grad
        scale = expected.abs().max()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-3 * scale, msg=name)
