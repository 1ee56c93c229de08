"""Feature channels and the median depth (issue 12): the CPU backend against the reference.

`features=F` (P, C) adds feature_map (C, H, W) = sum_i w_i F_i over the colour's blended splats
and weights; `median_depth=True` adds the z of the splat after whose blend T first is <= 0.5.
Forward within 1e-5 on O(1) values, gradients rtol 1e-4 / atol 1e-4 max|ref| (float32; 1e-8
in float64), on seeded random scenes, leaving out the pixels where a correct float32
implementation may round to the other side of a threshold (scenes.ambiguous, and for the median
pixels where T passes within rounding of 0.5).
"""
import pytest
import torch

import scenes
from cuda_target import cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, rasterize_gaussians, _backend
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_cpu_backend import compare_gradients
from test_cuda import settings_on

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64
CHANNELS = (1, 3, 8, 33, 64)
SEEDS = range(3)
MEDIAN_REL = 1e-4


def random_features(P, C, seed, dtype=F32):
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.rand(P, C, generator=gen, dtype=F64) - 1).to(dtype)


def view_depths(scene):
    """z of every Gaussian in view space, computed here from the matrices (not the backend)."""
    means = scene.inputs["means3D"]
    view = scene.settings.viewmatrix.reshape(4, 4).to(means.dtype)
    return torch.cat([means, torch.ones_like(means[:, :1])], dim=1) @ view[:, 2]


def median_ambiguous(scene, internals=None):
    """Pixels where some blended splat leaves T within rounding of 0.5."""
    if internals is None:
        internals = scenes.reference_internals(scene)
    blend = internals[2]
    near = blend["blended"] & ((blend["T_after"] - 0.5).abs() <= MEDIAN_REL)
    return near.any(dim=0)


def render(run, inputs, settings, features, median_depth, inverse_depth=False):
    """{output name: tensor} of one call of the backend or the reference."""
    flags = dict(features=features, median_depth=median_depth, inverse_depth=inverse_depth)
    if run == "backend":
        out = GaussianRasterizer(settings)(**inputs, **flags)
    else:
        out = rasterize_reference(**inputs, raster_settings=settings, **flags)
    names = ["color", "radii", "depth", "weight"]
    names += ["feature_map"] if features is not None else []
    names += ["median"] if median_depth else []
    assert len(out) == len(names)
    return dict(zip(names, out))


def gradients(run, scene, features, median_depth, upstream, modes, inverse_depth=False):
    """{mode: {input: gradient}}: mode names the outputs whose loss is differentiated ("all" is
    every output in upstream)."""
    leaves = scene.with_grad()
    F = features.detach().clone().requires_grad_()
    out = render(run, leaves, scene.settings, F, median_depth, inverse_depth)
    names = [n for n, v in leaves.items() if v is not None]
    result = {}
    for mode in modes:
        used = list(upstream) if mode == "all" else [mode]
        grads = torch.autograd.grad([out[k] for k in used], [leaves[n] for n in names] + [F],
                                    [upstream[k] for k in used], retain_graph=True,
                                    allow_unused=True)
        result[mode] = {n: (torch.zeros_like(x) if g is None else g)
                        for n, x, g in zip(names + ["features"], [leaves[n] for n in names] + [F],
                                           grads)}
    return result


def reference_gradients(scene, features, median_depth, upstream, modes, inverse_depth=False):
    """As test_cpu_backend.reference_gradients: float32 scenes may match the float32 or the
    float64 reference."""
    same = gradients("reference", scene, features, median_depth, upstream, modes, inverse_depth)
    if scene.inputs["means3D"].dtype == F64:
        return [same]
    wide = scenes.Scene({k: (None if v is None else v.to(F64)) for k, v in scene.inputs.items()},
                        scene.settings)
    exact = gradients("reference", wide, features.to(F64), median_depth,
                      {k: v.to(F64) for k, v in upstream.items()}, modes, inverse_depth)
    return [same, {m: {n: g.to(F32) for n, g in gs.items()} for m, gs in exact.items()}]


def random_upstream(scene, C, keep, seed, median_depth=False):
    H, W = scene.settings.image_height, scene.settings.image_width
    dtype = scene.inputs["means3D"].dtype
    gen = torch.Generator().manual_seed(seed)
    keep = keep.to(dtype)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64).to(dtype) * keep

    up = {"color": draw(3, H, W), "depth": draw(H, W), "weight": draw(H, W),
          "feature_map": draw(C, H, W)}
    if median_depth:
        up["median"] = draw(H, W)
    return up


# ----------------------------------------------------------------------------------------------
# Feature channels
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("C", CHANNELS)
def test_feature_map_matches_reference(C):
    failures = []
    for seed in SEEDS:
        scene = scenes.make_scene(12000 + 10 * C + seed, sh_degree=1 + seed % 3,
                                  precomp_cov=seed == 2)
        F = random_features(scene.P, C, seed)
        internals = scenes.reference_internals(scene)
        pixels, gaussians = scenes.ambiguous_checked(scene, internals=internals)
        with torch.no_grad():
            got = render("backend", scene.inputs, scene.settings, F, False)
            want = render("reference", scene.inputs, scene.settings, F, False)
        H, W = scene.settings.image_height, scene.settings.image_width
        assert got["feature_map"].shape == (C, H, W) and got["feature_map"].dtype == F32
        err = (got["feature_map"] - want["feature_map"]).abs()[:, ~pixels].max().item()
        if not err <= 1e-5:
            failures.append(f"seed {seed}: feature_map max error {err:.3g}")
        assert want["feature_map"].abs().max() > 0.1   # not a vacuous comparison

        up = random_upstream(scene, C, ~pixels, seed)
        modes = ("feature_map", "all")
        want_g = reference_gradients(scene, F, False, up, modes)
        got_g = gradients("backend", scene, F, False, up, modes)
        failures += compare_gradients(got_g, want_g, F32, f"C={C} seed {seed}")
        for name in ("means3D", "opacities", "features"):
            assert want_g[0]["feature_map"][name].abs().max() > 0, name
        assert (want_g[0]["feature_map"]["shs"] == 0).all()   # features never reach colours
    assert not failures, "\n".join(failures)


def test_feature_map_float64():
    scene = scenes.make_scene(12500, dtype=F64, sh_degree=2, antialiasing=True)
    F = random_features(scene.P, 5, 1, F64)
    pixels, _ = scenes.ambiguous(scene)
    with torch.no_grad():
        got = render("backend", scene.inputs, scene.settings, F, True)
        want = render("reference", scene.inputs, scene.settings, F, True)
    torch.testing.assert_close(got["feature_map"][:, ~pixels], want["feature_map"][:, ~pixels],
                               rtol=0, atol=1e-10)
    up = random_upstream(scene, 5, ~pixels, 1, median_depth=True)
    got_g = gradients("backend", scene, F, True, up, ("all",))
    want_g = reference_gradients(scene, F, True, up, ("all",))
    failures = compare_gradients(got_g, want_g, F64, "float64")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("seed", range(3))
def test_feature_identities(seed):
    """F = colours: the colour without its background; F = 1: the weight; F = z: depth*weight.
    And a loss on the feature map of F = colours (bg = 0) has the colour loss's gradients."""
    scene = scenes.make_scene(12600 + seed, precomp_colors=True, height=40, width=64, P=120)
    i = scene.inputs
    P = scene.P
    F = torch.cat([i["colors_precomp"], torch.ones(P, 1), view_depths(scene)[:, None]], dim=1)
    with torch.no_grad():
        out = render("backend", i, scene.settings, F, False)
    fmap, color, weight, depth = out["feature_map"], out["color"], out["weight"], out["depth"]
    bg = scene.settings.bg
    T_final = 1 - weight
    torch.testing.assert_close(fmap[:3], color - T_final * bg[:, None, None], rtol=0, atol=1e-5)
    torch.testing.assert_close(fmap[3], weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(fmap[4], depth * weight, rtol=1e-6, atol=1e-5)
    assert weight.max() > 0.9 and weight.min() < 0.5

    # Gradient identity, with bg = 0 so that color = sum w c exactly as the feature map.
    settings = scene.settings._replace(bg=torch.zeros(3))
    H, W = settings.image_height, settings.image_width
    g = torch.randn(3, H, W, generator=torch.Generator().manual_seed(seed))
    names = ["means3D", "means2D", "opacities", "scales", "rotations"]
    leaves = scene.with_grad()
    color = GaussianRasterizer(settings)(**leaves)[0]
    want = torch.autograd.grad(color, [leaves[n] for n in names + ["colors_precomp"]], g)
    leaves = scene.with_grad()
    Fc = leaves["colors_precomp"].detach().clone().requires_grad_()
    fmap = GaussianRasterizer(settings)(**leaves, features=Fc)[4]
    got = torch.autograd.grad(fmap, [leaves[n] for n in names] + [Fc], g)
    for name, a, b in zip(names + ["features"], got, want):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


def test_features_strides_and_unused_gradient():
    scene = scenes.make_scene(12700, sh_degree=1)
    F = random_features(scene.P, 6, 0)
    strided = F.t().contiguous().t()          # same values, column-major
    assert not strided.is_contiguous() and torch.equal(strided, F)
    with torch.no_grad():
        a = render("backend", scene.inputs, scene.settings, F, False)["feature_map"]
        b = render("backend", scene.inputs, scene.settings, strided, False)["feature_map"]
    assert torch.equal(a, b)
    # A loss on the colour alone: F gets a zero gradient, the rest the plain call's.
    leaves = scene.with_grad(("means3D",))
    Fg = F.clone().requires_grad_()
    out = GaussianRasterizer(scene.settings)(**leaves, features=Fg)
    out[0].sum().backward()
    assert torch.equal(Fg.grad, torch.zeros_like(F))
    plain = scene.with_grad(("means3D",))
    GaussianRasterizer(scene.settings)(**plain)[0].sum().backward()
    assert torch.equal(leaves["means3D"].grad, plain["means3D"].grad)


MAP_NAMES = ("color", "depth", "weight")


def map_gradients(settings, inputs, upstream, monkeypatch):
    """({input: gradient}, the upstream maps the backend was handed) for a loss
    sum(map * upstream[map]) on the maps named in `upstream`."""
    handed = []
    real = _backend.backward

    def spy(config, gaussians, state, *maps, **options):
        handed.append(maps[:3])
        return real(config, gaussians, state, *maps, **options)

    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in
              inputs.items()}
    monkeypatch.setattr(_backend, "backward", spy)
    color, _, depth, weight = GaussianRasterizer(settings)(**leaves)
    maps = dict(color=color, depth=depth, weight=weight)
    sum((maps[m] * g).sum() for m, g in upstream.items()).backward()
    monkeypatch.setattr(_backend, "backward", real)
    assert len(handed) == 1
    return {k: v.grad for k, v in leaves.items() if v is not None}, handed[0]


@pytest.mark.parametrize("device", ["cpu"] + cuda_targets())
@pytest.mark.parametrize("used", [("color",), ("depth",), ("weight",), ("depth", "weight"),
                                  MAP_NAMES], ids="+".join)
def test_maps_no_loss_reaches_cost_nothing(device, used, monkeypatch):
    """A loss on some of the maps: the backend is handed None for the others (autograd makes no
    zero map for them), and every gradient equals that of the same loss with the other maps in
    it times zero, which hands the backend zero maps."""
    H, W = 24, 40
    scene = scenes.make_scene(12750 + len(used), P=40, height=H, width=W, sh_degree=1)
    inputs = {k: None if v is None else v.to(device) for k, v in scene.inputs.items()}
    settings = settings_on(scene.settings, device)
    gen = torch.Generator().manual_seed(len(used))
    shapes = dict(color=(3, H, W), depth=(H, W), weight=(H, W))
    upstream = {m: torch.rand(shapes[m], generator=gen).to(device) for m in used}
    zeros = {m: torch.zeros(shapes[m], device=device) for m in MAP_NAMES if m not in used}
    got, handed = map_gradients(settings, inputs, upstream, monkeypatch)
    want, handed_zeros = map_gradients(settings, inputs, {**upstream, **zeros}, monkeypatch)
    assert [g is None for g in handed] == [m not in used for m in MAP_NAMES]
    assert all(g is not None for g in handed_zeros)
    assert any(g.abs().max() > 0 for g in got.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0,
                                   msg=lambda m: f"{name}: {m}")


def weight_sums(settings, inputs):
    """doc/depth_and_weight.md's recipe, as written there: each Gaussian's blending weight
    summed over the image, the gradient of the feature map of a column of ones."""
    P = inputs["means3D"].shape[0]
    probe = torch.ones((P, 1), device=inputs["means3D"].device, requires_grad=True)
    with torch.enable_grad():
        *_, fmap = GaussianRasterizer(settings)(**{k: None if v is None else v.detach()
                                                   for k, v in inputs.items()}, features=probe)
        sums, = torch.autograd.grad(fmap.sum(), probe)
    return sums[:, 0]


@pytest.mark.parametrize("device", ["cpu"] + cuda_targets())
@pytest.mark.parametrize("seed", range(2))
def test_weight_sums_recipe(device, seed):
    """The pruning score of doc/depth_and_weight.md (sum over pixels of w_i) against the
    reference's own weights, w = T before - T after each blended splat; the scores add up to the
    weight map's sum, and culled Gaussians score 0. With outliers (culled Gaussians) and a
    debug-free call under no_grad around it, as a pruning step is."""
    scene = scenes.make_scene(12800 + seed, P=90, height=36, width=52, sh_degree=1)
    inputs = {k: None if v is None else v.to(device) for k, v in scene.inputs.items()}
    settings = settings_on(scene.settings, device)
    with torch.no_grad():
        sums = weight_sums(settings, inputs).cpu()
        _, radii, _, weight = GaussianRasterizer(settings)(**inputs)
    _, _, blend, idx, _ = scenes.reference_internals(scene)
    T_after = blend["T_after"]
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]])
    w = torch.where(blend["blended"], T_before - T_after, torch.zeros_like(T_after))
    want = torch.zeros(scene.P)
    want[idx[blend["order"]]] = w.sum(dim=(1, 2))
    # Rounding-ambiguous pixels may blend a splat more or less (scenes.ambiguous): their
    # largest possible share bounds the difference.
    pixels, _ = scenes.ambiguous(scene)
    slack = (w * pixels).sum(dim=(1, 2)).max().item() if pixels.any() else 0.0
    assert want.max() > 1 and (radii.cpu() == 0).any()
    torch.testing.assert_close(sums, want, rtol=1e-4, atol=1e-4 * want.max().item() + slack)
    torch.testing.assert_close(sums.sum(), weight.sum().cpu(), rtol=1e-4, atol=0)
    assert torch.equal(sums[radii.cpu() == 0], torch.zeros(int((radii == 0).sum())))


# ----------------------------------------------------------------------------------------------
# Median depth
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_median_matches_reference(seed):
    scene = scenes.make_scene(12800 + seed, sh_degree=1, height=40, width=64, P=120,
                              antialiasing=seed == 3)
    internals = scenes.reference_internals(scene)
    pixels, gaussians = scenes.ambiguous(scene, internals=internals)
    pixels = pixels | median_ambiguous(scene, internals)
    scenes.check_ambiguity_rare(pixels, gaussians, scene)
    with torch.no_grad():
        got = render("backend", scene.inputs, scene.settings, None, True)
        want = render("reference", scene.inputs, scene.settings, None, True)
    keep = ~pixels
    torch.testing.assert_close(got["median"][keep], want["median"][keep], rtol=0, atol=1e-5)
    # Both kinds of pixel are there: some reach T <= 0.5, some are blended but never do.
    reached = keep & (want["median"] > 0)
    never = keep & (want["median"] == 0) & (want["weight"] > 0)
    assert reached.sum() >= 20 and never.sum() >= 20
    assert (got["median"][never] == 0).all()
    # The median is one of the blended depths, at most the deepest of them.
    z = view_depths(scene)
    assert (torch.isclose(got["median"][reached][:, None], z[None]).any(dim=1)).all()
    # Beside the colour outputs, which the median leaves alone.
    plain = render("backend", scene.inputs, scene.settings, None, False)
    for k in ("color", "radii", "depth", "weight"):
        assert torch.equal(got[k], plain[k])

    # The median's gradient reaches its splats' depth alone, hence means3D alone.
    up = {"median": torch.randn(40, 64, generator=torch.Generator().manual_seed(seed)) * keep}
    F = random_features(scene.P, 1, seed)
    got_g = gradients("backend", scene, F, True, dict(up), ("median",))
    want_g = reference_gradients(scene, F, True, dict(up), ("median",))
    failures = compare_gradients(got_g, want_g, F32, f"seed {seed}")
    assert not failures, "\n".join(failures)
    assert got_g["median"]["means3D"].abs().max() > 0
    for name, g in got_g["median"].items():
        if name != "means3D":
            assert (g == 0).all(), name


# ----------------------------------------------------------------------------------------------
# Finite differences, errors, the default call
# ----------------------------------------------------------------------------------------------

def smooth_median_scene(seed, **kwargs):
    """A smooth scene (scenes.make_smooth_scene) where T crosses 0.5 on some pixels but no
    blended splat leaves T within 1e-4 of 0.5, so that the median's splat does not change
    within the finite-difference step."""
    for attempt in range(50):
        scene = scenes.make_smooth_scene(seed + 7 * attempt, **kwargs)
        blend = scenes.reference_internals(scene)[2]
        near = blend["blended"] & ((blend["T_after"] - 0.5).abs() < 1e-4)
        if blend["median_crossing"].any() and not near.any():
            return scene
    raise RuntimeError("no smooth scene away from T = 0.5")


@pytest.mark.parametrize("seed", range(2))
def test_gradcheck_features_and_median(seed):
    scene = smooth_median_scene(13000 + seed, P=6, height=13, width=18, sh_degree=1)
    names = scenes.gradcheck_inputs(scene)
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}
    F = random_features(scene.P, 3, seed, F64)

    def fn(*tensors):
        kwargs = dict(fixed)
        kwargs.update(zip(names, tensors[:-1]))
        out = GaussianRasterizer(scene.settings)(**kwargs, features=tensors[-1],
                                                  median_depth=True)
        return out[0], out[2], out[3], out[4], out[5]

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    leaves += (F.clone().requires_grad_(),)
    with torch.no_grad():
        assert (fn(*leaves)[4] > 0).any()
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_wrong_features_are_named_errors():
    scene = scenes.make_scene(13100, P=10, sh_degree=0)
    P = scene.P
    r = GaussianRasterizer(scene.settings)
    bad_shapes = [torch.rand(P + 1, 3), torch.rand(P), torch.rand(P, 0), torch.rand(P, 2, 2)]
    for F in bad_shapes:
        with pytest.raises(ValueError, match="features"):
            r(**scene.inputs, features=F)
    for F in (torch.rand(P, 3, dtype=F64), torch.ones(P, 3, dtype=torch.int32)):
        with pytest.raises(TypeError, match="features"):
            r(**scene.inputs, features=F)
    with pytest.raises(ValueError, match="features"):
        r(**scene.inputs, features=torch.rand(P, 3, device="meta"))
    with pytest.raises(TypeError, match="features"):
        r(**scene.inputs, features=[[0.0] * 3] * P)
    with pytest.raises(TypeError, match="median_depth"):
        r(**scene.inputs, median_depth=1)
    with pytest.raises(ValueError, match="features"):
        rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                            features=torch.rand(P + 1, 3))


def test_default_call_unchanged():
    """features=None and median_depth=False are the plain call, bit for bit, with gradients;
    and asking for the optional outputs leaves colour, depth, weight and radii bitwise alone."""
    scene = scenes.make_scene(13200, sh_degree=2, height=40, width=64, P=120)
    up = random_upstream(scene, 4, torch.ones(40, 64, dtype=torch.bool), 0)

    def run(**extra):
        leaves = scene.with_grad()
        out = GaussianRasterizer(scene.settings)(**leaves, **extra)
        loss = sum((o * up[k]).sum() for o, k in zip((out[0], out[2], out[3]),
                                                     ("color", "depth", "weight")))
        loss.backward()
        return out[:4], {k: v.grad for k, v in leaves.items() if v is not None}

    plain, plain_g = run()
    for extra in (dict(features=None, median_depth=False),
                  dict(features=random_features(scene.P, 4, 0), median_depth=True)):
        out, grads = run(**extra)
        assert len(out) == 4
        for a, b in zip(out, plain):
            assert torch.equal(a, b)
        for k, g in grads.items():
            assert torch.equal(g, plain_g[k]), k
    assert len(rasterize_gaussians(
        scene.inputs["means3D"], scene.inputs["means2D"], scene.inputs["shs"], None,
        scene.inputs["opacities"], scene.inputs["scales"], scene.inputs["rotations"], None,
        scene.settings)) == 4


def test_output_order_and_empty_scenes():
    for P in (0, 20):
        scene = scenes.make_scene(13300 + P, P=P, sh_degree=1, all_culled=P > 0)
        H, W = scene.settings.image_height, scene.settings.image_width
        out = GaussianRasterizer(scene.settings)(**scene.inputs, features=torch.rand(P, 7),
                                                 median_depth=True)
        assert len(out) == 6
        assert out[4].shape == (7, H, W) and out[5].shape == (H, W)
        assert (out[4] == 0).all() and (out[5] == 0).all()
        out = GaussianRasterizer(scene.settings)(**scene.inputs, median_depth=True)
        assert len(out) == 5 and out[4].shape == (H, W)


def test_debug_snapshot_replays_features_and_median(tmp_path, monkeypatch):
    """A failing backward with features, the median and inverse depth writes a snapshot that
    replays them."""
    from diff_gaussian_rasterization_depth import replay_snapshot
    monkeypatch.chdir(tmp_path)
    scene = scenes.make_scene(13400, P=30, sh_degree=1)
    settings = scene.settings._replace(debug=True)
    F = random_features(scene.P, 5, 0)

    def loss_and_grads(rasterize_settings):
        leaves = scene.with_grad(("means3D",))
        Fg = F.clone().requires_grad_()
        out = GaussianRasterizer(rasterize_settings)(**leaves, features=Fg, median_depth=True,
                                                      inverse_depth=True)
        (out[0].sum() + out[2].sum() + out[4].square().sum() + out[5].sum()).backward()
        return out, leaves["means3D"].grad, Fg.grad

    real = _backend.backward

    def broken(*args, **kwargs):
        raise RuntimeError("injected backward fault")
    monkeypatch.setattr(_backend, "backward", broken)
    with pytest.raises(RuntimeError, match="injected backward fault") as info:
        loss_and_grads(settings)
    monkeypatch.setattr(_backend, "backward", real)
    path = str(info.value).split("written to ")[1].split(";")[0]
    result = replay_snapshot(path)
    out, d_means, d_features = loss_and_grads(scene.settings)
    assert len(result["outputs"]) == 6
    for a, b in zip(result["outputs"], out):
        assert torch.equal(a.detach(), b.detach())
    assert set(result["snapshot"]["grads"]) == {"color", "depth", "weight", "feature_map",
                                                "median"}
    assert torch.equal(result["grads"]["means3D"], d_means)
    assert torch.equal(result["grads"]["features"], d_features)


def test_debug_names_nonfinite_features():
    scene = scenes.make_scene(13500, P=12, sh_degree=0)
    F = random_features(scene.P, 4, 0)
    F[7, 2] = float("nan")
    with pytest.raises(ValueError, match=r"features\[7\]"):
        GaussianRasterizer(scene.settings._replace(debug=True))(**scene.inputs, features=F)
