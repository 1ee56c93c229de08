"""The 2D low-pass filter's `kernel_size` and Mip-Splatting's API (`.mip`).

Against the reference, outputs and gradients, the filter runs through the comparison families
(test_cpu_backend, test_camera_gradients, gradcheck, test_cuda, test_cuda_camera: configurations
named `mip-*` and `kernel*`). Here: the default is the original's bit for bit; the compensated
filter keeps each Gaussian's integral whatever the kernel (what Mip-Splatting's 2D filter is
for), where the plain dilation grows it; and `.mip` is Mip-Splatting's call on the package, on
the CPU and the CUDA targets.
"""
import math

import pytest
import torch

import scenes
from cuda_target import active, cuda_targets
from diff_gaussian_rasterization_depth import (GaussianRasterizationSettings, GaussianRasterizer,
                                               rasterize_gaussians)
from diff_gaussian_rasterization_depth import mip
from test_common_check import OriginalSettings

F32, F64 = torch.float32, torch.float64


def outputs_and_grads(settings, inputs, call=None):
    """Outputs of `call` (the package's module by default) and the gradients of a fixed random
    loss on its float outputs, means2D's included."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in inputs.items()}
    out = (call or GaussianRasterizer(settings))(**leaves)
    gen = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=F64).to(o)).sum()
               for o in out if o.is_floating_point())
    loss.backward()
    return list(out), {k: v.grad for k, v in leaves.items() if v is not None}


def assert_identical(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert len(out_a) == len(out_b)
    for x, y in zip(out_a, out_b):
        assert torch.equal(x, y)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.equal(grads_a[k], grads_b[k]), k


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("antialiasing", [False, True])
def test_default_kernel_size_is_the_original(dtype, antialiasing):
    """kernel_size=0.3 given, left out, or absent from a settings class made for the 2024
    upstream: the same bits, outputs and gradients; another kernel changes the render."""
    scene = scenes.make_scene(21000 + antialiasing, P=80, height=40, width=64, sh_degree=1,
                              dtype=dtype, antialiasing=antialiasing)
    assert scene.settings.kernel_size == 0.3
    given = outputs_and_grads(scene.settings, scene.inputs)
    upstream_class = OriginalSettings(*scene.settings[:13])
    assert_identical(given, outputs_and_grads(upstream_class, scene.inputs))
    assert_identical(given, outputs_and_grads(scene.settings._replace(kernel_size=3 / 10),
                                              scene.inputs))
    other = outputs_and_grads(scene.settings._replace(kernel_size=0.1), scene.inputs)
    assert not torch.equal(given[0][0], other[0][0])


def single_gaussian(kernel_size, antialiasing, sigma_px, opacity=0.2, size=64):
    """One isotropic Gaussian of screen standard deviation `sigma_px` (before the filter) at the
    centre of a size x size image; returns its weight map (float64)."""
    tan = 0.5
    focal = size / (2 * tan)
    z = 5.0
    var = (sigma_px * z / focal) ** 2
    zero = torch.zeros(1, dtype=F64)
    settings = GaussianRasterizationSettings(
        image_height=size, image_width=size, tanfovx=tan, tanfovy=tan,
        bg=torch.zeros(3, dtype=F64), scale_modifier=1.0, viewmatrix=torch.eye(4, dtype=F64),
        projmatrix=scenes.perspective_matrix(tan, tan).T.to(F64), sh_degree=0,
        campos=torch.zeros(3, dtype=F64), antialiasing=antialiasing, kernel_size=kernel_size)
    v = torch.full((1,), var, dtype=F64)
    _, radii, _, weight = GaussianRasterizer(settings)(
        means3D=torch.tensor([[0.0, 0.0, z]], dtype=F64), means2D=None,
        opacities=torch.tensor([[opacity]], dtype=F64),
        colors_precomp=torch.ones(1, 3, dtype=F64),
        cov3D_precomp=torch.stack([v, zero, zero, v, zero, v], dim=1))
    assert radii.item() > 0
    return weight


@pytest.mark.parametrize("sigma_px", [0.6, 1.5, 3.0])
def test_compensated_filter_keeps_each_gaussians_integral(sigma_px):
    """With antialiasing, a Gaussian's alpha sums over the pixels to 2 pi o sqrt(det) of its
    unfiltered covariance, less the tail beyond alpha = 1/255, whatever the kernel (the filter
    widens the splat and lowers its peak by sqrt(det / det_dilated)); without, the sum grows as
    sqrt(det_dilated)."""
    o = 0.2
    sums = {}
    for kernel in (0.0, 0.1, 0.3, 1.0):
        for aa in (False, True):
            sums[kernel, aa] = single_gaussian(kernel, aa, sigma_px, o).sum().item()
    det0 = sigma_px ** 4
    for kernel in (0.0, 0.1, 0.3, 1.0):
        det = (sigma_px ** 2 + kernel) ** 2
        h = math.sqrt(det0 / det)
        # The 2D integral of o h G over the ellipse where o h G >= 1/255: o h 2 pi sqrt(det)
        # (1 - 1 / (255 o h)).
        predicted = 2 * math.pi * o * math.sqrt(det0) * (1 - 1 / (255 * o * h))
        # Sampled at pixel centres: the sum is the integral up to the sampling error, of the
        # cut at alpha = 1/255 above all (a step of 1/255 along the ellipse's edge, which
        # averages out less the fewer pixels the splat covers): percents under 1.5 px.
        tol = 0.05 if sigma_px ** 2 + kernel < 2.25 else 0.01
        assert sums[kernel, True] == pytest.approx(predicted, rel=tol), (kernel, sums)
        # No compensation: the filter's widened Gaussian at full opacity.
        grown = 2 * math.pi * o * math.sqrt(det) * (1 - 1 / (255 * o))
        assert sums[kernel, False] == pytest.approx(grown, rel=tol), (kernel, sums)
    assert sums[1.0, False] / sums[0.1, False] > 1.05


def mip_settings(settings, kernel_size=0.1, offset="zeros"):
    """Mip-Splatting's settings made as its render() makes them (keywords, an offset of zeros
    (H, W, 2) float32 on the device)."""
    H, W = settings.image_height, settings.image_width
    if offset == "zeros":
        offset = torch.zeros((H, W, 2), dtype=torch.float32, device=settings.bg.device)
    return mip.GaussianRasterizationSettings(
        image_height=H, image_width=W, tanfovx=settings.tanfovx, tanfovy=settings.tanfovy,
        kernel_size=kernel_size, subpixel_offset=offset, bg=settings.bg,
        scale_modifier=settings.scale_modifier, viewmatrix=settings.viewmatrix,
        projmatrix=settings.projmatrix, sh_degree=settings.sh_degree, campos=settings.campos,
        prefiltered=False, debug=False)


def mip_module_call(settings):
    """Mip-Splatting's own call: keywords, shs / colors_precomp, and two outputs."""
    rasterizer = mip.GaussianRasterizer(raster_settings=settings)

    def call(means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
             rotations=None, cov3D_precomp=None, dc=None):
        assert dc is None
        rendered_image, radii = rasterizer(
            means3D=means3D, means2D=means2D, shs=shs, colors_precomp=colors_precomp,
            opacities=opacities, scales=scales, rotations=rotations, cov3D_precomp=cov3D_precomp)
        return rendered_image, radii
    return call


@pytest.mark.parametrize("kernel_size", [0.1, 0.0, 0.3])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_mip_api_is_the_package_with_the_compensated_filter(kernel_size, dtype):
    """Mip-Splatting's call returns the package's colour and radii with antialiasing=True and
    its kernel_size, and the same gradients (means2D's, which densification reads, included);
    offsets of zeros or None, the module or the functional form: the same."""
    scene = scenes.make_scene(21100, P=80, height=40, width=64, sh_degree=2, dtype=dtype)
    settings = mip_settings(scene.settings, kernel_size)
    package = scene.settings._replace(antialiasing=True, kernel_size=kernel_size)
    assert mip.package_settings(settings) == package._replace(
        bg=settings.bg, subpixel_offset=settings.subpixel_offset)
    want_out, want_grads = outputs_and_grads(
        package, scene.inputs, lambda **inputs: GaussianRasterizer(package)(**inputs)[:2])
    want = (want_out, want_grads)
    assert_identical(outputs_and_grads(settings, scene.inputs, mip_module_call(settings)), want)
    no_offset = settings._replace(subpixel_offset=None)
    assert_identical(outputs_and_grads(no_offset, scene.inputs, mip_module_call(no_offset)),
                     want)

    def functional(means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                   rotations=None, cov3D_precomp=None, dc=None):
        return mip.rasterize_gaussians(means3D, means2D, shs, colors_precomp, opacities, scales,
                                       rotations, cov3D_precomp, settings)
    assert_identical(outputs_and_grads(settings, scene.inputs, functional), want)
    assert want_grads["means2D"].abs().max() > 0
    # The depth and weight of the same filter: the package's call with package_settings.
    depth_call = outputs_and_grads(mip.package_settings(settings), scene.inputs)
    assert len(depth_call[0]) == 4
    assert torch.equal(depth_call[0][0], want_out[0]) and torch.equal(depth_call[0][1], want_out[1])


def test_mip_subpixel_offset_checked():
    """Offsets of the wrong size or type raise at the call, naming the field (non-zero offsets
    render: tests/test_subpixel_offset.py)."""
    scene = scenes.make_scene(21200, P=30, height=20, width=24, sh_degree=0)
    inputs = scene.inputs
    cases = [(torch.zeros(24, 20), ValueError, r"\(20, 24, 2\)"),
             (torch.zeros(20, 24, 3), ValueError, "subpixel_offset"),
             ([[0.0, 0.0]], TypeError, "subpixel_offset")]
    for value, error, pattern in cases:
        settings = mip_settings(scene.settings, offset=value)
        with pytest.raises(error, match=pattern):
            mip.GaussianRasterizer(settings)(**{k: v for k, v in inputs.items() if k != "dc"})
    # Its transpose's (W, H, 2) holds as many values: read as Mip-Splatting reads the buffer
    # (pixel by pixel), zeros are zeros.
    settings = mip_settings(scene.settings, offset=torch.zeros(24, 20, 2))
    mip.GaussianRasterizer(settings)(**{k: v for k, v in inputs.items() if k != "dc"})


def test_mip_mark_visible_and_settings_fields():
    scene = scenes.make_scene(21300, P=60, sh_degree=0)
    offset = torch.zeros(scene.settings.image_height, scene.settings.image_width, 2)
    offset[0, 0, 0] = 0.5  # no pixel is sampled by markVisible: not read
    settings = mip_settings(scene.settings, offset=offset)
    got = mip.GaussianRasterizer(settings).markVisible(scene.inputs["means3D"])
    want = GaussianRasterizer(scene.settings).markVisible(scene.inputs["means3D"])
    assert torch.equal(got, want) and 0 < int(got.sum()) < scene.P
    # Mip-Splatting's field order (its render passes keywords; its C++ call reads them so).
    assert mip.GaussianRasterizationSettings._fields == (
        "image_height", "image_width", "tanfovx", "tanfovy", "kernel_size", "subpixel_offset",
        "bg", "scale_modifier", "viewmatrix", "projmatrix", "sh_degree", "campos",
        "prefiltered", "debug")


@pytest.mark.parametrize("target", cuda_targets())
def test_mip_api_on_cuda(target):
    """Mip-Splatting's call on a CUDA target (the offsets of zeros on the device): the package's
    call with its filter on that target, outputs bit for bit, gradients to rounding (atomics
    add in any order on a GPU). The filter's kernels against the CPU backend: test_cuda's and
    test_cuda_camera's `mip-kernel0.1` configurations."""
    scene = scenes.make_scene(21400, P=120, height=40, width=64, sh_degree=1)
    moved = {k: None if v is None else v.to(target) for k, v in scene.inputs.items()}
    on_target = scene.settings._replace(
        **{f: getattr(scene.settings, f).to(target) for f in ("bg", "viewmatrix", "projmatrix",
                                                               "campos")})
    settings = mip_settings(on_target)
    assert settings.subpixel_offset.device == on_target.bg.device
    with active(target):
        out, grads = outputs_and_grads(settings, moved, mip_module_call(settings))
        package = mip.package_settings(settings)
        want_out, want_grads = outputs_and_grads(
            package, moved, lambda **inputs: GaussianRasterizer(package)(**inputs)[:2])
    assert torch.equal(out[0], want_out[0]) and torch.equal(out[1], want_out[1])
    assert (out[1] > 0).sum() > 20
    for k in grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-5, atol=1e-7)
