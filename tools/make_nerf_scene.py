"""A small synthetic scene in the Blender/NeRF-synthetic layout, rendered by this package, with
inverse-depth maps: the input the 2024 3DGS training code reads with `-s DIR -d depths --eval`.

    python tools/make_nerf_scene.py OUT_DIR [--size 96] [--train 24] [--test 6] [--seed 0]

Ground truth: the package's demo still life (`scenes.demo_scene`, flat surface Gaussians, SH
degree 1) over a black background. Each view is rendered through
`diff_gaussian_rasterization_depth.upstream` (SH split into dc and the rest, as the 2024 code
passes it), which gives colour and inverse depth in one call:
train/ and test/ hold the PNG images, depths/NAME.png the inverse depth as 16-bit PNG scaled by
512 (what 3DGS's NeRF-synthetic reader divides by), transforms_{train,test}.json the cameras
(camera_angle_x, Blender camera-to-world: x right, y up, z back; and D-NeRF's "time" per frame,
for deformable-scene codes, though nothing moves) and points3d.ply a random
initial point cloud (as 3DGS makes for such scenes, but fewer points, for the CPU).
"""
import argparse
import json
import math
import os

import numpy as np
import torch
from PIL import Image
from plyfile import PlyData, PlyElement

from diff_gaussian_rasterization_depth.cameras import Camera
from diff_gaussian_rasterization_depth.scenes import DEMO_UP, demo_scene
from diff_gaussian_rasterization_depth.upstream import GaussianRasterizer

FOV_X_DEG = 50.0
CENTER = np.array([0.0, -0.45, 0.0])   # the demo scene's centre


def cameras(rng, count, size, radius=6.2):
    """Views from random directions above the demo scene's ground, all facing its centre."""
    up = np.asarray(DEMO_UP, dtype=np.float64)
    side = np.cross(up, [0.0, 0.0, 1.0])
    front = np.cross(side, up)
    out = []
    for _ in range(count):
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = math.radians(rng.uniform(15, 50))
        direction = (math.cos(elevation) * (math.cos(azimuth) * side + math.sin(azimuth) * front)
                     + math.sin(elevation) * up)
        out.append(Camera.looking_at(CENTER + radius * direction, CENTER, size, size, FOV_X_DEG,
                                     up=DEMO_UP))
    return out


def blender_camera_to_world(camera):
    """OpenCV world-to-camera -> Blender camera-to-world (y up, z back)."""
    c2w = np.linalg.inv(camera.world_to_camera)
    c2w[:3, 1:3] *= -1
    return c2w


def write_split(out, split, cams, scene):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    frames = []
    for k, cam in enumerate(cams):
        name = f"{split}_{k:03d}"
        with torch.no_grad():
            color, _, invdepth = GaussianRasterizer(cam.raster_settings(sh_degree=1))(
                means3D=scene.means, means2D=None, opacities=scene.opacities,
                dc=scene.sh[:, :1], shs=scene.sh[:, 1:], scales=scene.scales,
                rotations=scene.rotations)
        rgb = (color.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(os.path.join(out, split, name + ".png"))
        depth16 = np.clip(invdepth[0].numpy() * 512 + 0.5, 0, 65535).astype(np.uint16)
        Image.fromarray(depth16).save(os.path.join(out, "depths", name + ".png"))
        # "time": D-NeRF's field, which deformable-scene codes (Deformable 3D Gaussians) read;
        # the scene is static, so any time is right.
        frames.append({"file_path": f"./{split}/{name}",
                       "transform_matrix": blender_camera_to_world(cam).tolist(),
                       "time": k / max(1, len(cams) - 1)})
    with open(os.path.join(out, f"transforms_{split}.json"), "w") as f:
        json.dump({"camera_angle_x": math.radians(FOV_X_DEG), "frames": frames}, f, indent=1)


def write_initial_points(path, rng, count):
    """Uniform in the box around the scene, random colours (3DGS's choice without SfM)."""
    xyz = CENTER + rng.uniform(-2.6, 2.6, size=(count, 3))
    rgb = rng.integers(0, 256, size=(count, 3))
    fields = [(c, "f4") for c in ("x", "y", "z", "nx", "ny", "nz")] + \
             [(c, "u1") for c in ("red", "green", "blue")]
    vertices = np.empty(count, dtype=fields)
    for c, column in zip("xyz", xyz.T):
        vertices[c] = column
    for c in ("nx", "ny", "nz"):
        vertices[c] = 0
    for c, column in zip(("red", "green", "blue"), rgb.T):
        vertices[c] = column
    PlyData([PlyElement.describe(vertices, "vertex")]).write(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=6)
    ap.add_argument("--points", type=int, default=2000, help="initial random points")
    ap.add_argument("--gaussians", type=int, default=8000, help="ground-truth Gaussians")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scene = demo_scene(args.gaussians, seed=args.seed, sh_degree=1)
    os.makedirs(os.path.join(args.out, "depths"), exist_ok=True)
    write_split(args.out, "train", cameras(rng, args.train, args.size), scene)
    write_split(args.out, "test", cameras(rng, args.test, args.size), scene)
    write_initial_points(os.path.join(args.out, "points3d.ply"), rng, args.points)
    print(f"{args.out}: {args.train} train and {args.test} test views of {args.size}x{args.size},"
          f" {len(scene)} ground-truth Gaussians")


if __name__ == "__main__":
    main()
