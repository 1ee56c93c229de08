"""Camera gradients (viewmatrix, projmatrix, campos, and the fields of view tanfovx, tanfovy,
i.e. the focal lengths) of the CPU backend against the reference.

The reference differentiates the same forward by autograd; the backend sums each Gaussian's
share from the shared preprocess backward. Compared from colour, depth and weight separately and
together, with the tolerances and the ambiguous-pixel rule of test_cpu_backend; plus finite
differences (gradcheck, float64) with the matrices as inputs, the layouts users pass (SplaTAM's
non-contiguous (1,4,4) view of a w2c that requires grad), an exact translation identity on a
scene large enough for the threaded sum, and the default path left untouched.
"""

import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer
from diff_gaussian_rasterization_depth._validation import CheckedSettings
from diff_gaussian_rasterization_depth.reference import rasterize_reference
from test_cpu_backend import (F32, F64, MODES, compare_gradients, forward_against_reference,
                              gradients, reference_gradients, run_backend, run_reference,
                              upstream_gradients)

MATRICES = ("viewmatrix", "projmatrix", "campos")
FIELDS_OF_VIEW = ("tanfovx", "tanfovy")
CAMERA = MATRICES + FIELDS_OF_VIEW

CONFIGS = {
    "sh0": dict(sh_degree=0),
    "sh1": dict(sh_degree=1),
    "sh2-dc": dict(sh_degree=2, dc=True),
    "sh3": dict(sh_degree=3),
    "aa": dict(sh_degree=1, antialiasing=True),
    "mip-kernel0.1": dict(sh_degree=2, antialiasing=True, kernel_size=0.1),
    "cov": dict(sh_degree=2, precomp_cov=True),
    "colors-cov-aa": dict(precomp_colors=True, precomp_cov=True, antialiasing=True),
    "modifier": dict(sh_degree=1, scale_modifier=1.4),
    "noncontiguous": dict(sh_degree=3, noncontiguous=True),
    "size-64x40": dict(sh_degree=2, height=40, width=64, P=100),
    "float64": dict(sh_degree=3, dtype=F64),
    "float64-aa-cov": dict(sh_degree=1, antialiasing=True, precomp_cov=True, dtype=F64),
}
SEEDS = range(2)


def scene_for(config, seed):
    return scenes.config_scene("camera-", CONFIGS, config, seed)


def camera_parts(settings):
    """CAMERA, and "fisheye_distortion" or "pinhole_distortion" where the settings carry
    OpenCV's lens coefficients."""
    return CAMERA + tuple(name for name in ("fisheye_distortion", "pinhole_distortion")
                          if getattr(settings, name, None) is not None)


def camera_leaves(settings, dtype=None):
    """Fresh leaves of the settings' camera tensors (same layout and strides), of its fields
    of view (0-dim float64 tensors, the numbers' exact values, where they are numbers) and of
    the lens's distortion coefficients (a flat float64 tensor), requiring grad."""
    def leaf(t):
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.float64)
        t = t.detach() if dtype is None else t.detach().to(dtype)
        return t.clone().requires_grad_()
    return {n: leaf(getattr(settings, n)) for n in camera_parts(settings)}


def settings_with_camera_leaves(settings):
    """(settings whose camera tensors and fields of view are fresh leaves, on the matrices'
    device, and those leaves)."""
    leaves = camera_leaves(settings)
    device = settings.viewmatrix.device
    leaves.update({n: leaves[n].detach().to(device).requires_grad_() for n in FIELDS_OF_VIEW})
    return settings._replace(**leaves), leaves


def camera_gradients(run, scene, upstream, dtype=None, modes=MODES):
    """{mode: {name: gradient}} of the camera leaves (Gaussian inputs require grad too), the
    fields of view's two as one (2,) "fields_of_view": each sums every Gaussian's share, whose
    terms mostly cancel in one of them on some scenes, so the pair's scale is what float32
    rounding is measured against (as a matrix's largest entry is for its others)."""
    inputs = scene.with_grad()
    if dtype is not None:
        inputs = {k: (None if v is None else v.detach().to(dtype).requires_grad_())
                  for k, v in inputs.items()}
    leaves = camera_leaves(scene.settings, dtype)
    color, _, depth, weight = run(inputs, scene.settings._replace(**leaves))
    outputs = {"color": color, "depth": depth, "weight": weight}
    result = {}
    for mode in modes:
        used = list(outputs) if mode == "all" else [mode]
        grads = torch.autograd.grad([outputs[k] for k in used], list(leaves.values()),
                                    [upstream[k].to(outputs[k].dtype) for k in used],
                                    retain_graph=True, allow_unused=True)
        result[mode] = by_camera_part(leaves, grads)
    return result


def by_camera_part(leaves, grads):
    """{name: gradient} of the camera leaves (in camera_leaves' order) from autograd's grads
    (None: zeros), the two fields of view's as one (2,) "fields_of_view"."""
    named = {n: (torch.zeros_like(leaves[n]) if g is None else g) for n, g in zip(leaves, grads)}
    named["fields_of_view"] = torch.stack([named.pop(n) for n in FIELDS_OF_VIEW])
    return named


def camera_reference_gradients(scene, upstream):
    """The reference's camera gradients: [in the scene's dtype], and for float32 also those of
    the float64 reference of the same float32 values, the other acceptable answer (as in
    test_cpu_backend.reference_gradients)."""
    wants = [camera_gradients(run_reference, scene, upstream)]
    if scene.inputs["means3D"].dtype == F32:
        exact = camera_gradients(run_reference, scene, upstream, dtype=F64)
        # the matrices in the scene's dtype; the fields of view and a fisheye's coefficients
        # are float64 leaves either way
        wants.append({m: {n: g.to(F32) if n in MATRICES else g for n, g in grads.items()}
                      for m, grads in exact.items()})
    return wants


@pytest.mark.parametrize("config", list(CONFIGS))
def test_camera_gradients_match_reference(config):
    failures = []
    for seed in SEEDS:
        scene = scene_for(config, seed)
        dtype = scene.inputs["means3D"].dtype
        pixels, gaussians = scenes.ambiguous_checked(scene)
        upstream = upstream_gradients(scene, pixels, seed)
        got = camera_gradients(run_backend, scene, upstream)
        wants = camera_reference_gradients(scene, upstream)
        for mode in MODES:
            for name in MATRICES:
                assert got[mode][name].shape == getattr(scene.settings, name).shape
        failures += compare_gradients(got, wants, dtype, f"seed {seed}")
        # Every path must carry something, or the comparison proves little (campos reaches
        # only the colour, through SH of degree 1 and above).
        has_sh = scene.inputs["colors_precomp"] is None and scene.settings.sh_degree > 0
        for mode in MODES:
            for name in MATRICES + ("fields_of_view",):
                if name != "campos" or (has_sh and mode in ("color", "all")):
                    assert wants[0][mode][name].abs().max() > 0, (seed, mode, name)
    assert not failures, "\n".join(failures)


def test_precomputed_colors_give_campos_zero():
    scene = scene_for("colors-cov-aa", 0)
    upstream = upstream_gradients(scene, torch.zeros(29, 37, dtype=torch.bool), 0)
    got = camera_gradients(run_backend, scene, upstream, modes=("all",))["all"]
    assert torch.equal(got["campos"], torch.zeros(3))
    assert got["viewmatrix"].abs().max() > 0


def test_unused_matrix_entries_get_zero():
    """Column 3 of viewmatrix and column 2 of projmatrix never reach an output."""
    scene = scene_for("sh2-dc", 0)
    upstream = upstream_gradients(scene, torch.zeros(29, 37, dtype=torch.bool), 1)
    got = camera_gradients(run_backend, scene, upstream, modes=("all",))["all"]
    view = got["viewmatrix"].reshape(4, 4)
    proj = got["projmatrix"].reshape(4, 4)
    assert torch.equal(view[:, 3], torch.zeros(4)) and torch.equal(proj[:, 2], torch.zeros(4))
    assert view[:, :3].abs().min() > 0 and proj[:, [0, 1, 3]].abs().min() > 0


# ----------------------------------------------------------------------------------------------
# Layouts: SplaTAM's matrices, mixed dtypes, a single matrix requiring grad
# ----------------------------------------------------------------------------------------------

def splatam_settings(settings, w2c, proj_t):
    """The settings SplaTAM builds from a w2c (4,4) that requires grad: non-contiguous (1,4,4)
    views, projmatrix through bmm, campos through the inverse."""
    view = w2c.unsqueeze(0).transpose(1, 2)
    assert not view.is_contiguous()
    full_proj = view.bmm(proj_t.unsqueeze(0))
    campos = torch.linalg.inv(w2c)[:3, 3]
    return settings._replace(viewmatrix=view, projmatrix=full_proj, campos=campos)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_splatam_noncontiguous_w2c(dtype):
    scene = scenes.make_scene(4242, sh_degree=2, dtype=dtype)
    pixels, _ = scenes.ambiguous(scene)
    upstream = upstream_gradients(scene, pixels, 7)
    s = scene.settings
    w2c0 = s.viewmatrix.detach().reshape(4, 4).T.contiguous()
    proj_t = torch.linalg.solve(s.viewmatrix.detach().reshape(4, 4).double(),
                                s.projmatrix.detach().reshape(4, 4).double()).to(dtype)

    def grad_of_w2c(run):
        w2c = w2c0.clone().requires_grad_()
        color, _, depth, weight = run(scene.inputs, splatam_settings(s, w2c, proj_t))
        loss = sum((out * upstream[k]).sum()
                   for k, out in (("color", color), ("depth", depth), ("weight", weight)))
        loss.backward()
        return w2c.grad

    got, want = grad_of_w2c(run_backend), grad_of_w2c(run_reference)
    tol = 1e-4 if dtype == F32 else 1e-8
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert want.abs().max() > 0


def test_float32_matrices_with_float64_gaussians():
    """The matrices are cast to the Gaussians' dtype; the gradient comes back in theirs: that of
    the same matrices given in float64, rounded."""
    scene = scene_for("float64", 0)
    upstream = upstream_gradients(scene, scenes.ambiguous(scene)[0], 3)
    leaves = camera_leaves(scene.settings, F32)
    color, _, depth, weight = run_backend(scene.inputs, scene.settings._replace(**leaves))
    torch.autograd.backward([color, depth, weight],
                            [upstream["color"], upstream["depth"], upstream["weight"]])
    rounded = scenes.Scene(scene.inputs, scene.settings._replace(
        **{n: leaves[n].detach().to(F64) for n in CAMERA}))
    want = camera_gradients(run_backend, rounded, upstream, modes=("all",))["all"]
    want.update(zip(FIELDS_OF_VIEW, want.pop("fields_of_view")))
    for name in CAMERA:
        assert leaves[name].grad.dtype == F32
        assert torch.equal(leaves[name].grad, want[name].to(F32))
        assert leaves[name].grad.abs().max() > 0


def test_only_the_matrix_that_requires_grad_gets_one():
    scene = scene_for("sh1", 1)
    proj = scene.settings.projmatrix.detach().clone().requires_grad_()
    view = scene.settings.viewmatrix.detach().clone()
    color, _, depth, weight = run_backend(
        scene.inputs, scene.settings._replace(projmatrix=proj, viewmatrix=view))
    (color.sum() + depth.sum() + weight.sum()).backward()
    assert proj.grad is not None and proj.grad.abs().max() > 0
    assert view.grad is None


# ----------------------------------------------------------------------------------------------
# The default path
# ----------------------------------------------------------------------------------------------

def test_without_camera_grad_nothing_changes():
    """Outputs and every Gaussian gradient are bitwise the same whether or not the camera takes
    a gradient; without one the settings are detached copies and the Function gets no camera
    inputs."""
    scene = scene_for("sh3", 1)
    upstream = upstream_gradients(scene, torch.zeros(29, 37, dtype=torch.bool), 2)
    results = []
    for with_camera in (False, True):
        inputs = scene.with_grad()
        settings = scene.settings
        if with_camera:
            settings = settings._replace(**camera_leaves(settings))
        color, radii, depth, weight = run_backend(inputs, settings)
        torch.autograd.backward([color, depth, weight],
                                [upstream["color"], upstream["depth"], upstream["weight"]])
        grads = {k: v.grad for k, v in inputs.items() if v is not None}
        results.append(((color, radii, depth, weight), grads, color.grad_fn))
    (out0, grads0, fn0), (out1, grads1, fn1) = results
    for a, b in zip(out0, out1):
        assert torch.equal(a, b)
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name
    assert len(fn1.next_functions) == len(fn0.next_functions) + len(CAMERA)

    leaves = camera_leaves(scene.settings)
    checked = CheckedSettings(scene.settings, torch.device("cpu"), F32)
    assert not checked.camera_grad and not checked.viewmatrix.requires_grad
    with torch.no_grad():
        assert not CheckedSettings(scene.settings._replace(**leaves), torch.device("cpu"),
                                   F32).camera_grad
    assert CheckedSettings(scene.settings._replace(**leaves), torch.device("cpu"), F32).camera_grad


def test_camera_gradient_repeatable_and_translation_identity():
    """On a scene over the threaded threshold (P >= 4096), two backward calls agree bit for bit,
    and an exact identity holds: moving every Gaussian by d changes the outputs as moving the
    camera by -d does, so sum_i dL/dmu_i = V3 dL/dV_row3 + P3 dL/dP_row3 - dL/dcampos, where V3
    and P3 are the first three rows of the matrices (t = [mu, 1] @ V)."""
    scene = scenes.make_scene(77, P=4500, height=24, width=40, sh_degree=2, dtype=F64)
    gen = torch.Generator().manual_seed(5)
    upstream = {k: torch.randn(shape, generator=gen, dtype=F64)
                for k, shape in (("color", (3, 24, 40)), ("depth", (24, 40)), ("weight", (24, 40)))}
    runs = []
    for _ in range(2):
        inputs = scene.with_grad(("means3D",))
        leaves = camera_leaves(scene.settings)
        color, _, depth, weight = run_backend(inputs, scene.settings._replace(**leaves))
        torch.autograd.backward([color, depth, weight],
                                [upstream["color"], upstream["depth"], upstream["weight"]])
        runs.append((inputs["means3D"].grad, {n: leaves[n].grad for n in CAMERA}))
    for name in CAMERA:
        assert torch.equal(runs[0][1][name], runs[1][1][name])
    dmeans, cam = runs[0]
    V = scene.settings.viewmatrix.reshape(4, 4)
    Pm = scene.settings.projmatrix.reshape(4, 4)
    via_camera = (V[:3] @ cam["viewmatrix"].reshape(4, 4)[3] + Pm[:3] @ cam["projmatrix"].reshape(4, 4)[3]
                  - cam["campos"])
    torch.testing.assert_close(dmeans.sum(dim=0), via_camera, rtol=1e-9,
                               atol=1e-9 * dmeans.abs().sum().item())
    assert dmeans.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Finite differences with the matrices as inputs
# ----------------------------------------------------------------------------------------------

def projection_failures(scene, seed, tol=None, compare_camera=compare_gradients):
    """A camera model's check of one scene against the reference: the outputs
    (`forward_against_reference`, `tol`), every Gaussian input's gradient and the camera's
    (`compare_camera`). Returns (failures, radii, the reference's camera gradients)."""
    dtype = scene.inputs["means3D"].dtype
    failures, (_, radii, _, _), _, keep = forward_against_reference(scene, f"seed {seed}", tol)
    upstream = upstream_gradients(scene, ~keep, seed)
    failures += compare_gradients(gradients(run_backend, scene, upstream),
                                  reference_gradients(scene, upstream), dtype, f"seed {seed}")
    wants = camera_reference_gradients(scene, upstream)
    failures += compare_camera(camera_gradients(run_backend, scene, upstream), wants, dtype,
                               f"seed {seed} camera")
    return failures, radii, wants


def make_camera_gradcheck_fn(scene):
    def fn(*leaves):   # camera_parts' order: the lens's distortion coefficients last
        settings = scene.settings._replace(**dict(zip(camera_parts(scene.settings), leaves)))
        color, _, depth, weight = run_backend(scene.inputs, settings)
        return color, depth, weight
    return fn, tuple(camera_leaves(scene.settings).values())


@pytest.mark.parametrize("config", ["sh0", "sh1-dc", "sh2-aa", "sh3-mod", "colors-cov"])
def test_gradcheck_camera(config):
    scene = scenes.make_smooth_scene(900, P=5, height=13, width=18,
                                     **scenes.GRADCHECK_CONFIGS[config])
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_gradcheck_camera_full_jacobian():
    scene = scenes.make_smooth_scene(950, P=3, height=18, width=17, sh_degree=3,
                                     antialiasing=True)
    fn, leaves = make_camera_gradcheck_fn(scene)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,shape", [("viewmatrix", (4, 3)), ("projmatrix", (1, 4, 5)),
                                         ("campos", (4,))])
def test_mismatched_matrix_that_requires_grad(field, shape):
    scene = scene_for("sh1", 0)
    bad = torch.zeros(shape, requires_grad=True)
    with pytest.raises(ValueError, match=f"raster_settings.{field}"):
        run_backend(scene.inputs, scene.settings._replace(**{field: bad}))


@pytest.mark.parametrize("field", MATRICES)
def test_nonfinite_matrix_that_requires_grad(field):
    scene = scene_for("sh1", 0)
    leaves = camera_leaves(scene.settings)
    with torch.no_grad():
        leaves[field].view(-1)[1] = float("nan")
    settings = scene.settings._replace(debug=True, **leaves)
    with pytest.raises(ValueError, match=rf"raster_settings\.{field}\["):
        run_backend(scene.inputs, settings)


@pytest.mark.parametrize("seed", range(3))
def test_camera_gradients_from_feature_map_and_median(seed):
    """The feature channels and the median depth reach the camera through the same splat
    gradients as colour does (float64, against the reference's autograd)."""
    scene = scenes.make_scene(8800 + seed, P=40, sh_degree=1, dtype=F64, outliers=False)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(scene.P, 5, generator=gen, dtype=F64)
    H, W = scene.settings.image_height, scene.settings.image_width
    up_features = torch.randn(5, H, W, generator=gen, dtype=F64)
    up_median = torch.randn(H, W, generator=gen, dtype=F64)

    def camera_grads(run):
        leaves = camera_leaves(scene.settings)
        out = run(scene.with_grad(), scene.settings._replace(**leaves))
        feature_map, median = out[4], out[5]
        loss = (feature_map * up_features).sum() + (median * up_median).sum()
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return {n: (torch.zeros_like(leaves[n]) if g is None else g)
                for n, g in zip(CAMERA, grads)}

    got = camera_grads(lambda i, s: GaussianRasterizer(s)(**i, features=features,
                                                          median_depth=True))
    want = camera_grads(lambda i, s: rasterize_reference(**i, raster_settings=s,
                                                         features=features, median_depth=True))
    assert float(got["viewmatrix"].abs().max()) > 0
    for name in CAMERA:
        scale = float(want[name].abs().max())
        torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-8 * max(scale, 1e-12),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("keep_grad", [False, True])
@pytest.mark.parametrize("target", [F32, F64])
def test_compiled_camera_packing_matches_its_twin(keep_grad, target):
    """`_backend.pack_camera` (C++, what the rasterizer's calls use) against its PyTorch twin
    `_validation.pack_camera` (the reference's): the same flat values in the target dtype, from
    the layouts users pass (SplaTAM's non-contiguous (1,4,4) view, 4x4, float64 sources); a
    private copy (editing a source afterwards changes nothing); detached unless keep_grad, and
    then the same gradients reach the sources."""
    from diff_gaussian_rasterization_depth import _backend, _validation
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
    leaves = [torch.rand(3, generator=gen), torch.randn(4, 4, generator=gen, dtype=F64),
              torch.randn(4, 4, generator=gen), torch.randn(1, 3, generator=gen, dtype=F64)]
    runs = []
    for pack in (_backend.pack_camera, _validation.pack_camera):
        mine = [t.clone().requires_grad_(k > 0) for k, t in enumerate(leaves)]
        parts = [mine[0], mine[1].unsqueeze(0).transpose(1, 2), mine[2], mine[3]]
        runs.append((mine, pack(parts, torch.device("cpu"), target, keep_grad)))
    (leaves_c, packed), (leaves_twin, twin) = runs
    assert [tuple(t.shape) for t in packed] == [(3,), (16,), (16,), (3,)]
    for a, b in zip(packed, twin):
        assert a.dtype == target and torch.equal(a, b)
        assert a.requires_grad == b.requires_grad == keep_grad  # views of one differentiable cat
    before = [t.detach().clone() for t in packed]
    with torch.no_grad():
        for t in leaves_c:
            t.add_(1.0)
    assert all(torch.equal(a.detach(), b) for a, b in zip(packed, before))
    if keep_grad:
        weights = [torch.randn(t.shape, generator=gen, dtype=target) for t in packed[1:]]
        for out in (packed, twin):
            sum((w * t).sum() for w, t in zip(weights, out[1:])).backward()
        for a, b in zip(leaves_c[1:], leaves_twin[1:]):
            assert a.grad is not None and torch.equal(a.grad, b.grad)
