"""Tests of the pure-PyTorch reference alone (no compiled extension needed).

The reference is the oracle of every backend test, so it is checked here against things that do
not share its code: a scalar transcription of SPEC 4 looping over pixels, values worked out by
hand, the identities of SPEC 5, finite differences, and the gradient conventions of SPEC 6.
"""
import math

import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizationSettings
from diff_gaussian_rasterization_depth import reference
from diff_gaussian_rasterization_depth.reference import rasterize_reference

F64 = torch.float64


def render(scene_or_inputs, settings=None, **overrides):
    if isinstance(scene_or_inputs, scenes.Scene):
        inputs, settings = dict(scene_or_inputs.inputs), scene_or_inputs.settings
    else:
        inputs = dict(scene_or_inputs)
    inputs.update(overrides)
    return rasterize_reference(**inputs, raster_settings=settings)


# ----------------------------------------------------------------------------------------------
# An independent scalar transcription of SPEC 4 and 5 (Python floats, float64)
# ----------------------------------------------------------------------------------------------

def _sh_basis(x, y, z):
    """The 16 real SH basis values, in the original's order and with its signs."""
    c = reference
    xx, yy, zz = x * x, y * y, z * z
    return [c.SH_C0,
            -c.SH_C1 * y, c.SH_C1 * z, -c.SH_C1 * x,
            c.SH_C2[0] * x * y, c.SH_C2[1] * y * z, c.SH_C2[2] * (2 * zz - xx - yy),
            c.SH_C2[3] * x * z, c.SH_C2[4] * (xx - yy),
            c.SH_C3[0] * y * (3 * xx - yy), c.SH_C3[1] * x * y * z,
            c.SH_C3[2] * y * (4 * zz - xx - yy), c.SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            c.SH_C3[4] * x * (4 * zz - xx - yy), c.SH_C3[5] * z * (xx - yy),
            c.SH_C3[6] * x * (xx - 3 * yy)]


def scalar_rasterize(scene):
    """(color, radii, depth, weight) as nested lists, one Gaussian and one pixel at a time."""
    i, s = scene.inputs, scene.settings
    H, W = s.image_height, s.image_width
    view = [float(v) for v in s.viewmatrix.reshape(-1)]
    proj = [float(v) for v in s.projmatrix.reshape(-1)]
    campos = [float(v) for v in s.campos.reshape(-1)]
    bg = [float(v) for v in s.bg.reshape(-1)]
    fx, fy = W / (2 * s.tanfovx), H / (2 * s.tanfovy)
    shs = i["shs"]
    if i["dc"] is not None:
        shs = torch.cat([i["dc"], shs], dim=1)
    tiles_x, tiles_y = (W + 15) // 16, (H + 15) // 16

    def row_times(p, m, col):
        return p[0] * m[col] + p[1] * m[4 + col] + p[2] * m[8 + col] + m[12 + col]

    gaussians = []
    radii = []
    for g in range(scene.P):
        mu = [float(v) for v in i["means3D"][g]]
        t = [row_times(mu, view, k) for k in range(3)]
        hom = [row_times(mu, proj, k) for k in range(4)]
        if not t[2] > 0.2:
            radii.append(0)
            continue
        ndc = [hom[k] / (hom[3] + 1e-7) for k in range(2)]
        mean = [((ndc[0] + 1) * W - 1) / 2, ((ndc[1] + 1) * H - 1) / 2]
        if i["cov3D_precomp"] is not None:
            c6 = [float(v) for v in i["cov3D_precomp"][g]]
            sigma = [[c6[0], c6[1], c6[2]], [c6[1], c6[3], c6[4]], [c6[2], c6[4], c6[5]]]
        else:
            w, x, y, z = (float(v) for v in i["rotations"][g])
            rot = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
            sc = [s.scale_modifier * float(v) for v in i["scales"][g]]
            sigma = [[sum(rot[a][k] * sc[k] * sc[k] * rot[b][k] for k in range(3))
                      for b in range(3)] for a in range(3)]
        tz = t[2]
        lx, ly = 1.3 * s.tanfovx, 1.3 * s.tanfovy
        tx = min(lx, max(-lx, t[0] / tz)) * tz
        ty = min(ly, max(-ly, t[1] / tz)) * tz
        jac = [[fx / tz, 0.0, -fx * tx / (tz * tz)], [0.0, fy / tz, -fy * ty / (tz * tz)]]
        wr = [[view[c * 4 + r] for c in range(3)] for r in range(3)]  # Wr[r][c] = view[c*4+r]
        tm = [[sum(jac[a][k] * wr[k][b] for k in range(3)) for b in range(3)] for a in range(2)]
        cov = [[sum(tm[a][k] * sigma[k][l] * tm[b][l] for k in range(3) for l in range(3))
                for b in range(2)] for a in range(2)]
        a, b, c = cov[0][0], cov[0][1], cov[1][1]
        det0 = a * c - b * b
        a, c = a + 0.3, c + 0.3
        det = a * c - b * b
        opacity = float(i["opacities"].reshape(-1)[g])
        if s.antialiasing:
            opacity *= math.sqrt(max(2.5e-5, det0 / det))
        if det == 0:
            radii.append(0)
            continue
        conic = (c / det, -b / det, a / det)
        mid = (a + c) / 2
        lam = mid + math.sqrt(max(0.1, mid * mid - det))
        radius = math.ceil(3 * math.sqrt(lam))
        rmin = [min(n, max(0, math.floor((mean[k] - radius) / 16)))
                for k, n in ((0, tiles_x), (1, tiles_y))]
        rmax = [min(n, max(0, math.floor((mean[k] + radius + 15) / 16)))
                for k, n in ((0, tiles_x), (1, tiles_y))]
        if (rmax[0] - rmin[0]) * (rmax[1] - rmin[1]) == 0:
            radii.append(0)
            continue
        if i["colors_precomp"] is not None:
            color = [float(v) for v in i["colors_precomp"][g]]
        else:
            d = [mu[k] - campos[k] for k in range(3)]
            n = math.sqrt(sum(v * v for v in d))
            basis = _sh_basis(*(v / n for v in d))[:(s.sh_degree + 1) ** 2]
            color = [max(0.0, sum(bv * float(shs[g, k, ch]) for k, bv in enumerate(basis)) + 0.5)
                     for ch in range(3)]
        radii.append(radius)
        gaussians.append(dict(index=g, z=tz, mean=mean, conic=conic, opacity=opacity,
                              rmin=rmin, rmax=rmax, color=color))

    gaussians.sort(key=lambda q: (q["z"], q["index"]))
    color = [[[0.0] * W for _ in range(H)] for _ in range(3)]
    depth = [[0.0] * W for _ in range(H)]
    weight = [[0.0] * W for _ in range(H)]
    for py in range(H):
        for px in range(W):
            T = 1.0
            acc = [0.0, 0.0, 0.0]
            acc_z = acc_w = 0.0
            for q in gaussians:
                if not (q["rmin"][0] <= px // 16 < q["rmax"][0]
                        and q["rmin"][1] <= py // 16 < q["rmax"][1]):
                    continue
                dx, dy = q["mean"][0] - px, q["mean"][1] - py
                A, B, C = q["conic"]
                power = -0.5 * (A * dx * dx + C * dy * dy) - B * dx * dy
                if power > 0:
                    continue
                alpha = min(0.99, q["opacity"] * math.exp(power))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) < 1e-4:
                    break
                w = alpha * T
                for ch in range(3):
                    acc[ch] += w * q["color"][ch]
                acc_z += w * q["z"]
                acc_w += w
                T *= 1 - alpha
            for ch in range(3):
                color[ch][py][px] = acc[ch] + T * bg[ch]
            weight[py][px] = acc_w
            depth[py][px] = acc_z / acc_w if acc_w > 0 else 0.0
    return color, radii, depth, weight


SCALAR_CONFIGS = {
    "sh0": dict(sh_degree=0),
    "sh1-aa": dict(sh_degree=1, antialiasing=True),
    "sh2-dc": dict(sh_degree=2, dc=True),
    "sh3-mod": dict(sh_degree=3, scale_modifier=1.7),
    "colors-cov": dict(precomp_colors=True, precomp_cov=True),
    "colors-unnormalized-quats": dict(precomp_colors=True, normalize_rotations=False),
    "size-17x33": dict(sh_degree=1, height=17, width=33),
    "size-1x1": dict(sh_degree=0, height=1, width=1),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", list(SCALAR_CONFIGS))
def test_matches_scalar_transcription(config, seed):
    opts = dict(P=24, height=20, width=18, dtype=F64)
    opts.update(SCALAR_CONFIGS[config])
    scene = scenes.make_scene(100 + seed, **opts)
    color, radii, depth, weight = render(scene)
    s_color, s_radii, s_depth, s_weight = scalar_rasterize(scene)
    assert radii.dtype == torch.int32
    assert radii.tolist() == s_radii
    assert (radii > 0).sum() >= 3, "scene too empty to test anything"
    torch.testing.assert_close(color, torch.tensor(s_color, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(depth, torch.tensor(s_depth, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(weight, torch.tensor(s_weight, dtype=F64), rtol=0, atol=1e-12)
    assert (weight > 0).any()


def test_sh_constants():
    pi = math.pi
    assert reference.SH_C0 == pytest.approx(1 / (2 * math.sqrt(pi)), rel=1e-15)
    assert reference.SH_C1 == pytest.approx(math.sqrt(3 / (4 * pi)), rel=1e-15)
    expected_c2 = [math.sqrt(15 / pi) / 2, -math.sqrt(15 / pi) / 2, math.sqrt(5 / pi) / 4,
                   -math.sqrt(15 / pi) / 2, math.sqrt(15 / pi) / 4]
    expected_c3 = [-math.sqrt(35 / (2 * pi)) / 4, math.sqrt(105 / pi) / 2,
                   -math.sqrt(21 / (2 * pi)) / 4, math.sqrt(7 / pi) / 4,
                   -math.sqrt(21 / (2 * pi)) / 4, math.sqrt(105 / pi) / 4,
                   -math.sqrt(35 / (2 * pi)) / 4]
    assert reference.SH_C2 == pytest.approx(expected_c2, rel=1e-15)
    assert reference.SH_C3 == pytest.approx(expected_c3, rel=1e-15)


# ----------------------------------------------------------------------------------------------
# Hand-made scenes: a camera at the origin looking down +z (viewmatrix = identity)
# ----------------------------------------------------------------------------------------------

def hand_settings(H, W, tanfovx, tanfovy, bg=(0.2, 0.3, 0.4), antialiasing=False,
                  projmatrix=None, dtype=F64):
    view = torch.eye(4, dtype=dtype)
    if projmatrix is None:
        projmatrix = view @ scenes.perspective_matrix(tanfovx, tanfovy).T.to(dtype)
    return GaussianRasterizationSettings(
        image_height=H, image_width=W, tanfovx=tanfovx, tanfovy=tanfovy,
        bg=torch.tensor(bg, dtype=dtype), scale_modifier=1.0, viewmatrix=view,
        projmatrix=projmatrix.to(dtype), sh_degree=0, campos=torch.zeros(3, dtype=dtype),
        antialiasing=antialiasing)


def isotropic(means, variance, opacities, colors, dtype=F64):
    """Inputs for Gaussians with covariance variance * I and precomputed colours."""
    P = len(means)
    var = torch.as_tensor(variance, dtype=dtype).expand(P)
    zero = torch.zeros(P, dtype=dtype)
    return dict(means3D=torch.tensor(means, dtype=dtype),
                means2D=torch.zeros(P, 3, dtype=dtype),
                opacities=torch.tensor(opacities, dtype=dtype).reshape(P, 1),
                colors_precomp=torch.tensor(colors, dtype=dtype),
                cov3D_precomp=torch.stack([var, zero, zero, var, zero, var], dim=1))


def test_single_gaussian_by_hand():
    # 15x15 image, tanfov 0.5: fx = fy = 15; the image centre (7, 7) is a pixel centre.
    # A Gaussian at (0, 0, 5) with variance 0.01: J = 3 I, cov2d = 0.09 I + 0.3 I = 0.39 I.
    settings = hand_settings(15, 15, 0.5, 0.5)
    o, col = 0.7, [0.9, 0.5, 0.1]
    inputs = isotropic([[0.0, 0.0, 5.0]], 0.01, [o], [col])
    color, radii, depth, weight = render(inputs, settings)
    var = 0.39
    # lambda = 0.39 + sqrt(max(0.1, 0)), radius = ceil(3 * 0.8404) = 3
    assert radii.tolist() == [3]
    bg = settings.bg
    for (px, py) in [(7, 7), (8, 7), (7, 5), (9, 8), (6, 9)]:
        r2 = (px - 7) ** 2 + (py - 7) ** 2
        alpha = o * math.exp(-0.5 * r2 / var)
        if alpha < 1 / 255:
            alpha = 0.0
        assert weight[py, px].item() == pytest.approx(alpha, rel=1e-12, abs=1e-15)
        expected = [alpha * c + (1 - alpha) * float(b) for c, b in zip(col, bg)]
        assert color[:, py, px].tolist() == pytest.approx(expected, rel=1e-12)
        assert depth[py, px].item() == (pytest.approx(5.0, rel=1e-12) if alpha else 0.0)
    # Far pixels: nothing blended; colour is the background, depth and weight 0.
    assert weight[0, 0].item() == 0 and depth[0, 0].item() == 0
    assert color[:, 0, 0].tolist() == pytest.approx(bg.tolist(), rel=1e-15)


def test_two_gaussians_by_hand():
    settings = hand_settings(15, 15, 0.5, 0.5, bg=(0.25, 0.5, 0.75))
    # Given back to front: the sort must put z = 4 first.
    inputs = isotropic([[0.0, 0.0, 6.0], [0.0, 0.0, 4.0]], 0.02, [0.6, 0.5],
                       [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    color, radii, depth, weight = render(inputs, settings)
    a_front, a_back = 0.5, 0.6          # alpha = opacity at the centre pixel (power = 0)
    w_front, w_back = a_front, (1 - a_front) * a_back
    T = (1 - a_front) * (1 - a_back)
    expected = [w_front * 1.0 + T * 0.25, w_back * 1.0 + T * 0.5, T * 0.75]
    assert color[:, 7, 7].tolist() == pytest.approx(expected, rel=1e-12)
    assert weight[7, 7].item() == pytest.approx(w_front + w_back, rel=1e-12)
    assert depth[7, 7].item() == pytest.approx((w_front * 4 + w_back * 6) / (w_front + w_back),
                                               rel=1e-12)


def test_equal_depths_blend_in_index_order():
    settings = hand_settings(15, 15, 0.5, 0.5, bg=(0.0, 0.0, 0.0))
    inputs = isotropic([[0.0, 0.0, 5.0]] * 3, 0.02, [0.5, 0.5, 0.5],
                       [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    color = render(inputs, settings)[0]
    assert color[:, 7, 7].tolist() == pytest.approx([0.5, 0.25, 0.125], rel=1e-12)


def test_antialiasing_scales_opacity():
    settings = hand_settings(15, 15, 0.5, 0.5, antialiasing=True)
    inputs = isotropic([[0.0, 0.0, 5.0]], 0.01, [0.7], [[1.0, 1.0, 1.0]])
    weight = render(inputs, settings)[3]
    # cov2d before dilation 0.09 I, after 0.39 I: h = sqrt(0.09^2 / 0.39^2).
    h = math.sqrt(0.09 ** 2 / 0.39 ** 2)
    assert weight[7, 7].item() == pytest.approx(0.7 * h, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Culling and the tile rectangle
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_near_plane_culling(dtype):
    settings = hand_settings(15, 15, 0.5, 0.5, dtype=dtype)
    z_values = [-2.0, 0.0, 0.1, 0.2, torch.nextafter(torch.tensor(0.2, dtype=dtype),
                                                      torch.tensor(1.0, dtype=dtype)).item(), 5]
    inputs = isotropic([[0.0, 0.0, z] for z in z_values], 1e-4, [0.5] * 6, [[0.5] * 3] * 6,
                       dtype=dtype)
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    color, radii, depth, weight = render(inputs, settings)
    assert radii[:4].tolist() == [0, 0, 0, 0]       # z <= 0.2 is culled, 0.2 included
    assert radii[4] > 0 and radii[5] > 0
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(x.shape, generator=gen).to(dtype) for x in (color, depth, weight)]
    ((color * g[0]).sum() + (depth * g[1]).sum() + (weight * g[2]).sum()).backward()
    for name in ("means3D", "means2D", "opacities", "colors_precomp", "cov3D_precomp"):
        grad = inputs[name].grad
        assert torch.isfinite(grad).all()
        assert (grad[:4] == 0).all(), name
        assert (grad[4:] != 0).any(), name


def test_tile_rectangle_truncates_gaussian():
    # 48x16 image, 3x1 tiles. fx = fy = 48 (tanfovx 0.5, tanfovy 1/6), a Gaussian at z = 6 with
    # variance 15.7/64: cov2d = 64 * 15.7/64 + 0.3 = 16 exactly, isotropic; lambda = 16 +
    # sqrt(0.1), radius = ceil(3 * 4.0393) = 13. A projection matrix with an off-centre
    # principal point puts the mean at pixel (3, 8): the rectangle is
    # [floor((3 - 13)/16), floor((3 + 13 + 15)/16)) = [0, 1) in x, so pixel x = 16 is outside
    # although its alpha, 0.99 exp(-13^2/32) ~ 0.005, exceeds 1/255.
    H, W, tz = 16, 48, 6.0
    ndc_x, ndc_y = (2 * 3 + 1) / W - 1, (2 * 8 + 1) / H - 1
    proj = torch.zeros(4, 4, dtype=F64)     # [p, 1] @ proj = (p.x + ndc_x p.z, ..., p.z)
    proj[0, 0] = proj[1, 1] = proj[2, 2] = proj[2, 3] = 1.0
    proj[2, 0], proj[2, 1] = ndc_x, ndc_y
    settings = hand_settings(H, W, 0.5, 1 / 6, projmatrix=proj, bg=(0, 0, 0))
    var = 15.7 / 64
    inputs = isotropic([[0.0, 0.0, tz]], var, [1.0], [[1.0, 1.0, 1.0]])
    color, radii, depth, weight = render(inputs, settings)
    assert radii.tolist() == [13]
    mean_x = ((ndc_x * tz / (tz + 1e-7) + 1) * W - 1) / 2     # 3 up to the 1e-7 of SPEC 4
    for px in (0, 3, 10, 15):
        alpha = min(0.99, math.exp(-0.5 * (mean_x - px) ** 2 / 16))
        assert weight[8, px].item() == pytest.approx(alpha, rel=1e-9)
    assert 0.99 * math.exp(-0.5 * (mean_x - 16) ** 2 / 16) > 1 / 255
    assert (weight[:, 16:] == 0).all()
    assert (depth[:, 16:] == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_each_gaussian_touches_exactly_its_tiles(seed):
    """Rendered alone, a Gaussian has weight exactly where its rectangle and alpha say."""
    scene = scenes.make_scene(seed, P=12, height=37, width=45, sh_degree=1, dtype=F64)
    out, everyone, blend, idx, settings = scenes.reference_internals(scene)
    H, W = settings.image_height, settings.image_width
    tiles = torch.tensor([(W + 15) // 16, (H + 15) // 16], dtype=F64)
    for g in range(scene.P):
        single = {k: (None if v is None else v[g:g + 1]) for k, v in scene.inputs.items()}
        weight = render(single, scene.settings)[3]
        if not everyone["visible"][g]:
            assert (weight == 0).all()
            continue
        m, r = everyone["mean2d"][g], everyone["radius"][g]
        lo = torch.minimum(torch.floor((m - r) / 16).clamp(min=0), tiles).long()
        hi = torch.minimum(torch.floor((m + r + 15) / 16).clamp(min=0), tiles).long()
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        inside = ((lo[0] <= xs // 16) & (xs // 16 < hi[0]) & (lo[1] <= ys // 16)
                  & (ys // 16 < hi[1]))
        dx, dy = m[0] - xs, m[1] - ys
        A, B, C = everyone["conic"][g]
        power = -0.5 * (A * dx * dx + C * dy * dy) - B * dx * dy
        alpha = (everyone["opacity"][g] * torch.exp(power)).clamp(max=0.99)
        expected = torch.where(inside & (power <= 0) & (alpha >= 1 / 255), alpha, 0.0)
        torch.testing.assert_close(weight, expected, rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------
# Early stop and the straight-through clamp
# ----------------------------------------------------------------------------------------------

def _stack(opacities, colors):
    n = len(opacities)
    return isotropic([[0.0, 0.0, 5.0 + 0.1 * k] for k in range(n)], 0.01, opacities, colors)


def test_early_stop():
    settings = hand_settings(15, 15, 0.5, 0.5, bg=(0.3, 0.6, 0.9))
    colors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    # T after blending: 0.05, 0.0025, 1.25e-4; the 4th would leave 6.25e-6 < 1e-4: stop. The
    # 5th (alpha 0.1) would leave 1.125e-4 >= 1e-4, but stopping means it is not blended either.
    inputs = _stack([0.95, 0.95, 0.95, 0.95, 0.1], colors)
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    color, radii, depth, weight = render(inputs, settings)
    w = [0.95, 0.05 * 0.95, 0.0025 * 0.95]
    T = 0.05 ** 3
    expected = [sum(wk * c[ch] for wk, c in zip(w, colors)) + T * float(settings.bg[ch])
                for ch in range(3)]
    assert color[:, 7, 7].tolist() == pytest.approx(expected, rel=1e-12)
    assert weight[7, 7].item() == pytest.approx(sum(w), rel=1e-12)
    assert depth[7, 7].item() == pytest.approx(
        (w[0] * 5.0 + w[1] * 5.1 + w[2] * 5.2) / sum(w), rel=1e-12)
    color[:, 7, 7].sum().backward()
    grad = inputs["colors_precomp"].grad
    assert (grad[3:] == 0).all() and (grad[:3] != 0).all()
    # Without the 4th Gaussian, the 5th is blended.
    without_4th = {k: torch.cat([v[:3], v[4:]]).detach() for k, v in inputs.items()}
    weight2 = render(without_4th, settings)[3]
    assert weight2[7, 7].item() == pytest.approx(sum(w) + T * 0.1, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_alpha_clamp_is_straight_through(dtype):
    settings = hand_settings(15, 15, 0.5, 0.5, bg=(0.2, 0.4, 0.8), dtype=dtype)
    col = [0.9, 0.1, 0.5]
    for opacity in (1.0, 0.995, 0.9):
        inputs = isotropic([[0.0, 0.0, 5.0]], 0.01, [opacity], [col], dtype=dtype)
        inputs = {k: v.requires_grad_() for k, v in inputs.items()}
        color, radii, depth, weight = render(inputs, settings)
        alpha = min(opacity, 0.99)
        assert weight[7, 7].item() == pytest.approx(alpha, rel=1e-6)
        # At the centre G = 1, so d colour / d opacity = d colour / d alpha = c - bg, clamped
        # or not.
        color[0, 7, 7].backward()
        expected = col[0] - float(settings.bg[0])
        assert inputs["opacities"].grad.item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# SPEC 5 identities
# ----------------------------------------------------------------------------------------------

IDENTITY_CONFIGS = [dict(sh_degree=0), dict(sh_degree=3, antialiasing=True),
                    dict(precomp_colors=True, precomp_cov=True, scale_modifier=0.7),
                    dict(sh_degree=2, dc=True, height=16, width=16)]


def _view_depth(scene, means3D):
    view = scene.settings.viewmatrix.reshape(4, 4).to(means3D.dtype)
    return means3D @ view[:3, 2] + view[3, 2]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("config", range(len(IDENTITY_CONFIGS)))
def test_spec5_identities(config, seed):
    scene = scenes.make_scene(200 + seed, P=60, dtype=F64, **IDENTITY_CONFIGS[config])
    color, radii, depth, weight = render(scene)
    bg = scene.settings.bg

    # The background touches neither depth nor weight; colour moves by T_f * delta bg.
    other_bg = scene.settings._replace(bg=torch.rand(3, dtype=F64,
                                                     generator=torch.Generator().manual_seed(seed)))
    color2, radii2, depth2, weight2 = rasterize_reference(**scene.inputs, raster_settings=other_bg)
    assert torch.equal(depth, depth2) and torch.equal(weight, weight2)
    assert torch.equal(radii, radii2)

    # weight = 1 - T_f, with T_f rendered as the colour of black Gaussians over a white bg.
    geometry = {k: v for k, v in scene.inputs.items() if k not in ("shs", "dc", "colors_precomp")}
    P = scene.P
    white = scene.settings._replace(bg=torch.ones(3, dtype=F64))
    T_f = rasterize_reference(**geometry, colors_precomp=torch.zeros(P, 3, dtype=F64),
                              raster_settings=white)[0]
    for ch in range(3):
        torch.testing.assert_close(weight, 1 - T_f[ch], rtol=0, atol=1e-12)
    torch.testing.assert_close(color2 - color, T_f[0] * (other_bg.bg - bg)[:, None, None],
                               rtol=0, atol=1e-12)

    # depth * weight = colour render of the view-space depth with bg = 0.
    z = _view_depth(scene, scene.inputs["means3D"])
    black = scene.settings._replace(bg=torch.zeros(3, dtype=F64))
    z_color = rasterize_reference(**geometry, colors_precomp=z[:, None].repeat(1, 3),
                                  raster_settings=black)[0]
    torch.testing.assert_close(depth * weight, z_color[1], rtol=1e-12, atol=1e-12)

    # Ranges: weight in [0, 1), 0 or >= 1/255; depth 0 exactly where nothing was blended.
    assert (weight >= 0).all() and (weight < 1).all()
    assert ((weight == 0) | (weight >= 1 / 255)).all()
    assert (depth[weight == 0] == 0).all()
    visible_z = z[radii > 0]
    blended = weight > 0
    assert blended.any()
    assert (depth[blended] >= visible_z.min() * (1 - 1e-12)).all()
    assert (depth[blended] <= visible_z.max() * (1 + 1e-12)).all()


@pytest.mark.parametrize("seed", range(3))
def test_spec5_identities_hold_for_gradients(seed):
    """Depth * weight and weight reach the geometry exactly like colour renders of z and 1.

    The colour render of z takes z as a differentiable function of means3D, so this checks
    that depth reaches means3D both through z and through the projection (SPEC 6).
    """
    scene = scenes.make_scene(300 + seed, P=40, sh_degree=1, dtype=F64, antialiasing=seed == 1)
    H, W = scene.settings.image_height, scene.settings.image_width
    gen = torch.Generator().manual_seed(seed)
    g_dw = torch.randn(H, W, generator=gen, dtype=F64)
    g_w = torch.randn(H, W, generator=gen, dtype=F64)
    names = ("means3D", "means2D", "opacities", "scales", "rotations")

    a = scene.with_grad(names)
    color, radii, depth, weight = render(a, scene.settings)
    ((depth * weight * g_dw).sum() + (weight * g_w).sum()).backward()

    b = scene.with_grad(names)
    z = _view_depth(scene, b["means3D"])
    geometry = {k: v for k, v in b.items() if k not in ("shs", "dc", "colors_precomp")}
    zero_bg = scene.settings._replace(bg=torch.zeros(3, dtype=F64))
    features = torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], dim=1)
    c = rasterize_reference(**geometry, colors_precomp=features, raster_settings=zero_bg)[0]
    ((c[0] * g_dw).sum() + (c[1] * g_w).sum()).backward()
    for name in names:
        assert a[name].grad.abs().max() > 0, name
        torch.testing.assert_close(a[name].grad, b[name].grad, rtol=1e-9,
                                   atol=1e-9 * a[name].grad.abs().max().item())


# ----------------------------------------------------------------------------------------------
# Robustness: non-finite Gaussians, empty scenes, means2D, outputs
# ----------------------------------------------------------------------------------------------

def _poison(scene):
    """Copy of the inputs with non-finite values planted in Gaussians 0..k; returns (inputs, k)."""
    i = {k: (None if v is None else v.clone()) for k, v in scene.inputs.items()}
    nan, inf = float("nan"), float("inf")
    i["means3D"][0, 1] = nan
    i["means3D"][1, 2] = inf
    i["opacities"][2, 0] = nan
    if i["colors_precomp"] is not None:
        i["colors_precomp"][3, 2] = inf
    else:
        sh = i["dc"] if i["dc"] is not None else i["shs"]
        sh[3, 0, 1] = nan
    if i["cov3D_precomp"] is not None:
        i["cov3D_precomp"][4, 3] = nan
        i["cov3D_precomp"][5, 0] = -inf
    else:
        i["scales"][4, 1] = inf
        i["rotations"][5, 0] = nan
    # A Gaussian exactly at the camera centre: its SH direction is 0/0.
    i["means3D"][6] = scene.settings.campos
    return i, 7


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("config", [dict(sh_degree=2), dict(precomp_colors=True, precomp_cov=True),
                                    dict(sh_degree=1, dc=True, antialiasing=True)])
def test_nonfinite_gaussians_are_culled_cleanly(config, dtype):
    scene = scenes.make_scene(400, P=40, dtype=dtype, outliers=False, **config)
    poisoned, k = _poison(scene)
    H, W = scene.settings.image_height, scene.settings.image_width
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, H, W, generator=gen).to(dtype), torch.randn(H, W, generator=gen)
             .to(dtype), torch.randn(H, W, generator=gen).to(dtype)]

    def run(inputs):
        leaves = {n: (None if v is None else v.detach().clone().requires_grad_())
                  for n, v in inputs.items()}
        color, radii, depth, weight = rasterize_reference(**leaves,
                                                          raster_settings=scene.settings)
        loss = (color * grads[0]).sum() + (depth * grads[1]).sum() + (weight * grads[2]).sum()
        loss.backward()
        return (color, radii, depth, weight), leaves

    (color, radii, depth, weight), leaves = run(poisoned)
    for t in (color, depth, weight):
        assert torch.isfinite(t).all()
    assert (radii[:k] == 0).all()
    for name, leaf in leaves.items():
        if leaf is None:
            continue
        assert torch.isfinite(leaf.grad).all(), name
        assert (leaf.grad[:k] == 0).all(), name

    # The rest is exactly the scene without the poisoned Gaussians.
    rest = {n: (None if v is None else v[k:]) for n, v in scene.inputs.items()}
    (color2, radii2, depth2, weight2), leaves2 = run(rest)
    assert torch.equal(radii[k:], radii2)
    for x, y in ((color, color2), (depth, depth2), (weight, weight2)):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for name, leaf in leaves.items():
        if leaf is not None:
            torch.testing.assert_close(leaf.grad[k:], leaves2[name].grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_empty_and_fully_culled_scenes(dtype):
    for P, all_culled in ((0, False), (30, True)):
        scene = scenes.make_scene(5, P=P, dtype=dtype, all_culled=all_culled, sh_degree=1)
        leaves = scene.with_grad()
        color, radii, depth, weight = render(leaves, scene.settings)
        H, W = scene.settings.image_height, scene.settings.image_width
        assert color.shape == (3, H, W) and depth.shape == (H, W) and weight.shape == (H, W)
        assert radii.shape == (P,) and radii.dtype == torch.int32 and (radii == 0).all()
        assert torch.equal(color, scene.settings.bg[:, None, None].expand(3, H, W))
        assert (depth == 0).all() and (weight == 0).all()
        if color.requires_grad:
            (color.sum() + depth.sum() + weight.sum()).backward()
            for leaf in leaves.values():
                if leaf is not None and leaf.grad is not None:
                    assert (leaf.grad == 0).all()


def test_output_types_and_layout():
    for dtype in (torch.float32, F64):
        scene = scenes.make_scene(6, dtype=dtype, noncontiguous=True, sh_degree=1)
        color, radii, depth, weight = render(scene)
        assert color.dtype == depth.dtype == weight.dtype == dtype
        assert radii.dtype == torch.int32
        H, W = scene.settings.image_height, scene.settings.image_width
        assert color.shape == (3, H, W) and depth.shape == (H, W) and weight.shape == (H, W)
    # Non-contiguous (1,4,4) matrices mean the same as contiguous (4,4) ones.
    a = scenes.make_scene(6, noncontiguous=True, sh_degree=1)
    b = scenes.make_scene(6, noncontiguous=False, sh_degree=1)
    assert a.settings.viewmatrix.shape == (1, 4, 4) and not a.settings.viewmatrix.is_contiguous()
    for x, y in zip(render(a), render(b)):
        assert torch.equal(x, y)


def test_means2d_values_ignored_and_gradient_is_ndc():
    scene = scenes.make_smooth_scene(7, sh_degree=1)
    leaves = scene.with_grad()
    color, radii, depth, weight = render(leaves, scene.settings)
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(x.shape, generator=gen, dtype=F64) for x in (color, depth, weight)]
    ((color * g[0]).sum() + (depth * g[1]).sum() + (weight * g[2]).sum()).backward()
    grad = leaves["means2D"].grad
    assert (grad[:, 2] == 0).all()
    assert (grad[:, :2] != 0).all()

    # Values are ignored: zeros, random, (P, 2), or none at all give the same maps.
    for means2D in (torch.zeros(scene.P, 3, dtype=F64), torch.randn(scene.P, 2, dtype=F64), None):
        again = render(scene, means2D=means2D)
        for x, y in zip((color, radii, depth, weight), again):
            assert torch.equal(x.detach(), y)

    # The gradient is that of an additive offset to (ndc.x, ndc.y): finite differences.
    i = scene.inputs
    from diff_gaussian_rasterization_depth._validation import check_gaussians
    (m3, op, sh, cp, sc, rot, cov, settings) = check_gaussians(
        i["means3D"], None, i["opacities"], i["shs"], i["colors_precomp"], i["scales"],
        i["rotations"], i["cov3D_precomp"], i["dc"], scene.settings)

    def of_offset(offset):
        out = reference._forward(m3, op, sh, cp, sc, rot, cov, settings, ndc_offset=offset)[0]
        return ((out["color"] * g[0]).sum() + (out["depth"] * g[1]).sum()
                + (out["weight"] * g[2]).sum())

    eps = 1e-6
    numeric = torch.zeros(scene.P, 2, dtype=F64)
    for p in range(scene.P):
        for k in range(2):
            d = torch.zeros(scene.P, 2, dtype=F64)
            d[p, k] = eps
            numeric[p, k] = (of_offset(d) - of_offset(-d)) / (2 * eps)
    torch.testing.assert_close(grad[:, :2], numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Finite differences on smooth scenes
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", list(scenes.GRADCHECK_CONFIGS))
def test_gradcheck_reference(config, seed):
    # fast_mode checks random projections u^T J v of the Jacobian: every entry takes part.
    scene = scenes.make_smooth_scene(500 + seed, **scenes.GRADCHECK_CONFIGS[config])
    fn, leaves = scenes.make_gradcheck_fn(
        scene, lambda kw: rasterize_reference(**kw, raster_settings=scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_reference_full_jacobian():
    # The whole Jacobian, entry by entry, on a tiny image.
    scene = scenes.make_smooth_scene(520, P=3, height=6, width=7, sh_degree=2,
                                     antialiasing=True, scale_modifier=0.8)
    fn, leaves = scenes.make_gradcheck_fn(
        scene, lambda kw: rasterize_reference(**kw, raster_settings=scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)
