"""Feature channels and the median depth on CUDA against the CPU backend (`pytest -m cuda`).

The CUDA backend renders the feature map in chunks of channels (4, 8 or 16 per block) with a
second walk over each tile's list, and its backward per chunk too; these tests cover channel
counts around and across the chunk sizes. Pixels and Gaussians within rounding of a threshold
(scenes.ambiguous, and T near 0.5 for the median) are left out, as in tests/test_cuda.py.
Tolerances: forward 3e-5 times a map's scale (cuda_target.FORWARD_ATOL); gradients rtol 1e-4,
atol 1e-4 max|cpu|.
"""
import pytest
import torch

import scenes
from cuda_target import active, agree_in_bulk, forward_atol, gradients_agree_in_bulk, is_emulated
from diff_gaussian_rasterization_depth import GaussianRasterizer
from test_cpu_backend import compare_gradients
from test_cuda import TARGETS, garden_for, settings_on

pytestmark = pytest.mark.cuda

CHANNELS = (1, 3, 4, 5, 8, 9, 16, 33, 64)
OUTPUTS = ("color", "depth", "weight", "feature_map", "median")


def run(scene, F, device, upstream, inverse_depth=False):
    """Outputs and every input's gradient (features included), for one loss per output and
    for all outputs together, on the CPU backend or a CUDA target."""
    with active(device):
        return _run(scene, F, device, upstream, inverse_depth)


def _run(scene, F, device, upstream, inverse_depth):
    leaves = {k: (None if v is None else v.detach().to(device).requires_grad_())
              for k, v in scene.inputs.items()}
    Fd = F.detach().to(device).requires_grad_()
    out = GaussianRasterizer(settings_on(scene.settings, device))(
        **leaves, features=Fd, median_depth=True, inverse_depth=inverse_depth)
    color, radii, depth, weight, feature_map, median = out
    maps = dict(zip(OUTPUTS, (color, depth, weight, feature_map, median)))
    names = [n for n, v in leaves.items() if v is not None]
    tensors = [leaves[n] for n in names] + [Fd]
    grads = {}
    for mode in ("depth", "feature_map", "median", "all"):
        used = list(maps) if mode == "all" else [mode]
        g = torch.autograd.grad([maps[k] for k in used], tensors,
                                [upstream[k].to(device) for k in used], retain_graph=True,
                                allow_unused=True)
        grads[mode] = {n: (torch.zeros_like(t) if x is None else x).cpu()
                       for n, t, x in zip(names + ["features"], tensors, g)}
    return {k: v.detach().cpu() for k, v in maps.items()}, radii.cpu(), grads


def median_ambiguous(scene, internals):
    blend = internals[2]
    return (blend["blended"] & ((blend["T_after"] - 0.5).abs() <= 1e-4)).any(dim=0)


def mismatches_with_cpu(scene, C, seed, target, inverse_depth=False):
    """What differs between the CPU backend and `target` on `scene` with C random feature
    channels and the median (and the depth channel of 1/z with `inverse_depth`): outputs
    (cuda_target.forward_atol: 3e-5 times each map's scale), radii, and every gradient of a loss
    on each map and on all of them."""
    internals = scenes.reference_internals(scene)
    pixels, gaussians = scenes.ambiguous(scene, internals=internals)
    pixels = pixels | median_ambiguous(scene, internals)
    H, W = pixels.shape
    gen = torch.Generator().manual_seed(seed)
    keep = (~pixels).float()
    F = 2 * torch.rand(scene.P, C, generator=gen) - 1
    up = {"color": torch.randn(3, H, W, generator=gen) * keep,
          "depth": torch.randn(H, W, generator=gen) * keep,
          "weight": torch.randn(H, W, generator=gen) * keep,
          "feature_map": torch.randn(C, H, W, generator=gen) * keep,
          "median": torch.randn(H, W, generator=gen) * keep}
    out0, r0, g0 = run(scene, F, "cpu", up, inverse_depth)
    out1, r1, g1 = run(scene, F, target, up, inverse_depth)
    failures = []
    for name in ("color", "depth", "weight", "feature_map", "median"):
        a, b = out1[name][..., ~pixels], out0[name][..., ~pixels]
        err = (a - b).abs().max().item() if a.numel() else 0.0
        if not err <= forward_atol(b):
            failures.append(f"seed {seed} {name}: max error {err:.3g}")
    if ((r1 != r0) & ~gaussians).any():
        failures.append(f"seed {seed}: radii differ")
    return failures + compare_gradients(g1, [g0], torch.float32, f"seed {seed}")


def features_scene(C, seed):
    return scenes.make_scene(14000 + 10 * C + seed, P=120, height=40 + seed, width=64 - seed,
                             sh_degree=seed, antialiasing=seed == 2)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("C", CHANNELS)
def test_features_and_median_match_cpu(C, target):
    failures = []
    for seed in range(3):
        failures += mismatches_with_cpu(features_scene(C, seed), C, seed, target)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("C", (3, 32))
def test_garden_features_match_cpu(C, target):
    """The 112k garden frame at 648x420 (emulated: its central crop): feature maps and their
    gradients agree in bulk."""
    scene = garden_for(target)
    inputs = scene.rasterizer_inputs()
    s = scenes.Scene(inputs, scene.raster_settings())
    H, W = s.settings.image_height, s.settings.image_width
    gen = torch.Generator().manual_seed(C)
    F = torch.rand(s.P, C, generator=gen)
    up = {"color": torch.randn(3, H, W, generator=gen), "depth": torch.randn(H, W, generator=gen),
          "weight": torch.randn(H, W, generator=gen),
          "feature_map": torch.randn(C, H, W, generator=gen),
          "median": torch.randn(H, W, generator=gen)}
    out0, _, g0 = run(s, F, "cpu", up)
    out1, _, g1 = run(s, F, target, up)
    assert agree_in_bulk(out1["feature_map"], out0["feature_map"])
    assert agree_in_bulk(out1["median"], out0["median"])
    for mode, grads in g0.items():
        for n, ref in grads.items():
            assert gradients_agree_in_bulk(g1[mode][n], ref, H, W), (mode, n)


@pytest.mark.parametrize("device", TARGETS)  # `device`: conftest runs the whole test on it
def test_features_repeatable_and_no_memory_growth(device):
    DEV, emulated = device, is_emulated(device)
    # Emulated: repeatability only, smaller (the host has no device memory to watch).
    H, W, P, steps = (47, 71, 200, 2) if emulated else (479, 641, 3000, 50)
    scene = scenes.make_scene(14500, P=P, height=H, width=W, sh_degree=3)
    settings = settings_on(scene.settings, DEV)
    leaves = {k: (None if v is None else v.to(DEV).requires_grad_())
              for k, v in scene.inputs.items()}
    F = torch.rand(scene.P, 40, generator=torch.Generator().manual_seed(0)).to(DEV)
    F.requires_grad_()

    def drop_grads():
        for v in list(leaves.values()) + [F]:
            if v is not None:
                v.grad = None

    def step():
        drop_grads()
        out = GaussianRasterizer(settings)(**leaves, features=F, median_depth=True)
        (out[4].square().sum() + out[5].sum() + out[0].sum()).backward()
        return out[4].detach(), out[5].detach(), F.grad.clone()

    # Host copies only, and no gradients alive, at both readings (as in test_cuda).
    first = [t.cpu() for t in step()]
    drop_grads()
    if not emulated:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
    for _ in range(steps - 1):
        step()
    again = [t.cpu() for t in step()]
    drop_grads()
    if not emulated:
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= baseline + (1 << 20)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    torch.testing.assert_close(again[2], first[2], rtol=1e-4, atol=1e-5 * first[2].abs().max())
