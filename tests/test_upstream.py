"""The 2024 upstream API: SparseGaussianAdam against its plain-PyTorch twin, and the
`upstream` module's rasterizer (inverse depth, dc 4th, the dc/shs split) against the reference."""

import pytest
import torch

import scenes
from cuda_target import active, cuda_targets, forward_atol, is_emulated
from test_cpu_backend import compare_gradients
import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import upstream
from diff_gaussian_rasterization_depth import SparseGaussianAdam
from diff_gaussian_rasterization_depth.reference import (rasterize_reference,
                                                         sparse_adam_step_reference)

F32, F64 = torch.float32, torch.float64


TARGETS = cuda_targets()   # the GPU where there is one, and the emulated CUDA backend

# 3DGS's parameter shapes per Gaussian: M = 1 (opacity), 3 (xyz, scaling, dc), 4 (rotation),
# 45 (the rest of degree-3 SH).
ROW_SHAPES = {"opacity": (1,), "xyz": (3,), "f_dc": (1, 3), "rotation": (4,), "f_rest": (15, 3)}


def make_groups(gen, N, dtype, device="cpu"):
    """Parameters as 3DGS builds them: one group per tensor, each with its own lr."""
    groups = []
    for k, (name, shape) in enumerate(ROW_SHAPES.items()):
        p = torch.randn((N,) + shape, generator=gen, dtype=dtype).to(device).requires_grad_()
        groups.append({"params": [p], "lr": 10.0 ** -(k + 1), "name": name})
    return groups


def random_grads(gen, groups, device="cpu"):
    for g in groups:
        p = g["params"][0]
        # Gradients over a few orders of magnitude, some exactly zero (Gaussians off screen).
        scale = 10.0 ** torch.randint(-6, 1, p.shape, generator=gen).to(p.dtype)
        grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
        grad[torch.rand(p.shape, generator=gen) < 0.1] = 0
        p.grad = grad.to(device)


class TwinAdam:
    """The reference's update applied to copies of the parameters, with its own moments."""

    def __init__(self, groups, eps):
        self.groups = [(g["params"][0].detach().clone(), g["lr"]) for g in groups]
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p, _ in self.groups]
        self.eps = eps

    def step(self, grads, visibility):
        for (p, lr), (m, v), grad in zip(self.groups, self.moments, grads):
            sparse_adam_step_reference(p, grad, m, v, visibility, lr, self.eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_sparse_adam_matches_twin_over_many_steps(seed, dtype):
    gen = torch.Generator().manual_seed(100 + seed)
    N, eps = 257 + 50 * seed, 1e-15
    groups = make_groups(gen, N, dtype)
    opt = SparseGaussianAdam(groups, lr=0.0, eps=eps)
    twin = TwinAdam(groups, eps)
    rtol = 1e-6 if dtype == torch.float32 else 1e-14
    for step in range(25):
        random_grads(gen, groups)
        visibility = torch.rand(N, generator=gen) < float(torch.rand((), generator=gen))
        before = [(g["params"][0].detach().clone(),
                   *(opt.state[g["params"][0]].get(k) for k in ("exp_avg", "exp_avg_sq")))
                  for g in groups]
        before = [tuple(None if t is None else t.clone() for t in b) for b in before]
        opt.step(visibility, N)
        twin.step([g["params"][0].grad for g in groups], visibility)
        hidden = ~visibility
        for g, (p0, m0, v0), (tp, _), (tm, tv) in zip(groups, before, twin.groups, twin.moments):
            p = g["params"][0]
            state = opt.state[p]
            assert state["step"].item() == step + 1
            # Rows not visible keep their bits, of the parameter and of both moments.
            assert torch.equal(p.detach()[hidden], p0[hidden])
            if m0 is not None:
                assert torch.equal(state["exp_avg"][hidden], m0[hidden])
                assert torch.equal(state["exp_avg_sq"][hidden], v0[hidden])
            # Visible rows follow the twin (same expressions; PyTorch may round a last bit apart).
            torch.testing.assert_close(state["exp_avg"], tm, rtol=rtol, atol=0)
            torch.testing.assert_close(state["exp_avg_sq"], tv, rtol=rtol, atol=0)
            torch.testing.assert_close(p.detach(), tp, rtol=rtol, atol=rtol * tp.abs().max())
        if step == 0:
            # The first visible step moves each entry with a nonzero gradient by about lr/sqrt(10)
            # (m = 0.1 g, sqrt(v) = sqrt(0.001) |g|, no bias correction): the update is real.
            p = groups[1]["params"][0]
            delta = (p.detach() - before[1][0])[visibility & (p.grad != 0).all(1)]
            expected = groups[1]["lr"] * 0.1 / 0.001 ** 0.5
            assert delta.numel() > 0
            torch.testing.assert_close(delta.abs(), torch.full_like(delta, expected),
                                       rtol=1e-4, atol=0)


def test_sparse_adam_state_is_3dgs_editable():
    """3DGS densification replaces a parameter and concatenates/prunes its moments in the
    optimizer state; stepping must go on from the edited moments."""
    gen = torch.Generator().manual_seed(7)
    N = 64
    groups = make_groups(gen, N, torch.float32)
    opt = SparseGaussianAdam(groups, lr=0.0, eps=1e-15)
    random_grads(gen, groups)
    opt.step(torch.ones(N, dtype=torch.bool), N)
    for g in opt.param_groups:
        old = g["params"][0]
        state = opt.state.pop(old)
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
        extra = torch.zeros((10,) + old.shape[1:])
        new = torch.nn.Parameter(torch.cat([old.detach(), extra]))
        state["exp_avg"] = torch.cat([state["exp_avg"], torch.zeros_like(extra)])
        state["exp_avg_sq"] = torch.cat([state["exp_avg_sq"], torch.zeros_like(extra)])
        g["params"][0] = new
        opt.state[new] = state
    # Right after densification: the old mask, no gradients yet. Every group is skipped.
    snapshot = [g["params"][0].detach().clone() for g in opt.param_groups]
    opt.step(torch.ones(N, dtype=torch.bool), N)
    for g, s in zip(opt.param_groups, snapshot):
        assert torch.equal(g["params"][0].detach(), s)
    # Next iteration: new gradients and a new mask.
    random_grads(gen, opt.param_groups)
    visibility = torch.rand(N + 10, generator=gen) < 0.5
    twin_state = [(g["params"][0].detach().clone(), opt.state[g["params"][0]]["exp_avg"].clone(),
                   opt.state[g["params"][0]]["exp_avg_sq"].clone()) for g in opt.param_groups]
    opt.step(visibility, N + 10)
    for g, (p, m, v) in zip(opt.param_groups, twin_state):
        sparse_adam_step_reference(p, g["params"][0].grad, m, v, visibility, g["lr"], 1e-15)
        torch.testing.assert_close(g["params"][0].detach(), p, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(opt.state[g["params"][0]]["exp_avg"], m, rtol=1e-6, atol=0)


def test_sparse_adam_noncontiguous_param():
    gen = torch.Generator().manual_seed(3)
    N = 40
    base = torch.randn(3, N, generator=gen)
    p = base.t().requires_grad_()   # (N, 3), not contiguous
    p.grad = torch.randn(N, 3, generator=gen)
    visibility = torch.rand(N, generator=gen) < 0.5
    expected = p.detach().clone()
    m, v = torch.zeros_like(expected), torch.zeros_like(expected)
    sparse_adam_step_reference(expected, p.grad, m, v, visibility, 0.01, 1e-15)
    SparseGaussianAdam([{"params": [p], "lr": 0.01}], lr=0.0, eps=1e-15).step(visibility, N)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(p.detach()[~visibility], base.t()[~visibility])


def test_sparse_adam_skips_groups_without_grad_before_checking():
    gen = torch.Generator().manual_seed(5)
    groups = make_groups(gen, 30, torch.float32)
    opt = SparseGaussianAdam(groups, lr=0.0, eps=1e-15)
    # No group has a gradient: even a mask that is wrong in every way is never looked at.
    opt.step(torch.zeros(7, dtype=torch.float32, device="meta"), 30)
    assert all(len(opt.state[g["params"][0]]) == 0 for g in groups)


@pytest.mark.parametrize("case", ["length", "dtype", "device", "rows", "not a tensor"])
def test_sparse_adam_named_errors(case):
    gen = torch.Generator().manual_seed(11)
    N = 30
    groups = make_groups(gen, N, torch.float32)
    random_grads(gen, groups)
    opt = SparseGaussianAdam(groups, lr=0.0, eps=1e-15)
    good = torch.ones(N, dtype=torch.bool)
    bad, n, error, words = {
        "length": (torch.ones(N - 1, dtype=torch.bool), N, ValueError, "shape (30,)"),
        "dtype": (torch.ones(N, dtype=torch.uint8), N, TypeError, "torch.bool"),
        "device": (torch.ones(N, dtype=torch.bool, device="meta"), N, ValueError, "device"),
        "rows": (torch.ones(N - 2, dtype=torch.bool), N - 2, ValueError, "rows"),
        "not a tensor": ([True] * N, N, TypeError, "bool tensor"),
    }[case]
    before = [g["params"][0].detach().clone() for g in groups]
    with pytest.raises(error, match="visibility" if case != "rows" else "N = 28") as info:
        opt.step(bad, n)
    assert words in str(info.value) and "param group 'opacity'" in str(info.value)
    # The first group failed its check before anything was written.
    assert all(torch.equal(g["params"][0].detach(), b) for g, b in zip(groups, before))
    opt.step(good, N)   # and the optimizer still works


@pytest.mark.cuda
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", range(3))
def test_sparse_adam_cuda_matches_cpu(seed, target):
    gen = torch.Generator().manual_seed(200 + seed)
    N = (5000 if not is_emulated(target) else 300) + 777 * seed
    groups_cpu = make_groups(gen, N, torch.float32)
    # Copies (clone: on the emulated target .to() returns the very tensor, and both optimizers
    # would then step one parameter, the comparison of parameters below comparing it with
    # itself).
    groups_gpu = [{**g, "params": [g["params"][0].detach().clone().to(target).requires_grad_()]}
                  for g in groups_cpu]
    opt_cpu = SparseGaussianAdam(groups_cpu, lr=0.0, eps=1e-15)
    opt_gpu = SparseGaussianAdam(groups_gpu, lr=0.0, eps=1e-15)
    for _ in range(20):
        random_grads(gen, groups_cpu)
        for gc, gg in zip(groups_cpu, groups_gpu):
            gg["params"][0].grad = gc["params"][0].grad.clone().to(target)
        visibility = torch.rand(N, generator=gen) < 0.6
        before = [g["params"][0].detach().clone() for g in groups_gpu]
        opt_cpu.step(visibility, N)
        with active(target):
            opt_gpu.step(visibility.to(target), N)
        for gc, gg, b in zip(groups_cpu, groups_gpu, before):
            pc, pg = gc["params"][0].detach(), gg["params"][0].detach()
            assert pg.data_ptr() != pc.data_ptr()
            hidden = ~visibility.to(target)
            assert torch.equal(pg[hidden], b[hidden])
            # The GPU contracts a*b+c into fused multiply-adds: equal up to a few roundings.
            torch.testing.assert_close(pg.cpu(), pc, rtol=1e-5, atol=1e-5 * pc.abs().max())
            for key in ("exp_avg", "exp_avg_sq"):
                ref = opt_cpu.state[gc["params"][0]][key]
                torch.testing.assert_close(opt_gpu.state[gg["params"][0]][key].cpu(), ref,
                                           rtol=1e-5, atol=1e-6 * ref.abs().max())


def test_sparse_adam_importable_from_both_places():
    assert upstream.SparseGaussianAdam is dgrd.SparseGaussianAdam
    assert issubclass(SparseGaussianAdam, torch.optim.Adam)


# ----------------------------------------------------------------------------------------------
# The upstream rasterizer: color, radii, invdepth
# ----------------------------------------------------------------------------------------------

# name -> make_scene options (on top of P=48, 37x29, float32, with outliers).
CONFIGS = {
    "sh3-dc": dict(sh_degree=3, dc=True),
    "sh1": dict(sh_degree=1),
    "colors-cov-aa": dict(precomp_colors=True, precomp_cov=True, antialiasing=True),
    "size-64x40-dc": dict(sh_degree=2, dc=True, height=40, width=64, P=120),
    "modifier-noncontiguous": dict(sh_degree=1, scale_modifier=1.4, noncontiguous=True),
    "float64-sh2-dc": dict(sh_degree=2, dc=True, dtype=F64),
}
SEEDS = range(3)


def scene_for(config, seed):
    return scenes.config_scene("upstream", CONFIGS, config, seed)


def run_upstream(inputs, settings):
    return upstream.GaussianRasterizer(settings)(**inputs)


def view_depth(means3D, settings):
    """z of each mean, written out here from SPEC 4 rather than taken from the package."""
    view = settings.viewmatrix.reshape(4, 4).to(means3D.dtype)
    homogeneous = torch.cat([means3D, torch.ones_like(means3D[:, :1])], dim=1)
    return (homogeneous @ view)[:, 2]


def run_reference_upstream(inputs, settings):
    """(color, radii, invdepth) from the reference: invdepth is a colour render of (1/z, 1/z,
    1/z) over a black background, the definition sum_i w_i / z_i, with autograd throughout."""
    color, radii, _, _ = rasterize_reference(**inputs, raster_settings=settings)
    z = view_depth(inputs["means3D"], settings)
    in_front = z > 0.2
    inverse = torch.where(in_front, 1 / torch.where(in_front, z, torch.ones_like(z)), 0 * z)
    geometry = {k: inputs[k] for k in ("means3D", "means2D", "opacities", "scales", "rotations",
                                       "cov3D_precomp")}
    black = settings._replace(bg=torch.zeros_like(settings.bg))
    inv_color, _, _, _ = rasterize_reference(
        **geometry, colors_precomp=inverse[:, None].expand(-1, 3), raster_settings=black)
    return color, radii, inv_color[:1]


def test_upstream_outputs_and_shapes():
    scene = scene_for("sh3-dc", 0)
    out = run_upstream(scene.inputs, scene.settings)
    H, W = scene.settings.image_height, scene.settings.image_width
    assert len(out) == 3
    color, radii, invdepth = out
    assert color.shape == (3, H, W) and invdepth.shape == (1, H, W)
    assert radii.shape == (scene.P,) and radii.dtype == torch.int32
    assert invdepth.dtype == color.dtype


@pytest.mark.parametrize("config", list(CONFIGS))
def test_invdepth_matches_reference(config):
    """Forward (colour, radii, invdepth) and gradients of every input from colour only, from
    invdepth only, and from both."""
    failures = []
    for seed in SEEDS:
        scene = scene_for(config, seed)
        dtype = scene.inputs["means3D"].dtype
        pixels, gaussians = scenes.ambiguous_checked(scene)
        keep = ~pixels
        with torch.no_grad():
            got = run_upstream(scene.inputs, scene.settings)
            want = run_reference_upstream(scene.inputs, scene.settings)
        tol = 1e-5 if dtype == F32 else 1e-10
        for name, g, w in (("color", got[0], want[0]), ("invdepth", got[2], want[2])):
            err = (g - w).abs()[:, keep].max().item()
            if not err <= tol:
                failures.append(f"seed {seed}: {name} max error {err:.3g}")
        assert want[2].max() > 0.05, "a scene where inverse depth is tested"
        if ((got[1] != want[1]) & ~gaussians).any():
            failures.append(f"seed {seed}: radii differ")

        gen = torch.Generator().manual_seed(seed)
        H, W = scene.settings.image_height, scene.settings.image_width
        upstream_grads = {"color": torch.randn(3, H, W, generator=gen, dtype=dtype) * keep,
                          "invdepth": torch.randn(1, H, W, generator=gen, dtype=dtype) * keep}
        wants = [grads_by_mode(run_reference_upstream, scene, upstream_grads)]
        if dtype == F32:
            wide = scenes.Scene({k: None if v is None else v.to(F64)
                                 for k, v in scene.inputs.items()}, scene.settings)
            exact = grads_by_mode(run_reference_upstream, wide,
                                  {k: v.to(F64) for k, v in upstream_grads.items()})
            wants.append({m: {n: g.to(dtype) for n, g in gr.items()} for m, gr in exact.items()})
        got_grads = grads_by_mode(run_upstream, scene, upstream_grads)
        failures += compare_gradients(got_grads, wants, dtype, f"seed {seed}")
        # invdepth alone reaches the geometry, through 1/z and through the weights.
        assert wants[0]["invdepth"]["means3D"].abs().max() > 0
        assert wants[0]["invdepth"]["opacities"].abs().max() > 0
    assert not failures, "\n".join(failures)


def grads_by_mode(run, scene, upstream_grads):
    """{mode: {input: gradient}} for modes color, invdepth and all."""
    leaves = scene.with_grad()
    color, _, invdepth = run(leaves, scene.settings)
    outputs = {"color": color, "invdepth": invdepth}
    names = [n for n, v in leaves.items() if v is not None]
    result = {}
    for mode, used in (("color", ["color"]), ("invdepth", ["invdepth"]),
                       ("all", ["color", "invdepth"])):
        grads = torch.autograd.grad([outputs[k] for k in used], [leaves[n] for n in names],
                                    [upstream_grads[k] for k in used], retain_graph=True,
                                    allow_unused=True)
        result[mode] = {n: torch.zeros_like(leaves[n]) if g is None else g
                        for n, g in zip(names, grads)}
    return result


def test_invdepth_gradcheck():
    """Finite differences through the whole upstream call (float64, a smooth scene)."""
    scene = scenes.make_smooth_scene(5, sh_degree=1, dc=True)
    names = scenes.gradcheck_inputs(scene)
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}

    def fn(*tensors):
        color, _, invdepth = run_upstream({**fixed, **dict(zip(names, tensors))}, scene.settings)
        return color, invdepth

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_invdepth_camera_gradcheck():
    """With camera matrices that require grad, invdepth's gradient reaches them through 1/z and
    through the render: finite differences (float64, a smooth scene)."""
    scene = scenes.make_smooth_scene(17, sh_degree=1, dc=True)

    def fn(view, proj, campos):
        settings = scene.settings._replace(viewmatrix=view, projmatrix=proj, campos=campos)
        color, _, invdepth = run_upstream(scene.inputs, settings)
        return color, invdepth

    leaves = tuple(getattr(scene.settings, n).detach().clone().requires_grad_()
                   for n in ("viewmatrix", "projmatrix", "campos"))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_invdepth_is_inverse_depth_not_depth():
    """The third-output trap: invdepth relates to the package's depth and weight as an average
    of 1/z does to an average of z. With w the weight and D the expected depth, Jensen's
    inequality gives invdepth >= w / D; all blended z lie in [z_min, z_max], so
    w / z_max <= invdepth <= w / z_min."""
    scene = scene_for("sh1", 1)
    with torch.no_grad():
        _, radii, invdepth = run_upstream(scene.inputs, scene.settings)
        _, _, depth, weight = dgrd.GaussianRasterizer(scene.settings)(**scene.inputs)
        z = view_depth(scene.inputs["means3D"], scene.settings)[radii > 0]
    blended = weight > 1e-3
    inv, w, d = invdepth[0][blended], weight[blended], depth[blended]
    assert blended.sum() > 50
    assert (inv >= w / d * (1 - 1e-5)).all()
    assert (inv <= w / z.min() * (1 + 1e-5)).all() and (inv >= w / z.max() * (1 - 1e-5)).all()
    assert (invdepth[0][weight == 0] == 0).all()


def test_positional_order_dc_fourth():
    """forward(means3D, means2D, opacities, dc, shs, colors_precomp, scales, rotations,
    cov3D_precomp) positionally, and the functional form's own order, give the keyword call."""
    scene = scene_for("sh3-dc", 2)
    i = scene.inputs
    rasterizer = upstream.GaussianRasterizer(scene.settings)
    by_keyword = rasterizer(**i)
    positional = rasterizer(i["means3D"], i["means2D"], i["opacities"], i["dc"], i["shs"], None,
                            i["scales"], i["rotations"], None)
    functional = upstream.rasterize_gaussians(i["means3D"], i["means2D"], i["dc"], i["shs"], None,
                                              i["opacities"], i["scales"], i["rotations"], None,
                                              scene.settings)
    for a, b, c in zip(by_keyword, positional, functional):
        assert torch.equal(a, b) and torch.equal(a, c)
    # Swapping dc and shs positionally is an error that names dc, not a silent misuse.
    with pytest.raises(ValueError, match="dc"):
        rasterizer(i["means3D"], i["means2D"], i["opacities"], i["shs"], i["dc"], None,
                   i["scales"], i["rotations"], None)


# (sh_degree, SH coefficients M a Gaussian has, dc included): all used; the active ones fewer
# than given (the others take zero gradients); dc alone (no shs at all).
SPLIT_CASES = {"sh3-m16": (3, 16), "sh1-m16": (1, 16), "sh0-dc-only": (0, 1)}
SPLIT_TARGETS = ([pytest.param(("cpu", dtype), id=f"cpu-{name}")
                  for dtype, name in ((F32, "f32"), (F64, "f64"))]
                 + [pytest.param((t.values[0], F32), id=t.id, marks=t.marks) for t in TARGETS])


def split_scene(case, seed, dtype):
    """A scene (outliers: culled Gaussians too) with M coefficients a Gaussian, as (split,
    joined): dc (P,1,3) and the rest (P,M-1,3) or None, against one shs (P,M,3)."""
    degree, M = SPLIT_CASES[case]
    scene = scenes.make_scene(7000 + seed, P=60, sh_degree=degree, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    sh = (torch.randn(60, M, 3, generator=gen, dtype=F64) * 0.4).to(dtype)
    joined = {**scene.inputs, "shs": sh, "dc": None}
    split = {**scene.inputs, "dc": sh[:, :1].clone(), "shs": sh[:, 1:].clone() if M > 1 else None}
    return scene.settings, split, joined


@pytest.mark.parametrize("target", SPLIT_TARGETS)
@pytest.mark.parametrize("case", list(SPLIT_CASES))
@pytest.mark.parametrize("seed", range(2))
def test_dc_split_equals_concatenated_sh(seed, case, target):
    """dc and shs given apart (read where they lie) render and differentiate as one shs: the
    same outputs, dc's gradient the first coefficient's, shs's the rest's (zero above the active
    degree and for culled Gaussians), every other gradient the same."""
    device, dtype = target
    settings, split, joined = split_scene(case, seed, dtype)
    on = {k: getattr(settings, k).to(device) for k in ("bg", "viewmatrix", "projmatrix", "campos")}
    settings = settings._replace(**on)

    def leaves(inputs):
        return {k: None if v is None else v.detach().to(device).requires_grad_()
                for k, v in inputs.items()}
    split, joined = leaves(split), leaves(joined)
    with active(device):
        out_split = run_upstream(split, settings)
        out_joined = run_upstream(joined, settings)
        exact = not is_emulated(device) and device != "cuda"
        for a, b in zip(out_split, out_joined):
            assert torch.equal(a, b) if exact else torch.allclose(a, b, rtol=0, atol=1e-6)
        gen = torch.Generator().manual_seed(seed)
        upstream_grads = [torch.randn(o.shape, generator=gen, dtype=dtype).to(device)
                          for o in (out_split[0], out_split[2])]
        torch.autograd.backward([out_split[0], out_split[2]], upstream_grads)
        torch.autograd.backward([out_joined[0], out_joined[2]], upstream_grads)

    def same(a, b):
        # CPU: bit for bit. CUDA: the per-Gaussian sums are atomics, their order free.
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * (1 + float(b.abs().max())))
    whole = joined["shs"].grad
    degree, M = SPLIT_CASES[case]
    active_coeffs = (degree + 1) ** 2
    assert split["dc"].grad.shape == (60, 1, 3) and split["dc"].grad.abs().max() > 0
    same(split["dc"].grad, whole[:, :1])
    if M > 1:
        assert split["shs"].grad.shape == (60, M - 1, 3)
        same(split["shs"].grad, whole[:, 1:])
        assert not split["shs"].grad[:, active_coeffs - 1:].any()
    culled = out_split[1] == 0
    assert culled.any() and not split["dc"].grad[culled.to(device)].any()
    for name in ("means3D", "means2D", "opacities", "scales", "rotations"):
        same(split[name].grad, joined[name].grad)


@pytest.mark.parametrize("target", ["cpu"] + TARGETS)
def test_dc_and_shs_reach_the_backend_uncopied(target, monkeypatch):
    """The 2024 call hands dc and shs to the compiled backend as they are (no concatenation:
    at 1M Gaussians of degree 3 that was a 192 MB copy a call, and its gradient's split)."""
    device = target
    settings, split, _ = split_scene("sh3-m16", 0, F32)
    split = {k: None if v is None else v.to(device) for k, v in split.items()}
    settings = settings._replace(**{k: getattr(settings, k).to(device)
                                    for k in ("bg", "viewmatrix", "projmatrix", "campos")})
    seen = {}
    real_forward = dgrd._backend.forward

    def spy(config, gaussians):
        seen["dc"], seen["shs"] = gaussians.dc, gaussians.shs
        return real_forward(config, gaussians)
    monkeypatch.setattr(dgrd._backend, "forward", spy)
    with active(device):
        run_upstream(split, settings)
    assert seen["dc"].data_ptr() == split["dc"].data_ptr()
    assert seen["shs"].data_ptr() == split["shs"].data_ptr()
    assert seen["shs"].shape == (60, 15, 3)


def test_upstream_settings_and_mark_visible():
    # The upstream's 13 fields in its order; then the package's own, with their defaults.
    fields = upstream.GaussianRasterizationSettings._fields
    assert fields[:13] == (
        "image_height", "image_width", "tanfovx", "tanfovy", "bg", "scale_modifier",
        "viewmatrix", "projmatrix", "sh_degree", "campos", "prefiltered", "debug",
        "antialiasing")
    assert fields[13:] == ("kernel_size", "subpixel_offset", "orthographic", "fisheye",
                           "fisheye_distortion", "pinhole_distortion")
    assert upstream.GaussianRasterizationSettings._field_defaults == dict(
        prefiltered=False, debug=False, antialiasing=False, kernel_size=0.3,
        subpixel_offset=None, orthographic=False, fisheye=False, fisheye_distortion=None,
        pinhole_distortion=None)
    scene = scene_for("sh1", 3)
    means = scene.inputs["means3D"]
    visible = upstream.GaussianRasterizer(scene.settings).markVisible(means)
    assert torch.equal(visible, view_depth(means, scene.settings) > 0.2)
    assert visible.any() and not visible.all()


def test_upstream_errors_are_named():
    scene = scene_for("sh1", 4)
    i = dict(scene.inputs)
    with pytest.raises(ValueError, match="means3D"):
        run_upstream({**i, "means3D": i["means3D"][:, :2]}, scene.settings)
    with pytest.raises(ValueError, match="viewmatrix"):
        run_upstream(i, scene.settings._replace(viewmatrix=torch.eye(3)))
    with pytest.raises(ValueError, match="shs / colors_precomp"):
        run_upstream({**i, "shs": None}, scene.settings)


@pytest.mark.cuda
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", range(3))
def test_upstream_cuda_matches_cpu(seed, target):
    scene = scene_for("size-64x40-dc", seed)
    cpu = scene.with_grad()
    gpu = {k: None if v is None else v.detach().to(target).requires_grad_()
           for k, v in cpu.items()}
    s = scene.settings
    s_gpu = s._replace(bg=s.bg.to(target), viewmatrix=s.viewmatrix.to(target),
                       projmatrix=s.projmatrix.to(target), campos=s.campos.to(target))
    out_cpu = run_upstream(cpu, s)
    with active(target):
        out_gpu = run_upstream(gpu, s_gpu)
    pixels, _ = scenes.ambiguous(scene)
    keep = ~pixels
    for a, b in zip(out_cpu, out_gpu):
        if a.dtype == torch.int32:
            continue
        assert (a - b.cpu()).abs()[:, keep].max() <= forward_atol(a[:, keep])
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(o.shape, generator=gen) * keep for o in (out_cpu[0], out_cpu[2])]
    torch.autograd.backward([out_cpu[0], out_cpu[2]], grads)
    with active(target):
        torch.autograd.backward([out_gpu[0], out_gpu[2]], [g.to(target) for g in grads])
    for name, v in cpu.items():
        if v is None:
            continue
        ref = v.grad
        torch.testing.assert_close(gpu[name].grad.cpu(), ref, rtol=1e-4,
                                   atol=1e-4 * ref.abs().max())
