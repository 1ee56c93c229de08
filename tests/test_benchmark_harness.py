"""The benchmark harness (benchmarks/) runs and its scenes follow benchmarks/scenes.py's protocol.

Runs on the CPU backend only: `bench.py --quick --device cpu` with one repetition, and the scene
builder's point counts (no rendering of the large scenes), on data/garden_points.npz.
"""
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import scenes as test_scenes
from diff_gaussian_rasterization_depth import _backend

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    """Import a benchmarks/ file by path, under a private name (tests/ has a scenes.py too)."""
    spec = importlib.util.spec_from_file_location(f"_dgrd_bench_{name}",
                                                  REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_scenes = _load("scenes")


def run_bench(script: str, tmp_path, *args):
    """(stdout, the parsed --json file) of benchmarks/<script> run with args in tmp_path; fails
    the test with its output if it fails."""
    out = tmp_path / f"{Path(script).stem}.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--json",
                           str(out)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out.read_text())

CROP_COUNT = 111_785


def test_data_file_is_the_repository_copy(monkeypatch):
    """A plain clone has what the benchmark needs: nothing outside the repository is looked at."""
    monkeypatch.delenv(bench_scenes.DATA_ENV, raising=False)
    assert bench_scenes.data_candidates() == [REPO / "data" / "garden_points.npz"]
    assert bench_scenes.find_data() == REPO / "data" / "garden_points.npz"
    # $DGRD_DATA comes first; where it names no file, the repository copy is used.
    monkeypatch.setenv(bench_scenes.DATA_ENV, "/nonexistent/garden.npz")
    assert bench_scenes.data_candidates()[0] == Path("/nonexistent/garden.npz")
    assert bench_scenes.find_data() == REPO / "data" / "garden_points.npz"
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        bench_scenes.find_data("/nonexistent/garden.npz")


def test_crop_and_tiling_counts():
    means, colors = bench_scenes.scene_points(tiles=1)
    assert means.shape == (CROP_COUNT, 3) and colors.shape == (CROP_COUNT, 3)
    assert float(means.abs().max()) <= 2.0
    assert 0.0 <= float(colors.min()) and float(colors.max()) <= 1.0

    tiled, tiled_colors = bench_scenes.scene_points(tiles=3)
    assert tiled.shape == (9 * CROP_COUNT, 3) and tiled_colors.shape == (9 * CROP_COUNT, 3)
    # The centre copy is the crop itself; the others are shifted by multiples of 4 in x and y.
    centre = tiled[4 * CROP_COUNT:5 * CROP_COUNT]
    assert torch.equal(centre, means)
    corner = tiled[:CROP_COUNT]
    torch.testing.assert_close(corner - means,
                               torch.tensor([-4.0, -4.0, 0.0]).expand(CROP_COUNT, 3))

    assert bench_scenes.scene_size("112k") == CROP_COUNT
    assert bench_scenes.scene_size("1m") == 9 * CROP_COUNT
    assert bench_scenes.scene_size("2.8m") == 25 * CROP_COUNT
    assert bench_scenes.scene_size("20k") == 20_000


def test_scene_attributes_and_camera():
    s = bench_scenes.garden_scene("2k", camera=1, scale=0.5, seed=3)
    g = s.gaussians
    assert len(g) == 2000
    assert float(g.scales.min()) >= 1e-4 and float(g.scales.max()) <= 0.02
    torch.testing.assert_close(g.rotations.norm(dim=1), torch.ones(2000))
    assert g.opacities.shape == (2000, 1)
    assert 0.0 <= float(g.opacities.min()) and float(g.opacities.max()) <= 1.0
    assert g.colors is not None and g.sh is None

    # Same seed, same scene; the camera follows the README.
    again = bench_scenes.garden_scene("2k", camera=1, scale=0.5, seed=3)
    assert torch.equal(again.gaussians.scales, g.scales)
    cam = s.camera
    assert (cam.width, cam.height) == (324, 210)
    st = s.raster_settings()
    assert (st.image_width, st.image_height) == (324, 210)
    w2c = cam.w2c
    torch.testing.assert_close(st.viewmatrix.double(), w2c.T, rtol=0, atol=1e-6)
    # campos is the camera centre: the world point that maps to the camera origin.
    centre = torch.cat([st.campos.double(), torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(w2c @ centre, torch.tensor([0.0, 0.0, 0.0, 1.0],
                                                         dtype=torch.float64), atol=1e-5, rtol=0)
    # projmatrix = viewmatrix @ P.T: a point on the optical axis projects to ndc (0, 0).
    p = torch.linalg.inv(w2c) @ torch.tensor([0.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    hom = p @ st.projmatrix.double()
    torch.testing.assert_close(hom[:2] / hom[3], torch.zeros(2, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert abs(cam.tanfovx - cam.width / (2 * cam.fx)) < 1e-12

    gs = s.gsplat_inputs()
    assert gs["viewmats"].shape == (1, 4, 4) and gs["Ks"].shape == (1, 3, 3)
    assert gs["opacities"].shape == (2000,) and gs["colors"].shape == (2000, 3)
    assert (gs["width"], gs["height"]) == (324, 210)

    sh = bench_scenes.garden_scene("2k", sh=True, seed=3)
    assert sh.gaussians.sh.shape == (2000, 16, 3) and sh.gaussians.sh_degree == 3
    assert sh.gsplat_inputs()["sh_degree"] == 3


def test_quick_cpu_run_writes_json(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--quick", "--device", "cpu",
         "--reps", "1", "--warmup", "0", "--sets", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fwd+bwd ms" in proc.stdout
    result = json.loads(out.read_text())

    env = result["environment"]
    for key in ("date_utc", "python", "torch", "git_commit", "device", "cpu",
                "ours_available", "gsplat_available", "original_available"):
        assert key in env, key
    assert env["device"] == "cpu" and env["ours_available"] is True
    assert result["config"]["quick"] is True and result["config"]["reps"] == 1

    rows = result["results"]
    assert [r["impl"] for r in rows] == ["ours"]
    row = rows[0]
    assert row["scene"] == "20k" and row["n_gaussians"] == 20_000
    assert (row["width"], row["height"]) == (162, 105)
    assert "error" not in row
    for key in ("fwd_ms", "fwd_grad_ms", "bwd_ms", "fwd_bwd_ms"):
        assert row[key]["n"] == 1 and row[key]["median"] > 0, key
    assert row["ratio_fwd_bwd"] == pytest.approx(1.0)
    assert row["visible_gaussians"] > 0


def test_results_are_written_after_each_configuration(tmp_path):
    """A run cut short (a GPU machine's time limit) keeps every configuration it finished."""
    bench = _load("bench")
    args = bench.parse_args(["--device", "cpu", "--impls", "ours", "--scenes", "300",
                             "--scales", "0.1,0.15", "--reps", "1", "--warmup", "0",
                             "--sets", "1", "--json", str(tmp_path / "r.json")])
    paths = bench.json_paths(args)
    seen = []

    def checkpoint(partial):
        bench.write_json(paths, partial)
        seen.append(json.loads(paths[0].read_text()))

    result = bench.run(args, checkpoint=checkpoint)
    assert [len(p["results"]) for p in seen] == [1, 2]
    assert not any(p["complete"] for p in seen) and result["complete"]
    assert [r["width"] for r in seen[-1]["results"]] == [65, 97]
    assert seen[0]["results"][0] == seen[-1]["results"][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]   # no temporary left


@pytest.mark.parametrize("impl,recipe", [("ours-surface", "surface_recipe"),
                                         ("ours-rade", "intersection_recipe"),
                                         ("ours-radegs", "rade_gs_recipe"),
                                         ("ours-pgsr", "pgsr_recipe"),
                                         ("ours-pgsr-no-abs", "pgsr_recipe_without_absolute")])
def test_surface_recipes_are_timed_beside_the_plain_call(impl, recipe):
    """`ours-surface` (doc/surface.md's recipe), `ours-rade` (RaDe-GS's depth planes and
    normals), `ours-radegs` (RaDe-GS's own call and term) and `ours-pgsr` (PGSR's, also without
    its absolute gradient): each timed
    with a ratio to ours, its forward returning the four maps and the terms' loss (finite,
    positive, with gradients for the means, scales and rotations)."""
    bench = _load("bench")
    args = bench.parse_args(["--device", "cpu", "--impls", f"ours,{impl}", "--scenes",
                             "300", "--scales", "0.1", "--reps", "1", "--warmup", "0",
                             "--sets", "1"])
    rows = {r["impl"]: r for r in bench.run(args)["results"]}
    assert set(rows) == {"ours", impl} and "error" not in rows[impl]
    assert rows[impl]["ratio_fwd_bwd"] > 1
    scene = bench.garden_scene("300", scale=0.1, requires_grad=True)
    from diff_gaussian_rasterization_depth import GaussianRasterizer
    settings = scene.raster_settings()
    color, radii, depth, weight, loss = getattr(bench, recipe)(
        GaussianRasterizer(settings), settings, scene.rasterizer_inputs())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0 and color.shape[0] == 3
    loss.backward()
    for leaf in (scene.gaussians.means, scene.gaussians.scales, scene.gaussians.rotations):
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_gsplat_api_is_timed_and_agrees_with_ours():
    """`gsplat-api` (gsplat's call on this package, on any device): timed beside ours, and its
    images (the garden camera's principal point is the image centre) are ours, to float32
    rounding of the two camera matrices."""
    bench = _load("bench")
    args = bench.parse_args(["--device", "cpu", "--impls", "ours,gsplat-api", "--scenes",
                             "300", "--scales", "0.1", "--reps", "1", "--warmup", "0",
                             "--sets", "1"])
    rows = {r["impl"]: r for r in bench.run(args)["results"]}
    assert set(rows) == {"ours", "gsplat-api"} and "error" not in rows["gsplat-api"]
    agreement = rows["gsplat-api"]["agreement_with_ours"]
    assert agreement["color_max_abs_diff"] < 1e-4 and agreement["weight_max_abs_diff"] < 1e-4
    assert agreement["depth_mean_rel_diff_where_weight_gt_0.5"] < 1e-5


def test_configs_are_timed_in_the_order_given(tmp_path):
    """--configs scene:scale pairs replace the --scenes x --scales grid, in their order (the GPU
    window times the issue's targets first); a malformed pair is an error."""
    bench = _load("bench")
    args = bench.parse_args(["--device", "cpu", "--configs", "300:0.15,200:0.1,300:0.1",
                             "--reps", "1", "--warmup", "0", "--sets", "1", "--impls", "ours"])
    assert args.config_list == [("300", 0.15), ("200", 0.1), ("300", 0.1)]
    result = bench.run(args)
    assert [(r["scene"], r["scale"]) for r in result["results"]] == args.config_list
    assert [r["n_gaussians"] for r in result["results"]] == [300, 200, 300]
    assert result["config"]["configs"] == ["300:0.15", "200:0.1", "300:0.1"]
    grid = bench.parse_args(["--device", "cpu", "--scenes", "300,200", "--scales", "0.1,0.2"])
    assert grid.config_list == [("300", 0.1), ("300", 0.2), ("200", 0.1), ("200", 0.2)]
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--configs", "300"])


def test_cuda_ablation_expands_and_is_left_out_on_the_cpu():
    """`--impls ablation`: ours, the CUDA kernels with each technique off, named so, the 2024
    API's call, the surface recipe, the call with the contribution statistics and RaDe-GS's and
    PGSR's calls (PGSR's with and without its absolute gradient); on the CPU only ours and those
    six run, and the JSON says why the others did not."""
    bench = _load("bench")
    args = bench.parse_args(["--device", "cpu", "--impls", "ablation", "--scenes", "300",
                             "--scales", "0.1", "--reps", "1", "--warmup", "0", "--sets", "1"])
    assert args.impl_list == ["ours", "ours-no-warp-skip", "ours-no-scatter",
                              "ours-no-depth-sort", "ours-no-compact-state",
                              "ours-no-short-forward-parts", "ours-split-forward",
                              "ours-tiles-first", "ours-no-split-forward", "ours-no-split",
                              "ours-none", "ours-2024", "ours-surface", "ours-contributions",
                              "ours-radegs", "ours-pgsr", "ours-pgsr-no-abs"]
    tunings = [bench.IMPLS[n].cuda_tuning for n in args.impl_list[:-6]]
    # The defaults: every technique on, the split forward by the image's waves (None).
    on = (True, True, True, True, None, True, True, True)
    forced = (*on[:4], True, *on[5:])  # the split forward whatever the image
    assert tunings == [on, (False, *on[1:]), (True, False, *on[2:]),
                       (True, True, False, *on[3:7], False), (*on[:7], False),
                       (*forced[:5], False, True, True), forced, (*on[:6], False, True),
                       (*on[:4], False, False, True, True),
                       (*on[:3], False, False, False, False, True), (False,) * 8]
    result = bench.run(args)
    assert [r["impl"] for r in result["results"]] == ["ours", "ours-2024", "ours-surface",
                                                      "ours-contributions", "ours-radegs",
                                                      "ours-pgsr", "ours-pgsr-no-abs"]
    assert all(r["fwd_bwd_ms"]["median"] > 0 for r in result["results"])
    for name in args.impl_list[1:-6]:
        assert "CUDA" in result["environment"][f"{name}_unavailable_because"]


@pytest.mark.skipif(not _backend.has_emulated_cuda(), reason="needs the emulated CUDA module")
def test_warp_skip_model_counts_are_consistent():
    """Skipping never evaluates more than each warp's own walk, which never exceeds the
    block-wide one; on small splats it evaluates far fewer."""
    model = _load("warp_skip_model")
    scene = bench_scenes.garden_scene("20k", camera=1, scale=0.25)
    _, state = model.forward_state(scene)
    c = model.warp_counts(state, scene.camera.width, scene.camera.height)
    assert 0 < c["warp_skip"] < c["warp"] <= c["block"]
    assert c["warp_skip"] < 0.8 * c["warp"]
    assert c["block"] <= 8 * c["pairs"]
    # A splat that blends at a warp's pixel reaches the warp, before its end: the blending
    # evaluations are among the skipping walk's, and each warp that blends anything counts.
    warp_end = model.warp_ends(state[7], scene.camera.width, scene.camera.height)
    assert int((warp_end > 0).sum()) <= c["blending"] <= c["warp_skip"]
    # With the paths read in the machine code, both loops are predicted to issue fewer warp
    # instructions than gsplat's on this frame.
    predicted = model.predicted_instructions(c)
    for loop in ("forward", "backward"):
        assert 0 < predicted[(loop, "ours")] < predicted[(loop, "gsplat")]
    # blending_warps alone: a small opaque splat centred on a pixel of each row of the tile at
    # (x0, y0), in a random column, blends in that row's warp (rows 2w, 2w + 1) and no other;
    # nowhere once the pixels have stopped.
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    x0, y0 = 32, 48
    conic = torch.tensor([[40.0, 0.0, 40.0, 0.9]])  # sigma 0.16 px: below 1/255 a pixel away
    open_pixels = torch.full((256,), 5)
    for y in range(16):
        x = int(torch.randint(0, 16, (), generator=gen))
        mean = torch.tensor([[x0 + x, y0 + y]], dtype=torch.float32)
        hit = model.blending_warps(mean, conic, open_pixels, x0, y0)
        assert hit.tolist() == [[w == y // 2 for w in range(8)]]
        assert not model.blending_warps(mean, conic, torch.zeros(256, dtype=torch.long), x0,
                                        y0).any()
    b = model.tile_balance(state, scene.camera.width, scene.camera.height, slots=4)
    assert b["tiles"] == state[5].shape[0]
    assert b["longest_walk"] >= b["mean_walk"] > 0
    assert b["ideal_share"] == pytest.approx(b["mean_walk"] * b["tiles"] / 4)
    # The parts: at most `split_length` long, and of the length the emulated CUDA backend (one
    # SM of 4 backward blocks) chooses for the same pairs.
    assert b["longest_part"] <= min(b["split_length"], b["longest_walk"])
    # The forward runs twice the blocks at once: half the share; split, its longest path is two
    # kernels' longest blocks, each at most a part (or an unsplit tile's walk).
    assert b["forward_share"] == pytest.approx(b["ideal_share"] / 2)
    assert 0 < b["forward_longest_path"] <= 2 * max(b["split_length"], b["longest_walk"])
    # In the split forward's own parts, half as long: its two kernels' longest path is at most
    # one backward part (each at most half a part, or an unsplit list of at most that).
    assert 0 < b["forward_longest_path_short_parts"] <= b["split_length"]
    # Compositing last parts (not built; the count that says why): the pixels a last part stops
    # are among those that reach it, which include every pixel the CPU's walk blends in it
    # (n_contrib past the part's start), and their walks are shorter.
    width, height = scene.camera.width, scene.camera.height
    w = model.last_part_walks(state, width, height, 256)
    ends = model.tile_pixels(state[7].long(), width, height)  # n_contrib, tiles x 256
    lengths = state[5][:, 1] - state[5][:, 0]
    last_start = (torch.div(lengths + 255, 256, rounding_mode="floor") - 1) * 256
    split = lengths > 256
    blending_in_last = int((ends[split] > last_start[split].view(-1, 1)).sum())
    assert w["lists"] == int(split.sum()) > 0
    assert 0 < blending_in_last <= w["reach"] and w["stop"] <= w["reach"]
    assert w["walk_composited"] <= w["walk_walked"] and w["longest_walked"] <= 256
    assert w["longest_composited"] <= w["longest_walked"]
    assert model.last_part_walks(state, width, height, 256 * int(lengths.max() // 256 + 1))[
        "lists"] == 0
    call = test_scenes.backend_call(test_scenes.Scene(scene.rasterizer_inputs(),
                                                      scene.raster_settings()))
    with _backend.emulated_cuda():
        splits = _backend.forward(*call)[-1][9]
    assert splits[0].item() == b["split_length"]


def test_warp_skip_model_predicts_from_the_right_counts():
    """predicted_instructions on random counts, one path cost at a time: each path is charged
    to the walk it belongs to (ours evaluates the splats that reach the warp, gsplat every splat
    of each warp's walk; ours ballots over the block's walk forward, the warp's own backward)."""
    model = _load("warp_skip_model")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    for _ in range(10):
        blending, skip, warp, block = sorted(
            int(v) for v in torch.randint(1, 10**6, (4,), generator=gen))
        c = {"blending": blending, "warp_skip": skip, "warp": warp, "block": block}

        def only(**cost):
            path = dict({"ballot": 0, "evaluated": 0, "blended": 0}, **cost)
            return model.predicted_instructions(
                c, {loop: {"ours": path, "gsplat": path} for loop in ("forward", "backward")})

        p = only(evaluated=1)
        assert p[("forward", "ours")] == p[("backward", "ours")] == skip - blending
        assert p[("forward", "gsplat")] == p[("backward", "gsplat")] == warp - blending
        p = only(blended=1)
        assert set(p.values()) == {blending}
        p = only(ballot=32)
        assert p[("forward", "ours")] == block and p[("backward", "ours")] == warp


@pytest.mark.skipif(not _backend.has_emulated_cuda(), reason="needs the emulated CUDA module")
def test_stage_times_split_a_step_by_stage():
    """bench.stage_times on the emulated CUDA backend (a GPU's run reads the same events): every
    stage of one forward and backward, and timing is off again afterwards."""
    bench = _load("bench")
    scene = bench_scenes.garden_scene("2k", camera=0, scale=0.1, requires_grad=True)
    prepared = bench.Ours().prepare(scene, bench._upstream(scene, 0))
    with _backend.emulated_cuda():
        ms = bench.stage_times(prepared, scene)
        assert _backend.cuda_stage_ms() == {}
    assert {"forward/preprocess", "forward/sort", "forward/render", "backward/render_backward",
            "backward/preprocess_backward"} <= set(ms)
    assert all(v >= 0 for v in ms.values())
    line = bench.format_stages(ms)
    assert line.startswith("forward: preprocess ") and "| backward: " in line


def test_cpu_bench_quick_reports_load_work_and_ablation(tmp_path):
    """benchmarks/cpu_bench.py on a small frame: every figure it prints is there and coherent."""
    out = tmp_path / "cpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cpu_bench.py"), "--quick", "--ablation",
         "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "other processes used" in proc.stdout and "work model" in proc.stdout
    r = json.loads(out.read_text())
    assert r["points"] == 3000 and (r["width"], r["height"]) == (162, 105)
    assert set(r["threads"]) == {"1", "2"}
    for m in r["threads"].values():
        for key in ("forward", "backward", "both", "render", "render_backward"):
            assert m[key] > 0, key
        # Parts of one call against the whole of it (figures of different calls may cross
        # on a loaded machine with one repetition): the render is a stage of the no-grad
        # forward, the backward the tail of `both`.
        assert m["forward"] >= m["render"] and m["both"] >= m["backward"]
    w = r["work"]
    assert w["evaluations"] >= w["exps"] >= w["blends"] > 0
    assert w["lane_evaluations"] >= w["evaluations"] and w["pairs"] > 0
    assert 0 < w["model_render_seconds"] < 1
    assert set(r["ablation"]) == {"all on", "no lanes (per-pixel loop)", "no power bound"}
    assert r["load"]["cores"] >= 1 and r["load"]["others_cores_used"] >= 0


@pytest.mark.skipif(not _backend.has_emulated_cuda(), reason="the emulated CUDA backend was not built")
@pytest.mark.skipif(not hasattr(getattr(torch._C, "_profiler", None), "_ExtraFields_Allocation"),
                    reason="this PyTorch's profiler reports no allocations (PyTorch 1.12)")
def test_peak_memory_reports_a_row_per_frame(tmp_path):
    """benchmarks/peak_memory.py on the emulated backend: a row per frame, the pairs as the CPU
    forward counts them, and a forward + backward that holds at least what the forward alone
    does, more where the image is large enough for the backward's pixels to count (at 162x105
    the forward's sort by depth, P-sized, is both calls' peak)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "peak_memory.py"), "--scales", "0.25,0.5"],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("112k")]
    assert [float(r[1]) for r in rows] == [0.25, 0.5]
    for _, scale, gaussians, pairs, pixels, fwd, both in rows:
        assert int(gaussians) == 111785 and int(pixels) == 648 * 420 * float(scale) ** 2
        # the sort's buffers (16 bytes a pair) and the radii, the state's and the caller's (8 a
        # Gaussian; the state's other rows are the Gaussians' with tiles alone) at least
        assert float(fwd) * 2 ** 20 >= 16 * int(pairs) + 8 * int(gaussians)
        assert float(both) > float(fwd) if float(scale) == 0.5 else float(both) >= float(fwd)


def test_features_cpu_lanes_off_reports_every_variant(tmp_path):
    """benchmarks/features_cpu.py --lanes-off --walks: each call (the touch count and the
    statistics among them) timed on the lanes and on the per-pixel loop, with the load."""
    out = tmp_path / "features.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "features_cpu.py"), "--reps", "1",
         "--scale", "0.25", "--channels", "3", "--lanes-off", "--walks", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    names = {"plain", "C=3", "median", "touch count", "contributions"}
    assert set(r["medians"]) == names | {f"{n} per-pixel" for n in names}
    for m in r["medians"].values():
        assert m["fwd_bwd"] > 0 and m["fwd"] > 0
    # One timing each on a shared machine: a walk variant's forward alone (0.16 s at this scale)
    # has come out 1% slower than its forward + backward, whose backward is small beside the
    # walk; over all ten variants the backwards' time stands well clear of the noise.
    assert sum(m["fwd_bwd"] for m in r["medians"].values()) > \
        sum(m["fwd"] for m in r["medians"].values())
    assert r["load"]["others_cores_used"] >= 0 and "other processes used" in proc.stdout


@pytest.mark.parametrize("option", ["camera", "absolute", "offsets", "fisheye", "distortion"])
def test_backward_option_cost_reports_both_sides(tmp_path, option):
    """benchmarks/backward_option_cost.py on a small garden frame: the time without and with
    each option, their ratios and the load."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "backward_option_cost.py"), "--option",
         option, "--reps", "1", "--scale", "0.25"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timed = "forward + backward" if option in ("offsets", "fisheye", "distortion") else "backward"
    line = re.escape(timed) + r" with(?:out)? .*: median +([0-9.]+) ms"
    medians = [float(m) for m in re.findall(line, proc.stdout)]
    assert len(medians) == 2 and min(medians) > 0, proc.stdout
    assert "ratio of the medians" in proc.stdout and "load average before" in proc.stdout


def test_mesh_bench_reports_sparse_against_dense_memory(tmp_path):
    """benchmarks/mesh_bench.py on a small garden frame: a row per resolution, the sparse
    volume's points its blocks' (512 each), fewer than a dense grid over their bounding box, and
    more blocks and faces at the finer voxel."""
    out = tmp_path / "mesh.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mesh_bench.py"), "--scale", "0.25",
         "--resolutions", "64", "128", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["resolution"] for r in rows] == [64, 128] and "load average" in proc.stdout
    for r in rows:
        assert r["points"] == 512 * r["blocks"] and r["dense_over_sparse"] > 1
        assert r["sparse_mib"] == pytest.approx(r["points"] * 20 / 2 ** 20)
        assert r["faces"] > 0 and r["render_s"] > 0 and r["fuse_s"] > 0
    assert rows[1]["blocks"] > rows[0]["blocks"] and rows[1]["faces"] > rows[0]["faces"]


def test_ssim_bench_reports_both_ssims_per_size(tmp_path):
    """benchmarks/ssim_bench.py: a row per size with the fused and PyTorch SSIM's times forward
    and forward + backward, their ratios and the load (no peak memory on the CPU)."""
    out = tmp_path / "ssim.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ssim_bench.py"), "--sizes", "40x30,23x17",
         "--repeat", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert [(r["width"], r["height"]) for r in rows] == [(40, 30), (23, 17)]
    for r in rows:
        for impl in ("fused", "torch"):
            assert r[f"{impl}_fwd_bwd_ms"] > 0 and r[f"{impl}_fwd_ms"] > 0
            assert r[f"{impl}_peak_mib"] is None
        assert r["fwd_bwd_ratio"] == pytest.approx(r["torch_fwd_bwd_ms"] / r["fused_fwd_bwd_ms"])
    assert proc.stdout.count("load average") == 2


def test_ssim_bench_times_a_training_step_with_each_ssim(tmp_path):
    """ssim_bench.py --step: a garden frame's training step with the fused and with PyTorch's
    SSIM, first in the JSON, then the sizes."""
    out = tmp_path / "ssim.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ssim_bench.py"), "--sizes", "24x16",
         "--repeat", "1", "--step", "112k", "--scale", "0.2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    step, size = json.loads(out.read_text())
    assert step["scene"] == "112k" and step["step_fused_ms"] > 0 and step["step_torch_ms"] > 0
    assert step["step_ratio"] == pytest.approx(step["step_torch_ms"] / step["step_fused_ms"])
    assert (size["width"], size["height"]) == (24, 16)
    assert "training step, garden 112k" in proc.stdout


def test_depth_losses_bench_times_each_loss_beside_a_revision(tmp_path):
    """benchmarks/depth_losses.py --against HEAD: a row per loss with this checkout's and the
    committed module's medians (loaded from git: HEAD is there in any clone, shallow ones
    too) and their ratio, and the load."""
    if not (REPO / ".git").exists():
        pytest.skip("a source tree without git history: --against reads a revision from git")
    stdout, result = run_bench("depth_losses.py", tmp_path, "--size", "40x30", "--batch", "2",
                               "--reps", "2", "--against", "HEAD")
    assert "load average" in stdout
    assert result["batch"] == 2 and result["size"] == [40, 30]
    rows = result["rows"]
    assert [r["loss"] for r in rows] == ["pearson", "patch", "ranking", "ssi", "ssi_patch"]
    for r in rows:
        assert r["this_ms"] > 0 and r["against_ms"] > 0
        assert r["ratio"] == pytest.approx(r["this_ms"] / r["against_ms"])


def test_depth_losses_bench_leaves_out_what_a_revision_lacks():
    """The bench's calls of a module: a loss function it lacks, or an argument its function does
    not take (an older MiDaS loss without patch_size), is left out; the rest run."""
    bench = _load("depth_losses")
    depth, weight, prior = bench.maps(12, 10, 1, "cpu")

    def ssi_without_patches(d, w, p, min_weight=0.5):
        return (d * 0).sum() + w.sum() * 0 + p.sum() * 0

    older = types.SimpleNamespace(
        pearson_depth_loss=bench.depth_losses.pearson_depth_loss,
        scale_shift_invariant_depth_loss=ssi_without_patches)
    assert list(bench.calls(older, depth, weight, prior, lambda: None)) == ["pearson", "ssi"]
    assert list(bench.calls(bench.depth_losses, depth, weight, prior, lambda: None)) == list(
        bench.LOSSES)


def test_gsplat_stand_ins_match_their_definitions():
    """gsplat_cpu_twins (what lets gsplat's PyTorch rasterizer run on a CPU for cpu_bench.py),
    against a pixel-by-pixel walk: the blends it lists, and nerfacc's packed weights and sums."""
    twins = _load("gsplat_cpu_twins")
    gen = torch.Generator().manual_seed(5)
    W, H, tile, N = 37, 21, 16, 40
    tiles_x, tiles_y = 3, 2
    means2d = torch.rand(1, N, 2, generator=gen) * torch.tensor([W, H])
    conics = torch.stack([torch.rand(N, generator=gen) * 0.3 + 0.02,
                          (torch.rand(N, generator=gen) - 0.5) * 0.02,
                          torch.rand(N, generator=gen) * 0.3 + 0.02], -1)[None]
    opacities = torch.rand(1, N, generator=gen)
    # Every Gaussian in every tile, in index order (as depth order).
    flatten_ids = torch.arange(N).repeat(tiles_x * tiles_y)
    offsets = (torch.arange(tiles_x * tiles_y) * N).reshape(1, tiles_y, tiles_x)
    start_T = 0.5 + 0.5 * torch.rand(1, H, W, generator=gen)
    gauss, pixels, images = twins.rasterize_to_indices_in_range(
        0, 100, start_T, means2d, conics, opacities, W, H, tile, offsets, flatten_ids)
    expected = []
    for y in range(H):
        for x in range(W):
            T = float(start_T[0, y, x])
            for g in range(N):
                dx, dy = x + 0.5 - float(means2d[0, g, 0]), y + 0.5 - float(means2d[0, g, 1])
                a, b, c = conics[0, g].tolist()
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, float(opacities[0, g]) * torch.exp(torch.tensor(-sigma)).item())
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                expected.append((y * W + x, g))
                T *= 1 - alpha
    assert len(expected) > 50 and bool((images == 0).all())
    assert list(zip(pixels.tolist(), gauss.tolist())) == expected

    rays = torch.tensor([0, 0, 0, 2, 2, 5])
    alphas = torch.rand(6, generator=gen) * 0.9
    values = torch.rand(6, 3, generator=gen)
    weights, trans = twins.render_weight_from_alpha(alphas, rays, 7)
    sums = twins.accumulate_along_rays(weights, values, rays, 7)
    want_T, want_sum = [], torch.zeros(7, 3)
    for ray in range(7):
        T = 1.0
        for i in (rays == ray).nonzero().flatten().tolist():
            want_T.append((i, T))
            want_sum[ray] += alphas[i] * T * values[i]
            T *= 1 - float(alphas[i])
    for i, T in want_T:
        assert abs(float(trans[i]) - T) < 1e-6
    torch.testing.assert_close(weights, alphas * trans)
    torch.testing.assert_close(sums, want_sum, rtol=1e-5, atol=1e-6)
    assert torch.equal(twins.accumulate_along_rays(weights, None, rays, 7)[:, 0],
                       torch.zeros(7).index_add(0, rays, weights))

    # A dense frame's packed samples: the running sum of log(1 - alpha) over all of them reaches
    # 1e5, where float32 rounds by 0.01; each ray's transmittance and alpha must not see it.
    n_rays, per_ray = 2000, 100
    rays = torch.arange(n_rays).repeat_interleave(per_ray)
    weights, trans = twins.render_weight_from_alpha(torch.full((n_rays * per_ray,), 0.5), rays,
                                                    n_rays)
    torch.testing.assert_close(trans, 0.5 ** torch.arange(per_ray).repeat(n_rays).float(),
                               rtol=1e-6, atol=0)
    alpha = twins.accumulate_along_rays(weights, None, rays, n_rays)[:, 0]
    assert float((alpha - 1).abs().max()) < 1e-6


def _bench_row(scene, scale, impl, fwd, bwd, peak=None):
    return {"scene": scene, "scale": scale, "impl": impl, "n_gaussians": 1000,
            "resolution": f"{int(648 * scale)}x{int(420 * scale)}",
            "fwd_ms": {"median": fwd}, "bwd_ms": {"median": bwd},
            "fwd_bwd_ms": {"median": fwd + bwd}, "peak_fwd_bwd_mib": peak}


def test_report_judges_the_targets_from_one_run(tmp_path):
    """benchmarks/report.py: each target of issue 9 met or missed by the figures, from ours and
    gsplat timed in the same file (never a pair across files), and the ablation's ratios."""
    report = _load("report")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    u = lambda lo, hi: lo + (hi - lo) * torch.rand((), generator=gen).item()  # noqa: E731
    rows, expected = [], {}
    for scene in ("1m", "2.8m"):
        for scale in (2.0, 3.0):
            fwd, bwd, peak = u(1, 20), u(1, 40), u(100, 5000)
            speed_fb, speed_f, memory = u(0.8, 2.5), u(0.5, 1.8), u(0.5, 1.5)
            g_fwd = fwd * speed_f
            rows += [_bench_row(scene, scale, "ours", fwd, bwd, peak),
                     _bench_row(scene, scale, "gsplat", g_fwd, (fwd + bwd) * speed_fb - g_fwd,
                                peak * memory)]
            name = f"{scene} x{scale:g}"
            expected[f"{name}: fwd+bwd >= 1.5x gsplat"] = "met" if speed_fb >= 1.5 else "missed"
            expected[f"{name}: fwd >= gsplat"] = "met" if speed_f >= 1.0 else "missed"
            expected[f"{name}: peak <= gsplat"] = "met" if memory >= 1.0 else "missed"
    small = u(0.2, 0.8)
    rows.append(_bench_row("112k", 1.0, "ours", small * 0.4, small * 0.6))
    expected["112k x1: fwd+bwd < 0.5 ms"] = "met" if small < 0.5 else "missed"
    off, memory_off = u(0.9, 2.0), u(1.05, 1.5)
    # The ablation's own "ours" (another run) never stands in for the run beside gsplat's.
    ablation = [_bench_row("112k", 2.0, "ours", 1.0, 2.0, 64.0),
                _bench_row("112k", 2.0, "ours-no-warp-skip", 1.0 * off, 2.0 * off, 64.0),
                _bench_row("112k", 2.0, "ours-no-compact-state", 1.0, 2.0, 64.0 * memory_off),
                _bench_row("112k", 1.0, "ours", 0.4 if small < 0.5 else 0.1, 0.5 if small < 0.5
                           else 0.2)]  # the opposite verdict
    paths = [tmp_path / "bench_ablation.json", tmp_path / "bench_gsplat.json"]
    paths[1].write_text(json.dumps({"environment": {"gpu": "Test GPU"}, "results": rows}))
    paths[0].write_text(json.dumps({"results": ablation}))
    found = {name: (status, figures) for name, status, figures in
             report.targets(report.load(paths))}
    assert {name: status for name, (status, _) in found.items()} == expected
    speed = (rows[1]["fwd_bwd_ms"]["median"]) / rows[0]["fwd_bwd_ms"]["median"]
    assert found["1m x2: fwd+bwd >= 1.5x gsplat"][1].startswith(f"{speed:.2f}x")

    brief = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--brief",
                            *map(str, paths)], capture_output=True, text=True, check=True).stdout
    assert "GPU Test GPU" in brief and f"ours-no-warp-skip {off:.2f}x," in brief
    assert f"ours-no-compact-state 1.00x (peak {memory_off:.2f}x)" in brief
    assert f"{sum(s == 'met' for s in expected.values())} met of the 13 measured" in brief
    table = report.report(report.load(paths), brief=False)
    assert table.count("| gsplat |") == 4 and "| ours-no-warp-skip |" in table
    assert f"| ours-no-compact-state | 1.00x | 1.00x | 1.00x | {memory_off:.2f}x |" in table

    # Ours and gsplat from different files are never paired.
    apart = [tmp_path / "ours.json", tmp_path / "theirs.json"]
    apart[0].write_text(json.dumps({"results": [r for r in rows if r["impl"] == "ours"]}))
    apart[1].write_text(json.dumps({"results": [r for r in rows if r["impl"] == "gsplat"]}))
    statuses = [status for _, status, _ in report.targets(report.load(apart))]
    assert statuses.count("not measured") == 4


def _check_cuda_compile():
    spec = importlib.util.spec_from_file_location("_dgrd_check_cuda_compile",
                                                  REPO / "tools" / "check_cuda_compile.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_check_cuda_compile_reads_ptxas_and_counts_blocks_per_sm():
    """tools/check_cuda_compile.py --registers: registers, spills and shared memory read from
    ptxas -v output, and the blocks of 256 threads an SM holds, worked out by hand from the
    programming guide's limits (sm_90: 64K registers, 228 KiB, 1 KiB reserved a block, 2048
    threads; sm_75: 64 KiB, 1024 threads; sm_86 and sm_89: 100 KiB, 1536 threads)."""
    tool = _check_cuda_compile()
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    regs, spill, smem = (int(torch.randint(16, 255, (), generator=gen)),
                         int(torch.randint(0, 99, (), generator=gen)),
                         int(torch.randint(0, 99999, (), generator=gen)))
    log = (f"ptxas info    : Compiling entry function '_Z6kernelv' for 'sm_90'\n"
           f"ptxas info    : Function properties for _Z6kernelv\n"
           f"    {spill} bytes stack frame, {spill} bytes spill stores, {spill} bytes spill loads\n"
           f"ptxas info    : Used {regs} registers, used 1 barriers, {smem} bytes smem, "
           f"400 bytes cmem[0]\n")
    (arch, _, r, s, m), = tool.kernel_resources(log)
    assert (arch, r, s, m) == ("sm_90", regs, spill, smem)
    assert tool.blocks_per_sm("sm_90", 32, 12288) == (8, "threads")
    assert tool.blocks_per_sm("sm_90", 56, 12288) == (4, "registers")   # 56 x 32 = 1792 a warp
    assert tool.blocks_per_sm("sm_90", 33, 12288) == (6, "registers")   # 40 x 32: 51 warps
    assert tool.blocks_per_sm("sm_90", 32, 100 << 10) == (2, "shared memory")
    assert tool.blocks_per_sm("sm_75", 87, 25 << 10) == (2, "registers")  # 88 x 32: 23 warps
    assert tool.blocks_per_sm("sm_75", 32, 0) == (4, "threads")
    assert tool.blocks_per_sm("sm_86", 40, 12288) == (6, "threads")    # 1536 threads
    assert tool.blocks_per_sm("sm_89", 64, 12288) == (4, "registers")   # 2048 x 4 = 8192 each
    assert tool.blocks_per_sm("sm_86", 32, 60 << 10) == (1, "shared memory")  # 100 KiB
    assert tool.blocks_per_sm("sm_120", 40, 12288) == (6, "threads")   # RTX 50: 1536 threads
    assert tool.blocks_per_sm("sm_120", 32, 30 << 10) == (3, "shared memory")  # 100 KiB
    assert tool.blocks_per_sm("sm_100", 32, 12288) == (8, "threads")   # B200, as Hopper
    assert tool.blocks_per_sm("sm_121", 32, 0) is None


def _sass_listing(functions):
    """A listing in cuobjdump -sass's form (two lines an instruction, the second the encoding's
    tail) of {name: [instruction]}, each instruction 16 bytes after the one before."""
    lines = ["", "Fatbin elf code:", "================", "arch = sm_90", "", "\tcode for sm_90"]
    for name, code in functions.items():
        lines += [f"\t\tFunction : {name}", '\t.headerflags    @"EF_CUDA_SM90"']
        for k, instruction in enumerate(code):
            lines += [f"        /*{16 * k:04x}*/                   {instruction} ;"
                      "                 /* 0x000fe2000000000a */",
                      " " * 99 + "/* 0x000fe40000000f00 */"]
        lines += ["        ..........", ""]
    return "\n".join(lines)


def test_check_cuda_compile_finds_spills_in_per_splat_loops():
    """check_cuda_compile --registers reads each render kernel's machine code: its per-splat
    loops are the innermost loops that take an exponential (MUFU.EX2), and a spill (LDL, STL)
    counts only there; one in the batch loop around them, or in a loop without an exponential,
    does not. Kernels of random shape, a spill put in or out of the per-splat loop at random."""
    tool = _check_cuda_compile()
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))

    def pick(n):
        return int(torch.randint(0, n, (), generator=gen))

    def filler(n):
        return [("FFMA R2, R3, R4, R2", "LDS.128 R8, [R5]", "ISETP.GE.AND P0, PT, R2, R9, PT",
                 "FMUL R6, R6, R7")[pick(4)] for _ in range(n)]

    for _ in range(20):
        # prologue | batch loop: staging, [per-splat loop], after | other loop | epilogue
        spill_in_hot = pick(2) == 1
        staging = filler(1 + pick(6)) + ["STL [R1+0x8], R10"] + filler(pick(4))
        hot = filler(1 + pick(5)) + ["MUFU.EX2 R8, R19"] + filler(pick(5))
        if spill_in_hot:
            hot.insert(pick(len(hot) + 1), "LDL R13, [R1+0x20]")
        prologue = filler(1 + pick(5))
        hot_start = len(prologue) + len(staging)
        hot.append(f"@P0 BRA 0x{16 * hot_start:x}")
        after = filler(pick(3)) + ["LDL R14, [R1+0x1c]"]
        batch = staging + hot + after
        batch.append(f"@!P0 BRA 0x{16 * len(prologue):x}")
        other_start = len(prologue) + len(batch)
        other = filler(1 + pick(3)) + ["STL [R1+0x4], R9", f"BRA 0x{16 * other_start:x}"]
        code = prologue + batch + other + ["EXIT", "BRA 0x0"]
        listing = _sass_listing({"_Z13render_kernelv": code, "_Z6other_v": filler(3)})
        functions = list(tool.sass_functions(listing))
        assert [(arch, name) for arch, name, _ in functions] == [
            ("sm_90", "_Z13render_kernelv"), ("sm_90", "_Z6other_v")]
        parsed = functions[0][2]
        assert [i for _, i in parsed] == code and [a for a, _ in parsed] == [
            16 * k for k in range(len(code))]
        loops = tool.per_splat_loops(parsed)
        assert loops == [(16 * hot_start, 16 * (hot_start + len(hot) - 1))]
        found = tool.local_accesses(parsed, loops)
        assert [i for _, i in found] == (["LDL R13, [R1+0x20]"] if spill_in_hot else [])
        assert tool.per_splat_loops(functions[1][2]) == []


def test_sass_loops_counts_each_kind_in_the_per_splat_loop_alone():
    """tools/sass_loops.py: of a kernel's per-splat loop (found as check_cuda_compile finds it),
    the instructions in all and the shuffles, atomics, exponentials, branches and division
    slow-path calls among them, predicated or not; the same kinds outside the loop are not
    counted. Random loops, random counts of each kind, inside and out."""
    spec = importlib.util.spec_from_file_location("_dgrd_sass_loops",
                                                  REPO / "tools" / "sass_loops.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))

    def pick(n):
        return int(torch.randint(0, n, (), generator=gen))

    kinds = {"shuffles": ("SHFL.BFLY PT, R6, R6, 0x10, 0x1f",
                          "@!P2 SHFL.DOWN PT, R4, R4, 0x1, 0x1f"),
             "atomics": ("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR6][R4.64], R6",
                         "@P1 ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, R3, desc[UR6][R4.64], R6"),
             "exps": ("MUFU.EX2 R9, R8",),
             "branches": ("@!P0 BRA 0x0",),
             "slow calls": ("CALL.REL.NOINC 0x0",)}
    plain = ("FFMA R2, R3, R4, R2", "LDS.128 R8, [R5]", "MUFU.RCP R15, R4",
             "FSEL R6, R14, R53, !P1")
    for _ in range(20):
        counts = {kind: pick(5) for kind in kinds}
        counts["exps"] += 1  # a per-splat loop has its exponential
        body = [kinds[k][pick(len(kinds[k]))] for k, n in counts.items() for _ in range(n)]
        body += [plain[pick(len(plain))] for _ in range(pick(12))]
        body = [body[i] for i in torch.randperm(len(body), generator=gen).tolist()]
        # Branches inside the body go forward (to the back edge), so the loop stays innermost.
        prologue = [plain[pick(4)] for _ in range(1 + pick(4))]
        prologue += ["SHFL.IDX PT, R1, R1, RZ, 0x1f", "MUFU.EX2 R2, R2"]
        start = len(prologue)
        end = start + len(body)
        body = [i.replace("BRA 0x0", f"BRA 0x{16 * end:x}") for i in body]
        code = prologue + body + [f"@P0 BRA 0x{16 * start:x}", "REDG.E.ADD.F32 [R2.64], R3",
                                  "CALL.REL.NOINC 0x0", "EXIT", "BRA 0x0"]
        listing = _sass_listing({"_Z13render_kernelv": code})
        (_, _, parsed), = tool.check_cuda_compile.sass_functions(listing)
        loop, = tool.check_cuda_compile.per_splat_loops(parsed)
        summary = tool.loop_summary(parsed, loop)
        assert summary["instructions"] == len(body) + 1
        expected = dict(counts, branches=counts["branches"] + 1)  # and the back edge
        assert {k: summary[k] for k in expected} == expected


def test_call_overhead_measures_the_python_around_a_call(tmp_path):
    """benchmarks/call_overhead.py: the full call costs more than the raw backend, forward and
    backward, and the figures it derives are the differences of those it measured."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "call_overhead.py"), "--calls", "40"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout)
    assert r["device"] == "cpu" and r["cores"] >= 1 and r["load_average_1min"] >= 0
    for key in ("forward", "forward_backward", "raw_forward", "raw_backward",
                "forward_python_checks", "forward_backward_python_checks", "autograd_one_op",
                "autograd_python_node"):
        assert r[key] > 0, key
    # A one-op graph through autograd costs less than the rasterizer's call through it.
    assert r["autograd_one_op"] < r["forward_backward"]
    assert r["common_check_saves"] == pytest.approx(
        r["forward_python_checks"] - r["forward"], abs=0.11)
    assert r["forward_backward"] > r["forward"] > r["raw_forward"]
    assert r["forward_overhead"] == pytest.approx(r["forward"] - r["raw_forward"], abs=0.11)
    assert r["backward_and_loss_overhead"] == pytest.approx(
        r["forward_backward"] - r["forward"] - r["raw_backward"], abs=0.16)
    # gsplat's call on the package: its glue on top of the package's call.
    assert r["gsplat_api_forward_backward"] > r["gsplat_api_forward"] > r["raw_forward"]
    assert r["gsplat_api_overhead"] == pytest.approx(
        r["gsplat_api_forward"] - r["forward"], abs=0.11)


def test_block_order_model_schedules_every_walk():
    """benchmarks/block_order_model.py: the split backward's blocks walk, between them, exactly
    what each tile's block walks unsplit, in either order, with a block per slot (None for an
    unused one); the span is list scheduling's (checked on a hand-worked case); launching a few
    long parts after many short tiles ends later than launching them first."""
    model = _load("block_order_model")
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    lengths = torch.randint(0, 300, (60,), generator=gen)
    lengths[torch.randint(0, 60, (5,), generator=gen)] += 2000  # a few long lists
    walks = (lengths.float() * torch.rand(60, generator=gen)).long()
    lengths, walks = lengths.tolist(), walks.tolist()
    length = 512
    capacity = (sum(lengths) - 1) // length
    for parts_first in (False, True):
        blocks = model.backward_blocks(lengths, walks, length, parts_first)
        assert len(blocks) == 60 + capacity
        assert sum(w for w in blocks if w is not None) == sum(walks)
        slots = blocks[:capacity] if parts_first else blocks[60:]
        assert all(w is None or w <= length for w in slots)
        assert sum(w is not None for w in slots) == sum(
            -(-n // length) - 1 for n in lengths if n > length)
    # Two slots, walks of 3, 1, 2, 2 at 1 a block more: slot A takes 4 (ends at 4), slot B 2
    # (at 2) then 3 (at 5), A then 3 (at 7).
    assert model.span([3, 1, None, 2, 2], 2, 1.0, sms=2, throughput=[1.0]) == pytest.approx(7.0)
    # One SM whose two blocks share its rate (1 alone, 1 together): 2 and 4 units run side by
    # side at 0.5 until the first ends (t = 4), the other alone at 1 (t = 6).
    assert model.span([2, 4], 2, 0.0, sms=1, throughput=[1.0, 1.0]) == pytest.approx(6.0)
    # Many short tiles and two long parts on four slots: first, the parts run beside the tiles;
    # last, after them.
    works = [10] * 40
    independent = dict(sms=4, throughput=[1.0])
    assert (model.span([100, 100] + works, 4, 0.0, **independent)
            < model.span(works + [100, 100], 4, 0.0, **independent))


@pytest.mark.skipif(_backend._C is None, reason="needs the compiled extension")
@pytest.mark.parametrize("lanes", ["on", "off"])
def test_cpu_probe_reports_the_process_and_passes(tmp_path, lanes):
    """tools/cpu_probe.py, the first check of the CPU backend on a GPU machine: it names the
    extension's module and the OpenMP runtime mapped into the process before its cases, runs
    the three scenes against the reference and exits 0 saying ok."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "cpu_probe.py"), "--no-cuda"]
        + (["--no-lanes"] if lanes == "off" else []),
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    report = lines[0]
    assert report.startswith("cpu_probe: mapped ") and "_C." in report, report
    if sys.platform.startswith("linux"):
        assert "gomp" in report or "omp" in report, report  # the OpenMP runtime in use
    assert sum(line.startswith("P=") for line in lines) == 3
    assert lines[-1].startswith("cpu_probe: ok") and f"lanes {lanes}" in lines[-1], lines[-1]
