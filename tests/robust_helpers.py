"""Shared pieces of the robustness tests: devices, a camera with exact coordinates, renders with
gradients, and the comparisons "as if that Gaussian were not there"."""
import math
from typing import Dict, Optional, Sequence

import torch

from diff_gaussian_rasterization_depth import GaussianRasterizationSettings, rasterize_gaussians

from cuda_target import cuda_targets
from scenes import INPUT_NAMES, perspective_matrix

# 'cpu' always; the CUDA targets (a GPU, the emulation) with the `cuda` marker.
DEVICES = ["cpu"] + cuda_targets(orders=("random:1",))


def settings_on(settings, device):
    """`settings` with its tensors (bg and the camera's) on `device`."""
    return settings._replace(**{f: getattr(settings, f).to(device)
                                for f in ("bg", "viewmatrix", "projmatrix", "campos")})


def axis_camera(height: int, width: int, tanfovx: float = 0.5, tanfovy: Optional[float] = None,
                dtype=torch.float32, **overrides) -> GaussianRasterizationSettings:
    """Camera at the origin looking down +z (OpenCV axes), so view space = world space and
    knife-edge positions (the near plane, the camera centre) are exact in any precision."""
    if tanfovy is None:
        tanfovy = tanfovx * height / width
    view = torch.eye(4, dtype=torch.float64)
    proj = view @ perspective_matrix(tanfovx, tanfovy).T
    fields = dict(image_height=height, image_width=width, tanfovx=tanfovx, tanfovy=tanfovy,
                  bg=torch.tensor([0.2, 0.5, 0.9], dtype=dtype), scale_modifier=1.0,
                  viewmatrix=view.to(dtype), projmatrix=proj.to(dtype), sh_degree=0,
                  campos=torch.zeros(3, dtype=dtype), prefiltered=False, debug=False,
                  antialiasing=False)
    fields.update(overrides)
    return GaussianRasterizationSettings(**fields)


def gaussians_in_view(gen: torch.Generator, P: int, settings, sigma_px=(1.0, 6.0),
                      z=(1.0, 6.0), sh_coeffs: Optional[int] = 16, dtype=torch.float32):
    """P Gaussians in front of `axis_camera`, inside the view, a few pixels wide."""
    f64 = torch.float64
    zz = z[0] + (z[1] - z[0]) * torch.rand(P, generator=gen, dtype=f64)
    u = 2 * torch.rand(P, generator=gen, dtype=f64) - 1
    v = 2 * torch.rand(P, generator=gen, dtype=f64) - 1
    means = torch.stack([u * zz * settings.tanfovx, v * zz * settings.tanfovy, zz], dim=1)
    focal = settings.image_width / (2 * settings.tanfovx)
    lo, hi = math.log(sigma_px[0]), math.log(sigma_px[1])
    sig = torch.exp(lo + (hi - lo) * torch.rand(P, 3, generator=gen, dtype=f64))
    q = torch.randn(P, 4, generator=gen, dtype=f64)
    inputs = dict(means3D=means, means2D=torch.zeros(P, 3, dtype=f64),
                  opacities=0.1 + 0.85 * torch.rand(P, 1, generator=gen, dtype=f64),
                  shs=None if sh_coeffs is None else
                  0.4 * torch.randn(P, sh_coeffs, 3, generator=gen, dtype=f64),
                  colors_precomp=None if sh_coeffs is not None else
                  torch.rand(P, 3, generator=gen, dtype=f64),
                  scales=sig * zz[:, None] / focal, rotations=q / q.norm(dim=1, keepdim=True),
                  cov3D_precomp=None, dc=None)
    return {k: None if v is None else v.to(dtype) for k, v in inputs.items()}


def upstream(shape, seed: int, dtype, device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def render(inputs: Dict[str, Optional[torch.Tensor]], settings, device="cpu", seed: int = 0,
           grad: bool = True):
    """Outputs (on the CPU) and, with grad, the gradient of every input of a random linear loss
    on colour, depth and weight (None where an input is absent)."""
    leaves = {}
    for k in INPUT_NAMES:
        v = inputs.get(k)
        if v is not None:
            v = v.detach().to(device).clone()
            if grad and v.is_floating_point():
                v.requires_grad_(True)
        leaves[k] = v

    def move(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t
    settings = settings._replace(**{f: move(getattr(settings, f))
                                    for f in ("bg", "viewmatrix", "projmatrix", "campos")})
    out = rasterize_gaussians(leaves["means3D"], leaves["means2D"], leaves["shs"],
                              leaves["colors_precomp"], leaves["opacities"], leaves["scales"],
                              leaves["rotations"], leaves["cov3D_precomp"], settings,
                              dc=leaves["dc"])
    grads = None
    if grad:
        color, _, depth, weight = out
        dt = color.dtype
        loss = ((color * upstream(color.shape, seed, dt, device)).sum()
                + (depth * upstream(depth.shape, seed + 1, dt, device)).sum()
                + (weight * upstream(weight.shape, seed + 2, dt, device)).sum())
        loss.backward()
        grads = {k: None if v is None or v.grad is None else v.grad.cpu()
                 for k, v in leaves.items()}
    return tuple(o.detach().cpu() for o in out), grads


def without(inputs, drop: Sequence[int]):
    """The inputs with the Gaussians of `drop` removed."""
    P = inputs["means3D"].shape[0]
    drop = set(int(i) for i in drop)
    keep = torch.tensor([i for i in range(P) if i not in drop], dtype=torch.long)
    return {k: None if v is None else v[keep] for k, v in inputs.items()}, keep


def assert_same(actual, expected, device, what=""):
    """Bitwise on the CPU backend (deterministic); on CUDA within 1e-6 of the magnitude, since
    gradient sums there are atomics whose order varies."""
    assert actual.shape == expected.shape, what
    if actual.dtype in (torch.int32, torch.int64, torch.bool) or device == "cpu":
        assert torch.equal(actual, expected), f"{what}: max diff " \
            f"{(actual.double() - expected.double()).abs().max() if actual.numel() else 0}"
        return
    mag = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * max(mag, 1.0),
                               msg=lambda m: f"{what}: {m}")


def assert_same_renders(inputs_a, settings_a, inputs_b, settings_b, device):
    """Two calls give the same outputs and the same (finite) gradient for every input.
    Returns the first call's gradients."""
    out_a, g_a = render(inputs_a, settings_a, device)
    out_b, g_b = render(inputs_b, settings_b, device)
    for name, a, b in zip(("color", "radii", "depth", "weight"), out_a, out_b):
        assert_same(a, b, device, name)
    for k, gb in g_b.items():
        if gb is not None:
            assert torch.isfinite(g_a[k]).all(), f"non-finite gradient of {k}"
            assert_same(g_a[k], gb, device, f"gradient of {k}")
    return g_a


def assert_as_if_removed(bad_inputs, clean_inputs, settings, bad: Sequence[int], device,
                         seed: int = 0):
    """Rendering with the Gaussians `bad` equals rendering without them: outputs, the radii and
    gradients of the others; the bad ones get radius 0 and zero gradients, nothing non-finite."""
    out_b, g_b = render(bad_inputs, settings, device, seed)
    removed, keep = without(clean_inputs, bad)
    out_r, g_r = render(removed, settings, device, seed)
    for name, a, e in zip(("color", "radii", "depth", "weight"), out_b, out_r):
        if name == "radii":
            assert torch.equal(a[keep], e), "radii of the others"
            assert (a[list(bad)] == 0).all(), f"radii of the bad Gaussians: {a[list(bad)]}"
        else:
            assert_same(a, e, device, name)
    for k, gb in g_b.items():
        if gb is None:
            continue
        assert torch.isfinite(gb).all(), f"non-finite gradient of {k}"
        assert_same(gb[keep], g_r[k], device, f"gradient of {k} (other Gaussians)")
        assert (gb[list(bad)] == 0).all(), f"gradient of {k} of the bad Gaussians: {gb[list(bad)]}"
