"""The CUDA backend's switchable techniques (gpu::CudaTuning, `pytest -m cuda`): warp skipping
(a warp passes the splats that cannot reach its pixels, and starts its backward walk at its own
last contributor), the scatter sum of a warp's gradients (warp_scatter_add), the depth-first
sort (the Gaussians by depth once, then their pairs by tile alone), and long tile lists walked
in parts by the backward (TileSplits).

None may change a result: with any combination switched on, the forward is bit-identical to the
backend with all off, and the gradients agree up to the order of their sums; both binnings make
the CPU backend's tile lists, depth ties included. The helpers
are also checked alone on the emulated backend: band_reach_mask (blend.h) never clears the band
of a pixel that blends the splat, yet clears most of the bands a small splat misses;
warp_scatter_add sums like torch, with one atomic per value and none past the values it was given.
"""
import contextlib
import functools
import itertools
import math
import operator

import numpy
import pytest
import torch

import scenes
from cuda_target import (EMULATED_CUDA, REAL_CUDA, EmulatedCuda, active, cuda_targets,
                         emulated_param, forward_atol, is_emulated)
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend
from test_cuda import settings_on
from test_cuda_features import median_ambiguous

pytestmark = pytest.mark.cuda

# (warp_skip, scatter_reduce, depth_first_sort)
COMBINATIONS = list(itertools.product((False, True), repeat=3))

needs_emulation = pytest.mark.skipif(not EMULATED_CUDA,
                                     reason="the emulated CUDA backend was not built")


def emulated_checks():
    from diff_gaussian_rasterization_depth import _emulated_cuda
    return _emulated_cuda.checks


# ------------------------------------------------------------------------------ helpers alone

@needs_emulation
@pytest.mark.parametrize("n,by_slot", [(1, False), (6, False), (10, False), (22, False),
                                       (40, False), (1, True), (2, True), (6, True),
                                       (10, True), (14, True), (22, True)])
def test_warp_scatter_add_sums_like_torch(n, by_slot):
    """by_slot: the form of the render backward and the feature backward (each lane's slot taken
    before the loop, then the warp's totals), for the value counts they use."""
    gen = torch.Generator().manual_seed(n)
    for size in sorted({n, max(n - 3, 0), 1}):
        values = torch.randn(32, n, generator=gen) * torch.logspace(-3, 3, n)
        out, writes = emulated_checks().warp_scatter_add(values, size, by_slot=by_slot)
        expected = values.double().sum(dim=0)[:size].float()
        torch.testing.assert_close(out[:size], expected, rtol=1e-5,
                                   atol=1e-6 * values.abs().max().item())
        # One atomic per value, none past the values it was given.
        assert writes.tolist() == [1] * size + [0] * (n - size)


def random_splats(gen, count, x0, y0, sigma=(0.3, 20.0), spread=12.0):
    """Means around the tile at (x0, y0), covariances of any orientation with sigmas
    log-uniform in `sigma` (needles included), dilated by 0.3 as the preprocess does; opacities
    log-uniform in [1e-3, 1]. Returns float32 means (N x 2) and conic_opacity (N x 4)."""
    u = lambda *shape: torch.rand(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    mean = torch.stack([x0 - spread + (16 + 2 * spread) * u(count),
                        y0 - spread + (16 + 2 * spread) * u(count)], dim=1)
    log_lo, log_hi = math.log(sigma[0]), math.log(sigma[1])
    s = torch.exp(log_lo + (log_hi - log_lo) * u(count, 2))
    theta = math.pi * u(count)
    c, sn = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([c, -sn], -1), torch.stack([sn, c], -1)], -2)
    cov = R @ torch.diag_embed(s * s) @ R.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=torch.float64)
    conic = torch.linalg.inv(cov)
    opacity = torch.exp(math.log(1e-3) * u(count))
    co = torch.stack([conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1], opacity], dim=1)
    return mean.float(), co.float()


def blended_pixels(mean, co, x0, y0):
    """N x 16 x 16: where splat_alpha accepts each splat at the tile's pixels, in float32 with
    the kernels' operation order (d = mean - pixel, power of blend.h's splat_power)."""
    px = (x0 + torch.arange(16, dtype=torch.float32)).view(1, 1, 16)
    py = (y0 + torch.arange(16, dtype=torch.float32)).view(1, 16, 1)
    dx = mean[:, 0].view(-1, 1, 1) - px
    dy = mean[:, 1].view(-1, 1, 1) - py
    a, b, c, o = (co[:, k].view(-1, 1, 1) for k in range(4))
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp(o * torch.exp(power), max=0.99)
    return (power <= 0) & (alpha >= torch.tensor(1 / 255, dtype=torch.float32))


def band_bits(masks):
    return (masks.view(-1, 1) >> torch.arange(8).view(1, 8)) & 1 == 1


@needs_emulation
def test_band_reach_mask_never_clears_a_band_that_blends():
    gen = torch.Generator().manual_seed(7)
    x0, y0 = 32, 48
    for sigma in ((0.3, 20.0), (0.05, 3.0), (2.0, 400.0)):
        mean, co = random_splats(gen, 20000, x0, y0, sigma=sigma)
        masks = emulated_checks().band_reach_masks(mean, co, x0, y0)
        blended_bands = blended_pixels(mean, co, x0, y0).view(-1, 8, 32).any(dim=2)
        missed = blended_bands & ~band_bits(masks)
        assert not missed.any(), (f"sigma {sigma}: {int(missed.sum())} bands cleared that blend, "
                                  f"e.g. splat {int(missed.any(dim=1).nonzero()[0])}")


@needs_emulation
def test_band_reach_mask_clears_most_bands_a_small_splat_misses():
    gen = torch.Generator().manual_seed(8)
    x0, y0 = 16, 16
    mean, co = random_splats(gen, 20000, x0, y0, sigma=(0.5, 3.0), spread=4.0)
    masks = emulated_checks().band_reach_masks(mean, co, x0, y0)
    blended_bands = blended_pixels(mean, co, x0, y0).view(-1, 8, 32).any(dim=2)
    bits = band_bits(masks)
    missed_bands = (~blended_bands).sum().item()
    kept_needlessly = (bits & ~blended_bands).sum().item()
    # The box is the ellipse's bounding box, so a band it overlaps may still hold no pixel
    # that blends; most of the missed bands must be cleared all the same.
    assert missed_bands > 0.4 * blended_bands.numel()
    assert kept_needlessly < 0.08 * missed_bands, (kept_needlessly, missed_bands)


@needs_emulation
def test_band_reach_mask_bounds_nothing_it_cannot_bound_safely():
    x0, y0 = 0, 0
    plain = [1.0, 0.0, 1.0, 0.5]
    mean = torch.tensor([[8.0, 8.0]] * 5 + [[8.0, float("nan")], [float("nan"), 8.0],
                                            [8.0, float("inf")]])
    co = torch.tensor([plain,
                       [1.0, 2.0, 1.0, 0.5],      # indefinite
                       [0.0, 0.0, 1.0, 0.5],      # singular
                       [1e4, 0.0, 1e-4, 0.5],     # condition 1e8: too thin to bound
                       [1.0, 0.0, 1.0, float("inf")],
                       plain, plain, plain])
    masks = emulated_checks().band_reach_masks(mean, co, x0, y0).tolist()
    assert 0 < masks[0] < 0xFF
    assert masks[1:5] == [0xFF] * 4
    # A NaN offset never proves a band out of reach; the other axis still may (the splat is
    # skipped at every pixel then anyway: its power is NaN).
    assert masks[5] == 0xFF and masks[6] == masks[0]
    assert masks[7] == 0  # a splat at infinity reaches nothing


# ------------------------------------------------------------------------- the kernels whole

@pytest.fixture
def tuning():
    """set(warp_skip, scatter_reduce, depth_first_sort) on the backend that renders; all on
    again afterwards."""
    yield _backend.set_cuda_tuning
    if EMULATED_CUDA:
        with _backend.emulated_cuda():
            _backend.set_cuda_tuning()
    if REAL_CUDA:
        _backend.set_cuda_tuning()


def render_all(scene, F, device, median=None, keep=None):
    """Every output and every gradient (features included) of one call with the feature channels
    F (when given) and the median (by default with F), or of the plain 4-output call, for a
    fixed random loss (on the pixels `keep` only, when given)."""
    leaves = {k: (None if v is None else v.detach().to(device).requires_grad_())
              for k, v in scene.inputs.items()}
    extra = {} if F is None else dict(features=F.detach().to(device).requires_grad_())
    median = F is not None if median is None else median
    out = GaussianRasterizer(settings_on(scene.settings, device))(**leaves, **extra,
                                                                  median_depth=median)
    gen = torch.Generator().manual_seed(1)
    maps = [out[0], out[2], out[3]] + list(out[4:])
    mask = 1.0 if keep is None else keep
    loss = sum((m * (torch.randn(m.shape, generator=gen) * mask).to(device)).sum() for m in maps)
    tensors = [v for v in leaves.values() if v is not None] + list(extra.values())
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    return ([t.detach().cpu() for t in out],
            [torch.zeros(()) if g is None else g.cpu() for g in grads])


SCENES = {
    # (height, width, P, opacity factor): sizes not multiples of 16; the faint one keeps its
    # tile's pixels unsaturated past 256 splats (several batches, warps ending apart).
    "37x45": (37, 45, 150, 1.0),
    "16x16-faint": (16, 16, 400, 0.1),
}


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("channels", (None, 5, 20))
@pytest.mark.parametrize("scene_name", list(SCENES))
def test_tuning_changes_no_output(scene_name, channels, target, tuning):
    H, W, P, factor = SCENES[scene_name]
    scene = scenes.make_scene(21000 + H, P=P, height=H, width=W, sh_degree=1,
                              smooth=factor < 1)
    scene.inputs["opacities"] = scene.inputs["opacities"] * factor
    F = None if channels is None else torch.rand(P, channels,
                                                 generator=torch.Generator().manual_seed(2))
    results = {}
    with active(target):
        for combo in COMBINATIONS:
            tuning(*combo)
            results[combo] = render_all(scene, F, target)
    assert_same_results(results, (False, False, False))


def assert_same_results(results, base, rounded=(), keep=None):
    """Each of results ({variant: render_all(...)}) has the outputs of results[base] bit for bit
    (the variants in `rounded`: within 1e-5 on the pixels `keep`, radii still exact) and its
    gradients up to the order of their sums (atomics add in any order on a GPU: the tolerance
    is test_cuda.py's)."""
    base_out, base_grads = results[base]
    for variant, (out, grads) in results.items():
        for k, (a, b) in enumerate(zip(out, base_out)):
            if variant in rounded and k != 1:
                torch.testing.assert_close(a[..., keep], b[..., keep], rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{variant}: output {k}: {m}")
            else:
                assert torch.equal(a, b), f"{variant}: output {k} differs by {(a - b).abs().max()}"
        for k, (g, g0) in enumerate(zip(grads, base_grads)):
            scale = g0.abs().max().item() if g0.numel() else 0.0
            torch.testing.assert_close(g, g0, rtol=1e-4, atol=1e-4 * scale,
                                       msg=lambda m: f"{variant}: gradient {k}: {m}")


def tile_lists(scene, device):
    """(point_list, tile_ranges, blended depth of each Gaussian) of a forward on `device`
    (float32), the lists naming Gaussians (and the depth by Gaussian, NaN for one without tiles)
    where the state is compact (its rows named by state[11])."""
    inputs = {k: (None if v is None else v.detach().to(device)) for k, v in scene.inputs.items()}
    on_device = scenes.Scene(inputs, settings_on(scene.settings, device))
    state = [t.cpu() for t in _backend.forward(*scenes.backend_call(on_device))[-1]]
    # The depth is the features' last column: (P, 4), or (P, 1) where colours are given.
    point_list, ranges, depth, rows = state[4], state[5], state[3][:, -1], state[11]
    if rows.numel() == 0:
        return point_list, ranges, depth
    by_gaussian = torch.full((scene.P,), float("nan"))
    by_gaussian[rows.long()] = depth
    return rows[point_list.long()], ranges, by_gaussian


def assert_ordered_by_depth(point_list, tile_ranges, depth):
    """Each tile's list in the order of the depths the device computed, ties by index."""
    for lo, hi in tile_ranges.tolist():
        ids = point_list[lo:hi].long()
        z = depth[ids]
        later = (z[1:] > z[:-1]) | ((z[1:] == z[:-1]) & (ids[1:] > ids[:-1]))
        assert later.all(), (lo, hi)


def with_tied_depths(scene):
    """`scene` seen by a camera at (0, 0, -5) looking along world z, turned about that axis, its
    Gaussians kept where they were in the view, their depths rounded to whole units. The view
    matrix's depth column is then exactly (0, 0, 1, 5) and every depth an integer sum of exact
    terms: equal depths come out equal bit for bit whatever order of fused multiply-adds a
    device chooses, where a general rotation would leave them to rounding."""
    settings = scene.settings
    view = settings.viewmatrix.double()  # world -> view: [x, 1] @ view (row vectors)
    hom = torch.cat([scene.inputs["means3D"].double(), torch.ones(scene.P, 1, dtype=torch.float64)],
                    dim=1)
    in_view = (hom @ view)[:, :3]
    in_view[:, 2] = in_view[:, 2].round()
    angle = torch.tensor(0.7, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    turn = torch.eye(4, dtype=torch.float64)  # world -> camera rotation, about the z axis
    turn[0, :2] = torch.stack([c, -s])
    turn[1, :2] = torch.stack([s, c])
    campos = torch.tensor([0.0, 0.0, -5.0], dtype=torch.float64)
    w2c = turn.clone()
    w2c[:3, 3] = -turn[:3, :3] @ campos
    # camera -> world: R^T x + campos (rows); z is exactly the depth - 5, R's z row being (0, 0, 1)
    means3D = in_view @ turn[:3, :3] + campos
    persp = scenes.perspective_matrix(settings.tanfovx, settings.tanfovy)
    dtype = settings.viewmatrix.dtype
    tied = settings._replace(viewmatrix=w2c.T.to(dtype).contiguous(),
                             projmatrix=(w2c.T @ persp.T).to(dtype).contiguous(),
                             campos=campos.to(dtype))
    assert torch.equal(tied.viewmatrix[:, 2].double(), torch.tensor([0.0, 0.0, 1.0, 5.0],
                                                                     dtype=torch.float64))
    inputs = dict(scene.inputs, means3D=means3D.to(dtype).contiguous())
    return scenes.Scene(inputs, tied, dict(scene.options, ties=True))


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("ties", (False, True))
def test_depth_first_sort_makes_the_same_lists(ties, target, tuning):
    """The tile lists of both ways of binning are the same: Gaussian ids by tile, then by the
    depth the device computed, ties in index order; and each tile holds the Gaussians the CPU
    backend bins into it (the CPU's order may differ where depths are within a rounding: a GPU
    fuses multiply-adds). `ties`: depths of whole units, exact on any device (`with_tied_depths`),
    so that many Gaussians of a tile share one."""
    scene = scenes.make_scene(22000 + ties, P=300, height=45, width=70, sh_degree=0)
    if ties:
        scene = with_tied_depths(scene)
    with active(target):
        lists = {}
        for depth_first in (False, True):
            tuning(True, True, depth_first)
            lists[depth_first] = tile_lists(scene, target)
    point_list, tile_ranges, depth = lists[True]
    assert point_list.numel() > 4 * scene.P // 2
    for k, name in enumerate(("point_list", "tile_ranges")):
        assert torch.equal(lists[True][k], lists[False][k]), name
    # The compact state keeps the depths of the Gaussians with tiles alone (NaN for the others).
    listed = torch.zeros(scene.P, dtype=torch.bool)
    listed[point_list.long()] = True
    assert torch.equal(~depth.isnan(), listed)
    assert torch.equal(depth[listed], lists[False][2][listed])
    assert_ordered_by_depth(point_list, tile_ranges, depth)
    if ties:  # whole depths, exact on any device, and many ties among neighbours in a list
        listed = depth[point_list.long()]
        assert torch.equal(listed, listed.round())
        assert (listed[1:] == listed[:-1]).sum() > 100
    # Against the CPU, up to the Gaussians whose radius or culling is within rounding of a
    # threshold (scenes.ambiguous): a GPU's fused multiply-adds may bin those apart.
    cpu_list, cpu_ranges, _ = tile_lists(scene, "cpu")
    _, edge = scenes.ambiguous(scene)
    assert tile_ranges.shape == cpu_ranges.shape
    if not edge.any():
        assert torch.equal(tile_ranges, cpu_ranges)
    for (lo, hi), (cpu_lo, cpu_hi) in zip(tile_ranges.tolist(), cpu_ranges.tolist()):
        mine, theirs = point_list[lo:hi].long(), cpu_list[cpu_lo:cpu_hi].long()
        assert torch.equal(mine[~edge[mine]].sort().values, theirs[~edge[theirs]].sort().values)


@pytest.mark.parametrize("target", cuda_targets(orders=("asc",)))
@pytest.mark.parametrize("depth_first", (False, True))
def test_stage_timing_names_every_stage_and_changes_nothing(depth_first, target, tuning):
    """cuda_stage_ms (benchmarks): every stage of the last forward and backward, with a time of
    its own; timing changes no output; switched off, nothing is recorded."""
    scene = scenes.make_scene(23000, P=150, height=37, width=45, sh_degree=1)
    F = torch.rand(scene.P, 3, generator=torch.Generator().manual_seed(3))
    with active(target):
        tuning(True, True, depth_first)
        plain = render_all(scene, F, target)
        _backend.set_cuda_stage_timing(True)
        try:
            timed = render_all(scene, F, target)
            ms = _backend.cuda_stage_ms()
        finally:
            _backend.set_cuda_stage_timing(False)
        assert _backend.cuda_stage_ms() == {}
    for a, b in zip(plain[0], timed[0]):
        assert torch.equal(a, b)
    by_depth, compact = (["sort by depth"], ["compact_state"]) if depth_first else ([], [])
    expected = (["forward/" + s for s in ["preprocess", *by_depth, "scan", *compact,
                                         "duplicate_keys", "sort", "tile_ranges", "plan_splits",
                                         "render"]]
                + ["backward/" + s for s in ["zero gradients", "render_backward",
                                             "preprocess_backward"]])
    assert sorted(ms) == sorted(expected)
    assert all(v >= 0 for v in ms.values()) and ms["backward/render_backward"] > 0


def forward_state(scene, device):
    """The state list of a forward on `device` (float32), on the CPU."""
    inputs = {k: (None if v is None else v.detach().to(device)) for k, v in scene.inputs.items()}
    on_device = scenes.Scene(inputs, settings_on(scene.settings, device))
    return [t.cpu() for t in _backend.forward(*scenes.backend_call(on_device))[-1]]


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("channels", (None, 4))
def test_compact_state_keeps_the_gaussians_with_tiles(channels, target, tuning):
    """The compact state (CudaTuning::compact_state, the default with the depth-first sort): a
    row for each Gaussian with tiles, in depth order (ties by index), named by state[11], the
    pairs naming rows. Against the state of all P (compact_state off): the same rows and lists,
    every output bit for bit, the gradients within rounding, and none reaching a Gaussian
    without tiles. The scene has Gaussians culled (behind the camera, off screen) and some too
    faint to reach 1/255 anywhere (a radius, but no tile)."""
    scene = scenes.make_scene(28000, P=300, height=37, width=45, sh_degree=1)
    faint = (torch.arange(scene.P) % 7 == 0)[:, None]
    scene.inputs["opacities"] = torch.where(faint, torch.tensor(1e-3), scene.inputs["opacities"])
    F = None if channels is None else torch.rand(scene.P, channels,
                                                 generator=torch.Generator().manual_seed(8))
    results, states = {}, {}
    with active(target):
        for compact in (False, True):
            tuning(compact_state=compact)
            results[compact] = render_all(scene, F, target)
            states[compact] = forward_state(scene, target)
    full, compact = states[False], states[True]
    assert full[11].numel() == 0
    rows = compact[11].long()
    listed = torch.zeros(scene.P, dtype=torch.bool)
    listed[full[4].long()] = True
    with_radius = full[0] > 0
    assert (~with_radius).any() and 0 < listed.sum() < with_radius.sum()  # culled; faint
    assert (with_radius & faint[:, 0]).any() and not listed[faint[:, 0]].any()
    assert rows.numel() == listed.sum() and rows.unique().numel() == rows.numel()
    assert listed[rows].all()
    z = full[3][rows, -1]
    assert ((z[1:] > z[:-1]) | ((z[1:] == z[:-1]) & (rows[1:] > rows[:-1]))).all()
    for k in (1, 2, 3):  # mean2d, conic and opacity, colour and depth: the Gaussians' rows
        assert torch.equal(compact[k], full[k][rows]), k
    assert torch.equal(rows[compact[4].long()], full[4].long())
    assert torch.equal(compact[5], full[5])
    assert_same_results(results, False)
    for g in results[True][1]:
        if g.dim() > 0 and g.shape[0] == scene.P:
            assert not g[~listed].any()


# ------------------------------------------------------------------ long tile lists in parts


def expected_splits(state, length):
    """Per tile: its begin, its number of parts for a split length, and the largest last
    contributor of its pixels (from the forward's tile ranges and n_contrib)."""
    ranges, n_contrib = state[5], state[7]
    tiles_x = (n_contrib.shape[1] + 15) // 16
    out = []
    for t, (begin, end) in enumerate(ranges.tolist()):
        n = end - begin
        ty, tx = divmod(t, tiles_x)
        last = int(n_contrib[16 * ty:16 * ty + 16, 16 * tx:16 * tx + 16].max()) if n else 0
        out.append((begin, -(-n // length) if n > length else 1, last))
    return out


SPLIT_SCENES = {
    # (height, width, P, opacity factor): a faint scene whose pixels blend past 1000 splats (up
    # to five parts of 256, none of which stops a pixel), an opaque one where pixels stop
    # early, in several parts, so that some parts lie behind every pixel's last splat (their
    # state never written: poison under emulation, never read), and a dim one whose medians
    # fall in the first, second and third parts of 256 of pixels that go on past them, and
    # some pixels whose T never reaches 0.5 (median 0).
    "16x16-faint": (16, 16, 1200, 0.05),
    "40x50-opaque": (40, 50, 1500, 1.0),
    "32x32-dim": (32, 32, 1600, 0.02),
}
# name: (split_tiles, split_forward, split_length, parts_first)
SPLITS = {"none": (False, False, 0, True), "256": (True, False, 256, True),
          "512": (True, False, 512, True), "256-forward": (True, True, 256, True),
          "512-forward": (True, True, 512, True), "chosen": (True, True, 0, True),
          "256-tiles-first": (True, False, 256, False),
          "chosen-tiles-first": (True, True, 0, False)}


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("optional", ("plain", "features", "features+median"))
@pytest.mark.parametrize("scene_name", list(SPLIT_SCENES))
def test_split_tile_lists(scene_name, optional, target, tuning):
    """Long tile lists in parts (TileSplits). The backward walks each part with a block of its
    own, resuming from the state saved at the part's end: alone, it changes no output, bit for
    bit. The split forward walks the parts at once and finishes each pixel in the part where it
    stops, and finds the median in the part where T crosses 0.5: its outputs differ by roundings
    only (pixels within rounding of a threshold set apart, as against the CPU, and for the
    median those where T passes within rounding of 0.5). The gradients agree with those without
    splitting, and every slot names the part the length gives it, or none."""
    H, W, P, factor = SPLIT_SCENES[scene_name]
    scene = scenes.make_scene(24000 + P, P=P, height=H, width=W, sh_degree=1, outliers=False)
    scene.inputs["opacities"] = scene.inputs["opacities"] * factor
    F = (torch.rand(P, 4, generator=torch.Generator().manual_seed(4))
         if optional != "plain" else None)
    median = optional == "features+median"
    internals = scenes.reference_internals(scene)
    keep = ~scenes.ambiguous(scene, internals=internals)[0]
    if median:
        keep &= ~median_ambiguous(scene, internals)
    results, states = {}, {}
    with active(target):
        for name, (split_tiles, split_forward, length, parts_first) in SPLITS.items():
            tuning(split_tiles=split_tiles, split_forward=split_forward, split_length=length,
                   parts_first=parts_first)
            results[name] = render_all(scene, F, target, median=median, keep=keep)
            states[name] = forward_state(scene, target)
    assert states["none"][9].numel() == 0 and states["none"][10].numel() == 0
    pairs = states["none"][4].numel()
    unreached = longer = 0
    for length in (256, 512):
        table, slots = states[str(length)][9], states[str(length)][10]
        assert table[0].item() == length and slots.shape == ((pairs - 1) // length, 5, 256)
        parts = table[1:].view(-1, 2)
        expected = torch.zeros_like(parts)
        expected[:, 0] = -1
        for t, (begin, n, last) in enumerate(expected_splits(states[str(length)], length)):
            for c in range(n - 1):  # the part c of tile t ends at its split c + 1
                expected[(begin + (c + 1) * length) // length - 1] = torch.tensor([t, c])
            longer += n > 2
            unreached += sum(last <= c * length for c in range(1, n))
        assert torch.equal(parts, expected)
    assert longer > 0 and (unreached > 0 or factor < 1)
    chosen = states["chosen"][9][0].item()
    assert chosen % 256 == 0 and states["chosen"][10].shape[0] == (pairs - 1) // chosen

    rounded = [name for name, variant in SPLITS.items() if variant[1]]
    assert_same_results(results, "none", rounded, keep)
    if median and scene_name == "32x32-dim":
        # Medians in several parts, in parts after the first of pixels that go on, and none.
        positions, n_contrib = median_positions(scene)
        median_part, last_part = (positions - 1) // 256, (n_contrib - 1) // 256
        assert ((median_part >= 1) & (last_part > median_part)).sum() >= 10
        assert (median_part == 2).any() and ((positions == 0) & (n_contrib > 0)).any()


@needs_emulation
@pytest.mark.parametrize("tiles,capacity", [(1, 0), (7, 3), (40, 1), (5, 12)])
def test_block_order_walks_every_tile_and_slot_once(tiles, capacity):
    """TileSplits::block_slot and block_tile, which ListPart reads: a grid of tiles + capacity
    blocks gives each tile and each slot one block; with parts_first (the backward's order) the
    slots' blocks come first, in slot order, then the tiles' in tile order; without it the
    reverse."""
    for parts_first in (True, False):
        order = emulated_checks().block_order(tiles, capacity, parts_first)
        slots, tile_ids = order[:, 0], order[:, 1]
        expected_slots = torch.cat([torch.arange(capacity), torch.full((tiles,), -1)])
        expected_tiles = torch.cat([torch.full((capacity,), -1), torch.arange(tiles)])
        if not parts_first:
            expected_slots = expected_slots.roll(-capacity)
            expected_tiles = expected_tiles.roll(-capacity)
        assert torch.equal(slots, expected_slots), parts_first
        assert torch.equal(tile_ids, expected_tiles), parts_first


def median_positions(scene):
    """(median_contrib, n_contrib) of the CPU backend's forward with the median."""
    config, gaussians = scenes.backend_call(scene)
    config.median_depth = True
    state = _backend.forward(config, gaussians)[-1]
    return state[8], state[7]


@pytest.mark.parametrize("target", [emulated_param("asc")])  # the launch record: emulated only
@pytest.mark.parametrize("length", (512, 1024, 768))
def test_split_forward_walks_parts_half_the_backwards(length, target, tuning):
    """The split forward plans its own splits half as far apart as the backward's (where the
    length halves into whole batches: 768 does not), one block of each of its two kernels per
    tile and per slot of its own, while the backward keeps its slots and table; switched off,
    the forward walks the backward's parts. The grids are read from the emulation's launch
    record; test_split_tile_lists checks the outputs."""
    H, W, P, factor = SPLIT_SCENES["40x50-opaque"]
    scene = scenes.make_scene(27000 + length, P=P, height=H, width=W, sh_degree=1,
                              outliers=False)
    scene.inputs["opacities"] = scene.inputs["opacities"] * factor
    grids = {}
    with active(target):
        for short in (True, False):
            tuning(split_length=length, short_forward_parts=short)
            with launch_record(target) as launches:
                state = forward_state(scene, target)
            grids[short] = {kernel: x for kernel, x, _ in launches}
            # A table of its own where the forward's parts are shorter.
            tables = [k for k, _, _ in launches].count("plan_splits_kernel")
            assert tables == (2 if short and length % 512 == 0 else 1)
            pairs, tiles = state[4].numel(), state[5].shape[0]
            assert state[9][0].item() == length
            assert state[10].shape[0] == (pairs - 1) // length > 0
    forward_length = length // 2 if length % 512 == 0 else length
    for short, expected in ((True, forward_length), (False, length)):
        for kernel in ("render_variant", "resolve_variant"):  # as render() launches them
            assert grids[short][kernel] == tiles + (pairs - 1) // expected, (short, kernel)


@pytest.mark.parametrize("target", [emulated_param("asc")])  # blocks run in launch order
def test_parts_first_reaches_the_backward(target, tuning):
    """The emulation runs a grid's blocks one after another in launch order, so the backward's
    two orders (CudaTuning::parts_first) add a splat's gradient from its tiles' blocks and its
    parts' blocks in different orders: the gradients differ in their last bits somewhere,
    which says the switch reaches the kernels, and agree within rounding (test_split_tile_lists
    holds both to the unsplit ones). The outputs are the forward's and do not move."""
    H, W, P, factor = SPLIT_SCENES["40x50-opaque"]
    scene = scenes.make_scene(29000, P=P, height=H, width=W, sh_degree=1, outliers=False)
    scene.inputs["opacities"] = scene.inputs["opacities"] * factor
    results = {}
    with active(target):
        for parts_first in (True, False):
            tuning(split_length=256, parts_first=parts_first)
            results[parts_first] = render_all(scene, None, target)
    (out_a, grads_a), (out_b, grads_b) = results[True], results[False]
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b))
    assert not all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert_same_results(results, True)


@pytest.mark.parametrize("target", [emulated_param("asc")])  # the launch record: emulated only
@pytest.mark.parametrize("width", (64, 80))
def test_split_forward_by_the_images_waves(width, target, tuning):
    """By default (split_forward None) the forward walks split lists in parts only where the
    image's tiles number at most gpu::kSplitForwardTilesPerSm (16) an SM, which the emulation
    counts as one: 64x64 (16 tiles) in parts, 64x80 (20) whole, with the backward's splits
    either way; True: in parts whatever the image; False: never. Read from the launch record
    (the resolve kernel, and the render's grid: the tiles and the forward's slots, or the tiles
    alone); test_split_tile_lists checks the outputs of both walks."""
    scene = scenes.make_scene(28000 + width, P=3000, height=64, width=width, sh_degree=1,
                              outliers=False)
    tiles = 4 * width // 16
    walked = {}
    with active(target):
        for split_forward in (None, True, False):
            tuning(split_length=512, split_forward=split_forward)
            with launch_record(target) as launches:
                state = forward_state(scene, target)
            pairs, slots = state[4].numel(), state[10].shape[0]
            assert state[5].shape[0] == tiles and slots == (pairs - 1) // 512 > 0
            grids = {kernel: x for kernel, x, _ in launches}
            in_parts = "resolve_variant" in grids
            # The forward's own parts are half the backward's (short_forward_parts).
            assert grids["render_variant"] == (tiles + (pairs - 1) // 256 if in_parts else tiles)
            walked[split_forward] = in_parts
    assert walked == {None: tiles <= 16, True: True, False: False}


@pytest.mark.parametrize("target", cuda_targets(orders=("asc",)))
def test_split_length_must_be_a_multiple_of_the_batch(target, tuning):
    with active(target):
        with pytest.raises(ValueError, match="multiple of 256"):
            tuning(split_length=100)
        # Parts no longer than 2^24 (the pair limit leaves room for one past a list's end), and
        # checked before any narrowing to 32 bits (2^32 + 256 would pass as 256).
        for too_long in (2**24 + 256, 2**32 + 256):
            with pytest.raises(ValueError, match=f"up to 16777216 .0: chosen., got {too_long}"):
                tuning(split_length=too_long)
        with pytest.raises(ValueError, match="feature_split_bytes: at least 0, got -1"):
            tuning(feature_split_bytes=-1)
        with pytest.raises(ValueError, match=r"split_forward: 1 \(always\), 0 \(never\) or -1"):
            tuning(split_forward=2)


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("channels", (1, 4))
@pytest.mark.parametrize("scene_name", ("16x16-faint", "40x50-opaque"))
def test_feature_kernels_walk_whole_lists_past_their_buffer_limit(scene_name, channels, target,
                                                                  tuning):
    """The feature kernels walk split lists in parts only while their buffers stay under
    CudaTuning::feature_split_bytes (64 MiB), else whole lists, each of the forward and the
    backward on its own. Under a limit of 0 both walk whole lists; under the smaller of their
    two buffers the larger one does (with one channel, the backward's: a row per tile and part;
    with four, the forward's: four channels a row per part): the feature map and every gradient
    as with the lists unsplit."""
    H, W, P, factor = SPLIT_SCENES[scene_name]
    scene = scenes.make_scene(25000 + P, P=P, height=H, width=W, sh_degree=1, outliers=False)
    scene.inputs["opacities"] = scene.inputs["opacities"] * factor
    F = torch.rand(P, channels, generator=torch.Generator().manual_seed(5))
    keep = ~scenes.ambiguous(scene)[0]
    with active(target):
        tuning(split_length=256)
        state = forward_state(scene, target)
        slots, tiles = state[10].shape[0], state[5].shape[0]
        forward_bytes = slots * channels * 256 * 4  # a row of C sums per part ending at a split
        backward_bytes = (tiles + slots) * 1 * 256 * 4  # one chunk of channels: one value
        assert slots > 0 and (forward_bytes > backward_bytes) == (channels == 4)
        variants = {"none": dict(split_tiles=False), "parts": {}, "whole": dict(
            feature_split_bytes=0), "mixed": dict(feature_split_bytes=min(forward_bytes,
                                                                          backward_bytes))}
        results, launches = {}, {}
        for name, switches in variants.items():
            tuning(split_length=256, **switches)
            with launch_record(target) as launches[name]:
                results[name] = render_all(scene, F, target, median=False, keep=keep)
    assert_same_results(results, "none", ["parts", "whole", "mixed"], keep)
    if is_emulated(target):
        # Which walk each kernel took: blocks for the parts (tiles + slots) or the tiles alone.
        forward_parts = {"parts": True, "whole": False, "mixed": forward_bytes < backward_bytes}
        for name, in_parts in forward_parts.items():
            blocks = feature_blocks(launches[name])
            backward_in_parts = name == "parts" or (name == "mixed" and not in_parts)
            assert blocks["render_features_kernel"] == (tiles + slots if in_parts else tiles)
            assert ("combine_feature_parts_kernel" in blocks) == in_parts
            assert blocks["render_features_backward_variant"] == (
                tiles + slots if backward_in_parts else tiles)
            assert ("feature_dots_kernel" in blocks) == backward_in_parts


@contextlib.contextmanager
def launch_record(target):
    """The list of (kernel, grid x, grid y) the emulated backend launches inside the context
    (stays empty on a real GPU)."""
    launches = []
    if not is_emulated(target):
        yield launches
        return
    from diff_gaussian_rasterization_depth import _emulated_cuda
    _emulated_cuda.record_launches(True)
    try:
        yield launches
        launches.extend(_emulated_cuda.take_launches())
    finally:
        _emulated_cuda.record_launches(False)


def feature_blocks(launches):
    """{feature kernel: grid x} of a call's launches (the template argument dropped)."""
    return {kernel.split("<")[0]: x for kernel, x, _ in launches if "feature" in kernel}


@pytest.mark.parametrize("target", cuda_targets())
@pytest.mark.parametrize("seed", (0, 1))
def test_split_forward_median_crossing_later_than_the_chain_says(seed, target, tuning):
    """The split forward chains each part's composite (T_start x P, P multiplied from 1) to find
    the part where T crosses 0.5, while the walk multiplies T_start by each 1 - alpha in turn:
    the two round apart. This scene makes the chain cross in the second part of 256 while the
    walk is still above 0.5 at its end, at every pixel but a corner: one splat over the whole
    tile in the first part (behind it 255 small ones in the corner), m in the second (drawn so
    that chain <= 0.5 < walk, in float32 as the kernels compute it; every alpha = o exactly,
    the splats being so wide that exp(power) rounds to 1), then 30 more. The median is the
    first of those 30 (the CPU's walk: position 513) and the split forward must find it there,
    past the part the chain named."""
    gen = torch.Generator().manual_seed(seed)
    first_alpha, second_part = alphas_crossing_late(gen)
    m, tail = len(second_part), 30
    scene = scenes.make_scene(26000 + seed, P=8, height=16, width=16, precomp_colors=True,
                              outliers=False)
    settings = scene.settings
    wide = torch.zeros(1 + 255 + 256 + tail, dtype=torch.bool)
    wide[0] = wide[-tail:] = True
    wide[256 + torch.randperm(256, generator=gen)[:m]] = True
    def u(n, lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)

    z = torch.cat([torch.ones(1), u(255, 1.1, 1.5), u(256, 2.0, 2.5).sort().values,
                   u(tail, 3.0, 4.0)])
    opacities = torch.full_like(z, 0.9)
    opacities[0] = float(first_alpha)
    opacities[256:512][wide[256:512]] = torch.tensor([float(a) for a in second_part],
                                                     dtype=torch.float64)
    opacities[-tail:] = 0.05
    uv = torch.where(wide, 0.0, -0.85)  # small splats in the corner (0, 0), about 0.7 px in
    cam = torch.stack([uv * z * settings.tanfovx, uv * z * settings.tanfovy, z], dim=1)
    c2w = torch.linalg.inv(settings.viewmatrix.double().T)
    focal = 16 / (2 * settings.tanfovx)
    sigma_px = torch.where(wide, 2e6, 0.5)
    scene.inputs.update(means3D=(cam @ c2w[:3, :3].T + c2w[:3, 3]).float(),
                        scales=(sigma_px * z / focal)[:, None].repeat(1, 3).float(),
                        rotations=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(len(z), 1),
                        opacities=opacities[:, None].float(),
                        colors_precomp=torch.rand(len(z), 3, generator=gen),
                        means2D=torch.zeros(len(z), 3))
    positions, n_contrib = median_positions(scene)
    clean = positions == 513
    assert clean.sum() >= 200 and (n_contrib[clean] == 1 + 255 + 256 + tail).all()
    expected, _ = render_all(scene, None, "cpu", median=True)
    with active(target):
        tuning(split_tiles=False)
        unsplit, _ = render_all(scene, None, target, median=True)
        tuning(split_length=256)
        out, _ = render_all(scene, None, target, median=True)
    # The split forward's medians are the whole walk's, bit for bit, on the same device ...
    assert torch.equal(out[-1], unsplit[-1]), (out[-1] - unsplit[-1]).abs().max()
    # ... and the CPU's (the same splats' depths; a GPU's preprocess rounds them apart by fused
    # multiply-adds, a few units in the last place, more where the view transform cancels: the
    # depth map's tolerance).
    torch.testing.assert_close(out[-1], expected[-1], rtol=1e-6, atol=forward_atol(expected[-1]))
    for k in (0, 2, 3):
        torch.testing.assert_close(out[k], expected[k], rtol=1e-5, atol=1e-5)


def alphas_crossing_late(gen):
    """(a0, [a_1 .. a_m]) with T_start = 1 - a0 above 0.5 and, in float32, the chain
    T_start * prod(1 - a_i) (the product from 1) <= 0.5 < the walk T_start (1 - a_1) .. (1 - a_m);
    every alpha in [1/255, 0.5)."""
    f32 = numpy.float32
    for _ in range(500):
        a0 = f32(0.02 + 0.3 * torch.rand((), generator=gen).item())
        m = int(torch.randint(10, 60, (), generator=gen))
        start = f32(1) - a0
        level = 1 - (0.5 / float(start)) ** (1 / m)
        alphas = [f32(level * (0.7 + 0.6 * torch.rand((), generator=gen).item()))
                  for _ in range(m - 1)]
        rest = 0.5 / float(start) / functools.reduce(operator.mul, [1 - float(a) for a in alphas])
        last = f32(1 - rest)
        if not 1 / 255 < last < 0.5:
            continue
        for k in range(-300, 300):  # the last alpha, ulp by ulp around where T reaches 0.5
            a = f32(last + f32(k) * numpy.spacing(last))
            product, walk = f32(1), start
            for alpha in alphas + [a]:
                product, walk = product * (f32(1) - alpha), walk * (f32(1) - alpha)
            if start * product <= f32(0.5) < walk:
                return a0, alphas + [a]
    raise AssertionError("no alphas found whose chain and walk straddle 0.5")


PLAIN_KERNELS = {"preprocess_kernel", "compact_state_kernel", "duplicate_tile_keys_kernel",
                 "tile_ranges_kernel", "plan_splits_kernel", "render_variant", "resolve_variant", "clear_splat_sums_kernel",
                 "render_backward_variant", "preprocess_backward_kernel"}
FEATURE_KERNELS = {"render_features_kernel", "combine_feature_parts_kernel",
                   "feature_dots_kernel", "render_features_backward_variant"}


@needs_emulation
def test_unused_outputs_launch_nothing(tuning):
    """New outputs cost nothing when unused: a call and its backward launch the plain kernels
    only (the emulation's record of launches), the median none more (it is a variant of the
    render), and feature channels their four kernels; with lists split and whole."""
    target = EmulatedCuda("asc")
    scene = scenes.make_scene(27000, P=400, height=37, width=45, sh_degree=1, smooth=True)
    scene.inputs["opacities"] = scene.inputs["opacities"] * 0.2  # long lists: split in parts
    F = torch.rand(scene.P, 3, generator=torch.Generator().manual_seed(6))
    calls = {"plain": (None, False), "median": (None, True), "features": (F, False)}
    for split in (True, False):
        launched = {}
        with active(target):
            tuning(split_tiles=split, split_length=256 if split else 0)
            for name, (features, median) in calls.items():
                with launch_record(target) as launches:
                    render_all(scene, features, target, median=median)
                launched[name] = {kernel.split("<")[0] for kernel, _, _ in launches}
        plain = PLAIN_KERNELS - (set() if split else {"plan_splits_kernel", "resolve_variant"})
        assert launched["plain"] == plain
        assert launched["median"] == plain
        assert launched["features"] == plain | (FEATURE_KERNELS if split else {
            "render_features_kernel", "render_features_backward_variant"})
