"""The test aids of the 2024 acceptance check (doc/migration.md): the scene generator's cameras
read back as 3DGS reads them, and the CPU device shim."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth.scenes import demo_scene
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
