"""debug=True: non-finite inputs named by argument and index; a failing backend call leaves a
snapshot that `replay_snapshot` runs again."""
import glob
import os

import pytest
import torch

import scenes
import diff_gaussian_rasterization_depth as dgrd
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, _debug, replay_snapshot
from robust_helpers import DEVICES, assert_same, render

NAN, INF = float("nan"), float("inf")


def debug_scene(seed=0, **kw):
    scene = scenes.make_scene(seed, P=30, **kw)
    return scene, scene.settings._replace(debug=True)


def call(inputs, settings, device="cpu"):
    g = {k: v.to(device) for k, v in inputs.items() if v is not None}
    settings = settings._replace(**{f: getattr(settings, f).to(device)
                                    for f in ("bg", "viewmatrix", "projmatrix", "campos")})
    return GaussianRasterizer(settings)(**g)


# ---------------------------------------------------------------------------- non-finite inputs

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,variant", [
    ("means3D", {}), ("opacities", {}), ("shs", dict(sh_degree=2)), ("scales", {}),
    ("rotations", {}), ("dc", dict(dc=True, sh_degree=1)),
    ("colors_precomp", dict(precomp_colors=True)), ("cov3D_precomp", dict(precomp_cov=True))])
def test_debug_names_the_nonfinite_argument_and_index(device, name, variant):
    scene, settings = debug_scene(1, **variant)
    inputs = dict(scene.inputs)
    t = inputs[name].clone()
    row = t[17].reshape(-1)
    row[min(4, row.numel() - 1)] = NAN
    t[3].reshape(-1)[0] = INF
    inputs[name] = t
    with pytest.raises(ValueError) as info:
        call(inputs, settings, device)
    message = str(info.value)
    assert f"{name}[3]" in message and f"{name}[17]" in message, message
    # Without debug the same inputs render, the two Gaussians culled.
    radii = call(inputs, scene.settings, device)[1]
    assert radii[3] == 0 and radii[17] == 0


def test_debug_names_every_offending_argument_and_settings_entries():
    scene, settings = debug_scene(2)
    inputs = dict(scene.inputs)
    inputs["means3D"] = inputs["means3D"].clone()
    inputs["means3D"][5, 1] = INF
    inputs["scales"] = inputs["scales"].clone()
    inputs["scales"][29] = NAN
    view = settings.viewmatrix.clone().reshape(4, 4)
    view[2, 3] = NAN
    bg = settings.bg.clone()
    bg[1] = INF
    with pytest.raises(ValueError) as info:
        call(inputs, settings._replace(viewmatrix=view, bg=bg))
    message = str(info.value)
    for part in ("means3D[5]", "scales[29]", "raster_settings.viewmatrix[2, 3]",
                 "raster_settings.bg[1]"):
        assert part in message, message
    assert "opacities" not in message


def test_debug_report_is_truncated():
    scene, settings = debug_scene(3)
    inputs = dict(scene.inputs)
    inputs["opacities"] = torch.full_like(inputs["opacities"], NAN)
    with pytest.raises(ValueError) as info:
        call(inputs, settings)
    message = str(info.value)
    assert "opacities[9]" in message and "opacities[10]" not in message
    assert "20 more in opacities" in message


def test_debug_ignores_means2D_values():
    scene, settings = debug_scene(4)
    inputs = dict(scene.inputs)
    inputs["means2D"] = torch.full_like(inputs["means2D"], NAN)
    out = call(inputs, settings)
    ref = call(scene.inputs, scene.settings)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


def test_debug_output_equals_non_debug():
    scene, settings = debug_scene(5, sh_degree=3)
    out_d, g_d = render(scene.inputs, settings)
    out_n, g_n = render(scene.inputs, scene.settings)
    for a, b in zip(out_d, out_n):
        assert torch.equal(a, b)
    for k in g_n:
        if g_n[k] is not None:
            assert torch.equal(g_d[k], g_n[k])


# ---------------------------------------------------------------------------- snapshots

def too_many_pairs_scene():
    """Whole-screen Gaussians on a 256 x 256 image: 256 tiles each."""
    scene = scenes.make_scene(6, P=40, height=256, width=256, outliers=False, sh_degree=1)
    inputs = dict(scene.inputs)
    inputs["scales"] = inputs["scales"] * 400.0
    return inputs, scene.settings._replace(debug=True)


def test_forward_error_writes_a_snapshot_that_replays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", "4096")
    inputs, settings = too_many_pairs_scene()
    with pytest.raises(RuntimeError) as info:
        call(inputs, settings)
    message = str(info.value)
    assert "pairs" in message and "GiB" in message
    files = glob.glob(str(tmp_path / "dgrd_snapshot_*.pt"))
    assert len(files) == 1 and files[0] in message and "replay_snapshot" in message
    snap = _debug.load_snapshot(files[0])
    assert snap["stage"] == "forward" and "pairs" in snap["error"]

    # The replay reproduces the error (and writes no snapshot of its own) ...
    with pytest.raises(RuntimeError, match="pairs"):
        replay_snapshot(files[0])
    assert len(glob.glob(str(tmp_path / "dgrd_snapshot_*.pt"))) == 1
    # ... and, with the memory to do it, renders what the call would have rendered.
    monkeypatch.delenv("DGRD_HOST_MEMORY_LIMIT")
    replayed = replay_snapshot(files[0])["outputs"]
    direct = call(inputs, settings._replace(debug=False))
    for a, b in zip(replayed, direct):
        assert torch.equal(a, b)


def test_no_snapshot_without_debug(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", "4096")
    inputs, settings = too_many_pairs_scene()
    with pytest.raises(RuntimeError) as info:
        call(inputs, settings._replace(debug=False))
    assert "snapshot" not in str(info.value)
    assert not os.listdir(tmp_path)


def test_snapshot_directory_variable(tmp_path, monkeypatch):
    target = tmp_path / "snaps"
    target.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGRD_SNAPSHOT_DIR", str(target))
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", "4096")
    inputs, settings = too_many_pairs_scene()
    for _ in range(2):   # two failures, two files: snapshots never overwrite each other
        with pytest.raises(RuntimeError):
            call(inputs, settings)
    assert len(list(target.glob("dgrd_snapshot_*.pt"))) == 2
    assert not list(tmp_path.glob("dgrd_snapshot_*.pt"))


@pytest.mark.parametrize("device", DEVICES)
def test_injected_forward_fault_is_snapshotted(tmp_path, monkeypatch, device):
    monkeypatch.chdir(tmp_path)
    scene, settings = debug_scene(7, sh_degree=2)

    def broken(config, gaussians):
        raise RuntimeError("injected fault")
    real = _backend.forward
    monkeypatch.setattr(_backend, "forward", broken)
    with pytest.raises(RuntimeError, match="injected fault") as info:
        call(scene.inputs, settings, device)
    path = str(info.value).split("written to ")[1].split(";")[0]
    snap = _debug.load_snapshot(path)
    assert snap["device"].startswith(device)
    monkeypatch.setattr(_backend, "forward", real)
    replayed = replay_snapshot(path)["outputs"]
    direct = call(scene.inputs, scene.settings, device)
    for a, b in zip(replayed, direct):
        assert_same(a.cpu(), b.cpu(), device)


@pytest.mark.parametrize("camera", ["orthographic", "fisheye-distorted", "subpixel-offset"])
def test_snapshot_keeps_the_camera(tmp_path, monkeypatch, camera):
    """A snapshot replays the projection it was taken with (an orthographic camera, a fisheye
    with OpenCV's distortion) and Mip-Splatting's sample offsets: the replay renders what the
    call rendered, not the pinhole's render of the same matrices."""
    monkeypatch.chdir(tmp_path)
    scene = scenes.make_scene(9, P=30, sh_degree=1)
    if camera == "orthographic":
        scene = scenes.orthographic(scene)
    elif camera == "fisheye-distorted":
        scene = scenes.fisheye(scene, distortion=(0.05, -0.02, 0.004, -0.0005))
    else:
        s = scene.settings
        offset = torch.rand(s.image_height, s.image_width, 2,
                            generator=torch.Generator().manual_seed(1)) - 0.5
        scene = scenes.Scene(scene.inputs, s._replace(subpixel_offset=offset))
    settings = scene.settings._replace(debug=True)

    def broken(config, gaussians):
        raise RuntimeError("injected fault")
    real = _backend.forward
    monkeypatch.setattr(_backend, "forward", broken)
    with pytest.raises(RuntimeError, match="injected fault") as info:
        call(scene.inputs, settings)
    path = str(info.value).split("written to ")[1].split(";")[0]
    monkeypatch.setattr(_backend, "forward", real)
    replayed = replay_snapshot(path)["outputs"]
    direct = call(scene.inputs, scene.settings)
    for a, b in zip(replayed, direct):
        assert torch.equal(a, b)
    pinhole = call(scene.inputs, scene.settings._replace(
        orthographic=False, fisheye=False, fisheye_distortion=None, subpixel_offset=None))
    assert (pinhole[0] - direct[0]).abs().max() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_backward_error_writes_a_snapshot_that_replays(tmp_path, monkeypatch, device):
    monkeypatch.chdir(tmp_path)
    # Mip-Splatting's filter: the snapshot keeps the kernel size, or the replay would differ.
    scene, settings = debug_scene(8, sh_degree=1, dc=True, antialiasing=True, kernel_size=0.1)

    def broken(*args, **kwargs):
        raise RuntimeError("injected backward fault")
    real = _backend.backward
    monkeypatch.setattr(_backend, "backward", broken)
    with pytest.raises(RuntimeError, match="injected backward fault") as info:
        render(scene.inputs, settings, device, seed=4)
    message = str(info.value)
    assert "replay_snapshot" in message
    path = message.split("written to ")[1].split(";")[0]
    snap = _debug.load_snapshot(path)
    assert snap["stage"] == "backward"
    assert set(snap["grads"]) == {"color", "depth", "weight"}
    assert snap["settings"]["kernel_size"] == 0.1
    monkeypatch.setattr(_backend, "backward", real)

    result = replay_snapshot(path)
    out, grads = render(scene.inputs, scene.settings, device, seed=4)
    for a, b in zip(result["outputs"], out):
        assert_same(a.detach().cpu(), b, device)
    # The snapshot holds dc and shs apart, as they were given.
    assert snap["inputs"]["dc"].shape == scene.inputs["dc"].shape
    for k in ("means3D", "means2D", "opacities", "dc", "shs", "scales", "rotations"):
        assert_same(result["grads"][k].cpu(), grads[k], device, k)


def test_error_while_replaying_is_not_snapshotted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGRD_HOST_MEMORY_LIMIT", "4096")
    inputs, settings = too_many_pairs_scene()
    with pytest.raises(RuntimeError):
        call(inputs, settings)
    (path,) = glob.glob(str(tmp_path / "dgrd_snapshot_*.pt"))
    with pytest.raises(RuntimeError) as info:
        replay_snapshot(path, debug=True)
    assert "snapshot" not in str(info.value)


def test_replay_rejects_other_files(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a diff_gaussian_rasterization_depth snapshot"):
        replay_snapshot(str(path))


def test_replay_snapshot_is_exported():
    assert dgrd.replay_snapshot is replay_snapshot
    assert "replay_snapshot" in dgrd.__all__
