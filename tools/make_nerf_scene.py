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

With `--fisheye DEG`, the views are equidistant fisheyes (the package's `fisheye=True`) whose
image half-width spans DEG degrees, and camera_angle_x is written as Fisheye-GS's reader takes
it for its FISHEYE camera model: 2 tan(FovX / 2), twice the half-width's angle in radians.

With `--colmap`, the same views in COLMAP's text layout instead, the one most 3DGS forks read
(`-s DIR --eval` holds out every 8th view): images/NAME.png, sparse/0/cameras.txt (one PINHOLE
camera), images.txt (world-to-camera as COLMAP writes it), points3D.txt (the random initial
points), and object_mask/NAME.png, each pixel's object (0 nothing, 1 the ground, 2 the ball,
3 the torus, 4 the pillar: the part of the Gaussian with the largest weight there), the masks
Gaussian Grouping trains its identity encodings on.
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
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth.scenes import DEMO_UP, demo_part_labels, demo_scene
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


def write_split(out, split, cams, scene, fisheye_deg=None):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    frames = []
    for k, cam in enumerate(cams):
        name = f"{split}_{k:03d}"
        settings = cam.raster_settings(sh_degree=1)
        if fisheye_deg is not None:   # the half-width spans the angle: tanfovx in radians
            half = math.radians(fisheye_deg)
            settings = settings._replace(fisheye=True, tanfovx=half,
                                         tanfovy=half * cam.height / cam.width)
        with torch.no_grad():
            color, _, invdepth = GaussianRasterizer(settings)(
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
    angle_x = (math.radians(FOV_X_DEG) if fisheye_deg is None
               else 2.0 * math.radians(fisheye_deg))
    with open(os.path.join(out, f"transforms_{split}.json"), "w") as f:
        json.dump({"camera_angle_x": angle_x, "frames": frames}, f, indent=1)


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


def rotation_to_quaternion(R):
    """(w, x, y, z) of a rotation matrix (COLMAP's qvec), from its largest-magnitude
    component so that no division is by a small number."""
    w2 = 1 + np.trace(R)
    x2, y2, z2 = 1 + 2 * R[0, 0] - np.trace(R), 1 + 2 * R[1, 1] - np.trace(R), \
        1 + 2 * R[2, 2] - np.trace(R)
    k = int(np.argmax([w2, x2, y2, z2]))
    if k == 0:
        w = math.sqrt(w2) / 2
        q = [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w),
             (R[1, 0] - R[0, 1]) / (4 * w)]
    elif k == 1:
        x = math.sqrt(x2) / 2
        q = [(R[2, 1] - R[1, 2]) / (4 * x), x, (R[0, 1] + R[1, 0]) / (4 * x),
             (R[0, 2] + R[2, 0]) / (4 * x)]
    elif k == 2:
        y = math.sqrt(y2) / 2
        q = [(R[0, 2] - R[2, 0]) / (4 * y), (R[0, 1] + R[1, 0]) / (4 * y), y,
             (R[1, 2] + R[2, 1]) / (4 * y)]
    else:
        z = math.sqrt(z2) / 2
        q = [(R[1, 0] - R[0, 1]) / (4 * z), (R[0, 2] + R[2, 0]) / (4 * z),
             (R[1, 2] + R[2, 1]) / (4 * z), z]
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def write_colmap(out, cams, scene, labels, rng, points):
    """The COLMAP text layout and the object masks (module docstring)."""
    for folder in ("images", "object_mask", os.path.join("sparse", "0")):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    size = cams[0].width
    focal = size / (2 * math.tan(math.radians(FOV_X_DEG) / 2))
    with open(os.path.join(out, "sparse", "0", "cameras.txt"), "w") as f:
        f.write(f"1 PINHOLE {size} {size} {focal!r} {focal!r} {size / 2!r} {size / 2!r}\n")
    lines = []
    for k, cam in enumerate(cams):
        name = f"view_{k:03d}"
        with torch.no_grad():
            color, _, _, _, dominant = PackageRasterizer(cam.raster_settings(sh_degree=1))(
                means3D=scene.means, means2D=None, opacities=scene.opacities, shs=scene.sh,
                scales=scene.scales, rotations=scene.rotations, dominant=True)
        rgb = (color.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(os.path.join(out, "images", name + ".png"))
        objects = torch.where(dominant >= 0, labels[dominant.clamp(min=0).long()] + 1, 0)
        Image.fromarray(objects.numpy().astype(np.uint8), "L").save(
            os.path.join(out, "object_mask", name + ".png"))
        w2c = np.asarray(cam.world_to_camera, dtype=np.float64)
        q, t = rotation_to_quaternion(w2c[:3, :3]), w2c[:3, 3]
        lines.append(f"{k + 1} " + " ".join(repr(float(v)) for v in (*q, *t))
                     + f" 1 {name}.png\n\n")
    with open(os.path.join(out, "sparse", "0", "images.txt"), "w") as f:
        f.writelines(lines)
    xyz = CENTER + rng.uniform(-2.6, 2.6, size=(points, 3))
    rgb = rng.integers(0, 256, size=(points, 3))
    with open(os.path.join(out, "sparse", "0", "points3D.txt"), "w") as f:
        for k, (p, c) in enumerate(zip(xyz, rgb)):
            x, y, z = (float(v) for v in p)
            f.write(f"{k + 1} {x!r} {y!r} {z!r} {c[0]} {c[1]} {c[2]} 0\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=6)
    ap.add_argument("--points", type=int, default=2000, help="initial random points")
    ap.add_argument("--gaussians", type=int, default=8000, help="ground-truth Gaussians")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--colmap", action="store_true",
                    help="COLMAP's text layout with object masks (module docstring)")
    ap.add_argument("--fisheye", type=float, default=None, metavar="DEG",
                    help="equidistant fisheye views, the half-width spanning DEG degrees")
    ap.add_argument("--distance", type=float, default=6.2,
                    help="the cameras' distance from the scene's centre")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    scene = demo_scene(args.gaussians, seed=args.seed, sh_degree=1)
    if args.colmap:
        cams = cameras(rng, args.train + args.test, args.size)
        write_colmap(args.out, cams, scene, demo_part_labels(args.gaussians, seed=args.seed),
                     rng, args.points)
        print(f"{args.out}: {len(cams)} views of {args.size}x{args.size} in COLMAP's layout, "
              f"object masks, {len(scene)} ground-truth Gaussians")
        return
    os.makedirs(os.path.join(args.out, "depths"), exist_ok=True)
    write_split(args.out, "train", cameras(rng, args.train, args.size, args.distance), scene,
                args.fisheye)
    write_split(args.out, "test", cameras(rng, args.test, args.size, args.distance), scene,
                args.fisheye)
    write_initial_points(os.path.join(args.out, "points3d.ply"), rng, args.points)
    print(f"{args.out}: {args.train} train and {args.test} test views of {args.size}x{args.size},"
          f" {len(scene)} ground-truth Gaussians")


if __name__ == "__main__":
    main()
