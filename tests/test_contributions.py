"""The contribution statistics (`contributions=True`): over the pixels where each Gaussian is
blended, the sum and the largest of its weights w = alpha T, the number of those pixels, the
number where its weight is the pixel's largest, and the sum of its opacity times the
transmittance in front, o T (LightGaussian's score). The CPU backend and the CUDA targets against the
reference, identities with the maps, a lone Gaussian, thread and tuning independence, culled and
non-finite Gaussians, and that asking for them changes nothing else.

A correct float32 implementation may round an alpha or a transmittance to the other side of a
threshold at a few pixels (scenes.ambiguous), or two nearly equal weights of a pixel to the other
order: there each Gaussian of the pixel's tile may gain or lose that pixel, and the weights
behind a flipped splat move by its alpha (at most about 1/255 at the alpha threshold). A
Gaussian's counts may differ from the reference's by at most the ambiguous pixels it reaches, its
weight sum by those pixels' weights besides rounding; everywhere else counts are equal.
"""
import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend
from diff_gaussian_rasterization_depth.reference import ALPHA_MIN, rasterize_reference
from robust_helpers import settings_on
from test_touch_count import lone_gaussian, with_bad_gaussians

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

F32, F64 = torch.float32, torch.float64


def contribution_slack(scene):
    """(the reference's statistics (P, 5), each Gaussian's ambiguous pixels (P,))."""
    internals = scenes.reference_internals(scene)
    out, everyone, blend, idx, settings = internals
    pixels, gaussians = scenes.ambiguous(scene, internals=internals)
    w = blend["T_after"].new_zeros(blend["blended"].shape)
    # The reference's weights, in blending order (alpha T where blended).
    T_before = torch.cat([torch.ones_like(blend["T_after"][:1]), blend["T_after"][:-1]])
    w = torch.where(blend["blended"], T_before - blend["T_after"], w)
    if w.shape[0] > 1:   # a near tie for the largest weight: either splat may dominate
        top = torch.topk(w, 2, dim=0).values
        pixels = pixels | ((top[0] - top[1]) <= 1e-4 * top[0]) & (top[0] > 0)
    scenes.check_ambiguity_rare(pixels, gaussians, scene)
    slack = torch.zeros(scene.P, dtype=torch.int64)
    reach = blend["considered"] & (blend["raw_alpha"] >= ALPHA_MIN * (1 - 1e-4))
    slack[idx[blend["order"]]] = (reach & pixels).flatten(1).sum(dim=1)
    slack[gaussians] = 2 ** 30  # a radius on a knife's edge: its tiles are the backend's
    return out["contribution"], slack


def check_contributions(got, want, slack, rtol):
    got = got.cpu().to(want.dtype)
    assert got.shape == want.shape == (want.shape[0], 5)
    exact = slack == 0
    assert exact.float().mean() > 0.6
    # Counts: within the ambiguous pixels, equal elsewhere.
    assert ((got[:, 2:4] - want[:, 2:4]).abs() <= slack[:, None]).all()
    assert torch.equal(got[exact, 2:4], want[exact, 2:4])
    # Weights: the sums within rounding (and the ambiguous pixels' weights), the largest within
    # rounding where no pixel is ambiguous.
    allowed = rtol * want[:, 0] + 1e-6 + 0.01 * slack.to(want.dtype)
    assert ((got[:, 0] - want[:, 0]).abs() <= allowed).all(), (got - want)[:, 0].abs().max()
    # o T: within rounding, and an ambiguous pixel may add or take a whole o T (<= 1) where the
    # Gaussian's own alpha is the one near 1/255.
    allowed = rtol * want[:, 4] + 1e-6 + slack.to(want.dtype)
    assert ((got[:, 4] - want[:, 4]).abs() <= allowed).all(), (got - want)[:, 4].abs().max()
    torch.testing.assert_close(got[exact, 4], want[exact, 4], rtol=rtol, atol=1e-6)
    torch.testing.assert_close(got[exact, 1], want[exact, 1], rtol=rtol, atol=1e-6)
    # Not vacuous: Gaussians blended at many pixels, dominating some, and some never blended.
    assert want[:, 2].max() >= 10 and want[:, 3].max() >= 3 and (want[:, 2] == 0).any()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("seed", range(4))
def test_contributions_match_reference(seed, dtype):
    scene = scenes.make_scene(9600 + seed, P=160, height=40, width=56, sh_degree=1,
                              dtype=dtype, antialiasing=seed == 3)
    want, slack = contribution_slack(scene)
    with torch.no_grad():
        out = GaussianRasterizer(scene.settings)(**scene.inputs, contributions=True)
    assert len(out) == 5 and out[-1].dtype == dtype
    check_contributions(out[-1], want, slack, rtol=1e-5 if dtype == F32 else 1e-12)
    if dtype == F64:  # no threshold within float64's rounding on these scenes
        assert torch.equal(out[-1][:, 2:4], want[:, 2:4])


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("seed", range(3))
def test_contributions_cuda_match_reference(seed, target):
    """The CUDA kernel (its own walk of the compact state's tile lists, shared-memory tallies
    added by atomics) against the reference, lists long enough to be split for the backward and
    the forward (P = 900 over 6 tiles)."""
    scene = scenes.make_scene(9700 + seed, P=900 if seed == 2 else 200, height=33, width=47,
                              sh_degree=2)
    want, slack = contribution_slack(scene)
    with active(target), torch.no_grad():
        inputs = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
        out = GaussianRasterizer(settings_on(scene.settings, target))(**inputs,
                                                                       contributions=True)
    assert out[-1].dtype == F32 and out[-1].device == out[0].device
    # The GPU's exponential is within a few units in the last place of the CPU's.
    check_contributions(out[-1], want, slack, rtol=1e-4)


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_contributions_agree_with_the_maps(target):
    """The weights summed over Gaussians are the weight map's sum; every pixel with weight has
    one dominant splat; a Gaussian's largest weight lies between its mean weight and the
    largest alpha (0.99), and its dominated pixels among its blended ones; o T lies between the
    weight sum (alpha <= o) and the pixels (o, T <= 1); a Gaussian blended nowhere has all five
    at 0, as the culled (radius 0) ones."""
    scene = scenes.make_scene(9800, P=400, height=45, width=61, sh_degree=1)
    with active(target), torch.no_grad():
        inputs = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
        _, radii, _, weight, stats = GaussianRasterizer(settings_on(scene.settings, target))(
            **inputs, contributions=True)
    stats, radii, weight = stats.cpu().double(), radii.cpu(), weight.cpu().double()
    weight_sum, weight_max, pixels, dominated, opacity_transmittance = stats.unbind(1)
    assert weight_sum.sum() == pytest.approx(float(weight.sum()), rel=1e-5)
    assert dominated.sum() == int((weight > 0).sum()) > 1000
    blended = pixels > 0
    assert (weight_max[blended] * pixels[blended] >= weight_sum[blended] * (1 - 1e-6)).all()
    assert (weight_max <= 0.99 + 1e-6).all() and (dominated <= pixels).all()
    assert (opacity_transmittance >= weight_sum * (1 - 1e-6)).all()
    assert (opacity_transmittance <= pixels * (1 + 1e-6)).all()
    assert (opacity_transmittance > weight_sum * 1.01).any()  # not the weight sum again
    assert torch.equal(blended, weight_sum > 0) and torch.equal(blended, weight_max > 0)
    assert (stats[~blended] == 0).all() and (stats[radii == 0] == 0).all()


@pytest.mark.parametrize("opacity", [0.3, 0.8, 0.99])
def test_contributions_of_a_lone_gaussian(opacity):
    """Alone, a Gaussian's weight at a pixel is the weight map there: its statistics are the
    map's sum, its largest value, its pixels with weight, and all of them again; in front of
    it the transmittance is 1, so o T adds up to its opacity at each of those pixels."""
    settings, inputs = lone_gaussian(opacity)
    _, radii, _, weight, stats = GaussianRasterizer(settings)(**inputs, contributions=True)
    blended = weight > 0
    assert blended.sum() > 100 and radii[0] > 8
    torch.testing.assert_close(stats[0, 0], weight.sum(), rtol=1e-6, atol=0)
    assert stats[0, 1] == weight.max() and stats[0, 1] <= opacity
    assert stats[0, 2] == blended.sum() and stats[0, 3] == blended.sum()
    torch.testing.assert_close(stats[0, 4], inputs["opacities"].reshape(-1)[0] * blended.sum(),
                               rtol=1e-7, atol=0)


def test_contributions_do_not_depend_on_threads_lanes_or_the_power_bound():
    """The CPU adds each (tile, splat) tally into its Gaussian in list order: the same bits on
    one thread as on two (the image over the backend's 4,096 pixels for threads), on the
    render's eight lanes as on the per-pixel loop, with the power bound before the exponential
    or without it; the dominant map alike."""
    scene = scenes.make_scene(9850, P=600, height=64, width=80, sh_degree=1)
    ext = _backend._ext()
    threads = torch.get_num_threads()
    results = []
    try:
        for n, lanes, power_bound in ((1, True, True), (2, True, True), (2, False, True),
                                      (2, True, False), (1, False, False)):
            torch.set_num_threads(n)
            ext.set_cpu_tuning(lanes=lanes, power_bound=power_bound)
            with torch.no_grad():
                results.append(GaussianRasterizer(scene.settings)(
                    **scene.inputs, contributions=True, dominant=True)[-2:])
    finally:
        torch.set_num_threads(threads)
        ext.set_cpu_tuning(lanes=True, power_bound=True)
    assert results[0][0][:, 2].sum() > 1000 and (results[0][1] >= 0).sum() > 1000
    for other in results[1:]:
        assert torch.equal(results[0][0], other[0]) and torch.equal(results[0][1], other[1])


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_contributions_of_culled_and_non_finite_gaussians(target):
    """Gaussians culled or with non-finite values contribute nothing and leave the others'
    statistics as they are (bit for bit on the CPU, within the order of the atomics on CUDA);
    an empty scene gives an empty (0, 5)."""
    alone, together, nothing = with_bad_gaussians(target, contributions=True)
    assert alone[:, 2].sum() > 100
    if target == "cpu":
        assert torch.equal(together[:120], alone)
    else:
        torch.testing.assert_close(together[:120], alone, rtol=1e-5, atol=1e-6)
    assert (together[120:] == 0).all()
    assert nothing.shape == (0, 5)


def test_contributions_cost_the_render_nothing():
    """Outputs and gradients with the statistics are those without them, bit for bit; they
    come last, after the touch count, and take no gradient; a flag that is not a bool is a
    TypeError."""
    scene = scenes.make_scene(9950, P=120, height=29, width=37, sh_degree=1)

    def run(**options):
        inputs = {k: None if v is None else v.detach().clone().requires_grad_(v.is_floating_point())
                  for k, v in scene.inputs.items()}
        out = GaussianRasterizer(scene.settings)(**inputs, **options)
        (out[0].square().sum() + out[2].sum() + out[3].sum()).backward()
        grads = [v.grad for v in inputs.values() if v is not None and v.grad is not None]
        return out, grads

    (plain, plain_grads), (more, more_grads) = run(), run(contributions=True, touch_count=True)
    assert len(more) == 6 and more[4].dtype == torch.int32 and more[5].shape == (scene.P, 5)
    for a, b in zip(plain, more[:4]):
        assert torch.equal(a, b)
    for a, b in zip(plain_grads, more_grads):
        assert torch.equal(a, b)
    assert not more[5].requires_grad
    ref = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                              touch_count=True, contributions=True)
    assert len(ref) == 6 and ref[5].shape == (scene.P, 5)
    with pytest.raises(TypeError, match="contributions"):
        GaussianRasterizer(scene.settings)(**scene.inputs, contributions=1)


@pytest.mark.parametrize("target", ["cpu"] + cuda_targets())
def test_gaussians_blended_nowhere_can_go(target):
    """Pruning by the statistics is safe where they say a Gaussian is blended at no pixel: with
    those dropped, the render (every map) is the same, bit for bit on the CPU, and so are the
    others' statistics (on CUDA within rounding: a long tile list is composited in parts, and
    shorter lists may split elsewhere)."""
    scene = scenes.make_scene(9960, P=500, height=40, width=56, sh_degree=1)
    settings = settings_on(scene.settings, target)
    with active(target), torch.no_grad():
        def render(keep=None):
            inputs = {k: None if v is None else (v if keep is None else v[keep]).to(target)
                      for k, v in scene.inputs.items()}
            return [t.cpu() for t in GaussianRasterizer(settings)(**inputs, contributions=True)]
        full = render()
        used = full[-1][:, 2] > 0
        assert 0 < int(used.sum()) < scene.P - 50      # many are blended nowhere
        pruned = render(used)
    assert torch.equal(full[1][used], pruned[1])           # radii: the kept Gaussians'
    exact = target == "cpu"
    for a, b in zip(full[:1] + full[2:4] + [full[-1][used]], pruned[:1] + pruned[2:4]
                    + [pruned[-1]]):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The dominant map (`dominant=True`): each pixel's Gaussian of largest weight
# ----------------------------------------------------------------------------------------------

def ambiguous_pixels(scene):
    """(H, W) bool: the pixels where a correct float32 walk may blend otherwise or find another
    largest weight (contribution_slack's pixels)."""
    internals = scenes.reference_internals(scene)
    _, _, blend, _, _ = internals
    pixels, _ = scenes.ambiguous(scene, internals=internals)
    T_before = torch.cat([torch.ones_like(blend["T_after"][:1]), blend["T_after"][:-1]])
    w = torch.where(blend["blended"], T_before - blend["T_after"],
                    blend["T_after"].new_zeros(blend["blended"].shape))
    if w.shape[0] > 1:
        top = torch.topk(w, 2, dim=0).values
        pixels = pixels | ((top[0] - top[1]) <= 1e-4 * top[0]) & (top[0] > 0)
    return pixels


@pytest.mark.parametrize("target", ["cpu", "cpu-f64"] + cuda_targets())
@pytest.mark.parametrize("seed", range(2))
def test_dominant_map_matches_reference(seed, target):
    """The index of each pixel's largest-weight Gaussian (-1 where none) against the
    reference's argmax: equal in float64, equal but at the ambiguous pixels in float32 (CPU and
    CUDA); -1 exactly where the weight map is 0; its counts are the statistics' dominated
    pixels, from the same walk."""
    dtype = F64 if target == "cpu-f64" else F32
    device = "cpu" if target == "cpu-f64" else target
    scene = scenes.make_scene(9900 + seed, P=300, height=37, width=53, sh_degree=1, dtype=dtype)
    want = rasterize_reference(**scene.inputs, raster_settings=scene.settings,
                               dominant=True)[-1]
    with active(device), torch.no_grad():
        inputs = {k: None if v is None else v.to(device) for k, v in scene.inputs.items()}
        out = GaussianRasterizer(settings_on(scene.settings, device))(
            **inputs, contributions=True, dominant=True)
    weight, stats, dominant = out[3].cpu(), out[4].cpu(), out[5].cpu()
    assert dominant.dtype == torch.int32 and dominant.shape == weight.shape
    assert torch.equal(dominant < 0, weight == 0) and (dominant >= 0).sum() > 1000
    counts = torch.bincount(dominant[dominant >= 0].long(), minlength=scene.P)
    assert torch.equal(counts.to(stats.dtype), stats[:, 3])
    if dtype == F64:
        assert torch.equal(dominant, want)
    else:
        agree = (dominant == want) | ambiguous_pixels(scene)
        assert agree.all(), (~agree).sum()
    assert len(torch.unique(want[want >= 0])) > 20  # many Gaussians dominate somewhere


def test_dominant_map_alone_and_of_a_lone_gaussian():
    """dominant=True alone gives the map that comes with the statistics (one walk for both); a
    lone Gaussian dominates every pixel it is blended at; a flag that is not a bool is a
    TypeError."""
    scene = scenes.make_scene(9960, P=500, height=64, width=80, sh_degree=1)
    with torch.no_grad():
        alone = GaussianRasterizer(scene.settings)(**scene.inputs, dominant=True)
        both = GaussianRasterizer(scene.settings)(**scene.inputs, contributions=True,
                                                  dominant=True)
    assert len(alone) == 5 and torch.equal(alone[4], both[5]) and (alone[4] >= 0).any()
    settings, inputs = lone_gaussian(0.8)
    _, _, _, weight, dominant = GaussianRasterizer(settings)(**inputs, dominant=True)
    assert torch.equal(dominant, torch.where(weight > 0, 0, -1).to(torch.int32))
    with pytest.raises(TypeError, match="dominant"):
        GaussianRasterizer(scene.settings)(**scene.inputs, dominant="yes")
