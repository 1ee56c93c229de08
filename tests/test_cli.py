"""The command line (demo, render), the PLY reader/writer and the camera helpers it relies on.

Rendering tests need the compiled backend and skip while it is missing; camera, PLY and
command-line error tests run everywhere. Needs the [test] extra (matplotlib, plyfile).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import _backend, cameras, scenes
from diff_gaussian_rasterization_depth.cli import _mip_filter, main, read_views_json
from diff_gaussian_rasterization_depth.ply import (PlyFormatError, load_ply, save_ply,
                                                   vertex_properties)

needs_backend = pytest.mark.skipif(
    _backend._C is None,
    reason="the compiled extension diff_gaussian_rasterization_depth._C is not built "
           "(pip install --no-build-isolation -e .); rendering tests need it")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_png(path):
    import matplotlib.image as mpimg
    a = mpimg.imread(path)
    return a[..., :3] if a.ndim == 3 else a


# ---------------------------------------------------------------------------------------------
# Cameras (SPEC 4 conventions)
# ---------------------------------------------------------------------------------------------

def test_look_at_faces_target_with_up_upwards():
    rng = np.random.default_rng(1)
    for _ in range(20):
        eye, target = rng.normal(size=3) * 3, rng.normal(size=3)
        up = np.array([0.0, 0.0, 1.0])
        w2c = cameras.look_at(eye, target, up)
        R = w2c[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        cam_target = R @ target + w2c[:3, 3]
        dist = np.linalg.norm(target - eye)
        np.testing.assert_allclose(cam_target, [0.0, 0.0, dist], atol=1e-9)
        np.testing.assert_allclose(R @ eye + w2c[:3, 3], 0.0, atol=1e-9)
        # World up shows as image up (camera -y).
        assert (R @ up)[1] < 0


def test_look_at_rejects_parallel_up():
    with pytest.raises(ValueError, match="parallel"):
        cameras.look_at((0, 0, 5), (0, 0, 0), up=(0, 0, 1))


def test_matrices_follow_the_transposed_convention():
    """[p,1] @ viewmatrix is the view-space point; [p,1] @ projmatrix divided by w gives NDC
    whose ndc2pix is the pinhole projection with fx = W / (2 tanfovx) and a centred
    principal point."""
    cam = cameras.Camera.looking_at((1.0, -4.0, 2.0), (0.2, 0.1, 0.3), 37, 29, fov_x_deg=55)
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(50, 3)) * 0.5 + np.array([0.2, 0.1, 0.3])
    hom = np.concatenate([pts, np.ones((50, 1))], axis=1)
    view = hom @ cam.viewmatrix()
    np.testing.assert_allclose(view[:, :3], pts @ cam.rotation.T + cam.world_to_camera[:3, 3],
                               atol=1e-12)
    clip = hom @ cam.projmatrix()
    ndc = clip[:, :3] / clip[:, 3:4]
    W, H = cam.width, cam.height
    px = ((ndc[:, 0] + 1) * W - 1) / 2
    py = ((ndc[:, 1] + 1) * H - 1) / 2
    proj = cam.project(pts)
    np.testing.assert_allclose(px, proj[:, 0], atol=1e-9)
    np.testing.assert_allclose(py, proj[:, 1], atol=1e-9)
    np.testing.assert_allclose(clip[:, 3], view[:, 2], atol=1e-12)   # w = view z
    assert cam.fx == pytest.approx(W / (2 * cam.tanfovx))
    np.testing.assert_allclose(cam.center, [1.0, -4.0, 2.0], atol=1e-12)
    # Depth mapping: z = znear -> ndc.z = 0, z = zfar -> 1.
    P = cameras.perspective_matrix(0.5, 0.4)
    for z, expected in ((cameras.ZNEAR, 0.0), (cameras.ZFAR, 1.0)):
        c = P @ np.array([0.0, 0.0, z, 1.0])
        assert c[2] / c[3] == pytest.approx(expected, abs=1e-9)


def test_pixel_directions_hit_their_pixels():
    cam = cameras.Camera.looking_at((3.0, 1.0, 2.0), (0.0, 0.0, 0.0), 21, 15, fov_x_deg=70)
    origin, dirs = cam.world_rays()
    pts = origin + 2.5 * dirs.reshape(-1, 3)
    proj = cam.project(pts)
    rows, cols = np.meshgrid(np.arange(15), np.arange(21), indexing="ij")
    np.testing.assert_allclose(proj[:, 0], cols.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(proj[:, 1], rows.reshape(-1), atol=1e-9)
    np.testing.assert_allclose(proj[:, 2], 2.5, atol=1e-12)   # t is the view-space depth


def test_orbit_cameras_look_at_the_center():
    center = np.array([0.5, -1.0, 2.0])
    views = cameras.orbit_cameras(center, 4.0, 6, 32, 24, elevation_deg=30.0, up=(0, -1, 0))
    assert len(views) == 6
    for v in views:
        assert np.linalg.norm(v.center - center) == pytest.approx(4.0)
        np.testing.assert_allclose(v.project(center[None])[0, :2], [15.5, 11.5], atol=1e-9)
        offset = (v.center - center) / 4.0
        assert offset @ np.array([0, -1, 0]) == pytest.approx(math.sin(math.radians(30)))
    eyes = np.stack([v.center for v in views])
    assert len(np.unique(eyes.round(6), axis=0)) == 6


def test_up_is_estimated_from_a_point_layout():
    """Without training cameras the render command guesses up from the points: the demo scene
    (a ground with things on it) gives its up, in any orientation."""
    pts = scenes.demo_scene(6000).means.double().numpy()
    up = cameras.estimate_up_from_points(pts)
    assert up @ np.array(scenes.DEMO_UP) > 0.99
    rng = np.random.default_rng(4)
    for _ in range(3):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        up_r = cameras.estimate_up_from_points(pts @ q.T)
        assert up_r @ (q @ np.array(scenes.DEMO_UP)) > 0.99


def test_raster_settings_match_the_camera():
    cam = cameras.Camera.looking_at((0.0, -3.0, 1.0), (0.0, 0.0, 0.0), 40, 30)
    s = cam.raster_settings(bg=(1, 0, 0), sh_degree=2, dtype=torch.float64)
    assert isinstance(s, dgrd.GaussianRasterizationSettings)
    assert (s.image_width, s.image_height, s.sh_degree) == (40, 30, 2)
    assert s.viewmatrix.shape == (4, 4) and s.viewmatrix.dtype == torch.float64
    np.testing.assert_allclose(s.viewmatrix.numpy(), cam.world_to_camera.T)
    np.testing.assert_allclose(s.campos.numpy(), cam.center)
    assert s.tanfovx == pytest.approx(40 / (2 * cam.fx))


def test_training_cameras_json_and_orbit_like():
    """cameras.json stores camera-to-world rotations and centres; the orbit built from it
    circles the point the cameras look at."""
    target = np.array([0.3, 0.2, -0.1])
    train = cameras.orbit_cameras(target, 3.0, 5, 64, 48, elevation_deg=15, up=(0, 0, 1),
                                  start_azimuth_deg=10, arc_deg=120)
    entries = [{"id": i, "img_name": f"im{i}", "width": c.width, "height": c.height,
                "position": c.center.tolist(), "rotation": c.rotation.T.tolist(),
                "fx": c.fx, "fy": c.fy} for i, c in enumerate(train)]
    parsed = cameras.training_cameras_from_json(entries)
    for a, b in zip(train, parsed):
        np.testing.assert_allclose(a.world_to_camera, b.world_to_camera, atol=1e-12)
    np.testing.assert_allclose(cameras.focus_point([c.center for c in parsed],
                                                   [c.rotation[2] for c in parsed]),
                               target, atol=1e-9)
    orbit = cameras.orbit_like(parsed, 4, 32, 24)
    for v in orbit:
        assert np.linalg.norm(v.center - target) == pytest.approx(3.0, rel=1e-6)
        np.testing.assert_allclose(v.project(target[None])[0, :2], [15.5, 11.5], atol=1e-6)
    np.testing.assert_allclose(orbit[0].center, train[0].center, atol=1e-6)
    with pytest.raises(ValueError, match="entry 0"):
        cameras.training_cameras_from_json([{"position": [0, 0, 0]}])


# ---------------------------------------------------------------------------------------------
# PLY files
# ---------------------------------------------------------------------------------------------

def _raw_3dgs_arrays(P, degree, seed):
    """Raw (pre-activation) values as the official training code stores them."""
    rng = np.random.default_rng(seed)
    M = (degree + 1) ** 2
    return dict(
        xyz=rng.normal(size=(P, 3)) * 0.4,
        f_dc=rng.normal(size=(P, 3)) * 0.8,
        f_rest=rng.normal(size=(P, 3, M - 1)) * 0.3,       # (channel, coefficient)
        opacity=rng.normal(size=(P, 1)) * 1.5 + 1.0,
        scale=np.log(rng.uniform(0.03, 0.12, size=(P, 3))),
        rot=rng.normal(size=(P, 4)) * 2.0,
    )


def _write_official_ply(path, raw, drop=(), extra_rest=0, text=False):
    """Writes the official layout with plyfile directly (independent of save_ply); with
    raw["filter_3D"] (P, 1), Mip-Splatting's 3D filter last."""
    from plyfile import PlyData, PlyElement
    P = raw["xyz"].shape[0]
    rest = raw["f_rest"].reshape(P, -1)        # channel-major: (3, M-1) flattened per point
    if extra_rest:
        rest = np.concatenate([rest, np.zeros((P, extra_rest))], axis=1)
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + [f"f_rest_{i}" for i in range(rest.shape[1])] + ["opacity"]
             + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    values = np.concatenate([raw["xyz"], np.zeros((P, 3)), raw["f_dc"], rest, raw["opacity"],
                             raw["scale"], raw["rot"]], axis=1)
    if "filter_3D" in raw:
        names.append("filter_3D")
        values = np.concatenate([values, raw["filter_3D"]], axis=1)
    keep = [i for i, n in enumerate(names) if n not in drop]
    rec = np.empty(P, dtype=[(names[i], "f4") for i in keep])
    for i in keep:
        rec[names[i]] = values[:, i]
    PlyData([PlyElement.describe(rec, "vertex")], text=text).write(str(path))


def _activate(raw):
    """What the training code does to the stored values (written here independently); with a
    3D filter, what Mip-Splatting's get_scaling_with_3D_filter / get_opacity_with_3D_filter do."""
    P = raw["xyz"].shape[0]
    sh = np.concatenate([raw["f_dc"][:, None, :], raw["f_rest"].transpose(0, 2, 1)], axis=1)
    rot = raw["rot"] / np.linalg.norm(raw["rot"], axis=1, keepdims=True)
    opacity = 1 / (1 + np.exp(-raw["opacity"]))
    scale = np.exp(raw["scale"])
    if "filter_3D" in raw:
        filtered = np.sqrt(scale ** 2 + raw["filter_3D"] ** 2)
        opacity = opacity * np.prod(scale / filtered, axis=1, keepdims=True)
        scale = filtered
    f32 = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return scenes.Gaussians(f32(raw["xyz"]), f32(sh), f32(opacity).reshape(P, 1), f32(scale),
                            f32(rot))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_load_ply_activates_and_transposes_like_the_training_code(tmp_path, degree):
    raw = _raw_3dgs_arrays(57, degree, seed=degree)
    path = tmp_path / "point_cloud.ply"
    _write_official_ply(path, raw)
    g = load_ply(path)
    want = _activate(raw)
    assert g.sh_degree == degree and g.sh.shape == (57, (degree + 1) ** 2, 3)
    for name in ("means", "sh", "opacities", "scales", "rotations"):
        torch.testing.assert_close(getattr(g, name), getattr(want, name), rtol=1e-6, atol=1e-6)
    if degree:
        # Stored (channel, coefficient) becomes sh[:, 1 + coefficient, channel].
        assert g.sh[5, 2, 2].item() == pytest.approx(float(np.float32(raw["f_rest"][5, 2, 1])))


def test_save_ply_round_trips_and_uses_the_official_names(tmp_path):
    from plyfile import PlyData
    raw = _raw_3dgs_arrays(40, 2, seed=7)
    g = _activate(raw)
    path = tmp_path / "out.ply"
    save_ply(path, g)
    names = [p.name for p in PlyData.read(str(path))["vertex"].properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:33] == [f"f_rest_{i}" for i in range(24)]
    assert names[33:] == ["opacity", "scale_0", "scale_1", "scale_2",
                          "rot_0", "rot_1", "rot_2", "rot_3"]
    back = load_ply(path)
    for name in ("means", "sh", "opacities", "scales", "rotations"):
        torch.testing.assert_close(getattr(back, name), getattr(g, name), rtol=1e-5, atol=1e-6)
    stored = PlyData.read(str(path))["vertex"]
    np.testing.assert_allclose(stored["f_rest_9"], raw["f_rest"][:, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(stored["opacity"], raw["opacity"][:, 0], rtol=1e-4, atol=1e-4)


def test_bad_ply_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.ply"
    text.write_text("this is not a ply file\n")
    with pytest.raises(PlyFormatError, match="not a readable PLY"):
        load_ply(text)

    raw = _raw_3dgs_arrays(10, 1, seed=3)
    missing = tmp_path / "missing.ply"
    _write_official_ply(missing, raw, drop=("opacity", "rot_3"))
    with pytest.raises(PlyFormatError, match="opacity, rot_3"):
        load_ply(missing)

    odd = tmp_path / "odd.ply"
    _write_official_ply(odd, raw, extra_rest=1)            # 10 f_rest: not 3 channels
    with pytest.raises(PlyFormatError, match="multiple of 3"):
        load_ply(odd)

    wrong_degree = tmp_path / "deg.ply"
    _write_official_ply(wrong_degree, raw, extra_rest=3)   # 12 f_rest: 5 coefficients
    with pytest.raises(PlyFormatError, match="SH degree"):
        load_ply(wrong_degree)

    from plyfile import PlyData, PlyElement
    faces_only = tmp_path / "mesh.ply"
    rec = np.zeros(3, dtype=[("a", "f4")])
    PlyData([PlyElement.describe(rec, "face")]).write(str(faces_only))
    with pytest.raises(PlyFormatError, match="'vertex' element"):
        load_ply(faces_only)

    with pytest.raises(FileNotFoundError):
        load_ply(tmp_path / "nope.ply")

    assert isinstance(PlyFormatError("x"), ValueError)


def test_render_command_reports_a_bad_ply_without_a_traceback(tmp_path, capsys):
    raw = _raw_3dgs_arrays(10, 0, seed=4)
    bad = tmp_path / "bad.ply"
    _write_official_ply(bad, raw, drop=("scale_0", "scale_1", "scale_2"))
    assert main(["render", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "scale_0, scale_1, scale_2" in err
    assert "Traceback" not in err
    assert main(["render", str(tmp_path / "absent.ply"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    for value in ("-0.1", "nan"):
        assert main(["render", str(bad), "--out", str(tmp_path / "o"),
                     "--kernel-size", value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --kernel-size") and "Traceback" not in err


@pytest.mark.parametrize("written,want", [("kernel_size=0.25,", 0.25), ("kernel_size=-1,", 0.1),
                                          ("kernel_size=1e400,", 0.1), ("sh_degree=3", 0.1),
                                          (None, 0.1)])
def test_mip_kernel_size_read_from_cfg_args(tmp_path, written, want):
    """A Mip-Splatting model's 2D filter: its cfg_args' kernel_size where it is a usable one,
    else Mip-Splatting's default 0.1."""
    ply = tmp_path / "model" / "point_cloud" / "iteration_10" / "point_cloud.ply"
    ply.parent.mkdir(parents=True)
    if written is not None:
        (tmp_path / "model" / "cfg_args").write_text(f"Namespace(eval=True, {written})")
    kernel, source = _mip_filter(str(ply))
    assert kernel == want
    assert ("cfg_args" in source) == (want == 0.25)


@pytest.mark.parametrize("text", [False, True])
def test_mip_splatting_ply_gets_its_3d_filter(tmp_path, text):
    """A PLY with Mip-Splatting's filter_3D loads with the filter applied (scales and opacities
    as its model's *_with_3D_filter give them); its header names the property."""
    raw = _raw_3dgs_arrays(40, 1, seed=9)
    raw["filter_3D"] = np.random.default_rng(9).uniform(0.01, 0.1, size=(40, 1))
    path = tmp_path / "point_cloud.ply"
    _write_official_ply(path, raw, text=text)
    assert vertex_properties(path)[-2:] == ["rot_3", "filter_3D"]
    g, want = load_ply(path), _activate(raw)
    for name in ("means", "sh", "opacities", "scales", "rotations"):
        torch.testing.assert_close(getattr(g, name), getattr(want, name), rtol=1e-6, atol=1e-7)
    plain = dict(raw)
    del plain["filter_3D"]
    _write_official_ply(path, plain, text=text)
    assert "filter_3D" not in vertex_properties(path)
    assert (load_ply(path).scales < g.scales).all()


def test_ascii_ply_is_read_too(tmp_path):
    raw = _raw_3dgs_arrays(6, 1, seed=5)
    path = tmp_path / "ascii.ply"
    _write_official_ply(path, raw, text=True)
    torch.testing.assert_close(load_ply(path).sh, _activate(raw).sh, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Packaging: the core needs only torch and numpy; the entry point answers --help
# ---------------------------------------------------------------------------------------------

def test_core_and_helpers_do_not_import_the_optional_libraries():
    code = (
        "import sys, torch, numpy\n"
        "before = set(sys.modules)\n"
        "import diff_gaussian_rasterization_depth as d\n"
        "import diff_gaussian_rasterization_depth.cameras, diff_gaussian_rasterization_depth."
        "scenes, diff_gaussian_rasterization_depth.ply, diff_gaussian_rasterization_depth.viz, "
        "diff_gaussian_rasterization_depth.cli, diff_gaussian_rasterization_depth.mesh\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'matplotlib', 'plyfile', 'tqdm', 'PIL'}))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["render", "--help"],
                                  ["mesh", "--help"]])
def test_module_entry_point_help(args):
    r = subprocess.run([sys.executable, "-m", "diff_gaussian_rasterization_depth", *args],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_unusable_cuda_device_is_a_clear_error(capsys, tmp_path):
    if torch.cuda.is_available() and dgrd.has_cuda_backend():
        pytest.skip("CUDA is usable here")
    assert main(["demo", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "cuda" in capsys.readouterr().err.lower()


# ---------------------------------------------------------------------------------------------
# demo and render at tiny sizes (compiled backend)
# ---------------------------------------------------------------------------------------------

@needs_backend
def test_demo_writes_its_pictures(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--device", "cpu", "--width", "40", "--height", "30",
               "--views", "2", "--gaussians", "1500", "--save-ply"])
    assert rc == 0
    printed = capsys.readouterr().out
    for k in range(2):
        for kind in ("color", "depth", "weight"):
            assert (out / f"view_{k}_{kind}.png").is_file()
            assert str(out / f"view_{k}_{kind}.png") in printed
    assert _read_png(out / "view_0_color.png").shape == (30, 40, 3)
    weight = _read_png(out / "view_1_weight.png")
    assert weight.shape == (30, 40, 3) and weight.max() > 0.9 and weight.min() < 0.1
    assert (out / "demo.png").is_file() and (out / "scene.ply").is_file()
    assert "ms per view" in printed and "scene units" in printed
    assert len(load_ply(out / "scene.ply")) == len(scenes.demo_scene(1500))
    assert len(read_views_json(out / "views.json")) == 2


# (options, a Mip-Splatting model (filter_3D, cfg_args with kernel_size=0.2), the 2D filter
# expected: antialiasing, kernel_size)
FILTER_CASES = {
    "plain": ([], False, False, 0.3),
    "filter-asked": (["--antialiasing", "--kernel-size", "0.1"], False, True, 0.1),
    "mip-model": ([], True, True, 0.2),
    "mip-model-kernel-given": (["--kernel-size", "0.3"], True, False, 0.3),
}


@needs_backend
@pytest.mark.parametrize("case", FILTER_CASES)
def test_render_command_round_trips_a_ply(tmp_path, capsys, case):
    """A PLY written here in the official layout renders, through the command, to exactly what
    the rasterizer gives for the activated values computed here independently; the 2D filter as
    asked for, or for a Mip-Splatting model (its 3D filter in the PLY) as it was trained."""
    filter_args, mip_model, antialiasing, kernel_size = FILTER_CASES[case]
    demo = scenes.demo_scene(1200, sh_degree=1)
    rng = np.random.default_rng(11)
    P = len(demo)
    raw = dict(xyz=demo.means.double().numpy(),
               f_dc=demo.sh[:, 0].double().numpy(),
               f_rest=rng.normal(size=(P, 3, 3)) * 0.4,       # strongly view-dependent
               opacity=rng.normal(size=(P, 1)) + 2.0,
               scale=np.log(demo.scales.double().numpy()),
               rot=demo.rotations.double().numpy() * rng.uniform(0.5, 2.0, size=(P, 1)))
    model_dir = tmp_path / "model"
    ply = model_dir / "point_cloud" / "iteration_7000" / "point_cloud.ply"
    ply.parent.mkdir(parents=True)
    if mip_model:
        raw["filter_3D"] = rng.uniform(0.005, 0.02, size=(P, 1))
        (model_dir / "cfg_args").write_text(
            "Namespace(sh_degree=1, source_path='/data/x', eval=True, kernel_size=0.2, "
            "ray_jitter=False)")
    _write_official_ply(ply, raw)
    out = tmp_path / "render"
    rc = main(["render", str(ply), "--out", str(out), "--views", "2", "--width", "48",
               "--height", "36", "--device", "cpu", "--npy"] + filter_args)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "SH degree 1" in printed and "estimated from the point layout" in printed
    assert ("Mip-Splatting's filters" in printed) == (mip_model and not filter_args)
    views = read_views_json(out / "views.json")
    assert len(views) == 2
    want = _activate(raw)
    for k, cam in enumerate(views):
        with torch.no_grad():
            settings = cam.raster_settings(sh_degree=1, antialiasing=antialiasing,
                                           kernel_size=kernel_size)
            color, _, depth, weight = dgrd.GaussianRasterizer(settings)(
                want.means, None, want.opacities, shs=want.sh, scales=want.scales,
                rotations=want.rotations)
        png = _read_png(out / f"view_{k:03d}_color.png")
        expected = (color.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.abs(png * 255 - expected).max() <= 1.0
        np.testing.assert_allclose(np.load(out / f"view_{k:03d}_depth.npy"), depth.numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(out / f"view_{k:03d}_weight.npy"), weight.numpy(),
                                   rtol=1e-5, atol=1e-5)
        assert (weight > 0.5).float().mean() > 0.2          # the orbit actually frames the scene
        assert (out / f"view_{k:03d}_depth.png").is_file()


@needs_backend
def test_render_follows_training_cameras_when_cameras_json_is_there(tmp_path, capsys):
    g = scenes.demo_scene(800, sh_degree=0)
    model_dir = tmp_path / "model"
    ply = model_dir / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    save_ply(ply, g)
    train = cameras.orbit_cameras((0.0, -0.4, 0.0), 6.0, 4, 64, 48, elevation_deg=25,
                                  up=scenes.DEMO_UP)
    (model_dir / "cameras.json").write_text(json.dumps(
        [{"id": i, "img_name": str(i), "width": c.width, "height": c.height,
          "position": c.center.tolist(), "rotation": c.rotation.T.tolist(), "fx": c.fx,
          "fy": c.fy} for i, c in enumerate(train)]))
    out = tmp_path / "o"
    assert main(["render", str(ply), "--out", str(out), "--views", "3", "--width", "32",
                 "--device", "cpu"]) == 0
    assert "training cameras" in capsys.readouterr().out
    views = read_views_json(out / "views.json")
    assert [(v.width, v.height) for v in views] == [(32, 24)] * 3
    for v in views:
        assert np.linalg.norm(v.center - np.array([0.0, -0.4, 0.0])) == pytest.approx(6.0,
                                                                                      rel=1e-5)
