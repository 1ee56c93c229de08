"""Mixed precision: float16 and bfloat16 inputs of the rasterizer computed in float32 (outputs and
gradients those of the float32 call on the same values, each gradient in its input's dtype), a
torch.autocast region around the call (an MLP's colours or features), and the common call's
checks untouched."""
import contextlib

import pytest
import torch

import scenes
from cuda_target import REAL_CUDA, cuda_targets, is_emulated
from robust_helpers import settings_on
import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, _precision
from diff_gaussian_rasterization_depth.gsplat import rasterization

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

LOW = (torch.float16, torch.bfloat16)
SEEDS = (0, 1)


def scene_inputs(seed, variant):
    """A random scene's inputs and settings: SH ("sh"), precomputed colours and covariances
    ("precomp"), or SH split as dc and the rest ("dc"), with 5 feature channels, rounded to
    bfloat16's values (which float16 holds too, in this range) so that every dtype below sees
    the same numbers."""
    scene = scenes.make_scene(seed, P=60, height=23, width=31, sh_degree=1,
                              precomp_colors=variant == "precomp",
                              precomp_cov=variant == "precomp", dc=variant == "dc")
    gen = torch.Generator().manual_seed(100 + seed)
    inputs = {k: v for k, v in scene.inputs.items() if v is not None}
    inputs["features"] = torch.rand(60, 5, generator=gen) - 0.5
    inputs = {k: v.detach().to(torch.bfloat16).float() for k, v in inputs.items()}
    return inputs, scene.settings


def render(settings, inputs, device="cpu", **options):
    """The maps (color, depth, weight, feature map, median) and radii of one call."""
    out = GaussianRasterizer(settings_on(settings, device))(median_depth=True, **inputs,
                                                             **options)
    return out


def loss_of(outputs, seed):
    """A loss on every differentiable map, with fixed random weights."""
    gen = torch.Generator().manual_seed(7 + seed)
    maps = [outputs[k] for k in (0, 2, 3, 4, 5)]
    return sum((m * torch.rand(m.shape, generator=gen).to(m.device)).sum() for m in maps)


def outputs_and_grads(settings, inputs, seed, device="cpu"):
    leaves = {k: v.detach().to(device).requires_grad_() for k, v in inputs.items()}
    out = render(settings, leaves, device)
    loss_of(out, seed).backward()
    return out, {k: v.grad for k, v in leaves.items()}


def check_same_as_float32(settings, inputs, low, seed, device="cpu"):
    """Inputs named in `low` (name -> dtype) given in that dtype: the outputs are the float32
    call's, bit for bit and in float32, and each gradient is the float32 one in its input's
    dtype."""
    out32, grads32 = outputs_and_grads(settings, inputs, seed, device)
    mixed = {k: v.to(low[k]) if k in low else v for k, v in inputs.items()}
    out, grads = outputs_and_grads(settings, mixed, seed, device)
    assert len(out) == len(out32)
    for a, b in zip(out, out32):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for k, g in grads.items():
        assert g.dtype == mixed[k].dtype, k
        assert torch.equal(g, grads32[k].to(g.dtype)), k
    assert any(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", ["sh", "precomp", "dc"])
@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
def test_each_input_in_low_precision_matches_float32(dtype, variant, seed):
    """Every input in turn in float16 / bfloat16, the others float32: the float32 call's maps,
    and its gradients in that input's dtype."""
    inputs, settings = scene_inputs(seed, variant)
    for name in inputs:
        check_same_as_float32(settings, inputs, {name: dtype}, seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", ["sh", "precomp"])
def test_every_input_in_low_precision_matches_float32(variant, seed):
    """All inputs at once in low precision (float16 and bfloat16 mixed): the float32 call."""
    inputs, settings = scene_inputs(seed, variant)
    low = {k: LOW[i % 2] for i, k in enumerate(inputs)}
    check_same_as_float32(settings, inputs, low, seed)


@pytest.mark.parametrize("device", cuda_targets(("asc",)))
def test_low_precision_on_the_cuda_backend(device):
    """The same on the CUDA backend (the emulation in a fixed thread order; a GPU under
    use_deterministic_algorithms, whose ordered backward gives the same bits each call)."""
    inputs, settings = scene_inputs(3, "sh")
    deterministic = contextlib.nullcontext() if is_emulated(device) else \
        deterministic_algorithms()
    with deterministic:
        check_same_as_float32(settings, inputs, {"shs": torch.float16,
                                                 "features": torch.bfloat16,
                                                 "opacities": torch.float16}, 3, device)


@contextlib.contextmanager
def deterministic_algorithms():
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("seed", SEEDS)
def test_float64_means_take_low_precision_inputs_in_float64(seed):
    """With float64 Gaussians (the CPU), a float16 input is computed in float64."""
    inputs, settings = scene_inputs(seed, "sh")
    inputs64 = {k: v.double() for k, v in inputs.items()}
    check_same_as_float32(settings, inputs64, {"features": torch.float16}, seed)


def test_float32_and_float64_still_do_not_mix():
    """Only float16 and bfloat16 are converted: a float64 input beside float32 means is still
    refused, naming it."""
    inputs, settings = scene_inputs(0, "sh")
    inputs["shs"] = inputs["shs"].double()
    with pytest.raises(TypeError, match="shs"):
        render(settings, inputs)


class ColourMLP(torch.nn.Module):
    """Per-Gaussian embeddings to colours and features, as Scaffold-GS-like models make them."""

    def __init__(self, P, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embedding = torch.nn.Parameter(torch.randn(P, 8, generator=gen))
        self.layer = torch.nn.Linear(8, 3 + 5)
        with torch.no_grad():
            self.layer.weight.copy_(torch.randn(8, 8, generator=gen) * 0.3)
            self.layer.bias.copy_(torch.randn(8, generator=gen) * 0.1)

    def forward(self):
        out = self.layer(self.embedding)
        return torch.sigmoid(out[:, :3]), out[:, 3:]


@pytest.mark.parametrize("seed", SEEDS)
def test_autocast_region_around_the_call(seed):
    """Inside torch.autocast (CPU, bfloat16) an MLP's colours and features come out in bfloat16:
    the call takes them, gives float32 maps equal to the call on their float32 values, and the
    MLP's parameters get the gradients of autocast's own backward through that call."""
    inputs, settings = scene_inputs(seed, "precomp")
    del inputs["colors_precomp"], inputs["features"]
    mlp = ColourMLP(60, seed)

    def step(cast_first):
        mlp.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            colours, features = mlp()
            assert colours.dtype == features.dtype == torch.bfloat16  # autocast is on
            if cast_first:  # what a user had to write before: the casts by hand
                colours, features = colours.float(), features.float()
            out = render(settings, dict(inputs, colors_precomp=colours, features=features))
        loss_of(out, seed).backward()
        return out, [p.grad.clone() for p in mlp.parameters()]

    out, grads = step(cast_first=False)
    out_cast, grads_cast = step(cast_first=True)
    for a, b in zip(out, out_cast):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert out[0].dtype == torch.float32
    for a, b in zip(grads, grads_cast):
        assert torch.equal(a, b) and a.abs().sum() > 0


def test_common_call_pays_nothing(monkeypatch):
    """A float32 call never looks for low-precision inputs (the C++ check takes it first), and a
    low-precision one, once converted, goes through the C++ check rather than the Python
    checks."""
    inputs, settings = scene_inputs(0, "sh")

    def refuse(*args):
        raise AssertionError("looked for low-precision inputs")

    monkeypatch.setattr(_precision, "has_low_precision", refuse)
    expected = render(settings, inputs)
    monkeypatch.undo()

    def no_python_checks(*args, **kwargs):
        raise AssertionError("the Python checks ran")

    monkeypatch.setattr(dgrd, "check_gaussians", no_python_checks)
    half = dict(inputs, shs=inputs["shs"].half(), features=inputs["features"].bfloat16())
    for a, b in zip(render(settings, half), expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", LOW, ids=["f16", "bf16"])
def test_mark_visible_takes_low_precision(dtype):
    """markVisible on float16 / bfloat16 positions: the mask of their float32 values."""
    inputs, settings = scene_inputs(2, "sh")
    rasterizer = GaussianRasterizer(settings)
    positions = inputs["means3D"].to(dtype)
    expected = rasterizer.markVisible(positions.float())
    assert not expected.all() and expected.any()
    assert torch.equal(rasterizer.markVisible(positions), expected)


def gsplat_call(inputs, settings, colors, **kwargs):
    W, H = settings.image_width, settings.image_height
    fx, fy = W / (2 * settings.tanfovx), H / (2 * settings.tanfovy)
    Ks = torch.tensor([[fx, 0, W / 2], [0, fy, H / 2], [0, 0, 1]])[None]
    return rasterization(inputs["means3D"], inputs["rotations"], inputs["scales"],
                         inputs["opacities"][:, 0], colors, settings.viewmatrix.reshape(4, 4).T[None],
                         Ks, W, H, render_mode="RGB+ED", packed=False, **kwargs)


@pytest.mark.parametrize("seed", SEEDS)
def test_gsplat_api_in_an_autocast_region(seed):
    """gsplat's call on the package inside torch.autocast, with bfloat16 colours: the render,
    the projected means and depths of the float32 call outside it (whose projection autocast
    would otherwise round to bfloat16), and the colours' gradient in bfloat16."""
    inputs, settings = scene_inputs(seed, "sh")
    colors = inputs["features"][:, :3].contiguous()
    leaf32 = colors.clone().requires_grad_()
    image32, alpha32, meta32 = gsplat_call(inputs, settings, leaf32)
    (image32 * 1.5).sum().backward()
    leaf = colors.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image, alpha, meta = gsplat_call(inputs, settings, leaf)
    (image * 1.5).sum().backward()
    assert image.dtype == torch.float32 and torch.equal(image, image32)
    assert torch.equal(alpha, alpha32)
    for key in ("means2d", "depths", "radii"):
        assert torch.equal(meta[key], meta32[key]), key
    assert leaf.grad.dtype == torch.bfloat16
    assert torch.equal(leaf.grad, leaf32.grad.to(torch.bfloat16))


@pytest.mark.cuda
@pytest.mark.skipif(not REAL_CUDA, reason="needs a CUDA GPU and the CUDA backend")
def test_autocast_region_on_the_gpu():
    """On a GPU, torch.autocast("cuda") (float16): an MLP's colours and features rendered as in
    the CPU test, the maps equal to the call on their float32 values."""
    inputs, settings = scene_inputs(5, "precomp")
    del inputs["colors_precomp"], inputs["features"]
    inputs = {k: v.cuda() for k, v in inputs.items()}
    mlp = ColourMLP(60, 5).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        colours, features = mlp()
        assert colours.dtype == torch.float16
        out = render(settings, dict(inputs, colors_precomp=colours, features=features),
                     "cuda")
        expected = render(settings, dict(inputs, colors_precomp=colours.float(),
                                         features=features.float()), "cuda")
    for a, b in zip(out, expected):
        assert a.dtype == b.dtype and torch.equal(a, b)
    loss_of(out, 5).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in mlp.parameters())


@pytest.mark.parametrize("fork", ["feature_3dgs", "gaussian_grouping", "langsplat"])
def test_semantic_forks_take_low_precision_values(fork):
    """A semantic fork's per-Gaussian values in float16 (Feature 3DGS's semantic_feature,
    Gaussian Grouping's sh_objs, LangSplat's language features): the maps of their float32
    values, and their gradient in float16."""
    from test_semantic_forks import fork_call, fork_values, named_maps
    scene = scenes.make_scene(41, P=40, height=18, width=21)
    values = fork_values(fork, scene.P, 41, torch.float16, channels=6)
    results = []
    for given in (values.float(), values):
        leaf = given.detach().clone().requires_grad_()
        maps = named_maps(fork, fork_call(fork, scene, scene.inputs, leaf))
        sum((m * (k + 1.5)).sum() for k, m in enumerate(maps.values())).backward()
        results.append((maps, leaf.grad))
    (maps32, grad32), (maps16, grad16) = results
    for name in maps32:
        assert torch.equal(maps16[name], maps32[name]), name
    assert grad16.dtype == torch.float16 and torch.equal(grad16, grad32.half())
