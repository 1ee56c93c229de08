"""The ordered CUDA backward, torch.use_deterministic_algorithms(True): each render backward
kernel sums each (tile, Gaussian) pair's gradient over its block's pixels in a fixed order, and
each Gaussian's pairs in list order (gpu::PairSums), so the gradients are the same bit for bit
in any order the GPU runs its threads and blocks. The emulation's thread orders (asc, desc,
random ones) stand for the GPU's; the atomic backward differs between them (the tests' power).
The ordered gradients against the atomic backward's and the CPU backend's; the contribution
statistics, ordered the same way. The CPU backend sums in a fixed order at any thread count."""
import os

import pytest
import torch

import scenes
from cuda_target import EMULATED_CUDA, REAL_CUDA, EmulatedCuda, active, real_cuda_param
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

ORDERS = ("asc", "desc", "random:11")
# PyTorch's own rule under the switch on a GPU: cuBLAS's deterministic workspace.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class deterministic:
    """torch.use_deterministic_algorithms(True, warn_only=...) inside the block only."""

    def __init__(self, on=True, warn_only=False):
        self.on, self.warn_only = on, warn_only

    def __enter__(self):
        self.previous = (torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled())
        torch.use_deterministic_algorithms(self.on, warn_only=self.warn_only)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.previous[0], warn_only=self.previous[1])


# (make_scene options, call options, CUDA tuning): the render backward's variants.
CASES = {
    "plain": (dict(sh_degree=1), {}, {}),
    "median": (dict(sh_degree=2), dict(median_depth=True), {}),
    "absgs": (dict(sh_degree=1), dict(absgs=True), {}),
    "no-warp-skip": (dict(sh_degree=1, antialiasing=True), {}, dict(warp_skip=False)),
    "colors-cov": (dict(precomp_colors=True, precomp_cov=True), {}, {}),
    # Large faint splats over one tile: lists of 400 splats split into parts of 256, each part's
    # block writing its own pairs' rows.
    "split": (dict(sh_degree=1, smooth=True, faint=True, P=400, height=16, width=16), {},
              dict(split_length=256)),
    # Feature channels: one chunk of 4 (3 channels), two of 16 (20 channels, the last part
    # padding), with AbsGS (its own kernel then), and on split lists (the feature dots).
    "features": (dict(sh_degree=1), dict(channels=3), {}),
    "features-20-absgs": (dict(sh_degree=1), dict(channels=20, absgs=True, median_depth=True),
                          {}),
    "features-split": (dict(sh_degree=1, smooth=True, faint=True, P=400, height=16, width=16),
                       dict(channels=6), dict(split_length=256, warp_skip=False)),
}


def make_case(name, seed):
    scene_options, call, tuning = CASES[name]
    scene_options = dict(scene_options)
    faint = scene_options.pop("faint", False)
    shape = dict(P=240, height=40, width=64)
    shape.update({k: scene_options.pop(k) for k in ("P", "height", "width") if k in scene_options})
    scene = scenes.make_scene(91000 + 10 * list(CASES).index(name) + seed, **shape,
                              **scene_options)
    if faint:
        scene.inputs["opacities"] = scene.inputs["opacities"] / 10
    return scene, call, tuning


def gradients(scene, call, tuning, device):
    """Every input's gradient of a random loss on every map (the median's too) on `device`."""
    call = dict(call)
    absgs = call.pop("absgs", False)
    channels = call.pop("channels", 0)
    if channels:  # a leaf, the same values on every call of the case
        gen = torch.Generator().manual_seed(scene.P + channels)
        call["features"] = torch.randn(scene.P, channels, generator=gen).to(device)
        call["features"].requires_grad_()
    emulated = isinstance(device, EmulatedCuda)
    with active(device):
        if emulated:
            _backend.set_cuda_tuning(**tuning)
        try:
            leaves = {k: None if v is None else v.detach().to(device).requires_grad_()
                      for k, v in scene.inputs.items()}
            if absgs:  # AbsGS's (P, 4) carrier: its last two columns take |d/d mean2d|
                leaves["means2D"] = torch.zeros(scene.P, 4, device=device, requires_grad=True)
            settings = scene.settings._replace(**{f: getattr(scene.settings, f).to(device) for f
                                                  in ("bg", "viewmatrix", "projmatrix", "campos")})
            out = GaussianRasterizer(settings)(**leaves, **call)
            gen = torch.Generator().manual_seed(5)
            maps = [o for i, o in enumerate(out) if i != 1]  # all but the radii
            loss = sum((m * torch.randn(m.shape, generator=gen).to(device)).sum() for m in maps)
            if channels:
                leaves["features"] = call["features"]
            names = [n for n, v in leaves.items() if v is not None]
            got = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
        finally:
            if emulated:
                _backend.set_cuda_tuning()
    return {n: g.detach().cpu() for n, g in zip(names, got) if g is not None}


def differing(a, b):
    return sorted(n for n in a if not torch.equal(a[n], b[n]))


needs_emulation = pytest.mark.skipif(not EMULATED_CUDA,
                                     reason="the emulated CUDA backend was not built")


@pytest.mark.cuda
@needs_emulation
@pytest.mark.parametrize("case", list(CASES))
def test_ordered_backward_is_the_same_in_every_thread_order(case):
    """Ordered: each gradient bit for bit the same under the three orders, and close to the
    atomic backward's; atomic: some gradient differs between two orders."""
    scene, call, tuning = make_case(case, 0)
    with deterministic():
        ordered = [gradients(scene, call, tuning, EmulatedCuda(o)) for o in ORDERS]
    atomic = [gradients(scene, call, tuning, EmulatedCuda(o)) for o in ORDERS[:2]]
    assert set(ordered[0]) == set(atomic[0]) and len(ordered[0]) >= 5
    for other, order in zip(ordered[1:], ORDERS[1:]):
        assert differing(ordered[0], other) == [], order
    assert differing(atomic[0], atomic[1]), "the atomic backward summed alike in both orders"
    for name, want in atomic[0].items():
        assert want.abs().max() > 0, name
        torch.testing.assert_close(ordered[0][name], want, rtol=1e-4,
                                   atol=1e-5 * want.abs().max().item(), msg=name)


@pytest.mark.cuda
@needs_emulation
@pytest.mark.parametrize("case", ["plain", "median", "absgs", "split", "features-20-absgs",
                                  "features-split"])
def test_ordered_backward_matches_the_cpu_backend(case):
    """The ordered gradients (emulated, desc) against the CPU backend's, at test_cuda.py's
    tolerance; the scene's pixels within rounding of a threshold take no upstream gradient
    there, so here the scenes keep few of them and the CPU is compared in bulk."""
    from cuda_target import gradients_agree_in_bulk
    scene, call, tuning = make_case(case, 1)
    with deterministic():
        got = gradients(scene, call, tuning, EmulatedCuda("desc"))
    want = gradients(scene, call, {}, "cpu")
    H, W = scene.settings.image_height, scene.settings.image_width
    for name, w in want.items():
        assert w.abs().max() > 0, name
        assert gradients_agree_in_bulk(got[name], w, H, W), name


def test_cpu_backward_is_the_same_at_any_thread_count():
    """The CPU backend sums each tile's pairs, then each Gaussian's tiles in tile order: the
    same bits with one thread as with several."""
    scene, call, _ = make_case("median", 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gradients(scene, call, {}, "cpu")
        torch.set_num_threads(max(2, threads))
        several = gradients(scene, call, {}, "cpu")
    finally:
        torch.set_num_threads(threads)
    assert differing(one, several) == [] and len(one) >= 5


@pytest.mark.parametrize("target", [real_cuda_param()])
def test_ordered_backward_repeats_on_the_gpu(target):
    """A GPU (its own thread orders): three ordered backwards of 30k Gaussians at 640x480 bit
    for bit alike, and close to the atomic one."""
    assert REAL_CUDA
    scene = scenes.make_scene(91900, P=30000, height=480, width=640, sh_degree=3)
    atomic = gradients(scene, {}, {}, "cuda")
    with deterministic():
        runs = [gradients(scene, {}, {}, "cuda") for _ in range(3)]
    for other in runs[1:]:
        assert differing(runs[0], other) == []
    for name, want in atomic.items():
        torch.testing.assert_close(runs[0][name], want, rtol=1e-4,
                                   atol=1e-5 * want.abs().max().item(), msg=name)


@pytest.mark.cuda
@needs_emulation
@pytest.mark.parametrize("empty", ["P0", "all-culled"])
def test_ordered_backward_of_scenes_without_pairs(empty):
    """No (tile, Gaussian) pair: every gradient written, all zero, features' and AbsGS's too."""
    scene = scenes.make_scene(91800, P=0 if empty == "P0" else 30, height=16, width=48,
                              sh_degree=1, all_culled=empty == "all-culled")
    with deterministic():
        got = gradients(scene, dict(channels=3, absgs=True, median_depth=True), {},
                        EmulatedCuda("desc"))
    assert len(got) >= 5
    for name, g in got.items():
        assert torch.isfinite(g).all() and not g.any(), name


@pytest.mark.cuda
@needs_emulation
@pytest.mark.parametrize("case", ["plain", "split"])
def test_ordered_contribution_statistics(case):
    """contributions=True under the switch: each warp's weight sums in shared memory, summed per
    pair in warp order and gathered per Gaussian in list order (the counts, maxima and dominant
    map stay atomic: exact in any order). Bit for bit the same under the three orders; the
    atomic statistics differ between two orders, and agree with the ordered ones and the CPU
    backend's to rounding."""
    scene, _, tuning = make_case(case, 5)

    def statistics(device):
        with active(device):
            if isinstance(device, EmulatedCuda):
                _backend.set_cuda_tuning(**tuning)
            try:
                out = GaussianRasterizer(scene.settings)(**scene.inputs, contributions=True,
                                                         dominant=True)
            finally:
                if isinstance(device, EmulatedCuda):
                    _backend.set_cuda_tuning()
        return out[-2], out[-1]

    with deterministic():
        ordered = [statistics(EmulatedCuda(o)) for o in ORDERS]
    atomic = [statistics(EmulatedCuda(o)) for o in ORDERS[:2]]
    cpu = statistics("cpu")
    for other in ordered[1:]:
        assert torch.equal(other[0], ordered[0][0]) and torch.equal(other[1], ordered[0][1])
    assert not torch.equal(atomic[0][0], atomic[1][0]), "atomic sums alike in both orders"
    assert torch.equal(ordered[0][1], atomic[0][1])  # the dominant map
    stats = ordered[0][0]
    assert (stats[:, 0] > 0).sum() > 20
    for column in (1, 2, 3):  # the maximum and the counts: exact in any order
        assert torch.equal(stats[:, column], atomic[0][0][:, column]), column
    for want in (atomic[0][0], cpu[0]):
        torch.testing.assert_close(stats, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.mark.cuda
@needs_emulation
def test_warn_only_orders_the_sums_too():
    """torch.use_deterministic_algorithms(True, warn_only=True) (the switch that lets other
    nondeterministic operations warn instead of raise) takes the ordered backward as well."""
    scene, call, tuning = make_case("median", 6)
    with deterministic(warn_only=True):
        runs = [gradients(scene, call, tuning, EmulatedCuda(o)) for o in ORDERS[:2]]
    assert differing(*runs) == [] and len(runs[0]) >= 5
