"""The emulation of the CUDA execution model itself (cuda_rasterizer/cuda_emulation.h): thread
orders, the results of warp collectives, poisoned shared memory, planted bugs refused with the
kernel named, an AddressSanitizer build (with UBSan's alignment check) that runs scenes and
catches an out-of-bounds write and a misaligned vector load, and valgrind's memcheck on the
sanitizer cases, which catches reads of what nothing wrote.
The CUDA backend's own tests run on it through tests/cuda_target.py."""
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from cuda_target import EMULATED_CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    not EMULATED_CUDA, reason="the emulated CUDA backend was not built")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def emu():
    from diff_gaussian_rasterization_depth import _backend
    with _backend.emulated_cuda() as module:
        yield module


def turns(emu, order, threads=64):
    emu.set_thread_order(order)
    out = emu.checks.turns(threads)
    return out[:threads].tolist(), out[threads:].tolist()


def test_thread_orders(emu):
    n = 64
    before, after = turns(emu, "asc", n)
    assert before == list(range(n))
    assert sorted(after) == list(range(n, 2 * n))  # nobody passes the barrier early
    before, after = turns(emu, "desc", n)
    assert before == list(range(n - 1, -1, -1))
    assert sorted(after) == list(range(n, 2 * n))
    first, _ = turns(emu, "random:1", n)
    again, _ = turns(emu, "random:1", n)
    other, _ = turns(emu, "random:2", n)
    assert sorted(first) == list(range(n)) and first == again and first != other
    with pytest.raises(ValueError, match="random:SEED"):
        emu.set_thread_order("sideways")


def test_block_orders(emu):
    """A grid's blocks run in the thread order too (a GPU runs them in any order): `desc`
    backwards, `random:SEED` a permutation that replays, on a 2D grid of fresh size."""
    gx, gy = (int(v) for v in torch.randint(3, 12, (2,)))
    n = gx * gy
    emu.set_thread_order("asc")
    assert emu.checks.block_turns(gx, gy).tolist() == list(range(n))
    emu.set_thread_order("desc")
    assert emu.checks.block_turns(gx, gy).tolist() == list(range(n - 1, -1, -1))
    emu.set_thread_order("random:3")
    first = emu.checks.block_turns(gx, gy).tolist()
    assert sorted(first) == list(range(n)) and first == emu.checks.block_turns(gx, gy).tolist()
    assert first not in (list(range(n)), list(range(n - 1, -1, -1)))


def expected_collectives(threads, width):
    """What a GPU returns, for the kernel collectives_kernel of ext_emulated.cpp; NaN where the
    source lane does not exist (undefined on a GPU, poisoned by the emulation)."""
    rows = []
    for t in range(threads):
        lane, base = t % 32, t - t % 32
        segment, offset = lane - lane % width, lane % width

        def value(src):
            return 100.0 * (base + src) + 1 if base + src < threads else math.nan
        down = lane + 3 if offset + 3 < width else lane
        xor = lane ^ 5
        if xor >= segment + width:
            xor = lane
        idx = segment + (lane + 7) % 32 % width
        up = lane - 2 if offset >= 2 else lane
        lanes = [s for s in range(32) if base + s < threads]
        ballot = sum(1 << s for s in lanes if (base + s) % 2 == 1) & 0xFFFF
        rows.append([value(down), value(xor), value(idx), value(up), float(ballot),
                     float(31 in lanes), 0.0, float(threads // 2)])
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("order", ["asc", "desc", "random:5"])
@pytest.mark.parametrize("threads,width", [(64, 32), (64, 8), (64, 4), (48, 32), (96, 16)])
def test_warp_collectives(emu, order, threads, width):
    emu.set_thread_order(order)
    got = emu.checks.collectives(threads, width)
    torch.testing.assert_close(got, expected_collectives(threads, width), equal_nan=True,
                               rtol=0, atol=0)


def test_shared_memory_starts_poisoned(emu):
    value, integer = emu.checks.unwritten_shared().tolist()
    assert math.isnan(value) and integer == -1


def test_mismatched_barriers_are_an_error(emu):
    with pytest.raises(RuntimeError, match=r"mismatched_barrier_kernel.*mismatched barriers"):
        emu.checks.mismatched_barrier()
    # The emulation is usable after the failed launch.
    assert emu.checks.turns(32)[:32].tolist() == list(range(32))


def test_barrier_after_an_early_return_is_an_error(emu):
    """Threads 32-63 return before a __syncthreads that threads 0-31 wait at: undefined on a
    GPU (a barrier in conditional code must see the same condition across the block)."""
    with pytest.raises(RuntimeError, match=r"barrier_after_exit_kernel.*exited before it"):
        emu.checks.barrier_after_exit()
    # The emulation is usable after the failed launch.
    assert emu.checks.turns(32)[:32].tolist() == list(range(32))


def test_divergent_shuffle_is_an_error(emu):
    with pytest.raises(RuntimeError) as info:
        emu.checks.divergent_shuffle()
    message = str(info.value)
    assert "divergent_shuffle_kernel" in message and "deadlock" in message
    assert "__shfl_down_sync(mask 0xffffffff) at ext_emulated.cpp" in message
    assert "__syncthreads at ext_emulated.cpp" in message


def test_invalid_memory_access_is_an_error(emu):
    with pytest.raises(RuntimeError, match=r"null_read_kernel.*invalid memory access"):
        emu.checks.null_read()
    assert emu.checks.turns(32)[:32].tolist() == list(range(32))


def test_sanitizer_cases_run_emulated():
    """tools/sanitize_cuda.py --emulated: every case, forward and backward, finite."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sanitize_cuda.py"),
                          "--emulated"], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    spec = importlib.util.spec_from_file_location(
        "sanitize_cuda", os.path.join(ROOT, "tools", "sanitize_cuda.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert len(tool.CASES) >= 9
    missing = [i for i in range(len(tool.CASES)) if f"case {i} ok" not in run.stdout]
    assert not missing, run.stdout


def test_valgrind_sees_reads_of_what_nothing_wrote():
    """tools/sanitize_cuda.py --valgrind (initcheck for the emulation): the compute-sanitizer
    cases (camera and AbsGS gradients, 20 feature channels, split lists and a sparse Adam step
    among them, and a wide fisheye with its camera gradient) under valgrind's memcheck, with the emulation marking what it poisons as
    unwritten, report nothing in this package's code, and every output and gradient is
    written; then the
    two planted kernels that read a shared variable nobody wrote are each reported: the branch
    on it (which the NaN poison alone lets pass: the comparison is false, the output stays
    written) and the copy into an output. .ci/run installs valgrind."""
    from diff_gaussian_rasterization_depth import _emulated_cuda
    if shutil.which("valgrind") is None or not _emulated_cuda.tells_valgrind():
        assert os.environ.get("CI") != "true", "CI installs valgrind before the build (.ci/run)"
        pytest.skip("valgrind is not installed, or was not when the package was built (its "
                    "headers, valgrind/memcheck.h, let the emulation mark what is unwritten)")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sanitize_cuda.py"),
                          "--valgrind", "--cases", "0,2,7,8,9,12", "--plant"],
                         capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=900)
    out = run.stdout + run.stderr
    for case in (0, 2, 7, 8, 9, 12):
        assert f"case {case} ok" in out, out[-4000:]
    assert "planted branch on an unwritten value: ran" in out, out[-4000:]
    # The planted output is caught by the check of every output, which ends the run ...
    assert "planted unwritten output: byte 0 of 8 was never written" in out, out[-4000:]
    assert "planted unwritten output: not seen" not in out
    # ... and memcheck reported the branch, in the kernel, and the check's finding: those two
    # alone (the cases' kernels read nothing unwritten).
    assert "Conditional jump or move depends on uninitialised value" in out, out[-4000:]
    assert "unwritten_branch_kernel" in out, out[-4000:]
    assert "2 report(s) in this package's code" in out, out[-4000:]
    assert run.returncode == 1


def test_memcheck_log_reports_are_read_whatever_precedes_them():
    """sanitize_cuda.our_reports splits a valgrind log into reports and keeps those with a frame
    of this package's code. valgrind writes its warnings ("set address range perms: large
    range", which PyTorch's large allocations bring) with no blank line after them, so a report
    right behind one must still be read (in 3DGS's environment, PyTorch 1.12, the planted branch
    went unseen that way). A random mix of reports, ours and not, each behind a warning or not."""
    spec = importlib.util.spec_from_file_location(
        "sanitize_cuda", os.path.join(ROOT, "tools", "sanitize_cuda.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    pid = int(torch.randint(100, 99999, (), generator=gen))
    ours = ["dgrd::emulation_checks::unwritten_branch_kernel(float*) (ext_emulated.cpp:58)",
            "dgrd::emu::first_unwritten_byte(void const*, unsigned long) (cuda_emulation.cpp:780)"]
    theirs = ["at::native::copy_ (Copy.cpp:250)", "PyObject_Call (call.c:245)"]
    kinds = ["Conditional jump or move depends on uninitialised value(s)",
             "Uninitialised byte(s) found during client check request",
             "Invalid read of size 4"]
    lines, expected = [f"=={pid}== Memcheck, a memory error detector", f"=={pid}== "], []
    for k in range(24):  # a report of ours behind a warning but for a chance of 0.75^24
        if int(torch.randint(0, 2, (), generator=gen)):
            lines.append(f"=={pid}== Warning: set address range perms: large range "
                         f"[0x{k:x}0000, 0x{k:x}8000) (defined)")
        mine = bool(torch.randint(0, 2, (), generator=gen))
        kind = kinds[int(torch.randint(0, 3, (), generator=gen))]
        frames = [ours[k % 2] if mine else theirs[k % 2], theirs[(k + 1) % 2]]
        lines += [f"=={pid}== {kind}"] + [
            f"=={pid}==    {'at' if j == 0 else 'by'} 0x{4096 * k + j:X}: {f}"
            for j, f in enumerate(frames)]
        if kind.startswith("Invalid"):
            lines.append(f"=={pid}==  Address 0x{k:x}0 is 0 bytes after a block of size 16")
        lines.append(f"=={pid}== ")
        if mine:
            expected.append((kind, frames[0]))
    lines.append(f"=={pid}== ERROR SUMMARY: 24 errors from 24 contexts")
    found = tool.our_reports("\n".join(lines))
    assert [(r[0], r[1].split(": ", 1)[1]) for r in found] == expected


def test_memcheck_reports_of_cpython_inside_our_calls_are_not_ours():
    """A report raised in CPython's garbage collector (memcheck takes some of its objects' bytes
    for undefined, in runs that never call this package) names our frames when the collection
    starts inside one of our calls; only a report whose first frames are our code is ours
    (sanitize_cuda.OUR_TOP_FRAMES deep, for a memcpy or an inlined library call above it)."""
    spec = importlib.util.spec_from_file_location(
        "sanitize_cuda", os.path.join(ROOT, "tools", "sanitize_cuda.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cpython = ["Py_TYPE (object.h:133)", "visit_decref (gcmodule.c:452)",
               "list_traverse (listobject.c:2703)", "subtract_refs (gcmodule.c:478)",
               "deduce_unreachable (gcmodule.c:1100)", "gc_collect_main (gcmodule.c:1226)",
               "_PyObject_GC_Link (gcmodule.c:2270)", "_PyType_AllocNoTrack (typeobject.c:1132)"]
    ours = "dgrd::emu::first_unwritten_byte(void const*, unsigned long) (cuda_emulation.cpp:780)"
    for depth in range(len(cpython) + 1):
        frames = cpython[:depth] + [ours, "pybind11::cpp_function::dispatcher (pybind11.h:1209)"]
        log = ["==7== Use of uninitialised value of size 8"] + [
            f"==7==    {'at' if j == 0 else 'by'} 0x{j:X}: {f}" for j, f in enumerate(frames)]
        found = tool.our_reports("\n".join(log + ["==7== "]))
        assert len(found) == (1 if depth < tool.OUR_TOP_FRAMES else 0), (depth, found)


ASAN_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch.utils import cpp_extension
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests", sys.argv[1] + "/tools"]
    import emulated_build, scenes
    from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend
    build = sys.argv[2]
    # -O0 after the usual flags: the sanitized build is for checking, and compiles faster.
    # UBSan's alignment check with it: a vector load (Vec2, Vec4) from an address its type's
    # alignment does not divide, which a GPU refuses ("misaligned address"), stops the run.
    sanitize = ["-fsanitize=address,alignment", "-fno-sanitize-recover=alignment"]
    flags = sanitize + ["-fno-omit-frame-pointer"] + emulated_build.CXX_FLAGS + ["-O0"]
    mod = cpp_extension.load("dgrd_emulated_asan", emulated_build.sources(build, "."),
                             extra_cflags=flags, extra_ldflags=sanitize,
                             extra_include_paths=[sys.argv[1]], build_directory=build)
    if sys.argv[3] == "compile":
        sys.exit(0)
    def render(scene):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_()
                  for k, v in scene.inputs.items()}
        color, radii, depth, weight = GaussianRasterizer(scene.settings)(**leaves)
        (color.sum() + depth.sum() + weight.sum()).backward()
        return color.detach(), leaves["means3D"].grad
    for seed, (H, W, P) in enumerate([(17, 33, 64), (40, 29, 100), (1, 1, 8)]):
        scene = scenes.make_scene(seed, P=P, height=H, width=W, sh_degree=2)
        expected = render(scene)
        _backend._emulated = mod
        got = render(scene)
        _backend._emulated = None
        assert (got[0] - expected[0]).abs().max() < 1e-5, seed
        torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-4)
    print("scenes ok", flush=True)
    if sys.argv[3] == "none":
        # compute-sanitizer's cases (tools/sanitize_cuda.py): split lists, the split forward's
        # medians, feature channels, inverse depth, empty and culled scenes.
        import sanitize_cuda
        _backend._emulated = mod
        for case in range(len(sanitize_cuda.CASES)):
            sanitize_cuda.run_case(case, "cpu")
        _backend.set_cuda_tuning()
        _backend._emulated = None
        print("sanitizer cases ok", flush=True)
    if sys.argv[3] == "plant":
        mod.checks.out_of_bounds(64)
        print("out of bounds write not caught", flush=True)
    if sys.argv[3] == "misalign":
        mod.checks.misaligned_load()
        print("misaligned load not caught", flush=True)
""")


def test_address_sanitizer_build(tmp_path):
    """The emulated backend built with -fsanitize=address,alignment renders scenes and
    compute-sanitizer's cases cleanly (no kernel loads a vector from a misaligned address, as a
    GPU would refuse), a kernel writing one element past a buffer aborts with ASan's report, and
    one reading a Vec4 four bytes off its alignment with UBSan's."""
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libasan):
        pytest.skip("gcc has no libasan")
    script = tmp_path / "asan_run.py"
    script.write_text(ASAN_SCRIPT)
    build = tmp_path / "build"
    build.mkdir()
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", PYTHONPATH=ROOT)
    # Compile without ASan's runtime preloaded (the compiler's processes would carry it); the
    # import that ends the build is let through without it.
    compile_only = subprocess.run(
        [sys.executable, str(script), ROOT, str(build), "compile"], capture_output=True,
        text=True, cwd=str(build), env=dict(env, ASAN_OPTIONS="verify_asan_link_order=0"))
    assert compile_only.returncode == 0, compile_only.stdout[-3000:] + compile_only.stderr[-3000:]
    env["LD_PRELOAD"] = libasan
    for mode in ("none", "plant", "misalign"):
        run = subprocess.run([sys.executable, str(script), ROOT, str(build), mode], env=env,
                             capture_output=True, text=True, cwd=str(build))
        assert "scenes ok" in run.stdout, run.stdout[-2000:] + run.stderr[-5000:]
        if mode == "none":
            assert run.returncode == 0, run.stderr[-5000:]
            assert "sanitizer cases ok" in run.stdout, run.stdout[-2000:]
            continue
        assert run.returncode != 0 and "not caught" not in run.stdout
        if mode == "plant":
            assert "heap-buffer-overflow" in run.stderr and "WRITE of size 4" in run.stderr
            assert "out_of_bounds_kernel" in run.stderr, run.stderr[-5000:]
        else:
            assert "misaligned address" in run.stderr, run.stderr[:3000]
            assert "requires 16 byte alignment" in run.stderr, run.stderr[:3000]
            assert "ext_emulated.cpp" in run.stderr, run.stderr[:3000]


def test_emulated_kernels_round_as_a_gpu():
    """Built with fused multiply-adds (tools/emulated_build.py, wherever the CPU has FMA), the
    emulated kernels round apart from the CPU backend as a GPU's do: their render is not the
    CPU's bit for bit, and stays within what the CUDA tests allow (cuda_target.forward_atol).
    The twin built without them (DGRD_EMULATE_FMA=0) rounds as the CPU backend does."""
    import scenes
    from cuda_target import forward_atol
    from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend
    scene = scenes.make_scene(29000, P=200, height=40, width=64, sh_degree=3)
    cpu = GaussianRasterizer(scene.settings)(**scene.inputs)
    with _backend.emulated_cuda() as emu:
        emulated = GaussianRasterizer(scene.settings)(**scene.inputs)
        fused = emu.fused_multiply_add()
    if not fused:
        for a, b in zip(emulated, cpu):
            assert torch.equal(a, b)
        return
    pixels, _ = scenes.ambiguous(scene)
    keep = ~pixels
    assert not torch.equal(emulated[0], cpu[0]) and not torch.equal(emulated[2], cpu[2])
    assert torch.equal(emulated[1], cpu[1])  # radii: integers, equal away from knife edges
    for k in (0, 2, 3):
        a, b = emulated[k][..., keep], cpu[k][..., keep]
        assert (a - b).abs().max() <= forward_atol(b)


def test_splat_power_rounds_alike_whatever_the_compiler_fuses(tmp_path):
    """splat_power as a GPU and the emulation evaluate it (its fused multiply-adds spelled out,
    blend.h) gives the same bits built with and without the compiler's own contraction, on fresh
    random conics and offsets, where the plain expression does not: so every kernel, whatever
    nvcc fuses in it, and the emulation find the same alphas. And footprint leaves a zero conic
    where it culls (the preprocess backward reads it where its rounding culls a kept Gaussian)."""
    import shutil
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import emulated_build
    finally:
        sys.path.pop(0)
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    emulation_flags = emulated_build.fused_multiply_add_flags()
    if compiler is None or not emulation_flags:
        pytest.skip("no C++ compiler, or a CPU without fused multiply-adds")
    fma = [f for f in emulation_flags if f.startswith("-m")]  # -mfma on x86
    seed = str(int(torch.randint(0, 2**31 - 1, ()).item()))
    results = {}
    for contract in ("off", "fast"):
        exe = tmp_path / f"rounding_{contract}"
        subprocess.run([compiler, "-O2", "-std=c++17", f"-ffp-contract={contract}", *fma,
                        "-DDGRD_EMULATE_FMA=1", "-Wno-psabi", "-I", ROOT,
                        os.path.join(ROOT, "tests", "cpp", "rounding_check.cpp"), "-o", str(exe)],
                       check=True)
        out = subprocess.run([str(exe), seed], check=True, capture_output=True, text=True).stdout
        results[contract] = dict(line.split(" ", 1) for line in out.strip().splitlines())
    off, fast = results["off"], results["fast"]
    assert off["pinned"] == fast["pinned"], (seed, results)
    assert off["plain"] != fast["plain"], (seed, results)  # the compiler did contract
    for r in (off, fast):
        assert int(r["degenerate"]) >= 20 and r["kept"] == "0" and r["nonzero_conic"] == "0", r
