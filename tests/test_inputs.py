"""Every violated contract of SPEC 2 raises at once, with the right type and the argument's name.

The checks run before any backend call; the backends are replaced by tripwires here, so these
tests also prove that nothing was computed (and they need no compiled extension).
"""
import math

import pytest
import torch

import scenes
import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import (GaussianRasterizer, rasterize_gaussians,
                                               _backend)
from diff_gaussian_rasterization_depth._validation import check_gaussians
from diff_gaussian_rasterization_depth.reference import rasterize_reference


class BackendCalled(Exception):
    pass


@pytest.fixture(autouse=True)
def tripwire(monkeypatch):
    """Any backend call fails the test: a bad input must be refused before any work."""
    def boom(*args, **kwargs):
        raise BackendCalled("the backend was called")

    for name in ("make_config", "make_gaussians", "forward", "backward", "mark_visible"):
        monkeypatch.setattr(_backend, name, boom)


def via_module(inputs, settings):
    return GaussianRasterizer(settings)(**inputs)


def via_function(inputs, settings):
    i = inputs
    return rasterize_gaussians(i.get("means3D"), i.get("means2D"), i.get("shs"),
                               i.get("colors_precomp"), i.get("opacities"), i.get("scales"),
                               i.get("rotations"), i.get("cov3D_precomp"), settings,
                               dc=i.get("dc"))


def via_reference(inputs, settings):
    return rasterize_reference(**inputs, raster_settings=settings)


ENTRY_POINTS = [via_module, via_function, via_reference]


def base(seed=0, P=5, **kwargs):
    kwargs.setdefault("sh_degree", 1)
    scene = scenes.make_scene(seed, P=P, height=9, width=11, **kwargs)
    return dict(scene.inputs), scene.settings


def expect(error, pattern, inputs, settings):
    # The C++ checks of the common call leave every refused call to the Python checks
    # (tests/test_common_check.py).
    if _backend._C is not None:
        names = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales",
                 "rotations", "cov3D_precomp", "dc")
        assert _backend.check_common(*(inputs.get(n) for n in names), None, settings, False,
                                     False) is None
    for call in ENTRY_POINTS:
        with pytest.raises(error, match=pattern):
            call(dict(inputs), settings)


def test_valid_inputs_pass_validation():
    """The baseline of every test below is accepted (up to the tripwire)."""
    for kwargs in (dict(), dict(precomp_colors=True, precomp_cov=True), dict(dc=True),
                   dict(noncontiguous=True, dtype=torch.float64), dict(means2d_cols=2)):
        inputs, settings = base(**kwargs)
        for call in ENTRY_POINTS[:2]:
            with pytest.raises(BackendCalled):
                call(dict(inputs), settings)
        via_reference(inputs, settings)


# ----------------------------------------------------------------------------------------------
# Per-Gaussian tensors
# ----------------------------------------------------------------------------------------------

P = 5

BAD_SHAPES = [
    ("means3D", (P, 4)), ("means3D", (P,)), ("means3D", (1, P, 3)), ("means3D", (P, 3, 1)),
    ("means2D", (P, 5)), ("means2D", (P + 1, 3)), ("means2D", (P,)), ("means2D", (P, 1)),
    ("opacities", (P, 2)), ("opacities", (P + 1, 1)), ("opacities", (1, 1)), ("opacities", ()),
    ("opacities", (P - 1,)),
    ("shs", (P, 4)), ("shs", (P, 4, 4)), ("shs", (P + 1, 4, 3)), ("shs", (4, 3)),
    ("scales", (P, 2)), ("scales", (P + 1, 3)), ("scales", (3,)),
    ("rotations", (P, 3)), ("rotations", (P, 4, 1)), ("rotations", (P - 1, 4)),
]


@pytest.mark.parametrize("name,shape", BAD_SHAPES)
def test_wrong_shape(name, shape):
    inputs, settings = base()
    inputs[name] = torch.zeros(shape, dtype=inputs["means3D"].dtype)
    expect(ValueError, name, inputs, settings)


@pytest.mark.parametrize("name,shape", [("colors_precomp", (P, 4)), ("colors_precomp", (P, 1)),
                                        ("colors_precomp", (P + 1, 3)),
                                        ("cov3D_precomp", (P, 3, 3)),
                                        ("cov3D_precomp", (P, 9)), ("cov3D_precomp", (P + 1, 6))])
def test_wrong_shape_precomputed(name, shape):
    inputs, settings = base(precomp_colors=True, precomp_cov=True)
    inputs[name] = torch.zeros(shape)
    expect(ValueError, name, inputs, settings)


@pytest.mark.parametrize("shape", [(P, 2, 3), (P, 1, 4), (P, 3), (P + 1, 1, 3)])
def test_wrong_shape_dc(shape):
    inputs, settings = base(dc=True)
    inputs["dc"] = torch.zeros(shape)
    expect(ValueError, "dc", inputs, settings)


def test_message_says_expected_and_given():
    inputs, settings = base()
    inputs["scales"] = torch.zeros(P, 2)
    with pytest.raises(ValueError) as info:
        via_module(inputs, settings)
    message = str(info.value)
    assert "scales" in message and f"({P}, 3)" in message and f"({P}, 2)" in message


# float16 and bfloat16 are taken, computed in float32 (tests/test_mixed_precision.py).
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_means3d_dtype(dtype):
    inputs, settings = base()
    inputs["means3D"] = inputs["means3D"].to(dtype)
    expect(TypeError, "means3D", inputs, settings)


@pytest.mark.parametrize("name", ["means2D", "opacities", "shs", "scales", "rotations"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_other_dtype_mismatch(name, dtype):
    inputs, settings = base()       # float32 scene
    inputs[name] = inputs[name].to(dtype)
    expect(TypeError, name, inputs, settings)


@pytest.mark.parametrize("name", ["colors_precomp", "cov3D_precomp"])
def test_precomputed_dtype_mismatch(name):
    inputs, settings = base(precomp_colors=True, precomp_cov=True, dtype=torch.float64)
    inputs[name] = inputs[name].float()
    expect(TypeError, name, inputs, settings)


def test_dc_dtype_mismatch():
    inputs, settings = base(dc=True)
    inputs["dc"] = inputs["dc"].double()
    expect(TypeError, "dc", inputs, settings)


@pytest.mark.parametrize("name", ["means3D", "opacities", "scales"])
def test_not_a_tensor(name):
    inputs, settings = base()
    inputs[name] = inputs[name].tolist()
    expect(TypeError, name, inputs, settings)


def test_device_mismatch_without_cuda():
    # A meta tensor stands in for "another device": the check is the same for any device.
    inputs, settings = base()
    inputs["opacities"] = torch.empty(P, 1, device="meta")
    expect(ValueError, "opacities", inputs, settings)
    inputs, settings = base()
    inputs["means3D"] = torch.empty(P, 3, device="meta")
    expect(ValueError, "means3D", inputs, settings)
    inputs, settings = base(dc=True)
    inputs["dc"] = torch.empty(P, 1, 3, device="meta")
    expect(ValueError, "dc", inputs, settings)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_cuda():
    inputs, settings = base()
    inputs["scales"] = inputs["scales"].cuda()
    expect(ValueError, "scales", inputs, settings)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device to make a CUDA tensor")
def test_cuda_tensor_on_cpu_only_build(monkeypatch):
    if _backend._C is None or dgrd.has_cuda_backend():
        pytest.skip("needs a compiled extension built without CUDA")
    monkeypatch.undo()      # the real backend: its dispatcher raises
    inputs, settings = base()
    inputs = {k: (None if v is None else v.cuda()) for k, v in inputs.items()}
    with pytest.raises(RuntimeError, match="without CUDA"):
        via_module(inputs, settings)


# ----------------------------------------------------------------------------------------------
# Combinations
# ----------------------------------------------------------------------------------------------

def test_shs_and_colors_both_or_neither():
    inputs, settings = base()
    inputs["colors_precomp"] = torch.rand(P, 3)
    expect(ValueError, "shs / colors_precomp", inputs, settings)
    inputs["shs"] = inputs["colors_precomp"] = None
    expect(ValueError, "shs / colors_precomp", inputs, settings)


def test_dc_with_colors():
    inputs, settings = base(dc=True)
    inputs["colors_precomp"] = torch.rand(P, 3)
    expect(ValueError, "dc", inputs, settings)
    inputs["shs"] = None
    expect(ValueError, "dc", inputs, settings)


def test_scales_rotations_cov_combinations():
    inputs, settings = base()
    scales, rotations = inputs["scales"], inputs["rotations"]
    inputs["rotations"] = None
    expect(ValueError, "rotations", inputs, settings)
    inputs["rotations"], inputs["scales"] = rotations, None
    expect(ValueError, "scales", inputs, settings)
    inputs["scales"] = scales
    inputs["cov3D_precomp"] = torch.zeros(P, 6)
    expect(ValueError, "cov3D_precomp", inputs, settings)
    inputs["scales"] = None          # rotations + cov3D
    expect(ValueError, "cov3D_precomp", inputs, settings)
    inputs["rotations"] = inputs["cov3D_precomp"] = None
    expect(ValueError, "cov3D_precomp", inputs, settings)


def test_opacities_missing():
    inputs, settings = base()
    inputs["opacities"] = None
    expect(ValueError, "opacities", inputs, settings)


@pytest.mark.parametrize("degree,M", [(0, 0), (1, 3), (2, 8), (3, 15), (3, 9)])
def test_too_few_sh_coefficients(degree, M):
    inputs, settings = base()
    inputs["shs"] = torch.zeros(P, M, 3)
    settings = settings._replace(sh_degree=degree)
    expect(ValueError, "shs", inputs, settings)


def test_too_few_sh_coefficients_with_dc():
    inputs, settings = base(dc=True)
    inputs["shs"] = torch.zeros(P, 2, 3)         # 1 + 2 < 4 for degree 1
    expect(ValueError, r"dc and shs: sh_degree 1 needs M >= 4 .* got M = 3", inputs, settings)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("image_height", 0, ValueError), ("image_height", -3, ValueError),
    ("image_width", 0, ValueError), ("image_width", 16.0, TypeError),
    ("image_height", "16", TypeError), ("image_width", True, TypeError),
    ("sh_degree", 4, ValueError), ("sh_degree", -1, ValueError), ("sh_degree", 1.0, TypeError),
    ("tanfovx", 0.0, ValueError), ("tanfovy", -0.5, ValueError), ("tanfovx", math.nan, ValueError),
    ("tanfovy", math.inf, ValueError), ("tanfovx", "wide", TypeError),
    ("scale_modifier", math.inf, ValueError), ("scale_modifier", math.nan, ValueError),
    ("kernel_size", -0.1, ValueError), ("kernel_size", math.nan, ValueError),
    ("kernel_size", math.inf, ValueError), ("kernel_size", "narrow", TypeError),
    ("kernel_size", None, TypeError),
]


@pytest.mark.parametrize("field,value,error", BAD_SETTINGS)
def test_bad_setting(field, value, error):
    inputs, settings = base()
    settings = settings._replace(**{field: value})
    expect(error, field, inputs, settings)


@pytest.mark.parametrize("field,shape", [
    ("viewmatrix", (4, 3)), ("viewmatrix", (15,)), ("viewmatrix", (1, 4, 5)),
    ("projmatrix", (3, 3)), ("projmatrix", (17,)), ("projmatrix", (2, 4, 4)),
    ("bg", (4,)), ("bg", (2,)), ("bg", (1, 4)), ("campos", (2,)), ("campos", (4,)),
])
def test_bad_settings_tensor_size(field, shape):
    inputs, settings = base()
    settings = settings._replace(**{field: torch.zeros(shape)})
    expect(ValueError, field, inputs, settings)


@pytest.mark.parametrize("field", ["viewmatrix", "projmatrix", "bg", "campos"])
def test_bad_settings_tensor_type(field):
    inputs, settings = base()
    value = getattr(settings, field)
    expect(TypeError, field, inputs, settings._replace(**{field: value.to(torch.int32)}))
    expect(TypeError, field, inputs, settings._replace(**{field: value.tolist()}))


def test_settings_tensor_layouts_accepted():
    """Matrices as (4,4), (1,4,4), flat (16,), non-contiguous; bg (1,3): all the same."""
    inputs, settings = base(dtype=torch.float64)
    outputs = []
    for view, proj in [
        (settings.viewmatrix, settings.projmatrix),
        (settings.viewmatrix[None], settings.projmatrix[None]),
        (settings.viewmatrix.reshape(16), settings.projmatrix.reshape(16)),
        (settings.viewmatrix.T.contiguous().T, settings.projmatrix.T.contiguous().T),
        (settings.viewmatrix.float(), settings.projmatrix.float()),
    ]:
        s = settings._replace(viewmatrix=view, projmatrix=proj, bg=settings.bg.reshape(1, 3))
        outputs.append(via_reference(inputs, s))
    for out in outputs[1:4]:
        for x, y in zip(outputs[0], out):
            assert torch.equal(x, y)


# ----------------------------------------------------------------------------------------------
# markVisible
# ----------------------------------------------------------------------------------------------

def test_mark_visible_bad_positions():
    inputs, settings = base()
    rasterizer = GaussianRasterizer(settings)
    with pytest.raises(ValueError, match="positions"):
        rasterizer.markVisible(torch.zeros(P, 4))
    with pytest.raises(TypeError, match="positions"):
        rasterizer.markVisible(torch.zeros(P, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="positions"):
        rasterizer.markVisible([[0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="viewmatrix"):
        GaussianRasterizer(settings._replace(viewmatrix=torch.zeros(3, 3))).markVisible(
            torch.zeros(P, 3))


def test_check_gaussians_normalizes():
    inputs, settings = base(dc=True)
    inputs["opacities"] = inputs["opacities"].reshape(P)
    (means3D, opacities, shs, colors, scales, rotations, cov,
     checked) = check_gaussians(inputs["means3D"], inputs["means2D"], inputs["opacities"],
                                inputs["shs"], None, inputs["scales"], inputs["rotations"],
                                None, inputs["dc"], settings)
    assert opacities.shape == (P, 1)
    assert torch.equal(shs, torch.cat([inputs["dc"], inputs["shs"]], dim=1))
    assert checked.viewmatrix.shape == (16,) and checked.bg.shape == (3,)
