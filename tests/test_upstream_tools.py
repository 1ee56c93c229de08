"""The test aids of the end-to-end checks (doc/migration.md): the scene generator's cameras
read back as 3DGS reads them (its NeRF-synthetic layout and COLMAP's, with object masks), and
the CPU device shim."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth.scenes import demo_part_labels, demo_scene
from diff_gaussian_rasterization_depth.upstream import GaussianRasterizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nerf_scene_reads_back_as_3dgs_reads_it(tmp_path):
    """Cameras rebuilt from transforms_*.json the way 3DGS's NeRF-synthetic reader does (flip
    y and z of the Blender camera-to-world, invert, fov from camera_angle_x) render the saved
    images and inverse depths again."""
    out = tmp_path / "scene"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_nerf_scene.py"), str(out),
                    "--size", "24", "--train", "2", "--test", "1", "--gaussians", "600",
                    "--points", "50", "--seed", "3"], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": REPO}, capture_output=True)
    scene = demo_scene(600, seed=3, sh_degree=1)
    checked = 0
    for split in ("train", "test"):
        meta = json.loads((out / f"transforms_{split}.json").read_text())
        for frame in meta["frames"]:
            c2w = np.array(frame["transform_matrix"])
            c2w[:3, 1:3] *= -1
            image = np.asarray(Image.open(out / (frame["file_path"] + ".png")), dtype=np.float64)
            size = image.shape[1]
            focal = size / (2 * math.tan(meta["camera_angle_x"] / 2))
            camera = Camera(np.linalg.inv(c2w), size, image.shape[0], focal, focal)
            with torch.no_grad():
                color, _, invdepth = GaussianRasterizer(camera.raster_settings(sh_degree=1))(
                    scene.means, None, scene.opacities, scene.sh[:, :1], scene.sh[:, 1:],
                    scales=scene.scales, rotations=scene.rotations)
            rgb = color.clamp(0, 1).permute(1, 2, 0).numpy() * 255
            assert np.abs(rgb - image).max() <= 0.51
            name = os.path.basename(frame["file_path"])
            depth16 = np.asarray(Image.open(out / "depths" / f"{name}.png"), dtype=np.float64)
            assert np.abs(invdepth[0].numpy() * 512 - depth16).max() <= 0.51
            assert depth16.max() > 50   # the object is in view
            checked += 1
    assert checked == 3


def colmap_rotation(qvec):
    """COLMAP's qvec (w, x, y, z) as a rotation matrix (its qvec2rotmat)."""
    w, x, y, z = qvec
    return np.array([[1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
                     [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
                     [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y]])


def test_colmap_scene_reads_back_as_colmap_readers_read_it(tmp_path):
    """`--colmap`: cameras rebuilt from sparse/0's text files as 3DGS's COLMAP reader does
    (world-to-camera from qvec and tvec, the field of view from the PINHOLE focal) render the
    saved images again; each object mask is the part (1-4) of the Gaussian with the largest
    weight at each pixel, 0 where nothing is blended; the initial points parse as COLMAP's."""
    out = tmp_path / "scene"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_nerf_scene.py"), str(out),
                    "--size", "24", "--train", "3", "--test", "0", "--gaussians", "600",
                    "--points", "40", "--seed", "4", "--colmap"], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": REPO}, capture_output=True)
    scene = demo_scene(600, seed=4, sh_degree=1)
    labels = demo_part_labels(600, seed=4)
    assert labels.shape == (len(scene),) and set(labels.tolist()) == {0, 1, 2, 3}
    camera_line = (out / "sparse" / "0" / "cameras.txt").read_text().split()
    assert camera_line[:4] == ["1", "PINHOLE", "24", "24"]
    focal = float(camera_line[4])
    lines = [line for line in (out / "sparse" / "0" / "images.txt").read_text().splitlines()
             if line.strip()]
    assert len(lines) == 3
    for line in lines:
        elems = line.split()
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = colmap_rotation(list(map(float, elems[1:5]))), \
            list(map(float, elems[5:8]))
        camera = Camera(w2c, 24, 24, focal, focal)
        name = elems[9].split(".")[0]
        image = np.asarray(Image.open(out / "images" / elems[9]), dtype=np.float64)
        with torch.no_grad():
            color, _, _, weight, dominant = PackageRasterizer(camera.raster_settings(sh_degree=1))(
                means3D=scene.means, means2D=None, opacities=scene.opacities, shs=scene.sh,
                scales=scene.scales, rotations=scene.rotations, dominant=True)
        assert np.abs(color.clamp(0, 1).permute(1, 2, 0).numpy() * 255 - image).max() <= 0.51
        mask = torch.from_numpy(np.array(Image.open(out / "object_mask" / f"{name}.png")))
        want = torch.where(dominant >= 0, labels[dominant.clamp(min=0).long()] + 1, 0)
        assert torch.equal(mask.long(), want)
        assert torch.equal(mask == 0, weight == 0) and len(mask.unique()) >= 3
    points = [line.split() for line in (out / "sparse" / "0" / "points3D.txt").read_text()
              .splitlines()]
    assert len(points) == 40 and all(len(p) == 8 for p in points)
    xyz = np.array([[float(v) for v in p[1:4]] for p in points])
    assert np.abs(xyz - [0.0, -0.45, 0.0]).max() <= 2.6


def test_cpu_shim_runs_cuda_code_on_the_cpu(tmp_path):
    script = tmp_path / "uses_cuda.py"
    script.write_text(
        "import torch\n"
        "from simple_knn._C import distCUDA2\n"
        "a = torch.zeros((3, 2), device='cuda') + torch.ones(2).cuda()\n"
        "b = torch.tensor([1.0], device=torch.device('cuda:0')).to('cuda')\n"
        "start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)\n"
        "start.record(); end.record(); torch.cuda.set_device(0); torch.cuda.empty_cache()\n"
        "assert a.device.type == b.device.type == 'cpu' and start.elapsed_time(end) >= 0\n"
        "g = torch.Generator().manual_seed(0)\n"
        "p = torch.rand(300, 3, generator=g)\n"
        "d2 = torch.cdist(p, p).square() + torch.eye(300) * 1e9\n"
        "want = d2.sort(dim=1).values[:, :3].mean(dim=1)\n"
        "torch.testing.assert_close(distCUDA2(p), want)\n"
        "print('shim ok')\n")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "cpu_shim", "run.py"),
                        str(script)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    assert "shim ok" in r.stdout
