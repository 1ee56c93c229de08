"""A small synthetic scene in the Blender/NeRF-synthetic layout, rendered by this package, with
inverse-depth maps: the input the 2024 3DGS training code reads with `-s DIR -d depths --eval`.

    python tools/make_nerf_scene.py OUT_DIR [--size 96] [--train 24] [--test 6] [--seed 0]

Ground truth: a few thousand opaque flat Gaussians on a sphere, a box and a checkered floor
(colours precomputed, black background). Each view is rendered through
`diff_gaussian_rasterization_depth.upstream`, which gives colour and inverse depth in one call:
train/ and test/ hold the PNG images, depths/NAME.png the inverse depth as 16-bit PNG scaled by
512 (what 3DGS's NeRF-synthetic reader divides by), transforms_{train,test}.json the cameras
(camera_angle_x, Blender camera-to-world: x right, y up, z back) and points3d.ply a random
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
from diff_gaussian_rasterization_depth.upstream import GaussianRasterizer

FOV_X_DEG = 45.0


def _orthonormal_frame(normals):
    """Two unit tangents per unit normal."""
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    t1 = np.cross(normals, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    return t1, np.cross(normals, t1)


def _quaternions(t1, t2, n):
    """(w, x, y, z) of the rotation whose columns are t1, t2, n."""
    R = np.stack([t1, t2, n], axis=2)
    w = np.sqrt(np.maximum(1 + R[:, 0, 0] + R[:, 1, 1] + R[:, 2, 2], 1e-12)) / 2
    x = (R[:, 2, 1] - R[:, 1, 2]) / (4 * w)
    y = (R[:, 0, 2] - R[:, 2, 0]) / (4 * w)
    z = (R[:, 1, 0] - R[:, 0, 1]) / (4 * w)
    q = np.stack([w, x, y, z], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def ground_truth(rng):
    """Surface samples: (points, normals, colours, tangent size) of three objects."""
    parts = []
    # Sphere at the origin, coloured by its normal.
    n = rng.normal(size=(2500, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    parts.append((0.45 * n + [0, 0, 0.05], n, 0.5 + 0.45 * n, 0.035))
    # Box beside it: points on the six faces, one colour per face pair.
    side = rng.integers(0, 6, size=1800)
    axis, sign = side // 2, np.where(side % 2 == 0, 1.0, -1.0)
    local = rng.uniform(-1, 1, size=(1800, 3))
    local[np.arange(1800), axis] = sign
    normals = np.zeros((1800, 3))
    normals[np.arange(1800), axis] = sign
    face_colors = np.array([[0.9, 0.3, 0.2], [0.2, 0.7, 0.3], [0.25, 0.35, 0.9]])
    parts.append((0.22 * local + [0.62, -0.45, -0.17], normals, face_colors[axis], 0.035))
    # Floor: a checkered disc.
    r = 1.1 * np.sqrt(rng.uniform(size=3000))
    phi = rng.uniform(0, 2 * math.pi, size=3000)
    floor = np.stack([r * np.cos(phi), r * np.sin(phi), np.full(3000, -0.4)], axis=1)
    checker = ((np.floor(floor[:, 0] / 0.3) + np.floor(floor[:, 1] / 0.3)) % 2)[:, None]
    colors = checker * [0.85, 0.85, 0.8] + (1 - checker) * [0.3, 0.25, 0.2]
    parts.append((floor, np.tile([[0.0, 0, 1]], (3000, 1)), colors, 0.04))
    points = np.concatenate([p[0] for p in parts])
    normals = np.concatenate([p[1] for p in parts])
    colors = np.clip(np.concatenate([p[2] for p in parts]), 0, 1)
    size = np.concatenate([np.full(len(p[0]), p[3]) for p in parts])
    return points, normals, colors, size


def gaussians(points, normals, colors, size):
    t1, t2 = _orthonormal_frame(normals)
    scales = np.stack([size, size, 0.1 * size], axis=1)
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    return dict(means3D=f32(points), opacities=f32(np.full((len(points), 1), 0.95)),
                colors_precomp=f32(colors), scales=f32(scales),
                rotations=f32(_quaternions(t1, t2, normals)))


def cameras(rng, count, size, radius=3.2):
    out = []
    for _ in range(count):
        azimuth = rng.uniform(0, 2 * math.pi)
        elevation = math.radians(rng.uniform(15, 60))
        eye = radius * np.array([math.cos(elevation) * math.cos(azimuth),
                                 math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
        out.append(Camera.looking_at(eye, (0, 0, -0.1), size, size, FOV_X_DEG))
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
            color, _, invdepth = GaussianRasterizer(cam.raster_settings())(
                means3D=scene["means3D"], means2D=None, opacities=scene["opacities"],
                colors_precomp=scene["colors_precomp"], scales=scene["scales"],
                rotations=scene["rotations"])
        rgb = (color.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(os.path.join(out, split, name + ".png"))
        depth16 = np.clip(invdepth[0].numpy() * 512 + 0.5, 0, 65535).astype(np.uint16)
        Image.fromarray(depth16).save(os.path.join(out, "depths", name + ".png"))
        frames.append({"file_path": f"./{split}/{name}",
                       "transform_matrix": blender_camera_to_world(cam).tolist()})
    with open(os.path.join(out, f"transforms_{split}.json"), "w") as f:
        json.dump({"camera_angle_x": math.radians(FOV_X_DEG), "frames": frames}, f, indent=1)


def write_initial_points(path, rng, count):
    xyz = rng.uniform(-1.1, 1.1, size=(count, 3)) * [1, 1, 0.6]
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
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scene = gaussians(*ground_truth(rng))
    os.makedirs(os.path.join(args.out, "depths"), exist_ok=True)
    write_split(args.out, "train", cameras(rng, args.train, args.size), scene)
    write_split(args.out, "test", cameras(rng, args.test, args.size), scene)
    write_initial_points(os.path.join(args.out, "points3d.ply"), rng, args.points)
    print(f"{args.out}: {args.train} train and {args.test} test views of {args.size}x{args.size},"
          f" {scene['means3D'].shape[0]} ground-truth Gaussians")


if __name__ == "__main__":
    main()
