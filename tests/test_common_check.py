"""The common call's checks in C++ (`_C.check_common`) against the Python checks they stand in for.

`rasterize_gaussians` asks C++ first; where it answers None the Python checks (_validation.py)
take the call and give the messages. So C++ must never accept what Python refuses (every refused
input of tests/test_inputs.py asks it too, in `expect`), and what it accepts it must turn into
exactly what Python makes: the same opacities, the same RasterConfig and so the same render and
gradients. The variants below are the calls of 3DGS's 2023 and 2024 training codes and of the
forks this package serves; the last tests are calls C++ leaves to Python on purpose.
"""
import collections
import math

import numpy as np
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import (GaussianRasterizationSettings, GaussianRasterizer,
                                               _backend)
from diff_gaussian_rasterization_depth._validation import check_gaussians

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

NAMES = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales", "rotations",
         "cov3D_precomp", "dc")
CONFIG_FIELDS = ("image_height", "image_width", "tanfovx", "tanfovy", "scale_modifier",
                 "sh_degree", "prefiltered", "antialiasing", "kernel_size", "debug", "median_depth",
                 "inverse_depth", "camera_grad", "absolute_grad", "orthographic", "fisheye",
                 "lens", "sample_margin")
CAMERA_FIELDS = ("bg", "viewmatrix", "projmatrix", "campos")


def ask_cpp(inputs, settings, features=None, median_depth=False, inverse_depth=False):
    return _backend._C.check_common(*(inputs.get(n) for n in NAMES), features, settings,
                                    median_depth, inverse_depth)


def ask_python(inputs, settings, features=None, median_depth=False, inverse_depth=False):
    out = check_gaussians(*(inputs.get(n) for n in NAMES), settings, join_dc=False,
                          pack_camera=_backend.pack_camera)
    return out[1], _backend.make_config(out[-1], median_depth, inverse_depth)


def variant(seed, **kwargs):
    """(inputs, settings, call flags) of one random scene of a variant."""
    flags = {k: kwargs.pop(k) for k in ("features", "median_depth", "inverse_depth")
             if k in kwargs}
    edit = kwargs.pop("edit", lambda inputs, settings: settings)
    scene = scenes.make_scene(seed, P=40, height=21, width=30, **kwargs)
    inputs = dict(scene.inputs)
    settings = edit(inputs, scene.settings)
    if flags.get("features") is True:
        flags["features"] = torch.rand(scene.P, 5, dtype=inputs["means3D"].dtype)
    return inputs, settings, flags


def flat_opacities(inputs, settings):
    inputs["opacities"] = inputs["opacities"].reshape(-1)
    return settings


def no_means2d(inputs, settings):
    inputs["means2D"] = None
    return settings


def camera_layouts(inputs, settings):
    """SplaTAM's transposed (1, 4, 4) views, a (1, 3) bg, float64 matrices for float32."""
    return settings._replace(viewmatrix=settings.viewmatrix.reshape(4, 4).T[None].transpose(1, 2),
                             projmatrix=settings.projmatrix.double().reshape(1, 4, 4),
                             bg=settings.bg.reshape(1, 3))


def plain_numbers(inputs, settings):
    """An int scale modifier, the flags set, sizes as ints that are not tiny."""
    return settings._replace(scale_modifier=1, prefiltered=True, antialiasing=True)


def mip_filter(inputs, settings):
    """Mip-Splatting's 2D filter; an int kernel_size of 0 as a second variant would be."""
    return settings._replace(antialiasing=True, kernel_size=0.1)


# A settings class of the 2024 upstream's 13 fields: no kernel_size (0.3 then).
OriginalSettings = collections.namedtuple("OriginalSettings",
                                          GaussianRasterizationSettings._fields[:13])


def original_settings(inputs, settings):
    return OriginalSettings(*settings[:13])


def int_kernel(inputs, settings):
    return settings._replace(kernel_size=0)


COMMON = {
    "2023": dict(sh_degree=1),
    "2023-degree3": dict(sh_degree=3),
    "2024-dc": dict(sh_degree=2, dc=True),
    "2024-inverse-depth": dict(sh_degree=1, dc=True, inverse_depth=True),
    "precomputed": dict(precomp_colors=True, precomp_cov=True),
    "float64-noncontiguous": dict(dtype=torch.float64, noncontiguous=True),
    "flat-opacities": dict(edit=flat_opacities),
    "means2D-absent": dict(edit=no_means2d),
    "means2D-P2": dict(means2d_cols=2),
    "means2D-absgs": dict(means2d_cols=4),
    "features-median": dict(features=True, median_depth=True),
    "camera-layouts": dict(edit=camera_layouts),
    "mip-filter": dict(edit=mip_filter),
    "original-settings-class": dict(edit=original_settings),
    "int-kernel-size": dict(edit=int_kernel),
    "numbers-and-flags": dict(edit=plain_numbers, scale_modifier=0.7),
    "orthographic": dict(edit=lambda inputs, s: scenes.orthographic(
        scenes.Scene(inputs, s)).settings),
    "fisheye": dict(edit=lambda inputs, s: scenes.fisheye(
        scenes.Scene(inputs, s), half_angle=1.2, shift=(2.0, -1.0)).settings),
    # Lens coefficients as plain numbers: a tuple, a list with an int, zeros (no distortion).
    "fisheye-distorted": dict(edit=lambda inputs, s: scenes.fisheye(
        scenes.Scene(inputs, s), half_angle=1.2, distortion=(0.05, -0.02, 0.004, 0)).settings),
    "fisheye-zero-distortion": dict(edit=lambda inputs, s: scenes.fisheye(
        scenes.Scene(inputs, s), distortion=(0.0, 0.0, 0.0, 0.0)).settings),
    "pinhole-distorted": dict(edit=lambda inputs, s: s._replace(
        pinhole_distortion=(-0.25, 0.08, 0.01, -0.008, -0.01))),
    "pinhole-folding-list": dict(edit=lambda inputs, s: s._replace(
        pinhole_distortion=[-0.4, 0, 0.0, 0.0])),
    "pinhole-rational": dict(edit=lambda inputs, s: s._replace(
        pinhole_distortion=(0.9, 0.25, 0.004, -0.006, 0.02, 1.1, 0.35, 0.03))),
}


@pytest.mark.parametrize("name", COMMON)
def test_common_calls_checked_in_cpp_as_in_python(name):
    """C++ accepts each common variant and makes what Python makes: opacities and config."""
    inputs, settings, flags = variant(13000 + list(COMMON).index(name), **COMMON[name])
    answer = ask_cpp(inputs, settings, **flags)
    assert answer is not None, "the common call was left to the Python checks"
    opacities, config = answer
    want_opacities, want = ask_python(inputs, settings, **flags)
    assert opacities.shape == want_opacities.shape == (inputs["means3D"].shape[0], 1)
    assert torch.equal(opacities, want_opacities)
    for field in CONFIG_FIELDS:
        assert getattr(config, field) == getattr(want, field), field
    for field in CAMERA_FIELDS:
        got, expected = getattr(config, field), getattr(want, field)
        assert got.dtype == expected.dtype and got.device == expected.device, field
        assert torch.equal(got, expected), field
        assert not got.requires_grad
    # The copy is private: editing the settings' tensors in place leaves it as it was.
    before = config.viewmatrix.clone()
    with torch.no_grad():
        settings.viewmatrix.add_(1.0)
    assert torch.equal(config.viewmatrix, before)


def render_and_grads(inputs, settings, flags, common):
    """Outputs and every input's gradient of a random loss on every map."""
    _backend.common_check = common
    try:
        leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                  for k, v in inputs.items()}
        out = GaussianRasterizer(settings)(**leaves, **flags)
        gen = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
                   for o in out if o.is_floating_point())
        present = [k for k, v in leaves.items() if v is not None]
        grads = torch.autograd.grad(loss, [leaves[k] for k in present])
        return list(out), dict(zip(present, grads))
    finally:
        _backend.common_check = True


@pytest.mark.parametrize("name", ["2023", "2024-dc", "float64-noncontiguous", "flat-opacities",
                                  "means2D-absgs", "features-median", "camera-layouts",
                                  "orthographic", "fisheye", "fisheye-distorted",
                                  "pinhole-distorted", "pinhole-folding-list"])
def test_render_and_gradients_bitwise_either_way(name):
    inputs, settings, flags = variant(13100 + list(COMMON).index(name), **COMMON[name])
    assert ask_cpp(inputs, settings, **flags) is not None
    out_fast, grads_fast = render_and_grads(inputs, settings, flags, common=True)
    out_slow, grads_slow = render_and_grads(inputs, settings, flags, common=False)
    for a, b in zip(out_fast, out_slow):
        assert torch.equal(a, b)
    assert grads_fast.keys() == grads_slow.keys()
    for k in grads_fast:
        assert torch.equal(grads_fast[k], grads_slow[k]), k


def camera_grad(inputs, settings):
    return settings._replace(viewmatrix=settings.viewmatrix.clone().requires_grad_())


LEFT_TO_PYTHON = {
    "debug": lambda inputs, s: s._replace(debug=True),
    "camera-gradient": camera_grad,
    "background-gradient": lambda inputs, s: s._replace(bg=s.bg.clone().requires_grad_()),
    "field-of-view-tensor": lambda inputs, s: s._replace(
        tanfovx=torch.tensor(s.tanfovx, dtype=torch.float64)),
    "field-of-view-gradient": lambda inputs, s: s._replace(
        tanfovy=torch.tensor(s.tanfovy, dtype=torch.float64, requires_grad=True)),
    "numpy-float": lambda inputs, s: s._replace(tanfovx=np.float32(s.tanfovx)),
    "numpy-int": lambda inputs, s: s._replace(image_width=np.int64(s.image_width)),
    "tensor-degree": lambda inputs, s: s._replace(sh_degree=torch.tensor(1)),
    "int-flag": lambda inputs, s: s._replace(prefiltered=0),
    # Offsets are read by the Python checks; zeros sample where None does.
    "zero-subpixel-offsets": lambda inputs, s: s._replace(
        subpixel_offset=torch.zeros(s.image_height, s.image_width, 2)),
    # Coefficients in a tensor (which may take a gradient) or of numpy's kind: Python's.
    "zero-pinhole-distortion-tensor": lambda inputs, s: s._replace(
        pinhole_distortion=torch.zeros(4)),
    "zero-pinhole-distortion-numpy": lambda inputs, s: s._replace(
        pinhole_distortion=np.zeros(5)),
}


@pytest.mark.parametrize("name", LEFT_TO_PYTHON)
def test_valid_calls_left_to_python_still_render(name):
    """Valid calls of another kind go to the Python checks (C++ answers None) and render as the
    common call does."""
    inputs, plain, flags = variant(13200, sh_degree=1)
    settings = LEFT_TO_PYTHON[name](inputs, plain)
    assert ask_cpp(inputs, settings) is None
    out_plain, grads_plain = render_and_grads(inputs, plain, flags, common=True)
    out, grads = render_and_grads(inputs, settings, flags, common=True)
    for a, b in zip(out, out_plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for k in grads_plain:
        torch.testing.assert_close(grads[k], grads_plain[k], rtol=1e-5, atol=1e-6)


def test_camera_tensors_requiring_grad_under_no_grad_are_common():
    """A viewmatrix (or bg) that requires grad asks for no gradient under no_grad: C++ takes it,
    and outside no_grad leaves it to Python (which returns the camera's, or bg's, gradient)."""
    inputs, settings, _ = variant(13300, sh_degree=1)
    settings = camera_grad(inputs, settings)
    with torch.no_grad():
        assert ask_cpp(inputs, settings) is not None
    assert ask_cpp(inputs, settings) is None
    settings = settings._replace(bg=settings.bg.clone().requires_grad_(),
                                 viewmatrix=settings.viewmatrix.detach())
    with torch.no_grad():
        assert ask_cpp(inputs, settings) is not None
    assert ask_cpp(inputs, settings) is None   # the background's gradient


def test_out_of_range_numbers_left_to_python():
    """Numbers the Python checks refuse or convert with an error: C++ answers None."""
    inputs, settings, _ = variant(13400, sh_degree=1)
    for field, value in [("image_height", (1 << 15) + 1), ("image_width", 10 ** 30),
                         ("tanfovx", 10 ** 400), ("scale_modifier", math.inf),
                         ("sh_degree", 2 ** 70), ("debug", 1), ("kernel_size", -0.1),
                         ("kernel_size", math.nan), ("kernel_size", "0.1"), ("fisheye", 1)]:
        assert ask_cpp(inputs, settings._replace(**{field: value})) is None, field
    # Two projections at once: the Python checks' ValueError.
    assert ask_cpp(inputs, settings._replace(orthographic=True, fisheye=True)) is None
    # Lens coefficients the Python checks refuse: another count, not finite, not numbers, a
    # bool, for another projection.
    for field, value, extra in [
            ("pinhole_distortion", (0.1, 0.2, 0.3), {}),
            ("pinhole_distortion", (0.1,) * 6, {}),
            ("pinhole_distortion", (0.1, math.nan, 0.0, 0.0), {}),
            ("pinhole_distortion", ("0.1", 0.0, 0.0, 0.0), {}),
            ("pinhole_distortion", (True, 0.0, 0.0, 0.0), {}),
            ("pinhole_distortion", (0.1, 0.0, 0.0, 0.0), dict(fisheye=True)),
            ("pinhole_distortion", (0.1, 0.0, 0.0, 0.0), dict(orthographic=True)),
            ("fisheye_distortion", (0.1, 0.0, 0.0, 0.0), {}),
            ("fisheye_distortion", (0.1, 0.0, 0.0), dict(fisheye=True)),
            ("fisheye_distortion", (0.1, math.inf, 0.0, 0.0), dict(fisheye=True))]:
        assert ask_cpp(inputs, settings._replace(**{field: value}, **extra)) is None, value
    # Degree 4 with the 25 coefficients it would need: refused for the degree itself.
    inputs["shs"] = torch.zeros(inputs["means3D"].shape[0], 25, 3)
    assert ask_cpp(inputs, settings._replace(sh_degree=3)) is not None
    assert ask_cpp(inputs, settings._replace(sh_degree=4)) is None


class LoggedTensor(torch.Tensor):
    """A tensor subclass that sees every torch call on it (as tracing and logging tools do)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def test_objects_that_are_not_plain_tensors_left_to_python():
    """Subclasses (whose __torch_function__ may answer otherwise), objects that only claim to be
    tensors, sparse and meta tensors: C++ answers None, never a crash or an exception."""
    from unittest import mock
    inputs, settings, _ = variant(13500, sh_degree=1)
    P = inputs["means3D"].shape[0]
    cases = {
        "means2D": mock.MagicMock(spec=torch.Tensor),
        "scales": inputs["scales"].as_subclass(LoggedTensor),
        "opacities": inputs["opacities"].reshape(P).as_subclass(LoggedTensor),
        "means3D": inputs["means3D"].to_sparse(),
    }
    for name, value in cases.items():
        assert ask_cpp(dict(inputs, **{name: value}), settings) is None, name
    claimed = mock.MagicMock(spec=torch.Tensor)
    for field in CAMERA_FIELDS:
        assert ask_cpp(inputs, settings._replace(**{field: claimed})) is None, field
        meta = torch.empty(getattr(settings, field).shape, device="meta")
        assert ask_cpp(inputs, settings._replace(**{field: meta})) is None, field
    empty = {k: None if v is None else v[:0] for k, v in inputs.items()}
    empty["opacities"] = torch.nn.UninitializedParameter()
    assert ask_cpp(empty, settings) is None
    # A parameter is a plain tensor to both.
    params = {k: None if v is None else torch.nn.Parameter(v) for k, v in inputs.items()}
    assert ask_cpp(params, settings) is not None


def test_torch_function_mode_sees_the_python_checks():
    """Under a TorchFunctionMode (what tracing and logging tools install) the call goes to the
    Python checks, whose torch calls the mode sees (a flat opacity's reshape to (P, 1)), where
    C++'s would pass it by; it renders as the common call does."""
    mode_type = getattr(torch.overrides, "TorchFunctionMode", None)
    if mode_type is None or _backend._function_mode_active is None:
        pytest.skip(f"PyTorch {torch.__version__} cannot say whether a TorchFunctionMode is on")
    inputs, settings, flags = variant(13700, **COMMON["flat-opacities"])
    opacities = inputs["opacities"]
    assert opacities.dim() == 1 and ask_cpp(inputs, settings) is not None
    seen = []

    class Log(mode_type):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if any(a is opacities for a in args):
                seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    with Log():
        assert _backend.check_common(*(inputs.get(n) for n in NAMES), None, settings, False,
                                     False) is None
        out = GaussianRasterizer(settings)(**inputs, **flags)
    assert seen, "the mode saw no torch call on the flat opacities"
    want = GaussianRasterizer(settings)(**inputs, **flags)
    for a, b in zip(out, want):
        assert torch.equal(a, b)


def test_interrupt_while_reading_settings_goes_on():
    """An attribute getter that raises an Exception leaves the call to Python; one that raises
    KeyboardInterrupt is not swallowed."""
    inputs, settings, _ = variant(13600, sh_degree=1)

    class Raising:
        def __init__(self, error):
            self.error = error

        def __getattr__(self, name):
            if name == "tanfovy":
                raise self.error
            return getattr(settings, name)

    assert ask_cpp(inputs, Raising(KeyError("tanfovy"))) is None
    with pytest.raises(KeyboardInterrupt):
        ask_cpp(inputs, Raising(KeyboardInterrupt()))
