"""Camera gradients (the matrices' and the fields of view's) of the CUDA backend against the CPU
backend (run with `pytest -m cuda`).

The per-Gaussian shares come from the same shared preprocess backward; the CUDA backend sums
them per block (warp shuffles, then the warps in order) and the blocks in a second pass, the CPU
backend per thread in double. The splat gradients they start from are summed with atomics on the
GPU, so the two agree to float rounding: rtol 1e-4, atol 1e-4 max|cpu|, as in test_cuda.py.
"""
import pytest
import torch

import scenes
from cuda_target import active, bulk_gradient_rtol
from diff_gaussian_rasterization_depth import GaussianRasterizer
from test_camera_gradients import by_camera_part, settings_with_camera_leaves
from test_cuda import (TARGETS, garden_for, random_upstream, settings_on, to_device,
                       upstream_for)

pytestmark = pytest.mark.cuda
PARTS = ("viewmatrix", "projmatrix", "campos", "fields_of_view")  # by_camera_part's names
MODES = ("color", "depth", "weight", "all")

# (height, width, P, make_scene options)
CONFIGS = {
    "37x29-sh0": (29, 37, 48, dict(sh_degree=0)),
    "37x29-sh3-dc": (29, 37, 48, dict(sh_degree=3, dc=True)),
    "64x40-aa": (40, 64, 120, dict(sh_degree=2, antialiasing=True)),
    "64x40-mip-kernel0.1": (40, 64, 120, dict(sh_degree=1, antialiasing=True, kernel_size=0.1)),
    "64x40-colors-cov": (40, 64, 120, dict(precomp_colors=True, precomp_cov=True)),
    "48x32-cov-noncontiguous": (32, 48, 80, dict(sh_degree=1, precomp_cov=True,
                                                  noncontiguous=True)),
    "17x33-many-blocks": (33, 17, 2000, dict(sh_degree=1)),
    "P0": (29, 37, 0, dict(sh_degree=1)),
    "all-culled": (29, 37, 30, dict(sh_degree=1, all_culled=True)),
}
SEEDS = range(3)


def camera_grads(scene, device, upstream, camera_device):
    """{mode: {name: gradient}} of the camera leaves, which live on `camera_device` while the
    Gaussians live on `device` (the CPU backend or a CUDA target)."""
    with active(device):
        return _camera_grads(scene, device, upstream, camera_device)


def _camera_grads(scene, device, upstream, camera_device):
    inputs = {k: (None if v is None else v.detach().to(device).requires_grad_())
              for k, v in scene.inputs.items()}
    settings, leaves = settings_with_camera_leaves(settings_on(scene.settings, camera_device))
    color, _, depth, weight = GaussianRasterizer(settings)(**inputs)
    outputs = {"color": color, "depth": depth, "weight": weight}
    result = {}
    for mode in MODES:
        used = list(outputs) if mode == "all" else [mode]
        grads = torch.autograd.grad([outputs[k] for k in used], list(leaves.values()),
                                    [upstream[k].to(device) for k in used], retain_graph=True,
                                    allow_unused=True)
        result[mode] = {n: g.cpu() for n, g in by_camera_part(leaves, grads).items()}
    return result


def compare(got, want, label):
    failures = []
    for mode in MODES:
        for name in PARTS:
            ref = want[mode][name]
            scale = ref.abs().max().item() if ref.numel() else 0.0
            try:
                torch.testing.assert_close(got[mode][name], ref, rtol=1e-4, atol=1e-4 * scale)
            except AssertionError as e:
                failures.append(f"{label} {mode} {name}: {str(e).splitlines()[1]}")
    return failures


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("camera_on_target", [False, True], ids=["camera-cpu", "camera-target"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_cuda_camera_gradients_match_cpu(config, camera_on_target, target):
    H, W, P, opts = CONFIGS[config]
    failures = []
    for seed in SEEDS:
        scene = scenes.make_scene(9000 + 100 * list(CONFIGS).index(config) + seed, P=P,
                                  height=H, width=W, **opts)
        pixels, _ = scenes.ambiguous(scene)
        up = upstream_for(scene, pixels, seed)
        want = camera_grads(scene, "cpu", up, "cpu")
        got = camera_grads(scene, target, up, target if camera_on_target else "cpu")
        failures += compare(got, want, f"seed {seed}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("device", TARGETS)  # `device`: conftest runs the whole test on it
def test_cuda_default_path_unchanged_by_camera_gradients(device):
    DEV = device
    """Gaussian gradients with and without camera gradients agree (atomics order aside), and
    the outputs are bitwise equal."""
    scene = scenes.make_scene(9901, P=300, height=61, width=83, sh_degree=3)
    up = {k: v.to(DEV) for k, v in upstream_for(scene, scenes.ambiguous(scene)[0], 1).items()}
    results = []
    for with_camera in (False, True):
        inputs = {k: (None if v is None else v.detach().to(DEV).requires_grad_())
                  for k, v in scene.inputs.items()}
        settings = settings_on(scene.settings, DEV)
        if with_camera:
            settings, _ = settings_with_camera_leaves(settings)
        color, radii, depth, weight = GaussianRasterizer(settings)(**inputs)
        torch.autograd.backward([color, depth, weight], [up["color"], up["depth"], up["weight"]])
        results.append(((color, radii, depth, weight),
                        {k: v.grad for k, v in inputs.items() if v is not None}))
    (out0, g0), (out1, g1) = results
    for a, b in zip(out0, out1):
        assert torch.equal(a, b)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-5 * g0[k].abs().max())


@pytest.mark.parametrize("target", TARGETS)
def test_cuda_splatam_layout(target):
    """w2c (4,4) on the GPU requiring grad, viewmatrix its non-contiguous (1,4,4) transpose,
    projmatrix through bmm, campos through the inverse: the gradient reaches w2c as on the CPU."""
    scene = scenes.make_scene(9902, P=200, height=48, width=64, sh_degree=2)
    up = upstream_for(scene, scenes.ambiguous(scene)[0], 2)
    view = scene.settings.viewmatrix.reshape(4, 4)
    proj_t = torch.linalg.solve(view.double(), scene.settings.projmatrix.reshape(4, 4).double())

    def grad_of_w2c(device):
        with active(device):
            return _grad_of_w2c(device)

    def _grad_of_w2c(device):
        w2c = view.T.contiguous().to(device).requires_grad_()
        view_b = w2c.unsqueeze(0).transpose(1, 2)
        settings = settings_on(scene.settings, device)._replace(
            viewmatrix=view_b, projmatrix=view_b.bmm(proj_t.float().to(device).unsqueeze(0)),
            campos=torch.linalg.inv(w2c)[:3, 3])
        inputs = {k: to_device(v, device) for k, v in scene.inputs.items()}
        color, _, depth, weight = GaussianRasterizer(settings)(**inputs)
        loss = sum((out * up[k].to(device)).sum()
                   for k, out in (("color", color), ("depth", depth), ("weight", weight)))
        loss.backward()
        return w2c.grad.cpu()

    want, got = grad_of_w2c("cpu"), grad_of_w2c(target)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("target", TARGETS)
def test_cuda_garden_112k_camera_gradients(target):
    """100k+ real Gaussians at 648x420 (emulated: its central crop): the camera gradient agrees
    with the CPU's in norm."""
    scene = garden_for(target)
    inputs = scene.rasterizer_inputs()
    s = scenes.Scene(inputs, scene.raster_settings())
    up = random_upstream(s.settings.image_height, s.settings.image_width, 0)
    want = camera_grads(s, "cpu", up, "cpu")["all"]
    got = camera_grads(s, target, up, target)["all"]
    for name in PARTS:
        rel = (got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12)
        assert rel < bulk_gradient_rtol(s.settings.image_height, s.settings.image_width), (
            name, rel.item())
