"""depth_losses: each loss against a float64 oracle, properties, dtypes, errors; ranking_pairs."""
import math

import pytest
import torch

from diff_gaussian_rasterization_depth import depth_losses as dl

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
SEEDS = [0, 1, 2]
SHAPES = [(23, 31), (40, 37)]
NAMES = ["pearson", "patch", "ranking", "ssi", "ssi_patch"]
INF, NAN = math.inf, math.nan
# Per-loss arguments of the generic tests (patch grid off the image corner; few ranking pairs so
# that the oracle's Python loop stays fast; "seed" is the ranking generator's seed).
EXTRA = {"pearson": {}, "patch": {"patch_size": 8, "offset": (3, 5)},
         "ranking": {"pairs": 300, "seed": 5}, "ssi": {},
         "ssi_patch": {"patch_size": 8, "offset": (3, 5)}}


# ----------------------------------------------------------------------------------------------
# Data


def make_data(seed, shape=(23, 31), dtype=F64, inverse_depth=False, weird=True, with_mask=True):
    """(depth, weight, prior, mask): x in [0.2, 1] (depth = 1/x, or x itself with inverse_depth),
    a noisy affine prior of x, about 30% of weights <= 0.5 (some exactly 0.5), 15% of the mask
    False; `weird`: non-finite priors, bad depths (0, inf, nan, < 0) and extreme values at
    left-out pixels, and (inverse_depth) valid pixels with x = 0 and x < 0."""
    H, W = shape
    g = torch.Generator().manual_seed(1000 + seed)
    x = 0.2 + 0.8 * torch.rand(H, W, generator=g, dtype=F64)
    prior = 1.5 * x + 0.3 + 0.12 * torch.randn(H, W, generator=g, dtype=F64)
    weight = 0.2 + torch.rand(H, W, generator=g, dtype=F64)
    weight.view(-1)[::13] = 0.5
    mask = (torch.rand(H, W, generator=g) > 0.15) if with_mask else None
    depth = x.clone() if inverse_depth else 1 / x
    if weird:
        d, p = depth.view(-1), prior.view(-1)
        perm = torch.randperm(H * W, generator=g).tolist()
        for k, i in enumerate(perm[:12]):
            p[i] = [NAN, INF, -INF][k % 3]
        bad = [INF, NAN, -INF] if inverse_depth else [0.0, INF, NAN, -1.0, -INF]
        for k, i in enumerate(perm[12:24]):
            d[i] = bad[k % len(bad)]
        if inverse_depth:
            for k, i in enumerate(perm[24:28]):
                d[i] = [0.0, -0.05][k % 2]
        out = weight.view(-1) <= 0.5
        if mask is not None:
            out |= ~mask.view(-1)
        for k, i in enumerate(out.nonzero().flatten()[::3].tolist()):
            d[i] = [0.0, INF, NAN, 1e30][k % 4]
            if k % 2:
                p[i] = NAN
    return depth.to(dtype), weight.to(dtype), prior.to(dtype), mask


def distinct_prior(seed, shape, dtype=F64):
    """A prior with all values distinct (a permutation of a grid in [0.5, 2))."""
    H, W = shape
    g = torch.Generator().manual_seed(2000 + seed)
    perm = torch.randperm(H * W, generator=g).to(F64)
    return (0.5 + 1.5 * perm / (H * W)).view(H, W).to(dtype)


def valid_pixels(depth, weight, prior, min_weight=0.5, inverse_depth=False, mask=None):
    """The spec's valid pixels, flat, by explicit comparisons."""
    d = depth.detach().reshape(-1).double()
    w = weight.detach().reshape(-1).double()
    p = prior.detach().reshape(-1).double()
    v = (w > min_weight) & torch.isfinite(p) & torch.isfinite(d)
    if not inverse_depth:
        v &= d > 0
    if mask is not None:
        v &= mask.reshape(-1)
    return v


def x_of(depth, v, inverse_depth):
    """The rendered inverse depth at the valid pixels, float64 (gradient flows to depth)."""
    d = depth.reshape(-1).double()[v]
    return d if inverse_depth else 1 / d


# ----------------------------------------------------------------------------------------------
# Oracles (float64, explicit)


def corr(x, y):
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum())


def flat(t):
    t = t.detach()
    return ((t - t.mean()) ** 2).sum() <= 0


def pearson_oracle(depth, weight, prior, min_weight=0.5, inverse_depth=False, mask=None):
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask)
    x = x_of(depth, v, inverse_depth)
    y = prior.detach().reshape(-1).double()[v]
    if x.numel() < 2 or flat(x) or flat(y):
        return (x * 0).sum()
    return 1 - corr(x, y)


def oracle_patches(depth, weight, prior, patch_size, min_weight, inverse_depth, mask,
                   min_pixels, offset):
    """(v, d, p, cells): the valid pixels, depth and prior flat (float64), and the flat indices
    of the valid pixels of each patch with at least min_pixels of them (default a quarter of a
    patch, at least 2), patch (r, c) holding ((r - offset[0]) // size, (c - offset[1]) // size),
    found pixel by pixel."""
    H, W = depth.shape[-2:]
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask)
    if min_pixels is None:
        min_pixels = max(2, patch_size ** 2 // 4)
    vl = v.tolist()
    cells = {}
    for r in range(H):
        for c in range(W):
            if vl[r * W + c]:
                key = ((r - offset[0]) // patch_size, (c - offset[1]) // patch_size)
                cells.setdefault(key, []).append(r * W + c)
    kept = [torch.tensor(cells[k]) for k in sorted(cells) if len(cells[k]) >= min_pixels]
    return v, depth.reshape(-1).double(), prior.detach().reshape(-1).double(), kept


def patch_pearson_oracle(depth, weight, prior, patch_size=32, min_weight=0.5,
                         inverse_depth=False, mask=None, min_pixels=None, offset=(0, 0)):
    v, d, p, cells = oracle_patches(depth, weight, prior, patch_size, min_weight, inverse_depth,
                                    mask, min_pixels, offset)
    terms = []
    for idx in cells:
        x = d[idx] if inverse_depth else 1 / d[idx]
        y = p[idx]
        xd = x.detach()
        if ((xd - xd.mean()) ** 2).sum() <= 0 or ((y - y.mean()) ** 2).sum() <= 0:
            continue
        terms.append(1 - corr(x, y))
    if not terms:
        return (d[v] * 0).sum()
    return torch.stack(terms).mean()


def ranking_oracle(depth, weight, prior, pairs=4096, radius=None, margin=1e-4, min_weight=0.5,
                   inverse_depth=False, mask=None, seed=None, detach_mean=True):
    """The pairs from ranking_pairs (tested on its own) with the same generator seed."""
    H, W = depth.shape[-2:]
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask)
    first, second = dl.ranking_pairs(v.view(H, W), pairs, radius,
                                     generator=torch.Generator().manual_seed(seed))
    d = depth.reshape(-1).double()
    p = prior.detach().reshape(-1).double().tolist()
    xv = x_of(depth, v, inverse_depth)
    mean = xv.detach().mean() if detach_mean else xv.mean()
    terms = []
    for i, j in zip(first.tolist(), second.tolist()):
        if p[i] == p[j]:
            continue
        s = 1.0 if p[i] > p[j] else -1.0
        xi = d[i] if inverse_depth else 1 / d[i]
        xj = d[j] if inverse_depth else 1 / d[j]
        terms.append(torch.relu(margin - s * (xi / mean - xj / mean)))
    if not terms:
        return (xv * 0).sum()
    return torch.stack(terms).mean()


def robust_normalized(v, detach=False):
    """(v - median) / mean|v - median| and that spread, the median the lower middle of the
    sorted values (torch.median's); `detach`: both estimates without gradient."""
    centre = v.sort().values[(v.numel() - 1) // 2]
    spread = (v - centre).abs().mean()
    if detach:
        centre, spread = centre.detach(), spread.detach()
    return (v - centre) / spread, spread


def ssi_oracle(depth, weight, prior, min_weight=0.5, inverse_depth=False, mask=None,
               detach_norm=False):
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask)
    x = x_of(depth, v, inverse_depth)
    y = prior.detach().reshape(-1).double()[v]
    if x.numel() < 2:
        return (x * 0).sum()
    yn, y_spread = robust_normalized(y)
    if y_spread == 0:
        return (x * 0).sum()
    if (x.detach() == x.detach()[0]).all():
        return (x * 0).sum() + 1
    xn, _ = robust_normalized(x, detach_norm)
    return (xn - yn).abs().mean()


def ssi_patch_oracle(depth, weight, prior, patch_size=32, min_weight=0.5, inverse_depth=False,
                     mask=None, min_pixels=None, offset=(0, 0)):
    """MiDaS's loss per patch of patch_pearson_oracle's grid: a patch with min_pixels valid
    pixels and a prior that is not flat counts, 1 (no gradient) where x is flat there; the mean
    over the patches that count."""
    v, d, p, cells = oracle_patches(depth, weight, prior, patch_size, min_weight, inverse_depth,
                                    mask, min_pixels, offset)
    terms = []
    for idx in cells:
        x = d[idx] if inverse_depth else 1 / d[idx]
        yn, y_spread = robust_normalized(p[idx])
        if y_spread == 0:
            continue
        if (x.detach() == x.detach()[0]).all():
            terms.append((x * 0).sum() + 1)
            continue
        xn, _ = robust_normalized(x)
        terms.append((xn - yn).abs().mean())
    if not terms:
        return (d[v] * 0).sum()
    return torch.stack(terms).mean()


ORACLES = {"pearson": pearson_oracle, "patch": patch_pearson_oracle, "ranking": ranking_oracle,
           "ssi": ssi_oracle, "ssi_patch": ssi_patch_oracle}


def call(name, depth, weight, prior, **kw):
    kw = {**EXTRA[name], **kw}
    if name == "pearson":
        return dl.pearson_depth_loss(depth, weight, prior, **kw)
    if name == "patch":
        return dl.patch_pearson_depth_loss(depth, weight, prior, **kw)
    if name == "ranking":
        seed = kw.pop("seed")
        return dl.ranking_depth_loss(depth, weight, prior,
                                     generator=torch.Generator().manual_seed(seed), **kw)
    return dl.scale_shift_invariant_depth_loss(depth, weight, prior, **kw)


def oracle(name, depth, weight, prior, **kw):
    return ORACLES[name](depth, weight, prior, **{**EXTRA[name], **kw})


def impl_vg(name, depth, weight, prior, **kw):
    """(value, gradient w.r.t. depth) of the implementation; the result must be a 0-dim tensor
    connected to depth."""
    d = depth.detach().clone().requires_grad_(True)
    out = call(name, d, weight, prior, **kw)
    assert isinstance(out, torch.Tensor) and out.dim() == 0 and out.requires_grad
    (g,) = torch.autograd.grad(out, d)
    return out.detach(), g


def oracle_vg(name, depth, weight, prior, **kw):
    d = depth.detach().clone().requires_grad_(True)
    out = oracle(name, d, weight, prior, **kw)
    g = torch.autograd.grad(out, d, allow_unused=True)[0] if out.requires_grad else None
    return out.detach(), torch.zeros_like(d) if g is None else g


def assert_grad_close(got, want, rtol):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.isfinite(got).all()
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * scale + 1e-300)


def assert_value_close(got, want, dtype):
    if dtype == F64:
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-10, atol=1e-13)
    else:
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Every loss against its oracle


@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_loss_matches_oracle(name, seed, dtype, inverse_depth):
    """Value and gradient w.r.t. depth equal the float64 oracle's (non-finite and bad values at
    left-out pixels; float64 rtol 1e-10, float32 1e-5), in [0, 2] for the Pearson losses."""
    shape = SHAPES[seed % 2]
    depth, weight, prior, mask = make_data(seed, shape, dtype, inverse_depth)
    kw = dict(inverse_depth=inverse_depth, mask=mask)
    if name == "ranking":
        kw["radius"] = [None, 2, 5][seed]
    value, grad = impl_vg(name, depth, weight, prior, **kw)
    want, want_grad = oracle_vg(name, depth, weight, prior, **kw)
    assert value.dtype == dtype
    assert_value_close(value, want, dtype)
    assert want.item() > 1e-3     # a non-trivial value and gradient
    assert want_grad.abs().max() > 0
    v = valid_pixels(depth, weight, prior, inverse_depth=inverse_depth, mask=mask)
    assert (grad.reshape(-1)[~v] == 0).all()
    if dtype == F64:
        assert_grad_close(grad, want_grad, 1e-9)
    elif name not in ("ssi", "ssi_patch"):  # float32 SSI: sign() of a residual near 0 differs
        assert_grad_close(grad, want_grad, 1e-4)
    if name in ("pearson", "patch"):
        assert 0 <= value.item() <= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_oracle_is_one_minus_corrcoef(seed):
    """Self-check of the oracle: its Pearson term agrees with 1 - torch.corrcoef."""
    depth, weight, prior, mask = make_data(seed, weird=True)
    v = valid_pixels(depth, weight, prior, mask=mask)
    x = 1 / depth.reshape(-1)[v]
    y = prior.reshape(-1)[v]
    c = torch.corrcoef(torch.stack([x, y]))[0, 1]
    assert abs(pearson_oracle(depth, weight, prior, mask=mask).item() - (1 - c.item())) < 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_oracle_detaches_matter(seed):
    """Power of the gradient comparisons: the ranking oracle without its detached mean, and the
    SSI oracle with its median and deviation detached, give other gradients."""
    depth, weight, prior, mask = make_data(seed)
    kw = dict(mask=mask)
    _, g = oracle_vg("ranking", depth, weight, prior, **kw)
    _, g_bad = oracle_vg("ranking", depth, weight, prior, detach_mean=False, **kw)
    assert (g - g_bad).abs().max() > 1e-6 * g.abs().max()
    _, g = oracle_vg("ssi", depth, weight, prior, **kw)
    _, g_bad = oracle_vg("ssi", depth, weight, prior, detach_norm=True, **kw)
    assert (g - g_bad).abs().max() > 1e-6 * g.abs().max()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["pearson", "patch", "ssi", "ssi_patch"])
def test_gradcheck(name, seed):
    """torch.autograd.gradcheck in float64 of the Pearson losses and MiDaS's, whole and per
    patch (depth in [1, 5]; patches of 4 off the corner; seed 2 a batch of two images). MiDaS's
    median and |.| are smooth at such random values (no ties within the step)."""
    g = torch.Generator().manual_seed({"pearson": 300, "patch": 400, "ssi": 450,
                                       "ssi_patch": 480}[name] + seed)
    shape = (2, 10, 9) if seed == 2 else (10, 9)
    depth = (1 + 4 * torch.rand(shape, generator=g, dtype=F64)).requires_grad_()
    weight = 0.3 + torch.rand(shape, generator=g, dtype=F64)
    prior = 1 / depth.detach() + 0.2 * torch.randn(shape, generator=g, dtype=F64)
    patches = dict(patch_size=4, offset=(1, 2), min_pixels=3)
    fn = {"pearson": lambda d: dl.pearson_depth_loss(d, weight, prior),
          "patch": lambda d: dl.patch_pearson_depth_loss(d, weight, prior, **patches),
          "ssi": lambda d: dl.scale_shift_invariant_depth_loss(d, weight, prior),
          "ssi_patch": lambda d: dl.scale_shift_invariant_depth_loss(d, weight, prior,
                                                                     **patches)}[name]
    assert fn(depth).item() > 0
    assert torch.autograd.gradcheck(fn, (depth,))


# ----------------------------------------------------------------------------------------------
# Common behaviour


def scramble_left_out(depth, weight, prior, mask, inverse_depth, seed, min_weight=0.5):
    """Other values at left-out pixels that keep them left out: anything where the weight or the
    mask leaves them out, another non-finite prior / another bad depth where only that did."""
    g = torch.Generator().manual_seed(500 + seed)
    d, w, p = depth.clone().view(-1), weight.clone().view(-1), prior.clone().view(-1)
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask)
    wm_out = w <= min_weight
    if mask is not None:
        wm_out |= ~mask.reshape(-1)
    p_out = ~torch.isfinite(p)
    anything = [0.0, INF, NAN, -INF, 1e30, 3.3, -2.0, 0.7]
    nonfinite = [NAN, INF, -INF]
    bad = nonfinite if inverse_depth else [0.0, INF, NAN, -1.0, -INF]
    for i in (~v).nonzero().flatten().tolist():
        k = int(torch.randint(0, 1000, (1,), generator=g))
        if wm_out[i]:
            d[i], p[i] = anything[k % 8], anything[(k // 8) % 8]
            if w[i] <= min_weight:
                w[i] = [min_weight, -1.0, 0.0][k % 3]
        elif p_out[i]:
            d[i], p[i] = anything[k % 8], nonfinite[(k // 8) % 3]
        else:
            d[i], p[i] = bad[k % len(bad)], anything[(k // 8) % 8]
    return d.view_as(depth), w.view_as(weight), p.view_as(prior)


@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_left_out_pixels_do_not_matter(name, seed, inverse_depth):
    """Other values (0, inf, nan, ...) at left-out pixels give exactly the same value and
    gradient; the gradient there is exactly 0 and nowhere NaN."""
    depth, weight, prior, mask = make_data(seed, SHAPES[seed % 2], F64, inverse_depth)
    kw = dict(inverse_depth=inverse_depth, mask=mask)
    value, grad = impl_vg(name, depth, weight, prior, **kw)
    d2, w2, p2 = scramble_left_out(depth, weight, prior, mask, inverse_depth, seed)
    assert not torch.equal(torch.nan_to_num(d2), torch.nan_to_num(depth))
    value2, grad2 = impl_vg(name, d2, w2, p2, **kw)
    assert torch.equal(value, value2)
    assert torch.equal(grad, grad2)
    v = valid_pixels(depth, weight, prior, inverse_depth=inverse_depth, mask=mask)
    assert (~v).sum() > 0.3 * v.numel()
    assert torch.isfinite(grad).all() and (grad.reshape(-1)[~v] == 0).all()
    nonzero = (grad.reshape(-1)[v] != 0).sum()
    assert nonzero > (20 if name == "ranking" else 0.5 * v.sum())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_leaving_out_changes_the_loss(name, seed):
    """Power of the above: min_weight, the mask and a non-finite prior do leave pixels out (the
    loss changes when they are changed)."""
    depth, weight, prior, mask = make_data(seed, weird=False)
    base = call(name, depth, weight, prior, mask=mask)
    assert (call(name, depth, weight, prior, mask=mask, min_weight=0.25) - base).abs() > 1e-8
    assert (call(name, depth, weight, prior) - base).abs() > 1e-8
    p = prior.clone()
    p.view(-1)[mask.reshape(-1) & (weight.reshape(-1) > 0.5)] = NAN
    p.view(-1)[::2] = prior.view(-1)[::2]
    assert (call(name, depth, weight, p, mask=mask) - base).abs() > 1e-8


@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_mixed(name, seed):
    """(H, W) and (1, H, W) arguments mixed: the same value and gradient as all (H, W); the
    gradient has depth's shape."""
    depth, weight, prior, mask = make_data(seed, (40, 37))
    value, grad = impl_vg(name, depth, weight, prior, mask=mask)
    combos = [(depth[None], weight, prior[None], mask),
              (depth, weight[None], prior, mask[None]),
              (depth[None], weight[None], prior[None], mask[None])]
    for d, w, p, m in combos:
        v2, g2 = impl_vg(name, d, w, p, mask=m)
        assert g2.shape == d.shape
        assert torch.equal(v2, value)
        assert torch.equal(g2.reshape(grad.shape), grad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_inverse_depth_uses_depth_as_is(name, seed):
    """inverse_depth=True on x equals inverse_depth=False on 1/x (to rounding), and differs from
    inverse_depth=False on x."""
    depth, weight, prior, mask = make_data(seed, weird=False)   # depth in [1, 5]
    x = 1 / depth
    a = call(name, x, weight, prior, mask=mask, inverse_depth=True)
    b = call(name, depth, weight, prior, mask=mask)
    assert abs(a.item() - b.item()) <= 1e-12 + 1e-10 * abs(b.item())
    c = call(name, x, weight, prior, mask=mask)
    assert abs(c.item() - a.item()) > 1e-6


@pytest.mark.parametrize("low", [F16, BF16])
@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_arguments_computed_in_float32(name, seed, low):
    """float16/bfloat16 depth, weight or prior: exactly the float32 call on their values, a
    float32 result, depth's gradient the float32 one in depth's dtype."""
    depth, weight, prior, mask = make_data(seed, dtype=F32, weird=False)
    for which in ("depth", "weight", "prior", "all"):
        args = {"depth": depth, "weight": weight, "prior": prior}
        for k in args:
            if which in (k, "all"):
                args[k] = args[k].to(low)
        d = args["depth"].clone().requires_grad_()
        out = call(name, d, args["weight"], args["prior"], mask=mask)
        assert out.dtype == F32 and out.dim() == 0
        out.backward()
        ref_d = args["depth"].float().clone().requires_grad_()
        ref = call(name, ref_d, args["weight"].float(), args["prior"].float(), mask=mask)
        ref.backward()
        assert torch.equal(out.detach(), ref.detach()), which
        assert d.grad.dtype == d.dtype and torch.equal(d.grad, ref_d.grad.to(d.dtype)), which


@pytest.mark.parametrize("name", NAMES)
def test_result_dtype_follows_depth(name):
    """float64 depth gives float64 (float32 or float16 prior/weight taken at their values);
    float32 depth gives float32 even with a float64 prior."""
    depth, weight, prior, mask = make_data(0, weird=False)
    out = call(name, depth, weight.float(), prior.float(), mask=mask)
    assert out.dtype == F64
    assert torch.equal(out, call(name, depth, weight.float().double(), prior.float().double(),
                                 mask=mask))
    out = call(name, depth, weight, prior.half(), mask=mask)
    assert out.dtype == F64
    assert torch.equal(out, call(name, depth, weight, prior.half().double(), mask=mask))
    assert call(name, depth.float(), weight, prior, mask=mask).dtype == F32


def too_few_cases(name, H=12, W=13):
    """(label, depth, weight, prior, mask, kwargs) where too few pixels / patches / pairs count;
    depth is 0, inf or nan at some left-out pixels."""
    g = torch.Generator().manual_seed(77)
    depth = 1 + 4 * torch.rand(H, W, generator=g, dtype=F64)
    depth.view(-1)[::5] = 0.0
    depth.view(-1)[1::7] = INF
    depth.view(-1)[2::11] = NAN
    prior = torch.rand(H, W, generator=g, dtype=F64)
    none = torch.zeros(H, W, dtype=torch.bool)
    one = none.clone()
    one[3, 5] = True     # depth finite there
    cases = [("no valid pixel", depth, torch.ones(H, W, dtype=F64), prior, none, {}),
             ("one valid pixel", depth, torch.ones(H, W, dtype=F64), prior, one, {}),
             ("all weights 0.5", depth, torch.full((H, W), 0.5, dtype=F64), prior, None, {})]
    if name in ("patch", "ssi_patch"):
        cases.append(("min_pixels above every patch", depth, torch.ones(H, W, dtype=F64),
                      prior, None, {"patch_size": 4, "min_pixels": 17}))
        sparse = torch.zeros(H, W, dtype=torch.bool)
        sparse[1::4, 1::4] = True
        cases.append(("one valid pixel per patch", depth, torch.ones(H, W, dtype=F64), prior,
                      sparse,
                      {"patch_size": 4, "min_pixels": 2}))
    if name == "ranking":
        flat = torch.full((H, W), 0.75, dtype=F64)
        cases.append(("every prior tied", depth, torch.ones(H, W, dtype=F64), flat, None, {}))
        cases.append(("one valid pixel, radius", depth, torch.ones(H, W, dtype=F64), prior, one,
                      {"radius": 2}))
    return cases


@pytest.mark.parametrize("bad_depth", [False, True])
@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_too_few_gives_zero_with_zero_gradient(name, inverse_depth, bad_depth):
    """Too few pixels / patches / pairs: exactly 0, connected to depth, a zero finite gradient
    (bad_depth: inf and nan depths at left-out pixels too); the oracle agrees."""
    for label, depth, weight, prior, mask, kw in too_few_cases(name):
        if not bad_depth:
            depth = torch.where(torch.isfinite(depth) & (depth != 0), depth, 2.0)
        if inverse_depth:
            depth = 1 / depth
        d = depth.clone().requires_grad_()
        out = call(name, d, weight, prior, mask=mask, inverse_depth=inverse_depth, **kw)
        assert out.dim() == 0 and out.dtype == F64, label
        assert out.item() == 0.0, label
        assert out.requires_grad, label
        out.backward()
        assert d.grad is not None and (d.grad == 0).all(), label
        assert oracle(name, depth, weight, prior, mask=mask, inverse_depth=inverse_depth,
                      **kw).item() == 0.0, label
    # float32 too
    label, depth, weight, prior, mask, kw = too_few_cases(name)[1]
    if not bad_depth:
        depth = torch.where(torch.isfinite(depth) & (depth != 0), depth, 2.0)
    d = depth.float().requires_grad_()
    out = call(name, d, weight.float(), prior.float(), mask=mask, **kw)
    assert out.dtype == F32 and out.item() == 0.0
    out.backward()
    assert (d.grad == 0).all()


@pytest.mark.parametrize("name", ["pearson", "ssi"])
def test_two_valid_pixels_count(name):
    """Power of the too-few test: two valid pixels do count (2 when their order is reversed,
    for both)."""
    depth = torch.tensor([[1.0, 2.0, 4.0]], dtype=F64)
    weight = torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    prior = torch.tensor([[1.0, 3.0, 5.0]], dtype=F64)   # x = 1, 0.5: reversed order
    out = call(name, depth, weight, prior)
    assert abs(out.item() - 2.0) < 1e-9


# ----------------------------------------------------------------------------------------------
# Errors


def error_cases(H=6, W=7):
    d = torch.rand(H, W, dtype=F64) + 1
    w = torch.ones(H, W, dtype=F64)
    p = torch.rand(H, W, dtype=F64)
    m = torch.ones(H, W, dtype=torch.bool)
    return [
        (TypeError, "depth", dict(depth=d.numpy(), weight=w, prior=p)),
        (TypeError, "depth", dict(depth=d.tolist(), weight=w, prior=p)),
        (TypeError, "weight", dict(depth=d, weight=w.numpy(), prior=p)),
        (TypeError, "prior", dict(depth=d, weight=w, prior=p.tolist())),
        (TypeError, "mask", dict(depth=d, weight=w, prior=p, mask=m.tolist())),
        (ValueError, "weight", dict(depth=d, weight=torch.ones(H, W + 1, dtype=F64), prior=p)),
        (ValueError, "prior", dict(depth=d, weight=w, prior=torch.rand(H + 1, W, dtype=F64))),
        (ValueError, "mask", dict(depth=d, weight=w, prior=p, mask=m[:-1])),
        (ValueError, "depth", dict(depth=d.reshape(-1), weight=w, prior=p)),
        (ValueError, "depth", dict(depth=torch.stack([d, d])[:, None].expand(2, 3, H, W),
                                   weight=torch.cat([w] * 6), prior=torch.cat([p] * 6))),
        (ValueError, r"depth\[\.\.\., 0\]", dict(depth=d[..., None], weight=w, prior=p)),
        (ValueError, r"depth\[\.\.\., 0\]", dict(depth=d[None, ..., None], weight=w, prior=p)),
        (ValueError, "depth", dict(depth=d[None, None, None], weight=w, prior=p)),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_argument_errors(name):
    """Non-tensor depth/weight/prior/mask: TypeError naming it; a weight/prior/mask of another
    size or a depth neither (H, W), (B, H, W) nor (B, 1, H, W): ValueError naming it, and a
    channels-last map (gsplat's (C, H, W, 1)) refused with the way to pass it."""
    for err, arg, kw in error_cases():
        depth, weight, prior = kw.pop("depth"), kw.pop("weight"), kw.pop("prior")
        with pytest.raises(err, match=arg):
            call(name, depth, weight, prior, **kw)


@pytest.mark.parametrize("fn", [dl.patch_pearson_depth_loss,
                                dl.scale_shift_invariant_depth_loss])
@pytest.mark.parametrize("patch_size", [1, 0, -4, 8.0, 2.5, True])
def test_patch_size_must_be_an_int_of_at_least_2(patch_size, fn):
    """patch_size an int below 2: ValueError naming patch_size; not an int: TypeError naming it
    (the package's rule, _validation._require_int); 2 is accepted; a bad offset is named too.
    The patch Pearson's and MiDaS's per patch alike."""
    depth, weight, prior, mask = make_data(0, weird=False)
    error = ValueError if type(patch_size) is int else TypeError
    with pytest.raises(error, match="patch_size"):
        fn(depth, weight, prior, patch_size=patch_size)
    assert torch.isfinite(fn(depth, weight, prior, patch_size=2))
    with pytest.raises(TypeError, match="offset"):
        fn(depth, weight, prior, patch_size=4, offset=(1.5, 0))
    with pytest.raises(ValueError, match="offset"):
        fn(depth, weight, prior, patch_size=4, offset=(1,))


@pytest.mark.parametrize("name,value,error", [("pairs", 0, ValueError), ("pairs", 2.0, TypeError),
                                              ("radius", 0, ValueError),
                                              ("radius", 1.5, TypeError)])
def test_ranking_arguments_are_checked(name, value, error):
    """ranking_pairs' (and so ranking_depth_loss's) pairs and radius: an int below 1 is a
    ValueError, not an int a TypeError, each naming the argument; a bad offset of the patch grid
    too."""
    depth, weight, prior, mask = make_data(0, weird=False)
    with pytest.raises(error, match=name):
        dl.ranking_depth_loss(depth, weight, prior, **{name: value})
    with pytest.raises(TypeError, match="offset"):
        dl.patch_pearson_depth_loss(depth, weight, prior, offset=(1.5, 0))
    with pytest.raises(ValueError, match="offset"):
        dl.patch_pearson_depth_loss(depth, weight, prior, offset=(1,))
    assert torch.isfinite(dl.ranking_depth_loss(depth, weight, prior, pairs=1, radius=1))


# ----------------------------------------------------------------------------------------------
# Batches: (B, H, W) and (B, 1, H, W), each image its own comparison


def make_batch(seed, B=3, shape=(23, 31), dtype=F64, inverse_depth=False):
    """B images of make_data stacked: (depth, weight, prior, mask), each (B, H, W)."""
    parts = [make_data(seed * 10 + b, shape, dtype, inverse_depth) for b in range(B)]
    return tuple(torch.stack([p[i] for p in parts]) for i in range(4))


def ranking_batch_oracle(depth, weight, prior, pairs=300, radius=None, margin=1e-4,
                         min_weight=0.5, inverse_depth=False, mask=None, seed=None):
    """The per-image ranking oracle on the batch's pairs (ranking_pairs of the (B, H, W) valid
    map, indices into the whole batch, grouped by image), averaged over images with a pair."""
    B, H, W = depth.shape
    v = valid_pixels(depth, weight, prior, min_weight, inverse_depth, mask).view(B, H * W)
    first, second = dl.ranking_pairs(v.view(B, H, W), pairs, radius,
                                     generator=torch.Generator().manual_seed(seed))
    d, p = depth.reshape(-1).double(), prior.detach().reshape(-1).double().tolist()
    per_image = []
    for b in range(B):
        xb = x_of(depth[b], v[b], inverse_depth)
        mean = xb.detach().mean()
        terms = []
        for i, j in zip(first.tolist(), second.tolist()):
            if i // (H * W) != b:
                continue
            assert j // (H * W) == b  # both pixels of a pair in one image
            if p[i] == p[j]:
                continue
            s = 1.0 if p[i] > p[j] else -1.0
            xi, xj = (d[i], d[j]) if inverse_depth else (1 / d[i], 1 / d[j])
            terms.append(torch.relu(margin - s * (xi / mean - xj / mean)))
        if terms:
            per_image.append(torch.stack(terms).mean())
    return torch.stack(per_image).mean() if per_image else (d * 0).sum()


def batch_oracle(name, depth, weight, prior, mask, **kw):
    """The mean over the images of each image's oracle (every image here counts)."""
    if name == "ranking":
        return ranking_batch_oracle(depth, weight, prior, mask=mask, **{**EXTRA[name], **kw})
    return torch.stack([oracle(name, depth[b], weight[b], prior[b], mask=mask[b], **kw)
                        for b in range(depth.shape[0])]).mean()


@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("seed", SEEDS[:2])
@pytest.mark.parametrize("name", NAMES)
def test_batch_matches_the_mean_over_images(name, seed, inverse_depth):
    """A (B, H, W) batch (weight as (B, 1, H, W)): the value and the gradient of the mean over
    the images of each image's float64 oracle (ranking: each image's pairs those ranking_pairs
    draws for the batch, none across images)."""
    depth, weight, prior, mask = make_batch(seed, inverse_depth=inverse_depth)
    d = depth.clone().requires_grad_(True)
    want = batch_oracle(name, d, weight, prior, mask, inverse_depth=inverse_depth)
    (want_grad,) = torch.autograd.grad(want, d)
    value, grad = impl_vg(name, depth, weight[:, None], prior, mask=mask,
                          inverse_depth=inverse_depth)
    assert grad.shape == depth.shape
    assert_value_close(value, want.detach(), F64)
    assert_grad_close(grad, want_grad, 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one_is_the_image(name):
    """(1, H, W) and (1, 1, H, W) give exactly the (H, W) image's value and gradient (the same
    pairs, for the ranking loss)."""
    depth, weight, prior, mask = make_data(4)
    value, grad = impl_vg(name, depth, weight, prior, mask=mask)
    v4, g4 = impl_vg(name, depth[None, None], weight[None], prior[None, None], mask=mask)
    assert torch.equal(v4, value) and torch.equal(g4[0, 0], grad)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_batch_images_have_their_own_scale_and_shift(name, seed):
    """Each image's prior through its own increasing affine map (ranking: any increasing map)
    leaves the batch loss unchanged, where one loss over the flattened batch changes: the
    views' priors are compared separately."""
    depth, weight, prior, mask = make_batch(seed)
    base = call(name, depth, weight, prior, mask=mask)
    scale = torch.tensor([0.2, 3.0, 11.0], dtype=F64)[:, None, None]
    shift = torch.tensor([-4.0, 0.5, 30.0], dtype=F64)[:, None, None]
    moved = call(name, depth, weight, prior * scale + shift, mask=mask)
    torch.testing.assert_close(moved, base, rtol=1e-9, atol=1e-12)
    H, W = depth.shape[1:]
    flat = lambda t: t.reshape(1, -1, W)  # the batch as one tall image
    one = call(name, flat(depth), flat(weight), flat(prior), mask=flat(mask))
    one_moved = call(name, flat(depth), flat(weight), flat(prior * scale + shift),
                     mask=flat(mask))
    assert abs(one_moved.item() - one.item()) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_batch_leaves_out_images_that_do_not_count(name):
    """An image with no valid pixel counts in neither the sum nor the number of images: the
    batch of three with the middle one empty equals the batch of the other two, and that image
    takes a zero gradient (ranking: the third image's pairs come later in the random stream,
    so only that); a batch of empty images gives 0 with a zero gradient."""
    depth, weight, prior, mask = make_batch(7)
    empty = weight.clone()
    empty[1] = 0.0
    value, grad = impl_vg(name, depth, empty, prior, mask=mask)
    keep = [0, 2]
    v2, g2 = impl_vg(name, depth[keep], weight[keep], prior[keep], mask=mask[keep])
    assert torch.all(grad[1] == 0) and value.item() > 0
    if name != "ranking":
        torch.testing.assert_close(value, v2, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad[keep], g2, rtol=1e-12, atol=1e-14)
    v0, g0 = impl_vg(name, depth, torch.zeros_like(weight), prior, mask=mask)
    assert v0.item() == 0.0 and torch.all(g0 == 0)


# ----------------------------------------------------------------------------------------------
# pearson_depth_loss


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_affine_prior(seed, dtype):
    """Prior -> a*prior + b: unchanged for a > 0, 2 - loss for a < 0; a non-affine transform
    changes it; always in [0, 2]."""
    depth, weight, prior, mask = make_data(seed, dtype=dtype)
    tol = 1e-10 if dtype == F64 else 2e-5
    base = dl.pearson_depth_loss(depth, weight, prior, mask=mask).item()
    for a, b in [(0.3, -5.0), (7.0, 2.0)]:
        assert abs(dl.pearson_depth_loss(depth, weight, a * prior + b, mask=mask).item()
                   - base) < tol
    for a, b in [(-0.3, 1.0), (-4.0, -2.0)]:
        out = dl.pearson_depth_loss(depth, weight, a * prior + b, mask=mask).item()
        assert abs(out - (2 - base)) < tol
        assert 0 <= out <= 2
    curved = torch.where(torch.isfinite(prior), torch.exp(3 * prior), prior)
    assert abs(dl.pearson_depth_loss(depth, weight, curved, mask=mask).item() - base) > 1e-4
    noise = torch.randn(prior.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    out = dl.pearson_depth_loss(depth, weight, noise.to(dtype), mask=mask).item()
    assert 0 <= out <= 2 and abs(out - 1) < 0.5


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_zero_on_affine_x(seed, dtype):
    """x = a*prior + b (a > 0) on the valid pixels (anything elsewhere): loss 0; with a < 0: 2."""
    depth, weight, prior, mask = make_data(seed, dtype=F64)
    v = valid_pixels(depth, weight, prior, mask=mask).view(depth.shape)
    tol = 1e-10 if dtype == F64 else 1e-5
    for a, b, want in [(0.4, 0.5, 0.0), (-0.2, 1.5, 2.0)]:
        d = depth.clone()
        d[v] = 1 / (a * prior[v] + b)
        assert (d[v] > 0).all()
        out = dl.pearson_depth_loss(d.to(dtype), weight.to(dtype), prior.to(dtype), mask=mask)
        assert abs(out.item() - want) < tol


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_has_no_epsilon_bias(seed):
    """No epsilon in the denominator: x = 0.5 + a*y with a so small that sum(xc^2) * sum(yc^2)
    is 1e-12 (a nearly flat render) is still perfectly correlated, loss 0 (pearson, and
    patch_pearson per patch), where an epsilon of 1e-12 would give 1 - 1/sqrt(2)."""
    g = torch.Generator().manual_seed(900 + seed)
    prior = 0.5 + 1.5 * torch.rand(24, 24, generator=g, dtype=F64)
    weight = torch.ones(24, 24, dtype=F64)
    syy = ((prior - prior.mean()) ** 2).sum()
    x = 0.5 + (1e-6 / syy) * prior
    assert abs(pearson_oracle(x, weight, prior, inverse_depth=True).item()) < 1e-6
    assert abs(dl.pearson_depth_loss(x, weight, prior, inverse_depth=True).item()) < 1e-6
    biased = 1 - ((x - x.mean()) * (prior - prior.mean())).sum() / torch.sqrt(
        ((x - x.mean()) ** 2).sum() * syy + 1e-12)
    assert abs(biased.item() - (1 - 1 / math.sqrt(2))) < 1e-6   # the power of the check
    r, c = cell_index((24, 24), 8, (0, 0))
    x = torch.empty_like(prior)
    for i in range(3):
        for j in range(3):
            cell = (r == i) & (c == j)
            syy = ((prior[cell] - prior[cell].mean()) ** 2).sum()
            x[cell] = 0.5 + (1e-6 / syy) * prior[cell]
    kw = dict(patch_size=8, inverse_depth=True, min_pixels=2)
    assert abs(patch_pearson_oracle(x, weight, prior, **kw).item()) < 1e-6
    assert abs(dl.patch_pearson_depth_loss(x, weight, prior, **kw).item()) < 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_pearson_flat_map(seed):
    """pearson_depth_loss: a prior or an x constant over the valid pixels has no correlation to
    ask for: 0, with a zero gradient (as a flat patch does not count)."""
    depth, weight, prior, mask = make_data(seed, weird=False)
    v = valid_pixels(depth, weight, prior, mask=mask).view(depth.shape)
    flat_prior = prior.clone()
    flat_prior[v] = 2.0
    value, grad = impl_vg("pearson", depth, weight, flat_prior, mask=mask)
    assert pearson_oracle(depth, weight, flat_prior, mask=mask).item() == 0.0
    assert value.item() == 0.0
    assert (grad == 0).all()
    d = depth.clone()
    d[v] = 0.5
    assert pearson_oracle(d, weight, prior, mask=mask).item() == 0.0
    assert dl.pearson_depth_loss(d, weight, prior, mask=mask).item() == 0.0
    assert dl.pearson_depth_loss(depth, weight, prior, mask=mask).item() > 0   # not flat: counts


# ----------------------------------------------------------------------------------------------
# patch_pearson_depth_loss


def cell_index(shape, patch_size, offset):
    H, W = shape
    rows = torch.div(torch.arange(H) - offset[0], patch_size, rounding_mode="floor")
    cols = torch.div(torch.arange(W) - offset[1], patch_size, rounding_mode="floor")
    return rows[:, None], cols[None, :]


def per_cell(shape, patch_size, offset, seed, low, high):
    """A map constant per cell, random in [low, high) per cell."""
    r, c = cell_index(shape, patch_size, offset)
    g = torch.Generator().manual_seed(600 + seed)
    table = low + (high - low) * torch.rand(64, 64, generator=g, dtype=F64)
    return table[r - r.min(), c - c.min()]


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_equals_pearson_for_one_big_patch(seed):
    """patch_size >= both sides, offset (0, 0), min_pixels 2: equals pearson_depth_loss."""
    depth, weight, prior, mask = make_data(seed, SHAPES[seed % 2])
    H, W = depth.shape
    want = dl.pearson_depth_loss(depth, weight, prior, mask=mask).item()
    for p in (max(H, W), max(H, W) + 5):
        got = dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=p, mask=mask,
                                          min_pixels=2).item()
        assert abs(got - want) < 1e-12
    smaller = dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=min(H, W) // 2,
                                          mask=mask, min_pixels=2).item()
    assert abs(smaller - want) > 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("patch_size,offset", [(8, (0, 0)), (16, (5, 7)), (8, (-3, 20))])
def test_patch_per_patch_affine_prior(patch_size, offset, seed):
    """prior -> a_k*prior + b_k per patch (a_k > 0): patch loss unchanged, pearson changes, and
    the transform on a shifted grid changes the patch loss."""
    depth, weight, prior, mask = make_data(seed, (40, 37))
    kw = dict(patch_size=patch_size, offset=offset, mask=mask, min_pixels=4)
    base = dl.patch_pearson_depth_loss(depth, weight, prior, **kw).item()
    a = per_cell(prior.shape, patch_size, offset, seed, 0.2, 3.0)
    b = per_cell(prior.shape, patch_size, offset, seed + 50, -4.0, 4.0)
    got = dl.patch_pearson_depth_loss(depth, weight, a * prior + b, **kw).item()
    assert abs(got - base) < 1e-9
    assert abs(dl.pearson_depth_loss(depth, weight, a * prior + b, mask=mask).item()
               - dl.pearson_depth_loss(depth, weight, prior, mask=mask).item()) > 1e-4
    shifted = (offset[0] + patch_size // 2, offset[1] + patch_size // 2)
    a2 = per_cell(prior.shape, patch_size, shifted, seed, 0.2, 3.0)
    b2 = per_cell(prior.shape, patch_size, shifted, seed + 50, -4.0, 4.0)
    wrong = dl.patch_pearson_depth_loss(depth, weight, a2 * prior + b2, **kw).item()
    assert abs(wrong - base) > 1e-4


@pytest.mark.parametrize("seed", SEEDS)
def test_ssi_patch_equals_ssi_for_one_big_patch(seed):
    """MiDaS's loss with patch_size >= both sides, offset (0, 0), min_pixels 2: the whole
    image's, value and gradient; smaller patches differ."""
    depth, weight, prior, mask = make_data(seed, SHAPES[seed % 2])
    H, W = depth.shape
    want, want_grad = impl_vg("ssi", depth, weight, prior, mask=mask)
    for p in (max(H, W), max(H, W) + 5):
        got, grad = impl_vg("ssi", depth, weight, prior, mask=mask, patch_size=p, min_pixels=2)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-14)
    smaller = impl_vg("ssi", depth, weight, prior, mask=mask, patch_size=min(H, W) // 2,
                      min_pixels=2)[0]
    assert abs(smaller.item() - want.item()) > 1e-6


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("patch_size,offset", [(8, (0, 0)), (16, (5, 7))])
def test_ssi_patch_per_patch_affine_prior(patch_size, offset, seed):
    """prior -> a_k*prior + b_k per patch (a_k > 0): the per-patch MiDaS loss unchanged, the
    whole image's changed; the same maps on a shifted grid change the per-patch loss; a prior
    that is a per-patch affine map of x itself costs 0, its negative costs the most."""
    depth, weight, prior, mask = make_data(seed, (40, 37))
    kw = dict(patch_size=patch_size, offset=offset, mask=mask, min_pixels=4)
    ssi = dl.scale_shift_invariant_depth_loss
    base = ssi(depth, weight, prior, **kw).item()
    a = per_cell(prior.shape, patch_size, offset, seed, 0.2, 3.0)
    b = per_cell(prior.shape, patch_size, offset, seed + 50, -4.0, 4.0)
    assert abs(ssi(depth, weight, a * prior + b, **kw).item() - base) < 1e-9
    assert abs(ssi(depth, weight, a * prior + b, mask=mask).item()
               - ssi(depth, weight, prior, mask=mask).item()) > 1e-4
    shifted = (offset[0] + patch_size // 2, offset[1] + patch_size // 2)
    a2 = per_cell(prior.shape, patch_size, shifted, seed, 0.2, 3.0)
    b2 = per_cell(prior.shape, patch_size, shifted, seed + 50, -4.0, 4.0)
    assert abs(ssi(depth, weight, a2 * prior + b2, **kw).item() - base) > 1e-4
    x = torch.where(torch.isfinite(depth) & (depth > 0), 1 / depth, torch.zeros_like(depth))
    assert ssi(depth, weight, a * x + b, **kw).item() < 1e-12
    assert ssi(depth, weight, -a * x + b, **kw).item() > 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_grid_from_offset(seed):
    """Offset (5, 7), patch 16 on 40x37: x affine in the prior per cell of that grid (rows 0-4,
    5-20, 21-36, 37-39; partial cells their own) gives 0; the (0, 0) grid does not."""
    shape = (40, 37)
    prior = 0.5 + 1.5 * torch.rand(shape, generator=torch.Generator().manual_seed(seed),
                                   dtype=F64)
    a = per_cell(shape, 16, (5, 7), seed, 0.5, 2.0)
    b = per_cell(shape, 16, (5, 7), seed + 9, 0.0, 1.0)
    x = a * prior + b
    weight = torch.ones(shape, dtype=F64)
    kw = dict(patch_size=16, inverse_depth=True, min_pixels=2)
    assert abs(dl.patch_pearson_depth_loss(x, weight, prior, offset=(5, 7), **kw).item()) < 1e-10
    assert dl.patch_pearson_depth_loss(x, weight, prior, offset=(0, 0), **kw).item() > 1e-4
    assert dl.patch_pearson_depth_loss(x, weight, prior, offset=(5, 8), **kw).item() > 1e-6
    assert dl.patch_pearson_depth_loss(x, weight, prior, offset=(4, 7), **kw).item() > 1e-6


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_offset_is_periodic(seed):
    """Offsets differing by multiples of patch_size (negative ones too) cut the same patches:
    the same loss; an offset one pixel off gives another."""
    depth, weight, prior, mask = make_data(seed, (40, 37))
    kw = dict(patch_size=16, mask=mask, min_pixels=4)
    base = dl.patch_pearson_depth_loss(depth, weight, prior, offset=(5, 7), **kw).item()
    for off in [(5 - 16, 7 + 32), (5 + 48, 7 - 64)]:
        got = dl.patch_pearson_depth_loss(depth, weight, prior, offset=off, **kw).item()
        assert abs(got - base) < 1e-12
    assert abs(dl.patch_pearson_depth_loss(depth, weight, prior, offset=(6, 7), **kw).item()
               - base) > 1e-8


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_default_min_pixels(seed):
    """Default min_pixels = max(2, patch_size**2 // 4): with patch 8, a patch with 15 valid
    pixels does not count, one with 16 does (the oracle; min_pixels=15 gives another value)."""
    depth, weight, prior, _ = make_data(seed, (24, 24), weird=False)
    weight = torch.ones_like(weight)
    mask = torch.ones(24, 24, dtype=torch.bool)
    g = torch.Generator().manual_seed(700 + seed)
    for (r, c), keep in [((0, 0), 15), ((1, 2), 16)]:
        cell = torch.zeros(64, dtype=torch.bool)
        cell[torch.randperm(64, generator=g)[:keep]] = True
        mask[8 * r:8 * r + 8, 8 * c:8 * c + 8] = cell.view(8, 8)
    got = dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=8, mask=mask)
    want = patch_pearson_oracle(depth, weight, prior, patch_size=8, mask=mask)
    assert abs(got.item() - want.item()) < 1e-12
    other = patch_pearson_oracle(depth, weight, prior, patch_size=8, mask=mask, min_pixels=15)
    assert abs(other.item() - want.item()) > 1e-6
    assert abs(dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=8, mask=mask,
                                           min_pixels=15).item() - other.item()) < 1e-12
    # patch 3: default max(2, 9 // 4) = 2: the call with min_pixels=2, not the one with 3
    fn = lambda **kw: dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=3, mask=mask,
                                                  **kw).item()
    assert fn() == fn(min_pixels=2)
    assert abs(fn() - fn(min_pixels=3)) > 1e-9


@pytest.mark.parametrize("seed", SEEDS)
def test_patch_flat_patches_do_not_count(seed):
    """A patch whose prior, or whose x, is constant does not count (the mean is over the other
    patches, not with a 1 for it)."""
    depth, weight, prior, _ = make_data(seed, (24, 24), weird=False)
    weight = torch.ones_like(weight)
    prior, depth = prior.clone(), depth.clone()
    prior[8:16, 8:16] = 2.0
    depth[0:8, 16:24] = 0.5
    got = dl.patch_pearson_depth_loss(depth, weight, prior, patch_size=8)
    want = patch_pearson_oracle(depth, weight, prior, patch_size=8)
    assert abs(got.item() - want.item()) < 1e-12
    counted_with_ones = (7 * want.item() + 2) / 9
    assert abs(got.item() - counted_with_ones) > 1e-6
    _, grad = impl_vg("patch", depth, weight, prior, patch_size=8, offset=(0, 0))
    assert (grad[8:16, 8:16] == 0).all() and (grad[0:8, 16:24] == 0).all()
    assert (grad[0:8, 0:8] != 0).all()


# ----------------------------------------------------------------------------------------------
# ranking_pairs


def random_valid(seed, shape=(23, 31), p=0.7):
    return torch.rand(shape, generator=torch.Generator().manual_seed(800 + seed)) < p


@pytest.mark.parametrize("radius", [None, 1, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_pairs_lengths_ranges_validity(seed, radius):
    """int64 1-D flat indices on valid's device, equal lengths <= pairs, both ends valid; with a
    radius: |dy|, |dx| <= radius, second != first, and dropped pairs (length < pairs)."""
    valid = random_valid(seed)
    H, W = valid.shape
    pairs = 2000
    first, second = dl.ranking_pairs(valid, pairs, radius,
                                     generator=torch.Generator().manual_seed(seed))
    for t in (first, second):
        assert t.dtype == torch.int64 and t.dim() == 1 and t.device == valid.device
        assert ((t >= 0) & (t < H * W)).all()
        assert valid.view(-1)[t].all()
    assert len(first) == len(second) <= pairs
    assert len(first) > pairs // 3
    dy = second // W - first // W
    dx = second % W - first % W
    if radius is None:
        assert dy.abs().max() > 3 and dx.abs().max() > 3    # the bound below is not vacuous
    else:
        assert len(first) < pairs
        assert (dy.abs() <= radius).all() and (dx.abs() <= radius).all()
        assert (first != second).all()


def test_ranking_pairs_uniform_draws():
    """Without radius, first and second are uniform over the valid pixels (each of 10 valid
    pixels drawn 2000 +- 15% times out of 20000)."""
    valid = torch.zeros(23, 31, dtype=torch.bool)
    idx = torch.randperm(23 * 31, generator=torch.Generator().manual_seed(3))[:10]
    valid.view(-1)[idx] = True
    first, second = dl.ranking_pairs(valid, 20000, None,
                                     generator=torch.Generator().manual_seed(4))
    for t in (first, second):
        counts = torch.bincount(t, minlength=23 * 31)
        assert set(counts.nonzero().flatten().tolist()) == set(idx.tolist())
        expected = len(t) / 10
        assert len(t) > 15000
        assert ((counts[idx] - expected).abs() < 0.15 * expected).all()


def test_ranking_pairs_radius_offsets_cover_the_square():
    """radius 2 on an all-valid image: the offsets are every (dy, dx) in [-2, 2]^2 but (0, 0),
    about equally often."""
    H, W = 23, 31
    valid = torch.ones(H, W, dtype=torch.bool)
    first, second = dl.ranking_pairs(valid, 6000, 2, generator=torch.Generator().manual_seed(9))
    dy = (second // W - first // W).tolist()
    dx = (second % W - first % W).tolist()
    offsets = list(zip(dy, dx))
    square = {(a, b) for a in range(-2, 3) for b in range(-2, 3)} - {(0, 0)}
    assert set(offsets) == square
    r, c = first // W, first % W
    inner = ((r >= 2) & (r < H - 2) & (c >= 2) & (c < W - 2)).tolist()
    counts = {}
    for o, i in zip(offsets, inner):
        if i:
            counts[o] = counts.get(o, 0) + 1
    mean = sum(counts.values()) / 24
    assert mean > 100
    assert all(abs(n - mean) < 0.4 * mean for n in counts.values())


@pytest.mark.parametrize("radius", [None, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_pairs_deterministic(seed, radius):
    """The same generator seed gives the same pairs, another seed other pairs; generator None
    draws from torch's default generator (same global seed, same pairs)."""
    valid = random_valid(seed)
    a = dl.ranking_pairs(valid, 500, radius, generator=torch.Generator().manual_seed(seed))
    b = dl.ranking_pairs(valid, 500, radius, generator=torch.Generator().manual_seed(seed))
    c = dl.ranking_pairs(valid, 500, radius, generator=torch.Generator().manual_seed(seed + 10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (len(a[0]) == len(c[0]) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        d = dl.ranking_pairs(valid, 500, radius)
        torch.manual_seed(seed)
        e = dl.ranking_pairs(valid, 500, radius)
        f = dl.ranking_pairs(valid, 500, radius)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])
    assert not (len(d[0]) == len(f[0]) and torch.equal(d[0], f[0]) and torch.equal(d[1], f[1]))


def test_ranking_pairs_few_valid():
    """No valid pixel: two empty int64 tensors; one valid pixel with a radius: empty (second
    must differ from first); one without: only that pixel."""
    valid = torch.zeros(9, 11, dtype=torch.bool)
    for radius in (None, 2):
        first, second = dl.ranking_pairs(valid, 100, radius,
                                         generator=torch.Generator().manual_seed(0))
        assert first.dtype == second.dtype == torch.int64
        assert len(first) == len(second) == 0
    valid[4, 5] = True
    first, second = dl.ranking_pairs(valid, 100, 2, generator=torch.Generator().manual_seed(0))
    assert len(first) == len(second) == 0
    first, second = dl.ranking_pairs(valid, 100, None, generator=torch.Generator().manual_seed(0))
    assert len(first) == len(second) and ((first == 4 * 11 + 5).all() and
                                          (second == 4 * 11 + 5).all())


# ----------------------------------------------------------------------------------------------
# ranking_depth_loss


@pytest.mark.parametrize("radius", [None, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_invariant_under_increasing_prior_transforms(seed, radius):
    """Strictly increasing transforms of the prior (prior**3 + 5, 2*prior - 1, exp, atan) give
    exactly the same value and gradient (same generator seed); non-monotone ones do not."""
    shape = SHAPES[seed % 2]
    depth, weight, _, mask = make_data(seed, shape)
    prior = distinct_prior(seed, shape)
    kw = dict(mask=mask, pairs=400, radius=radius, seed=seed)
    value, grad = impl_vg("ranking", depth, weight, prior, **kw)
    assert value.item() > 0
    for t in (prior ** 3 + 5, 2 * prior - 1, torch.exp(prior), torch.atan(prior)):
        v2, g2 = impl_vg("ranking", depth, weight, t, **kw)
        assert torch.equal(v2, value) and torch.equal(g2, grad)
    for t in (-prior, (prior - 1.2) ** 2):
        v2, _ = impl_vg("ranking", depth, weight, t, **kw)
        assert abs(v2.item() - value.item()) > 1e-6


@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_zero_when_ordered_positive_when_reversed(seed, inverse_depth):
    """x strictly increasing in the prior with gaps > margin * mean(x): exactly 0 with zero
    gradient; reversed order: > 0; a margin above the gaps: > 0."""
    shape = SHAPES[seed % 2]
    prior = distinct_prior(seed, shape)
    _, weight, _, mask = make_data(seed, shape, weird=False)
    for x, positive in [(3 * prior + 1, False), (torch.exp(prior), False),
                        (10 - 3 * prior, True)]:
        depth = x if inverse_depth else 1 / x
        kw = dict(mask=mask, inverse_depth=inverse_depth, radius=None if seed else 2, seed=seed)
        value, grad = impl_vg("ranking", depth, weight, prior, **kw)
        if positive:
            assert value.item() > 1e-3
        else:
            assert value.item() == 0.0 and (grad == 0).all()
            assert impl_vg("ranking", depth, weight, prior, margin=0.05, **kw)[0].item() > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_ties_are_left_out(seed):
    """Pairs with equal priors do not count (a quantised prior with many ties: the oracle; the
    mean with ties counted as margin differs)."""
    depth, weight, prior, mask = make_data(seed, weird=False)
    prior = torch.round(prior * 4) / 4
    kw = dict(mask=mask, pairs=400, seed=seed, margin=0.05)
    value, grad = impl_vg("ranking", depth, weight, prior, **kw)
    want, want_grad = oracle_vg("ranking", depth, weight, prior, **kw)
    assert_value_close(value, want, F64)
    assert_grad_close(grad, want_grad, 1e-9)
    H, W = depth.shape
    v = valid_pixels(depth, weight, prior, mask=mask)
    first, second = dl.ranking_pairs(v.view(H, W), 400, None,
                                     generator=torch.Generator().manual_seed(seed))
    p = prior.reshape(-1)
    ties = (p[first] == p[second]).sum().item()
    assert ties > 20
    n = len(first) - ties
    with_ties = (want.item() * n + 0.05 * ties) / len(first)
    assert abs(value.item() - with_ties) > 1e-6


# ----------------------------------------------------------------------------------------------
# scale_shift_invariant_depth_loss


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", SEEDS)
def test_ssi_affine_prior_and_affine_x(seed, dtype):
    """prior -> a*prior + b and x -> a*x + b with a > 0: unchanged; x = a*prior + b exactly: 0
    for a > 0, large for a < 0 (the sign is kept: an inverted render costs); a non-affine prior
    transform changes the loss."""
    depth, weight, prior, mask = make_data(seed, dtype=dtype)
    tol = 1e-10 if dtype == F64 else 1e-5
    fn = dl.scale_shift_invariant_depth_loss
    base = fn(depth, weight, prior, mask=mask).item()
    assert base > 1e-3
    for a, b in [(0.25, -2.0), (3.7, 11.0)]:
        assert abs(fn(depth, weight, a * prior + b, mask=mask).item() - base) < tol * 10
    assert abs(fn(depth, weight, -prior, mask=mask).item() - base) > 0.1
    x = torch.where(torch.isfinite(depth) & (depth != 0), 1 / depth, depth)
    for a, b in [(3.0, 0.5), (0.2, -4.0)]:
        moved = fn(a * x + b, weight, prior, mask=mask, inverse_depth=True).item()
        assert abs(moved - fn(x, weight, prior, mask=mask, inverse_depth=True).item()) < tol * 10
    curved = torch.where(torch.isfinite(prior), torch.exp(2 * prior), prior)
    assert abs(fn(depth, weight, curved, mask=mask).item() - base) > 1e-4
    d64, w64, p64, _ = make_data(seed, weird=False)
    p64 = 0.5 + 1.5 * torch.rand(p64.shape, generator=torch.Generator().manual_seed(seed),
                                 dtype=F64)
    for a, b in [(0.4, 0.1), (-0.5, 1.5)]:
        x = a * p64 + b
        assert (x > 0).all()
        out = fn((1 / x).to(dtype), w64.to(dtype), p64.to(dtype), mask=mask).item()
        inverse = fn(x.to(dtype), w64.to(dtype), p64.to(dtype), mask=mask,
                     inverse_depth=True).item()
        if a > 0:
            assert abs(out) < tol and abs(inverse) < tol
        else:
            assert out > 1 and inverse > 1


@pytest.mark.parametrize("seed", SEEDS)
def test_ssi_gradient_is_blind_to_the_renders_scale_and_shift(seed):
    """The normalization's gradient is kept (MiDaS's): the gradient g w.r.t. x (inverse_depth)
    has no component along a shift or a scaling of x (sum g = 0 and sum g x = 0 over the valid
    pixels), where the loss with its median and deviation detached has."""
    x, weight, prior, mask = make_data(seed, SHAPES[seed % 2], inverse_depth=True, weird=False)
    _, grad = impl_vg("ssi", x, weight, prior, mask=mask, inverse_depth=True)
    v = valid_pixels(x, weight, prior, inverse_depth=True, mask=mask)
    g, xv = grad.reshape(-1)[v], x.reshape(-1)[v]
    scale = g.abs().sum() * xv.abs().max()
    assert abs(g.sum().item()) < 1e-12 * scale and abs((g * xv).sum().item()) < 1e-12 * scale
    _, detached = oracle_vg("ssi", x, weight, prior, mask=mask, inverse_depth=True,
                            detach_norm=True)
    d = detached.reshape(-1)[v]
    d_scale = d.abs().sum() * xv.abs().max()
    assert max(abs(d.sum().item()), abs((d * xv).sum().item())) > 1e-8 * d_scale


@pytest.mark.parametrize("seed", SEEDS)
def test_ssi_flat_maps(seed):
    """A prior constant on the valid pixels: 0 (nothing to compare with); an x constant there: 1
    (the normalized prior's mean deviation), both with a zero gradient."""
    depth, weight, prior, mask = make_data(seed)
    v = valid_pixels(depth, weight, prior, mask=mask).view(depth.shape)
    flat_prior = prior.clone()
    flat_prior[v] = 2.0
    value, grad = impl_vg("ssi", depth, weight, flat_prior, mask=mask)
    assert value.item() == 0.0 and (grad == 0).all()
    flat_depth = depth.clone()
    flat_depth[v] = 0.5
    value, grad = impl_vg("ssi", flat_depth, weight, prior, mask=mask)
    assert abs(value.item() - 1.0) < 1e-12 and (grad == 0).all()
    assert abs(impl_vg("ssi", depth, weight, prior, mask=mask)[0].item() - 1.0) > 1e-3


# ----------------------------------------------------------------------------------------------
# No host synchronisation


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("inverse_depth", [False, True])
@pytest.mark.parametrize("dtype", [F32, F16])
@pytest.mark.parametrize("name, radius", [(n, None) for n in NAMES] + [("ranking", 2)])
def test_runs_on_the_meta_device(name, radius, dtype, inverse_depth, with_mask, batch):
    """Value and gradient on meta tensors (shapes, no data): any read of a device value by the
    host (a count, a bool, a boolean index, nonzero) raises there, so a loss that passes never
    makes a GPU training step wait. The result is 0-dim, its gradient depth's shape and dtype."""
    H, W = 19, 27
    depth = torch.empty(*batch, H, W, device="meta", dtype=dtype, requires_grad=True)
    # weight (as prior and mask) may live on another device: it is moved to depth's
    weight = torch.rand(*batch, 1, H, W, dtype=dtype) if with_mask else \
        torch.empty(*batch, 1, H, W, device="meta", dtype=dtype)
    prior = torch.empty(*batch, H, W, device="meta", dtype=F32)
    mask = torch.empty(*batch, H, W, device="meta", dtype=torch.bool) if with_mask else None
    kw = {k: v for k, v in EXTRA[name].items() if k != "seed"}
    if name == "ranking":
        kw.update(radius=radius, generator=torch.Generator().manual_seed(3))
    fn = {"pearson": dl.pearson_depth_loss, "patch": dl.patch_pearson_depth_loss,
          "ranking": dl.ranking_depth_loss, "ssi": dl.scale_shift_invariant_depth_loss,
          "ssi_patch": dl.scale_shift_invariant_depth_loss}[name]
    out = fn(depth, weight, prior, inverse_depth=inverse_depth, mask=mask, **kw)
    assert out.device.type == "meta" and out.dim() == 0
    (g,) = torch.autograd.grad(out, depth)
    assert g.shape == depth.shape and g.dtype == dtype


def test_meta_device_catches_a_host_read():
    """Power of the meta test: the reads the losses used to make (int of a count, bool of a
    condition, a boolean index) do raise on the meta device."""
    t = torch.empty(5, device="meta")
    for read in (lambda: int(t.sum()), lambda: bool((t > 0).any()), lambda: t[t > 0],
                 lambda: t.nonzero()):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("name", NAMES)
def test_compiles_as_one_graph(name):
    """torch.compile(fullgraph=True) takes each loss whole (a read of a device value by the host
    would break the graph and fail there), and the compiled loss gives the eager value and
    gradient (ranking: without a generator, which dynamo cannot trace; the global seed set
    before each call draws the same pairs)."""
    dynamo = pytest.importorskip("torch._dynamo")
    depth, weight, prior, mask = make_batch(3, 2, (20, 26), F32)
    fn = {"pearson": dl.pearson_depth_loss, "patch": dl.patch_pearson_depth_loss,
          "ranking": dl.ranking_depth_loss, "ssi": dl.scale_shift_invariant_depth_loss,
          "ssi_patch": dl.scale_shift_invariant_depth_loss}[name]
    kw = {"patch": {"patch_size": 8, "offset": (3, 5)}, "ranking": {"pairs": 200, "radius": 3},
          "ssi_patch": {"patch_size": 8, "offset": (3, 5)}}.get(name, {})
    dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (compiled, fn):
        d = depth.clone().requires_grad_(True)
        torch.manual_seed(11)
        out = f(d, weight, prior, mask=mask, **kw)
        results.append((out.detach(), torch.autograd.grad(out, d)[0]))
    (cv, cg), (ev, eg) = results
    assert ev.item() > 0
    torch.testing.assert_close(cv, ev, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(cg, eg, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("radius", [None, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_ranking_pairs_as_the_loss_draws_them(seed, radius):
    """ranking_pairs gives the kept pairs of the loss's own fixed-size draw: the loss computed
    from them by hand (float64) equals the loss, and a different seed gives other pairs."""
    depth, weight, prior, mask = make_data(seed, weird=True)
    H, W = depth.shape
    v = valid_pixels(depth, weight, prior, mask=mask)
    gen = lambda s: torch.Generator().manual_seed(s)
    first, second = dl.ranking_pairs(v.view(H, W), 500, radius, generator=gen(seed))
    other = dl.ranking_pairs(v.view(H, W), 500, radius, generator=gen(seed + 1))
    assert not (first.shape == other[0].shape and torch.equal(first, other[0])
                and torch.equal(second, other[1]))
    x = 1 / depth.reshape(-1)
    x = x / x[v].mean()
    y = prior.reshape(-1)
    s = torch.sign(y[first] - y[second])
    want = torch.relu(1e-4 - s * (x[first] - x[second]))[s != 0].mean()
    got = dl.ranking_depth_loss(depth, weight, prior, 500, radius, mask=mask, generator=gen(seed))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name):
    """On CUDA tensors: the CPU value and gradient (ranking: pairs drawn on the CPU, on the
    GPU)."""
    depth, weight, prior, mask = make_data(0, weird=True)
    value, grad = impl_vg(name, depth, weight, prior, mask=mask)
    cv, cg = impl_vg(name, depth.cuda(), weight.cuda(), prior.cuda(), mask=mask.cuda())
    assert cv.device.type == "cuda" and cg.device.type == "cuda"
    assert abs(cv.item() - value.item()) < 1e-10
    assert_grad_close(cg.cpu(), grad, 1e-9)
    if name == "ranking":
        v = valid_pixels(depth, weight, prior, mask=mask).view(depth.shape).cuda()
        first, second = dl.ranking_pairs(v, 100, 2, generator=torch.Generator().manual_seed(0))
        assert first.device.type == "cuda" and second.device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_no_synchronisation(name):
    """On CUDA tensors (a batch of two), value and gradient with torch's sync debug mode at
    "error": no loss makes the host wait for the GPU (the meta test's claim, on the
    hardware)."""
    depth, weight, prior, mask = (t.cuda() for t in make_batch(1, 2, (60, 80), F32))
    depth.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        if name == "ranking":
            out = dl.ranking_depth_loss(depth, weight, prior, radius=4, mask=mask, generator=gen)
        else:
            out = call(name, depth, weight, prior, mask=mask)
        (g,) = torch.autograd.grad(out, depth)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(g).all() and out.item() > 0
