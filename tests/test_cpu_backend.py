"""The compiled CPU backend, through the public API, against the pure-PyTorch reference.

Forward: colour, depth and weight within 1e-5 (float32; depth relative to its size and its
conditioning, see depth_scale) on 20 seeded scenes per configuration, radii equal. Gradients:
every input, from colour, depth and weight separately and together, within rtol 1e-4 and
atol 1e-4 * max|ref| (float32; 1e-8 in float64). Finite differences (gradcheck, float64) on
smooth scenes.

Pixels and Gaussians where a correct float32 implementation may round to the other side of a
threshold (scenes.ambiguous) are left out of the comparison: their upstream gradient is zero and
their values are not compared. Each test checks that they are rare.
"""

import math

import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer, rasterize_gaussians, _backend
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from robust_helpers import DEVICES

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR}); build it "
                "with `pip install --no-build-isolation .`", allow_module_level=True)

F32, F64 = torch.float32, torch.float64

# name -> make_scene options (on top of P=48, 37x29, float32, with outliers).
CONFIGS = {
    "sh0": dict(sh_degree=0),
    "sh1": dict(sh_degree=1),
    "sh2": dict(sh_degree=2),
    "sh3": dict(sh_degree=3),
    "sh0-dc": dict(sh_degree=0, dc=True),
    "sh3-dc": dict(sh_degree=3, dc=True),
    "colors": dict(precomp_colors=True, sh_degree=2),
    "cov": dict(sh_degree=1, precomp_cov=True),
    "colors-cov": dict(precomp_colors=True, precomp_cov=True),
    "modifier": dict(sh_degree=1, scale_modifier=1.7),
    "modifier-cov": dict(sh_degree=0, scale_modifier=0.6, precomp_cov=True),
    "aa": dict(sh_degree=2, antialiasing=True),
    "aa-colors-cov": dict(precomp_colors=True, precomp_cov=True, antialiasing=True),
    # Mip-Splatting's 2D filter (kernel_size 0.1 with the compensation); a wider filter alone.
    "mip-kernel0.1": dict(sh_degree=2, antialiasing=True, kernel_size=0.1),
    "kernel1.2": dict(sh_degree=1, kernel_size=1.2),
    "unnormalized-quats": dict(sh_degree=1, normalize_rotations=False),
    "noncontiguous": dict(sh_degree=1, noncontiguous=True),
    "means2d-P2": dict(sh_degree=1, means2d_cols=2),
    "size-1x1": dict(sh_degree=1, height=1, width=1, P=16),
    "size-16x16": dict(sh_degree=1, height=16, width=16),
    "size-48x32": dict(sh_degree=2, height=32, width=48, P=80),
    "size-64x40": dict(sh_degree=3, height=40, width=64, P=120, antialiasing=True),
    "size-17x33": dict(precomp_colors=True, height=33, width=17),
    "P0": dict(P=0, sh_degree=1),
    "all-culled": dict(all_culled=True, sh_degree=1),
    "float64": dict(sh_degree=3, dtype=F64),
    "float64-colors-cov-aa": dict(precomp_colors=True, precomp_cov=True, antialiasing=True,
                                  dtype=F64),
    "float64-mip-kernel0": dict(sh_degree=1, antialiasing=True, kernel_size=0.0, dtype=F64),
}

FORWARD_SEEDS = range(20)
GRADIENT_SEEDS = range(4)
MODES = ("color", "depth", "weight", "all")


def scene_for(config, seed):
    return scenes.config_scene("", CONFIGS, config, seed)


def run_backend(inputs, settings):
    return GaussianRasterizer(settings)(**inputs)


def run_reference(inputs, settings):
    return rasterize_reference(**inputs, raster_settings=settings)


def forward_tolerance(dtype):
    return 1e-5 if dtype == F32 else 1e-10


def grad_tolerance(dtype):
    return 1e-4 if dtype == F32 else 1e-8


def depth_scale(ref):
    """What a depth error is measured against.

    Depth is of order 1..10, so relative to max(1, depth); and depth = S / weight turns the
    absolute rounding errors of S and weight into errors of depth times 1 / weight, so where the
    weight is below 0.1 the allowance grows like 0.1 / weight (at most 25.5 times, at 1/255).
    """
    thin = (0.1 / ref["weight"].clamp_min(1 / 255)).clamp_min(1)
    return ref["depth"].abs().clamp_min(1) * thin


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

def forward_against_reference(scene, label, tol=None):
    """The backend's forward on `scene` against the reference's, pixels within rounding of a
    threshold left out: (failures, (color, radii, depth, weight), the reference's outputs, the
    pixels compared (H, W) bool). `tol`: forward_tolerance's unless given."""
    dtype = scene.inputs["means3D"].dtype
    with torch.no_grad():
        color, radii, depth, weight = run_backend(scene.inputs, scene.settings)
        internals = scenes.reference_internals(scene)
    ref = internals[0]
    pixels, gaussians = scenes.ambiguous_checked(scene, internals=internals)
    keep = ~pixels
    tol = forward_tolerance(dtype) if tol is None else tol
    errors = {
        "color": (color - ref["color"]).abs()[:, keep],
        "weight": (weight - ref["weight"]).abs()[keep],
        "unnormalized depth": ((depth * weight - ref["depth"] * ref["weight"]).abs()
                               / ref["depth"].abs().clamp_min(1))[keep],
        "depth": ((depth - ref["depth"]).abs() / depth_scale(ref))[keep],
    }
    failures = []
    for name, err in errors.items():
        err = err.max().item() if err.numel() else 0.0
        if not err <= tol:
            failures.append(f"{label}: {name} max error {err:.3g} > {tol:g}")
    empty = keep & (ref["weight"] == 0)
    if not ((weight[empty] == 0).all() and (depth[empty] == 0).all()):
        failures.append(f"{label}: depth or weight not 0 where nothing is blended")
    radii_bad = (radii != ref["radii"]) & ~gaussians
    if radii_bad.any():
        i = torch.nonzero(radii_bad)[:5, 0].tolist()
        failures.append(f"{label}: radii differ at {i}: backend "
                        f"{radii[i].tolist()} reference {ref['radii'][i].tolist()}")
    return failures, (color, radii, depth, weight), ref, keep


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_matches_reference(config):
    failures = []
    compared_pixels = visible = 0
    for seed in FORWARD_SEEDS:
        scene = scene_for(config, seed)
        dtype = scene.inputs["means3D"].dtype
        found, (color, radii, depth, weight), ref, keep = forward_against_reference(
            scene, f"seed {seed}")
        failures += found
        H, W = scene.settings.image_height, scene.settings.image_width
        assert color.shape == (3, H, W) and depth.shape == (H, W) and weight.shape == (H, W)
        assert color.dtype == depth.dtype == weight.dtype == dtype
        assert radii.dtype == torch.int32 and radii.shape == (scene.P,)
        compared_pixels += int(keep.sum())
        visible += int((ref["radii"] > 0).sum())
    assert not failures, "\n".join(failures)
    total = len(FORWARD_SEEDS) * scene.settings.image_height * scene.settings.image_width
    assert compared_pixels >= 0.97 * total
    if config not in ("P0", "all-culled"):
        assert visible > 0


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------

def upstream_gradients(scene, pixels, seed):
    """Random upstream gradients for color, depth and weight, zero on ambiguous pixels."""
    H, W = scene.settings.image_height, scene.settings.image_width
    dtype = scene.inputs["means3D"].dtype
    gen = torch.Generator().manual_seed(seed)
    keep = (~pixels).to(dtype)
    return {"color": torch.randn(3, H, W, generator=gen, dtype=F64).to(dtype) * keep,
            "depth": torch.randn(H, W, generator=gen, dtype=F64).to(dtype) * keep,
            "weight": torch.randn(H, W, generator=gen, dtype=F64).to(dtype) * keep}


def gradients(run, scene, upstream, modes=MODES):
    """{mode: {input name: gradient}} of run's outputs contracted with upstream."""
    leaves = scene.with_grad()
    color, radii, depth, weight = run(leaves, scene.settings)
    outputs = {"color": color, "depth": depth, "weight": weight}
    names = [n for n, v in leaves.items() if v is not None]
    result = {}
    for mode in modes:
        used = list(outputs) if mode == "all" else [mode]
        grads = torch.autograd.grad([outputs[k] for k in used], [leaves[n] for n in names],
                                    [upstream[k] for k in used], retain_graph=True,
                                    allow_unused=True)
        result[mode] = {n: (torch.zeros_like(leaves[n]) if g is None else g)
                        for n, g in zip(names, grads)}
    return result


def reference_gradients(scene, upstream, modes=MODES):
    """The reference's gradients: [in the scene's dtype] or, for float32, [float32, float64].

    For float32 the backend must match either the float32 reference or the float64 one (from
    the same float32 values) within the tolerance. Both are right to float32 rounding, but
    they fail in different places: where a gradient is a small difference of large terms (the
    weight gradient of a saturated pixel, 1 - A_i with A_i near 1), the float32 reference's own
    rounding uses up the tolerance; where forward intermediates are ill-conditioned (det of a
    thin 2D covariance), the exact gradient differs from that of any float32 forward.
    """
    same = gradients(run_reference, scene, upstream, modes)
    dtype = scene.inputs["means3D"].dtype
    if dtype == F64:
        return [same]
    wide = {k: (None if v is None else v.to(F64)) for k, v in scene.inputs.items()}
    wide_scene = scenes.Scene(wide, scene.settings)   # validation moves the settings to float64
    exact = gradients(run_reference, wide_scene, {k: v.to(F64) for k, v in upstream.items()},
                      modes)
    exact = {m: {n: g.to(dtype) for n, g in grads.items()} for m, grads in exact.items()}
    return [same, exact]


def compare_gradients(got, wants, dtype, label):
    """Failures (strings) of got against the first of `wants` that each gradient matches."""
    failures = []
    tol = grad_tolerance(dtype)
    for mode in wants[0]:
        for name in wants[0][mode]:
            g = got[mode][name]
            if not torch.isfinite(g).all():
                failures.append(f"{label} {mode} {name}: non-finite backend gradient")
                continue
            errors = []
            for want in wants:
                ref = want[mode][name]
                scale = ref.abs().max().item() if ref.numel() else 0.0
                try:
                    torch.testing.assert_close(g, ref, rtol=tol, atol=tol * scale)
                    break
                except AssertionError as e:
                    worst = (g - ref).abs().max().item()
                    # assert_close's second line says what differs; a one-line message (another
                    # dtype or shape) is the message
                    lines = str(e).splitlines()
                    errors.append(f"max |diff| {worst:.3g}, max |ref| {scale:.3g}; "
                                  + (lines[1] if len(lines) > 1 else lines[0]).strip())
            else:
                failures.append(f"{label} {mode} {name}: " + " | ".join(errors))
    return failures


@pytest.mark.parametrize("config", list(CONFIGS))
def test_gradients_match_reference(config):
    failures = []
    for seed in GRADIENT_SEEDS:
        scene = scene_for(config, seed)
        pixels, gaussians = scenes.ambiguous_checked(scene)
        upstream = upstream_gradients(scene, pixels, seed)
        want = reference_gradients(scene, upstream)
        got = gradients(run_backend, scene, upstream)
        failures += compare_gradients(got, want, scene.inputs["means3D"].dtype, f"seed {seed}")
        if config not in ("P0", "all-culled") and scene.P:
            assert any(g.abs().max() > 0 for g in want[0]["all"].values())
    assert not failures, "\n".join(failures)


def test_gradients_each_output_reaches_geometry():
    """Depth-only and weight-only losses move opacities, scales, rotations and means (SPEC 7)."""
    scene = scene_for("sh1", 0)
    pixels, _ = scenes.ambiguous(scene)
    got = gradients(run_backend, scene, upstream_gradients(scene, pixels, 0), ("depth", "weight"))
    for mode in ("depth", "weight"):
        for name in ("means3D", "means2D", "opacities", "scales", "rotations"):
            assert got[mode][name].abs().max() > 0, (mode, name)
        assert (got[mode]["shs"] == 0).all(), mode      # neither reaches colours


def test_functional_form_and_module_agree():
    scene = scene_for("sh2", 0)
    i = scene.inputs
    a = run_backend(i, scene.settings)
    b = rasterize_gaussians(i["means3D"], i["means2D"], i["shs"], None, i["opacities"],
                            i["scales"], i["rotations"], None, scene.settings)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_means2d_none_and_values_ignored():
    scene = scene_for("sh1", 1)
    base = run_backend(scene.inputs, scene.settings)
    for means2D in (None, torch.zeros(scene.P, 3), torch.full((scene.P, 2), 7.0)):
        out = run_backend(dict(scene.inputs, means2D=means2D), scene.settings)
        for x, y in zip(base, out):
            assert torch.equal(x, y)


def test_deterministic_and_outputs_safe_to_edit_in_place():
    """Two runs agree; editing the returned maps in place does not change the gradients."""
    scene = scene_for("aa", 2)
    pixels, _ = scenes.ambiguous(scene)
    up = upstream_gradients(scene, pixels, 3)
    first = gradients(run_backend, scene, up, ("all",))

    leaves = scene.with_grad()
    color, radii, depth, weight = run_backend(leaves, scene.settings)
    again = run_backend(scene.inputs, scene.settings)
    for x, y in zip((color, radii, depth, weight), again):
        assert torch.equal(x.detach(), y)
    loss = (color * up["color"]).sum() + (depth * up["depth"]).sum() + (weight * up["weight"]).sum()
    with torch.no_grad():
        color.mul_(0).add_(5)
        depth.fill_(-1)
        weight.copy_(torch.rand_like(weight))
    loss.backward()
    for name, g in first["all"].items():
        torch.testing.assert_close(leaves[name].grad, g, rtol=1e-6, atol=1e-6 * g.abs().max())


def test_noncontiguous_upstream_gradient():
    scene = scene_for("sh1", 4)
    pixels, _ = scenes.ambiguous(scene)
    up = upstream_gradients(scene, pixels, 5)
    want = reference_gradients(scene, up, ("all",))
    leaves = scene.with_grad()
    color, radii, depth, weight = run_backend(leaves, scene.settings)
    # Gradients arriving through transposes are not contiguous.
    loss = ((color.transpose(1, 2) * up["color"].transpose(1, 2)).sum()
            + (depth.T * up["depth"].T).sum() + (weight.T * up["weight"].T).sum())
    loss.backward()
    got = {"all": {n: leaves[n].grad for n in want[0]["all"]}}
    failures = compare_gradients(got, want, F32, "transposed")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_nonfinite_gaussians(dtype):
    scene = scenes.make_scene(77, P=40, dtype=dtype, outliers=False, sh_degree=2)
    bad = {k: (None if v is None else v.clone()) for k, v in scene.inputs.items()}
    bad["means3D"][0, 0] = float("nan")
    bad["means3D"][1, 2] = float("inf")
    bad["opacities"][2] = float("nan")
    bad["shs"][3, 0, 0] = float("nan")
    bad["scales"][4, 1] = float("inf")
    bad["rotations"][5, 2] = float("nan")
    bad["means3D"][6] = scene.settings.campos        # SH direction 0/0
    k = 7
    bad_scene = scenes.Scene(bad, scene.settings)
    with torch.no_grad():
        color, radii, depth, weight = run_backend(bad, scene.settings)
    for t in (color, depth, weight):
        assert torch.isfinite(t).all()
    assert (radii[:k] == 0).all()
    pixels, _ = scenes.ambiguous(bad_scene)
    up = upstream_gradients(scene, pixels, 1)
    got = gradients(run_backend, bad_scene, up, ("all",))
    want = reference_gradients(bad_scene, up, ("all",))
    for name, g in got["all"].items():
        assert torch.isfinite(g).all(), name
        assert (g[:k] == 0).all(), name
    failures = compare_gradients(got, want, dtype, "non-finite")
    assert not failures, "\n".join(failures)


def test_mark_visible():
    for seed in range(5):
        scene = scene_for("sh0", seed)
        visible = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
        view = scene.settings.viewmatrix.reshape(4, 4)
        z = scene.inputs["means3D"] @ view[:3, 2] + view[3, 2]
        assert visible.dtype == torch.bool and visible.shape == (scene.P,)
        assert torch.equal(visible, z > 0.2)


# ----------------------------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", list(scenes.GRADCHECK_CONFIGS))
def test_gradcheck_cpu_backend(config, seed):
    # fast_mode: random projections u^T J v of the whole Jacobian, one backward each.
    scene = scenes.make_smooth_scene(600 + seed, P=5, height=13, width=18,
                                     **scenes.GRADCHECK_CONFIGS[config])
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_cpu_backend_full_jacobian():
    # Entry by entry, on a smooth scene over 2x2 tiles.
    scene = scenes.make_smooth_scene(650, P=3, height=18, width=17, sh_degree=2,
                                     antialiasing=True, scale_modifier=1.2)
    fn, leaves = scenes.make_gradcheck_fn(scene, lambda kw: run_backend(kw, scene.settings))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_opacity_aware_tiles_change_nothing(seed):
    """Faint wide Gaussians are binned only into the tiles where o G can reach 1/255, a subset of
    their 3-sigma square; the render must still equal the reference (which uses the square)
    to float64 rounding, and the radii stay the 3-sigma ones."""
    scene = scenes.make_scene(4200 + seed, P=60, height=64, width=80, sh_degree=1,
                              outliers=False, dtype=F64)
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(scene.inputs)
    # Large footprints (20..40 px sigma) with opacities from just above 1/255 to 0.3.
    inputs["scales"] = inputs["scales"] * (5 + 5 * torch.rand(scene.P, 1, generator=gen,
                                                               dtype=F64))
    inputs["opacities"] = (1 / 255 + 0.3 * torch.rand(scene.P, 1, generator=gen, dtype=F64) ** 3)
    faint = scenes.Scene(inputs, scene.settings)
    up = upstream_gradients(faint, torch.zeros(64, 80, dtype=torch.bool), seed)
    with torch.no_grad():
        color, radii, depth, weight = run_backend(inputs, scene.settings)
        ref = run_reference(inputs, scene.settings)
    assert torch.equal(radii, ref[1])
    for got, want in ((color, ref[0]), (depth, ref[2]), (weight, ref[3])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    want = reference_gradients(faint, up, ("all",))
    got = gradients(run_backend, faint, up, ("all",))
    failures = compare_gradients(got, want, F64, f"seed {seed}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", (F64, F32))
@pytest.mark.parametrize("seed", range(3))
def test_elongated_splats_binned_by_their_reach_box(seed, dtype):
    """Elongated splats at every angle are binned into the tiles of the bounding box of their
    ellipse where o G can reach 1/255 (reach_rect), not of the disc around it: the tile pairs
    lie between the tiles where a splat does reach 1/255 (counted pixel by pixel; leaving one
    out would change a pixel) and those of the box from the float64 conic with a 1% margin
    (binning by the disc exceeds it), and the render and every gradient equal the reference's,
    which evaluates each splat on its whole 3-sigma square."""
    scene = scenes.make_scene(4300 + seed, P=40, height=64, width=80, sh_degree=1,
                              outliers=False, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    inputs = dict(scene.inputs)
    # Needles 3 to 12 times longer than wide, 4 to 16 px sigma along, random rotations (the
    # scene's); opacities from just above 1/255 to 0.95.
    stretch = torch.ones(scene.P, 3, dtype=dtype)
    stretch[:, 0] = 3 + 9 * torch.rand(scene.P, generator=gen, dtype=dtype)
    inputs["scales"] = inputs["scales"] * 2 * stretch
    inputs["opacities"] = 1 / 255 + 0.95 * torch.rand(scene.P, 1, generator=gen, dtype=dtype)
    needles = scenes.Scene(inputs, scene.settings)
    H, W = scene.settings.image_height, scene.settings.image_width
    config, gaussians = scenes.backend_call(needles)
    pairs = _backend.forward(config, gaussians)[-1][4].numel()

    _, everyone, _, _, _ = scenes.reference_internals(needles)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=F64), torch.arange(W, dtype=F64),
                            indexing="ij")
    tiles_x, tiles_y = (W + 15) // 16, (H + 15) // 16
    reached = box = 0
    for g in torch.nonzero(everyone["visible"]).flatten().tolist():
        (mx, my), r = everyone["mean2d"][g].tolist(), float(everyone["radius"][g])
        a, b, c = everyone["conic"][g].tolist()
        o = float(everyone["opacity"][g])
        det, tau = a * c - b * b, math.log(max(255 * o, 1.0))
        half = (1.01 * math.sqrt(2 * tau * c / det) + 1, 1.01 * math.sqrt(2 * tau * a / det) + 1)
        squares, spans = [], []
        for m, h, n in ((mx, half[0], tiles_x), (my, half[1], tiles_y)):
            square = (max(0, math.floor((m - r) / 16)), min(n, math.floor((m + r + 15) / 16)))
            lo = max(square[0], math.floor(max(m - h, 0) / 16))
            hi = min(square[1], math.floor(min(m + h, 16 * n - 1) / 16) + 1)
            squares.append(square)
            spans.append(max(0, hi - lo))
        box += spans[0] * spans[1]
        # The tiles of its 3-sigma square (where the reference evaluates it) that hold a pixel
        # with o G >= 1/255.
        power = -0.5 * (a * (mx - xs) ** 2 + c * (my - ys) ** 2) - b * (mx - xs) * (my - ys)
        hit = (o * torch.exp(power)).clamp(max=0.99) >= 1 / 255
        hit = torch.nn.functional.pad(hit, (0, tiles_x * 16 - W, 0, tiles_y * 16 - H))
        per_tile = hit.view(tiles_y, 16, tiles_x, 16).any(dim=3).any(dim=1)
        (x0, x1), (y0, y1) = squares
        reached += int(per_tile[y0:y1, x0:x1].sum())
    assert 0 < reached <= pairs <= box, (reached, pairs, box)

    up = upstream_gradients(needles, torch.zeros(H, W, dtype=torch.bool), seed)
    with torch.no_grad():
        color, radii, depth, weight = run_backend(inputs, scene.settings)
        ref = run_reference(inputs, scene.settings)
    assert torch.equal(radii, ref[1])
    tol = 1e-10 if dtype == F64 else 2e-5
    for got, want in ((color, ref[0]), (depth, ref[2]), (weight, ref[3])):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if dtype == F64:
        want = reference_gradients(needles, up, ("all",))
        got = gradients(run_backend, needles, up, ("all",))
        failures = compare_gradients(got, want, F64, f"seed {seed}")
        assert not failures, "\n".join(failures)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_weight_gradient_exact_where_pixels_saturate(device, seed):
    """A loss on the weight where most pixels saturate (weight near 1): every gradient within
    3e-5 of its largest entry of the reference's in float64 (from the same float32 values;
    measured: at most 1.3e-5 on 12 seeds). The weight's part of dL/dalpha_i is T_final g /
    (1 - alpha_i); taken as T_i (1 - sum w behind), 1 minus a sum near 1, it lost digits: up
    to 1.3e-4, and 5 of these 6 cases failed."""
    scene = scenes.make_scene(7100 + seed, P=60, height=18, width=22, sh_degree=0,
                              outliers=False)
    gen = torch.Generator().manual_seed(seed)
    scene.inputs["opacities"] = 0.9 + 0.09 * torch.rand(scene.P, 1, generator=gen)
    scene.inputs["scales"] = scene.inputs["scales"] * 2
    pixels, _ = scenes.ambiguous(scene)
    H, W = scene.settings.image_height, scene.settings.image_width
    g_weight = torch.randn(H, W, generator=gen) * (~pixels)

    def weight_gradients(dtype, on):
        leaves = {k: None if v is None else v.detach().to(dtype).to(on).requires_grad_(
                  k in scenes.GRAD_NAMES) for k, v in scene.inputs.items()}
        weight = run_backend(leaves, scene.settings)[3] if dtype == F32 else \
            run_reference(leaves, scene.settings)[3]
        names = ["means3D", "means2D", "opacities", "scales", "rotations"]  # what weight sees
        grads = torch.autograd.grad(weight, [leaves[k] for k in names], g_weight.to(dtype).to(on))
        return weight.detach().cpu(), {k: g.cpu() for k, g in zip(names, grads)}

    weight, got = weight_gradients(F32, device)
    exact_weight, want = weight_gradients(F64, "cpu")
    assert (exact_weight > 0.999).float().mean() > 0.3  # a scene that saturates
    for name, g in got.items():
        scale = want[name].abs().max().item()
        assert scale > 0, name
        err = (g.double() - want[name]).abs().max().item()
        assert err <= 3e-5 * scale, f"{name}: max error {err:.3g} of {scale:.3g}"
