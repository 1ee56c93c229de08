"""The float CPU path's techniques change no bit: eight-lane groups against the per-pixel loop,
the power bound against none, tile order; the exponential shared by both; the work counts.

The per-pixel loop is the shared math in its scalar form (the path float64 and gradcheck take),
so equality with it ties the lanes to the same formulas, decisions and gradients.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend

import scenes

if _backend._C is None:
    pytest.skip(f"the compiled extension is not importable ({_backend._IMPORT_ERROR})",
                allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import build_config  # noqa: E402
ALL_ON = dict(lanes=True, power_bound=True)


@pytest.fixture
def tuning():
    """Sets the float path's switches for one test and restores the defaults after it."""
    ext = _backend._ext()
    yield lambda **kw: ext.set_cpu_tuning(**{**ALL_ON, **kw})
    ext.set_cpu_tuning(**ALL_ON)


def render_and_grads(scene, seed):
    inputs = scene.with_grad()
    color, radii, depth, weight = GaussianRasterizer(scene.settings)(**inputs)
    gen = torch.Generator().manual_seed(seed)
    loss = ((color * torch.randn(color.shape, generator=gen)).sum()
            + (depth * torch.randn(depth.shape, generator=gen)).sum()
            + (weight * torch.randn(weight.shape, generator=gen)).sum())
    loss.backward()
    grads = {k: v.grad for k, v in inputs.items() if v is not None and v.grad is not None}
    return (color.detach(), radii, depth.detach(), weight.detach()), grads


def dense_scene(seed, **kw):
    """Many overlapping splats of all opacities on an image whose width is no multiple of 8 or
    16, so that groups of lanes are cut at the tile and image edges and pixels saturate."""
    scene = scenes.make_scene(seed, P=kw.pop("P", 400), height=kw.pop("height", 45),
                              width=kw.pop("width", 53), sh_degree=1, **kw)
    gen = torch.Generator().manual_seed(seed)
    dtype = scene.inputs["means3D"].dtype
    scene.inputs["opacities"] = torch.rand(scene.P, 1, generator=gen, dtype=dtype) ** 0.5
    return scene


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("switch", ["lanes", "power_bound"])
def test_each_technique_changes_no_bit(seed, switch, tuning):
    scene = dense_scene(7100 + seed, antialiasing=bool(seed % 2))
    tuning()
    out_on, grads_on = render_and_grads(scene, seed)
    tuning(**{switch: False})
    out_off, grads_off = render_and_grads(scene, seed)
    for a, b in zip(out_on, out_off):
        assert torch.equal(a, b)
    assert grads_on.keys() == grads_off.keys()
    for k in grads_on:
        # The lanes sum a splat's pixels in another order (per lane, then across lanes) than
        # the per-pixel loop: equal to float rounding of the sums, not bit for bit. Measured on
        # 40 of these scenes: at most 1.8e-5 of a gradient's largest entry apart (6e-6 before
        # the weight's term took its closed form, T_final g / (1 - alpha), at stop 44), each
        # path within 8.7e-5 of the float64 reference, before and after.
        if switch == "lanes":
            torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-5,
                                       atol=3e-5 * float(grads_off[k].abs().max()))
        else:
            assert torch.equal(grads_on[k], grads_off[k]), k


def test_lanes_repeat_bitwise():
    """Dynamic scheduling of tiles, yet the same gradients every call (per-pair sums)."""
    scene = dense_scene(7300, P=600, height=70, width=90)
    torch.set_num_threads(2)
    first = render_and_grads(scene, 1)
    for _ in range(3):
        again = render_and_grads(scene, 1)
        for a, b in zip(first[0], again[0]):
            assert torch.equal(a, b)
        for k in first[1]:
            assert torch.equal(first[1][k], again[1][k]), k


def cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def host_compiler():
    """The C++ compiler the tests build their small programs with ($CXX, c++ or g++), or a skip."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler on PATH")
    return compiler


# The instruction sets the package's lane loops are compiled for (DGRD_LANE_CLONES), the
# narrow form of the lane operations (16-byte vectors: ARM, DGRD_BASELINE_LANES builds) and the
# two forms MSVC compiles: eight plain elements (ARM64) and AVX2 intrinsics (x64).
ISAS = {"baseline": ([], set()), "narrow": (["-DDGRD_BASELINE_LANES"], set()),
        "portable": (["-DDGRD_PORTABLE_LANES"], set()),
        "avx2-intrinsics": (["-DDGRD_AVX2_LANES", "-mavx2"], {"avx2"}),
        "avx2": (["-mavx2"], {"avx2"}),
        "x86-64-v4": (["-march=x86-64-v4"], {"avx512f", "avx512vl", "avx512bw", "avx512dq"})}


@pytest.mark.parametrize("isa", list(ISAS))
def test_exp_poly_accuracy_and_lanes(tmp_path, isa):
    """fast_exp.h: within 2 ulp of exp on [-87, 0], 0 below, exactly 1 above 0 (a power above 0
    is taken as 0), and the eight-lane version gives
    the scalar's bits (compiled here without PyTorch: the header is plain C++), for each
    instruction set the lane loops are cloned for that this machine can run."""
    compiler = host_compiler()
    flags, needed = ISAS[isa]
    if needed and not needed <= cpu_flags():
        pytest.skip(f"this CPU cannot run {isa} code")
    isa = flags
    exe = tmp_path / "exp_check"
    subprocess.run([compiler, "-O2", "-std=c++17", "-ffp-contract=off", "-Wno-psabi", *isa,
                    "-I", str(REPO), str(REPO / "tests" / "cpp" / "exp_poly_check.cpp"), "-o",
                    str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    fields = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert float(fields["max_ulp"]) <= 2.0, out
    assert int(fields["lane_mismatches"]) == 0, out
    assert int(fields["nonzero_below_range"]) == 0, out
    assert int(fields["not_one_above_zero"]) == 0, out
    assert int(fields["samples"]) > 1_000_000


@pytest.mark.parametrize("msvc_form", ["portable", "avx2"])
def test_msvc_lanes_give_the_vector_lanes_bits(tmp_path, msvc_form):
    """The forms of the lanes that MSVC compiles, eight plain elements (ARM64) and AVX2
    intrinsics (x64), render and differentiate a random SH-coloured scene to the very bits of the
    vector-extension lanes, and each build's lanes agree with its per-pixel loop:
    tests/cpp/cpu_backend_check.cpp, the CPU backend without PyTorch, which
    tools/check_msvc_build.py also builds with MSVC."""
    compiler = host_compiler()
    if msvc_form == "avx2" and "avx2" not in cpu_flags():
        pytest.skip("this CPU cannot run AVX2 code")
    seed = int(torch.randint(0, 10**9, ()).item())  # the program takes up to 1e9
    dumps = {}
    for form in ("", msvc_form):
        exe = build_backend_check(tmp_path, compiler, form)
        dump = tmp_path / f"{form or 'vector'}.bin"
        run = subprocess.run([str(exe), str(dump), "2000", "131", "97", "0", str(seed)],
                             capture_output=True, text=True)
        assert run.returncode == 0 and "agree bit for bit on the forward" in run.stdout, (
            form, seed, run.stdout, run.stderr)
        dumps[form] = dump.read_bytes()
    assert len(dumps[""]) > 100_000
    assert dumps[""] == dumps[msvc_form], f"seed {seed}"


def build_backend_check(tmp_path, compiler, form=""):
    """tests/cpp/cpu_backend_check.cpp with the CPU backend, built as setup.py builds `form`."""
    exe = tmp_path / f"check_{form or 'vector'}"
    flags = [f for f in build_config.host_compile_flags(False, [], form) if f != "-fno-gnu-unique"]
    subprocess.run([compiler, "-std=c++17", *flags, "-I", str(REPO),
                    str(REPO / "tests" / "cpp" / "cpu_backend_check.cpp"),
                    str(REPO / "cuda_rasterizer" / "cpu_backend.cpp"), "-o", str(exe)],
                   check=True)
    return exe


# CPU models of qemu's user-mode emulator, each making GCC's resolvers pick one clone of the
# lane loops: (model, what its cpuid says: "avx2 A avx512f B").
QEMU_CLONES = {"default": ("Westmere", "avx2 0 avx512f 0"), "avx2": ("Haswell", "avx2 1 avx512f 0")}


@pytest.fixture(scope="module")
def clone_check_build(tmp_path_factory):
    """The default build of cpu_backend_check, once for every clone's test."""
    if os.uname().machine != "x86_64":
        pytest.skip("the clones are x86-64's")
    compiler = host_compiler()
    macros = subprocess.run([compiler, "-dM", "-E", "-x", "c++", "/dev/null"],
                            capture_output=True, text=True).stdout
    if "__clang__" in macros or "__GNUC__" not in macros:
        pytest.skip("the lane loops are cloned by GCC only")
    return build_backend_check(tmp_path_factory.mktemp("clones"), compiler)


@pytest.mark.parametrize("clone", list(QEMU_CLONES))
def test_every_lane_clone_gives_the_same_bits(tmp_path, clone_check_build, clone):
    """GCC's clones of the lane loops (x86-64-v4, AVX2, the SSE2 baseline; the loader picks one
    by the CPU) render and differentiate to the same bits: cpu_backend_check.cpp built once, run
    on this CPU and under qemu-x86_64 with a CPU model that makes the loader pick `clone`, the
    dumps compared. (The program runs the lanes whatever the CPU; the package itself uses the
    per-pixel loop on an x86 CPU without AVX2.) .ci/run installs qemu-user."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        assert os.environ.get("CI") != "true", "CI installs qemu-user (.ci/run)"
        pytest.skip("qemu-x86_64 (Debian's qemu-user) is not installed")
    model, cpuid = QEMU_CLONES[clone]
    exe = clone_check_build
    seed = str(int(torch.randint(0, 10**9, ()).item()))
    dumps = {}
    for name, prefix in (("native", []), (clone, [qemu, "-cpu", model])):
        dump = tmp_path / f"{name}.bin"
        run = subprocess.run(prefix + [str(exe), str(dump), "1500", "97", "75", "0", seed],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "agree bit for bit on the forward" in run.stdout, (
            name, seed, run.stdout, run.stderr)
        if prefix:
            assert f"cpu: {cpuid}\n" in run.stdout, (model, run.stdout)
        dumps[name] = dump.read_bytes()
    assert len(dumps["native"]) > 50_000
    assert dumps["native"] == dumps[clone], f"seed {seed}"


def test_work_counts_are_consistent():
    """cpu_render_work's counts: every blend passed the power bound, every exp is an
    evaluation, lanes test at least what the pixels need, and the evaluations agree with a
    count by hand of the per-pixel walk on a tiny frame."""
    scene = dense_scene(7400, P=300, height=20, width=27)
    config, gaussians = scenes.backend_call(scene)
    color, depth, weight, radii, *_, state = _backend.forward(config, gaussians)
    pairs, evaluations, exps, blends, lane_evaluations = _backend._ext().cpu_render_work(
        config, state)
    point_list, tile_ranges, n_contrib = state[4], state[5], state[7]
    assert pairs == point_list.numel() > 0
    assert evaluations >= exps >= blends > 0
    assert lane_evaluations >= evaluations
    # Each pixel's walk reaches at least its last blended splat.
    assert evaluations >= int(n_contrib.sum())
    # A pixel that never saturates tests its whole tile list.
    H, W = depth.shape
    tiles_x = (W + 15) // 16
    lengths = (tile_ranges[:, 1] - tile_ranges[:, 0]).tolist()
    unsaturated = 0
    for y in range(H):
        for x in range(W):
            if weight[y, x] < 1 - 1e-4 - 0.01:   # far from saturation: walked to the end
                unsaturated += lengths[(y // 16) * tiles_x + x // 16]
    assert evaluations >= unsaturated


def render_optional(scene, F, median_depth, seed):
    """Every output of a call with feature channels F (or None) and the median, and the
    gradients of a random loss on all of them (radii aside)."""
    dtype = scene.inputs["means3D"].dtype
    inputs = scene.with_grad()
    Fg = None if F is None else F.clone().requires_grad_()
    out = GaussianRasterizer(scene.settings)(**inputs, features=Fg, median_depth=median_depth)
    g = torch.Generator().manual_seed(seed + 50)
    loss = sum((torch.nan_to_num(o) * torch.randn(o.shape, generator=g, dtype=dtype)).sum()
               for i, o in enumerate(out) if i != 1)
    loss.backward()
    grads = {k: v.grad for k, v in inputs.items() if v is not None and v.grad is not None}
    if Fg is not None:
        grads["features"] = Fg.grad
    return [o.detach() for o in out], grads


def assert_lane_grads_close(on, off):
    """Gradients of the lanes against the per-pixel loop: the same terms summed in another
    order. The preprocess backward turns those roundings (1e-7 of the largest value) into up
    to 2e-6 of the largest rotation or scale gradient, where terms cancel; a missing term
    would differ by orders of magnitude more."""
    assert on.keys() == off.keys()
    for k in on:
        scale = float(off[k].abs().max()) if off[k].numel() else 0.0
        torch.testing.assert_close(on[k], off[k], rtol=1e-5, atol=1e-5 * scale,
                                   msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("C,median", [(1, False), (3, True), (37, False), (0, True)])
def test_lanes_carry_features_and_median(seed, C, median, tuning):
    """Feature channels and the median depth on the eight lanes: every output bit for bit as
    the per-pixel loop's, every gradient (features' too) equal to float rounding of the sums."""
    scene = dense_scene(7700 + seed, antialiasing=bool(seed % 2))
    gen = torch.Generator().manual_seed(seed)
    F = torch.randn(scene.P, C, generator=gen) if C else None
    tuning()
    out_on, grads_on = render_optional(scene, F, median, seed)
    tuning(lanes=False)
    out_off, grads_off = render_optional(scene, F, median, seed)
    assert len(out_on) == 4 + (C > 0) + median
    for a, b in zip(out_on, out_off):
        assert torch.equal(a, b)
    if median:  # the median is a real, varied output here, not zeros
        assert float(out_on[-1].std()) > 0
    assert_lane_grads_close(grads_on, grads_off)


def test_feature_gradient_waves_repeat_on_any_thread_count(tuning):
    """With many channels the feature gradients are reduced in several waves of tiles (over
    2^22 values of pair sums): the same as the per-pixel loop's, and bit for bit the same on
    1 and 2 threads."""
    scene = dense_scene(7800, P=500, height=60, width=70)
    config, _ = scenes.backend_call(scene)
    pairs = int(_backend.forward(config, scenes.backend_call(scene)[1])[-1][5][-1, 1])
    C = (1 << 22) // pairs * 3  # about three waves
    F = torch.randn(scene.P, C, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(render_optional(scene, F, True, 3))
    finally:
        torch.set_num_threads(threads)
    (out1, grads1), (out2, grads2) = runs
    for k in grads1:
        assert torch.equal(grads1[k], grads2[k]), k
    tuning(lanes=False)
    _, grads_off = render_optional(scene, F, True, 3)
    assert_lane_grads_close(grads1, grads_off)
    assert float(grads1["features"].abs().sum(1).gt(0).float().mean()) > 0.5


def test_nonfinite_feature_shows_only_where_blended(tuning):
    """A NaN or infinite feature value shows in the feature map where its Gaussian is blended
    and nowhere else, on the lanes as in the per-pixel loop, and leaves the other Gaussians'
    gradients finite."""
    scene = dense_scene(7900)
    F = torch.randn(scene.P, 4, generator=torch.Generator().manual_seed(2))
    F[::7, 1] = float("nan")
    F[3::7, 2] = float("inf")
    tuning()
    out_on, grads_on = render_optional(scene, F, False, 4)
    tuning(lanes=False)
    out_off, grads_off = render_optional(scene, F, False, 4)
    for a, b in zip(out_on, out_off):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    feature_map = out_on[4]
    assert feature_map[0].isfinite().all() and feature_map[3].isfinite().all()
    assert not feature_map[1].isfinite().all()
    assert bool(feature_map[1].isfinite().any())  # not poisoned everywhere
    for a, b in zip(out_on[:4], out_off[:4]):
        assert a.isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_power_bound_changes_no_bit_with_optional_outputs(seed, dtype, tuning):
    """With feature channels and the median (on the lanes in float32, the per-pixel loop in
    float64) the power bound changes no output and no gradient, bit for bit."""
    scene = dense_scene(7500 + seed, P=250, height=37, width=45, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    F = torch.randn(scene.P, 5, generator=gen, dtype=dtype)

    def run():
        return render_optional(scene, F, True, seed)

    tuning()
    out_on, grads_on = run()
    tuning(power_bound=False)
    out_off, grads_off = run()
    for a, b in zip(out_on, out_off):
        assert torch.equal(a, b)
    for k in grads_on:
        assert torch.equal(grads_on[k], grads_off[k]), k


def test_binning_same_lists_for_any_thread_count():
    """Binning by one global depth sort: every tile's list is in ascending (depth, index) order,
    and the lists are the same on 1 and 2 threads."""
    scene = scenes.make_scene(7600, P=6000, height=90, width=120, sh_degree=0)
    config, gaussians = scenes.backend_call(scene)
    states = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            states.append(_backend.forward(config, gaussians)[-1])
    finally:
        torch.set_num_threads(threads)
    (one, two) = states
    point_list, tile_ranges, depth = one[4], one[5], one[3][:, 3]
    assert int((one[0] > 0).sum()) >= 4096   # enough visible Gaussians for one chunk a thread
    assert torch.equal(point_list, two[4]) and torch.equal(tile_ranges, two[5])
    for begin, end in tile_ranges.tolist():
        ids = point_list[begin:end].long()
        z = depth[ids]
        assert bool(((z[1:] > z[:-1]) | ((z[1:] == z[:-1]) & (ids[1:] > ids[:-1]))).all())
