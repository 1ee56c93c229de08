"""Meshes from depth maps (`diff_gaussian_rasterization_depth.mesh`): marching tetrahedra on
exact fields (closed, consistently oriented, outward, on the surface), TSDF fusion of exact and
of rendered depth maps, and the mesh PLY."""
import json

import numpy as np
import pytest
import torch

import scenes as test_scenes
from cuda_target import real_cuda_param
from diff_gaussian_rasterization_depth import GaussianRasterizer, surface
from diff_gaussian_rasterization_depth.cameras import Camera, look_at, orbit_cameras
from diff_gaussian_rasterization_depth.mesh import (Mesh, SparseTSDFVolume, TSDFVolume,
                                                    _back_project, _block_keys, _ViewMaps,
                                                    face_components,
                                                    keep_largest_components,
                                                    marching_tetrahedra)
from diff_gaussian_rasterization_depth import scenes
from diff_gaussian_rasterization_depth.cli import main
from diff_gaussian_rasterization_depth.ply import load_ply, save_mesh_ply, save_ply
from diff_gaussian_rasterization_depth.surface import render_surface

F32, F64 = torch.float32, torch.float64


def grid(n, voxel, origin, dtype=F64):
    axes = [torch.arange(n, dtype=dtype) * voxel + o for o in origin]
    return torch.meshgrid(*axes, indexing="ij")


def edge_counts(faces):
    """(undirected edge multiplicities, directed edge multiplicities)."""
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = torch.unique(torch.sort(edges, dim=1).values, dim=0, return_counts=True)[1]
    directed = torch.unique(edges, dim=0, return_counts=True)[1]
    return undirected, directed


def face_normals(mesh):
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, k]].double() for k in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0), (v0 + v1 + v2) / 3


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("seed", range(3))
def test_sphere_field_gives_a_closed_outward_sphere(seed, dtype):
    """The exact signed distance of a sphere (its centre and radius drawn; radii that put grid
    points exactly on the surface included): a closed mesh (every edge in two faces, each
    direction once: consistently oriented), of Euler characteristic 2, every face facing out,
    every vertex on the sphere to the linear interpolation's error."""
    gen = torch.Generator().manual_seed(seed)
    voxel, n, origin = 0.1, 41, (-2.0, -2.0, -2.0)
    centre = (torch.rand(3, generator=gen, dtype=F64) - 0.5) * 0.4 * (seed > 0)
    radius = 1.3 if seed == 0 else 0.9 + 0.5 * float(torch.rand((), generator=gen))
    X, Y, Z = grid(n, voxel, origin)
    sdf = ((X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2).sqrt() - radius
    if seed == 0:
        assert (sdf == 0).sum() > 0      # grid points on the surface: vertices there
    mesh = marching_tetrahedra(sdf.to(dtype), torch.ones(sdf.shape, dtype=torch.bool), origin,
                               voxel)
    assert mesh.vertices.dtype == dtype and mesh.faces.dtype == torch.long
    assert mesh.faces.shape[0] > 5000
    undirected, directed = edge_counts(mesh.faces)
    assert (undirected == 2).all() and (directed == 1).all()
    V, E, F = mesh.vertices.shape[0], undirected.numel(), mesh.faces.shape[0]
    assert V - E + F == 2
    used = torch.zeros(V, dtype=torch.bool)
    used[mesh.faces.reshape(-1)] = True
    assert used.all()
    error = (mesh.vertices.double() - centre).norm(dim=1) - radius
    assert error.abs().max() < voxel ** 2 / radius
    normal, centroid = face_normals(mesh)
    area = normal.norm(dim=1)
    sliver = area < 1e-10 * voxel ** 2      # float32 rounding of vertices at t near 0 or 1
    assert sliver.float().mean() < 0.02
    assert ((normal * (centroid - centre)).sum(1)[~sliver] > 0).all()


def test_plane_field_is_exact_and_faces_its_positive_side():
    """A linear field is interpolated exactly: every vertex on the plane, every face's normal
    the plane's; the mesh spans the grid, its boundary on the grid's faces only."""
    voxel, n, origin = 0.25, 13, (0.0, 0.0, 0.0)
    normal = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8], dtype=F64), dim=0)
    X, Y, Z = grid(n, voxel, origin)
    field = normal[0] * X + normal[1] * Y + normal[2] * Z - 1.4
    mesh = marching_tetrahedra(field, torch.ones(field.shape, dtype=torch.bool), origin, voxel)
    assert (mesh.vertices @ normal - 1.4).abs().max() < 1e-12
    face_normal, _ = face_normals(mesh)
    unit = torch.nn.functional.normalize(face_normal, dim=1)
    assert (unit @ normal > 1 - 1e-9).all()
    undirected, directed = edge_counts(mesh.faces)
    assert (directed == 1).all() and set(undirected.tolist()) == {1, 2}
    # The boundary: edges of one face, all on the grid's box.
    edges = torch.sort(torch.cat([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]],
                                  mesh.faces[:, [2, 0]]]), dim=1).values
    unique, counts = torch.unique(edges, dim=0, return_counts=True)
    ends = mesh.vertices[unique[counts == 1].reshape(-1)]
    top = voxel * (n - 1)
    assert ends.shape[0] > 20
    assert ((ends < 1e-12) | (ends > top - 1e-12)).any(1).all()


def test_invalid_points_and_colours():
    """Cubes with an invalid corner are not meshed; colours of a linear colour field come out
    exactly at the vertices."""
    voxel, n, origin = 0.1, 31, (-1.5, -1.5, -1.5)
    X, Y, Z = grid(n, voxel, origin)
    sdf = (X ** 2 + Y ** 2 + Z ** 2).sqrt() - 1.0
    valid = X < 0.25
    colors = torch.stack([0.5 + 0.3 * X, 0.5 - 0.2 * Y, 0.4 + 0.1 * Z], -1)
    mesh = marching_tetrahedra(sdf, valid, origin, voxel, colors)
    assert mesh.vertices[:, 0].max() <= 0.25 + 1e-12 and mesh.vertices[:, 0].min() < -0.9
    want = torch.stack([0.5 + 0.3 * mesh.vertices[:, 0], 0.5 - 0.2 * mesh.vertices[:, 1],
                        0.4 + 0.1 * mesh.vertices[:, 2]], 1)
    torch.testing.assert_close(mesh.colors, want, rtol=0, atol=1e-12)
    empty = marching_tetrahedra(sdf, torch.zeros_like(valid), origin, voxel, colors)
    assert empty.vertices.shape == (0, 3) and empty.faces.shape == (0, 3)
    assert empty.colors.shape == (0, 3)


def sphere_depth(camera, centre, radius):
    """The view depth z of a sphere at every pixel centre of `camera` (0 where missed)."""
    origin, dirs = camera.world_rays()
    o, d = torch.tensor(origin), torch.tensor(dirs)
    oc = o - torch.tensor(centre, dtype=F64)
    a, b, k = (d * d).sum(-1), (d * oc).sum(-1), oc @ oc - radius ** 2
    disc = b * b - a * k
    t = (-b - disc.clamp_min(0).sqrt()) / a      # directions have view z = 1: t is z
    return torch.where(disc > 0, t, torch.zeros_like(t))


def sphere_views(centre, width=64, height=48):
    return (orbit_cameras(centre, 3.0, 12, width, height, elevation_deg=20)
            + orbit_cameras(centre, 3.0, 6, width, height, elevation_deg=-40))


def test_tsdf_of_exact_depth_maps():
    """18 views of a sphere's exact depth: the fused mesh lies on it (mean error under a
    quarter voxel), its colours are the constant colour every view gave."""
    centre, radius, voxel = (0.2, -0.1, 0.3), 0.8, 0.04
    volume = TSDFVolume([-1.0, -1.2, -0.8], [1.4, 1.0, 1.4], voxel)
    assert volume.shape == (61, 56, 56) and volume.truncation == pytest.approx(4 * voxel)
    color = torch.tensor([0.2, 0.5, 0.7])[:, None, None].expand(3, 48, 64)
    for camera in sphere_views(centre):
        depth = sphere_depth(camera, centre, radius).float()
        volume.integrate(depth, camera.raster_settings(), color=color, mask=depth > 0)
    mesh = volume.extract_mesh()
    error = (mesh.vertices.double() - torch.tensor(centre)).norm(dim=1) - radius
    assert mesh.faces.shape[0] > 10000
    assert error.abs().mean() < voxel / 4 and error.abs().max() < voxel
    torch.testing.assert_close(mesh.colors, torch.tensor([0.2, 0.5, 0.7]).expand_as(mesh.colors))
    normal, centroid = face_normals(mesh)
    outward = (normal * (centroid - torch.tensor(centre))).sum(1)
    assert (outward > 0).float().mean() > 0.99


def tangent_sphere_gaussians(P, centre, radius, seed):
    """(means, rotations, scales) of P small flat Gaussians tangent to a sphere at random
    points: a surface the rasterizer draws."""
    gen = torch.Generator().manual_seed(seed)
    n = torch.nn.functional.normalize(torch.randn(P, 3, generator=gen), dim=1)
    # The rotation taking z to the sphere's normal n: (1 + z.n, z x n), normalized.
    tangent = torch.nn.functional.normalize(
        torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros(P)], 1), dim=1)
    return centre + radius * n, tangent, torch.tensor([0.03, 0.03, 0.002]).expand(P, 3)


def test_tsdf_of_rendered_depth():
    """The package's own depth maps: 10,000 small flat Gaussians tangent to a sphere, rendered
    from 18 views and fused. From PGSR's plane depth (surface.render_surface) the mesh lies on
    the sphere to a third of a voxel on average, near what exact depths give; from the expected
    depth, which blends the splats' centre depths, it stands out by over half a voxel (on a
    convex surface the splats around a pixel's hit lie nearer the camera)."""
    centre, radius, voxel = torch.tensor([0.2, -0.1, 0.3]), 0.8, 0.04
    means, rotations, scales = tangent_sphere_gaussians(10000, centre, radius, seed=4)
    P = means.shape[0]
    inputs = dict(means3D=means, means2D=None, opacities=torch.full((P, 1), 0.9),
                  colors_precomp=torch.ones(P, 3), scales=scales, rotations=rotations)
    volumes = {k: TSDFVolume([-1.0, -1.2, -0.8], [1.4, 1.0, 1.4], voxel)
               for k in ("plane", "expected")}
    for camera in sphere_views(centre.tolist()):
        settings = camera.raster_settings()
        with torch.no_grad():
            maps = render_surface(GaussianRasterizer(settings), settings, **inputs)
        solid = maps.weight > 0.5
        assert solid.sum() > 500
        volumes["plane"].integrate(maps.plane_depth, settings, mask=solid)
        volumes["expected"].integrate(maps.depth, settings, mask=solid)
    error = {}
    for k, volume in volumes.items():
        mesh = volume.extract_mesh()
        assert mesh.colors is None and mesh.faces.shape[0] > 10000
        error[k] = ((mesh.vertices - centre).norm(dim=1) - radius)
    # Measured: plane depth 0.28 voxel mean, 0.8% of vertices off by a voxel (at the
    # silhouettes, where the plane depth's grazing rays amplify); expected depth 0.92 voxel out.
    assert error["plane"].abs().mean() < 0.35 * voxel, error
    assert error["expected"].mean() > 0.75 * voxel, error


def test_tsdf_checks():
    with pytest.raises(ValueError, match="voxel_size"):
        TSDFVolume([0, 0, 0], [1, 1, 1], 0.0)
    with pytest.raises(ValueError, match="upper"):
        TSDFVolume([0, 0, 0], [1, -1, 1], 0.1)
    with pytest.raises(ValueError, match="truncation"):
        TSDFVolume([0, 0, 0], [1, 1, 1], 0.1, truncation=-1)
    volume = TSDFVolume([0, 0, 0], [1, 1, 1], 0.1)
    settings = test_scenes.make_scene(0, P=4, height=12, width=10).settings
    with pytest.raises(ValueError, match=r"depth: expected shape \(12, 10\)"):
        volume.integrate(torch.zeros(10, 12), settings)
    with pytest.raises(ValueError, match="color"):
        volume.integrate(torch.zeros(12, 10), settings, color=torch.zeros(12, 10, 3))
    with pytest.raises(ValueError, match="mask"):
        volume.integrate(torch.zeros(12, 10), settings, mask=torch.zeros(12, 11, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask: expected a bool"):
        volume.integrate(torch.zeros(12, 10), settings, mask=torch.ones(12, 10))
    with pytest.raises(TypeError, match="depth: expected a tensor"):
        volume.integrate(np.zeros((12, 10)), settings)
    values, valid = torch.zeros(4, 5, 6), torch.ones(4, 5, 6, dtype=torch.bool)
    cases = [((values[0], valid), ValueError, "values"),
             ((values.long(), valid), TypeError, "values: expected a floating"),
             ((values, valid[:, :4]), ValueError, "valid"),
             ((values, valid.float()), TypeError, "valid: expected a bool"),
             ((values, valid, torch.zeros(4, 5, 3)), ValueError, "colors")]
    for (field, ok, *colors), error, pattern in cases:
        with pytest.raises(error, match=pattern):
            marching_tetrahedra(field, ok, (0, 0, 0), 0.1, *colors)


@pytest.mark.parametrize("with_colors", [False, True])
def test_mesh_ply_round_trip(tmp_path, with_colors):
    plyfile = pytest.importorskip("plyfile")
    gen = torch.Generator().manual_seed(1)
    mesh = Mesh(torch.randn(30, 3, generator=gen),
                torch.randint(0, 30, (50, 3), generator=gen),
                torch.rand(30, 3, generator=gen) if with_colors else None)
    path = tmp_path / "sub" / "mesh.ply"
    save_mesh_ply(path, mesh)
    data = plyfile.PlyData.read(str(path))
    vertex, face = data["vertex"], data["face"]
    xyz = np.stack([vertex[k] for k in "xyz"], 1)
    np.testing.assert_array_equal(xyz, mesh.vertices.numpy().astype(np.float32))
    np.testing.assert_array_equal(np.stack(face["vertex_indices"]), mesh.faces.numpy())
    names = [p.name for p in vertex.properties]
    assert ("red" in names) == with_colors
    if with_colors:
        rgb = np.stack([vertex[k] for k in ("red", "green", "blue")], 1).astype(int)
        assert np.abs(rgb - mesh.colors.numpy() * 255).max() <= 0.5 + 1e-6


def face_set(mesh):
    """The faces as rows of their vertices' nine coordinates, sorted: a mesh independent of how
    its vertices are numbered."""
    return torch.unique(mesh.vertices[mesh.faces].reshape(-1, 9), dim=0)


@pytest.mark.parametrize("seed,block_size", [(0, 8), (1, 5), (2, 8)])
def test_sparse_tsdf_equals_the_dense_grid_on_its_blocks(seed, block_size):
    """A sphere (centre and radius drawn) seen by 18 views with random colour maps, fused into
    the dense grid and into the sparse volume on the same grid points (its origin the box's
    corner; every view allocated first, so each view fuses into every block): on every
    allocated point the two fields, weights and colours agree bit for bit, and the sparse mesh
    is exactly the dense grid's over the allocated points (cubes across block borders
    included), faces and winding. The blocks hold a small part of the box, all near the
    surface."""
    gen = torch.Generator().manual_seed(seed)
    centre = (torch.rand(3, generator=gen, dtype=F64) - 0.5) * 0.4
    radius = 0.6 + 0.3 * float(torch.rand((), generator=gen))
    # The box holds every block: the sphere, the truncation and a block on each side.
    voxel, lower, upper = 0.04, [-1.92] * 3, [1.92] * 3
    dense = TSDFVolume(lower, upper, voxel)
    sparse = SparseTSDFVolume(voxel, block_size=block_size, origin=lower)
    views = []
    for camera in sphere_views(centre.tolist()):
        depth = sphere_depth(camera, centre.tolist(), radius).float()
        views.append((depth, camera.raster_settings(), torch.rand(3, 48, 64, generator=gen)))
    for depth, settings, _ in views:
        sparse.allocate(depth, settings, mask=depth > 0)
    blocks = sparse.num_blocks
    for depth, settings, color in views:
        dense.integrate(depth, settings, color=color, mask=depth > 0)
        sparse.integrate(depth, settings, color=color, mask=depth > 0)
    assert sparse.num_blocks == blocks                    # nothing new after allocation
    b = block_size
    coords = (sparse.block_coords[:, None, :] * b + sparse._local[None]).reshape(-1, 3)
    inside = ((coords >= 0) & (coords < torch.tensor(dense.shape))).all(1)
    assert inside.all()
    x, y, z = coords.unbind(1)
    assert torch.equal(sparse.tsdf.reshape(-1), dense.tsdf[x, y, z])
    assert torch.equal(sparse.weight.reshape(-1), dense.weight[x, y, z])
    assert torch.equal(sparse.color.reshape(-1, 3), dense.color[x, y, z])
    assert coords.shape[0] < 0.5 * dense.tsdf.numel()
    # Every block near the sphere: its cell meets the box of half-width the truncation around a
    # back-projected pixel centre (on the sphere), so its centre lies within sqrt(3) (truncation
    # + half a cell) of the surface.
    cell = voxel * b
    block_centre = torch.tensor(lower, dtype=F64) + cell * (sparse.block_coords + 0.5)
    gap = ((block_centre - centre).norm(dim=1) - radius).abs()
    assert gap.max() < 3 ** 0.5 * (sparse.truncation + cell / 2) + 1e-9
    allocated = torch.zeros(dense.shape, dtype=torch.bool)
    allocated[x, y, z] = True
    # Points the views put near the surface lie in blocks (a point is allocated through the
    # pixel centres around it: a few at the silhouette may be missed).
    near = (dense.weight > 0) & (dense.tsdf.abs() < 0.5)
    assert allocated[near].float().mean() > 0.99
    want = marching_tetrahedra(dense.tsdf, (dense.weight >= 1) & allocated, dense.origin, voxel,
                               dense.color)
    mesh = sparse.extract_mesh()
    assert mesh.faces.shape[0] > 10000
    assert torch.equal(face_set(mesh), face_set(want))
    assert torch.equal(torch.unique(mesh.colors, dim=0), torch.unique(want.colors, dim=0))
    undirected, directed = edge_counts(mesh.faces)
    assert (directed == 1).all()


def test_sparse_tsdf_growth_keeps_the_blocks_it_has():
    """Blocks allocated view by view (the buffers growing by half again when full): after each
    allocation every earlier block holds what it held (by its key), and every new one the
    field's start (tsdf 1, weight and colour 0)."""
    centre, radius = (0.2, -0.1, 0.3), 0.8
    volume = SparseTSDFVolume(0.03)
    gen = torch.Generator().manual_seed(1)
    grew = 0
    for camera in sphere_views(centre)[:8]:
        depth = sphere_depth(camera, centre, radius).float()
        before = {k: v.clone() for k, v in (("keys", volume._sorted_keys),
                                            ("rows", volume._sorted_rows))}
        held = [t.clone() for t in (volume.tsdf, volume.weight)] + (
            [volume.color.clone()] if volume.color is not None else [])
        capacity = volume._store["tsdf"].shape[0]
        new = volume.allocate(depth, camera.raster_settings(), mask=depth > 0)
        assert volume.num_blocks == before["keys"].numel() + new
        grew += volume._store["tsdf"].shape[0] > capacity
        for old, now in zip(held, (volume.tsdf, volume.weight, volume.color)):
            assert torch.equal(now[:old.shape[0]], old)       # rows never move
        fresh = slice(volume.num_blocks - new, volume.num_blocks)
        assert (volume.tsdf[fresh] == 1).all() and (volume.weight[fresh] == 0).all()
        if volume.color is not None:
            assert (volume.color[fresh] == 0).all()
        assert torch.equal(torch.sort(volume._sorted_keys).values, volume._sorted_keys)
        keys = _block_keys(volume.block_coords)
        assert torch.equal(keys[volume._sorted_rows], volume._sorted_keys)
        volume.integrate(depth, camera.raster_settings(), mask=depth > 0,
                         color=torch.rand(3, 48, 64, generator=gen))
    assert grew >= 3 and (volume.weight > 0).any()


def test_sparse_tsdf_meshes_an_unbounded_plane():
    """A sloping ground plane out to 30 units seen from 4 cameras (each integrate allocating its
    own blocks): the sparse volume holds the blocks along the plane alone, a small part of the
    grid over their bounding box, and its mesh lies on the plane to within a pixel's footprint
    (a point reads the depth at its pixel's centre), facing the cameras."""
    voxel, height, far, focal = 0.1, 1.5, 30.0, 40.0
    normal = torch.tensor([-0.15, 1.0, -0.1], dtype=F64)         # the plane normal . x = 0
    normal = normal / normal.norm()
    cameras_ = [Camera(look_at((3.0 * k, height, -2.0 * k), (3.0 * k + 4.0, 0.0, 6.0 + k),
                               up=(0.0, 1.0, 0.0)), 64, 48, focal, focal) for k in range(4)]
    volume = SparseTSDFVolume(voxel)
    for camera in cameras_:
        origin, dirs = camera.world_rays()
        t = -(torch.tensor(origin) @ normal) / (torch.tensor(dirs) @ normal)   # view z
        depth = torch.where((t > 0) & (t < far), t, torch.zeros_like(t)).float()
        volume.integrate(depth, camera.raster_settings(), mask=depth > 0)
    box = volume.block_coords.max(0).values - volume.block_coords.min(0).values + 1
    assert volume.num_blocks < 0.1 * float(box.prod())
    mesh = volume.extract_mesh()
    assert mesh.faces.shape[0] > 5000
    assert mesh.vertices.norm(dim=1).max() > 20.0
    distance = (mesh.vertices.double() @ normal).abs()
    centres = torch.tensor(np.stack([c.center for c in cameras_]))
    footprint = torch.cdist(mesh.vertices.double(), centres).max(1).values / focal
    assert (distance < footprint + voxel).all()
    face_normal, _ = face_normals(mesh)
    # Towards the cameras, on the whole: far away the depth read at pixel centres makes
    # terraces, whose risers face every way.
    mean_normal = face_normal.sum(0)
    assert mean_normal @ normal > 0.9 * mean_normal.norm()


LENSES = {"fisheye": dict(fisheye=True), "fisheye-distorted": dict(
    fisheye=True, fisheye_distortion=(0.05, -0.02, 0.004, -0.0005)),
    "pinhole-distorted": dict(pinhole_distortion=(-0.25, 0.08, 0.01, -0.008))}


def lens_sphere_depth(settings, camera, centre, radius):
    """sphere_depth through the settings' lens: each pixel's ray from surface.depth_to_points."""
    rays = surface.depth_to_points(torch.ones(camera.height, camera.width, dtype=F64), settings)
    dirs = rays.permute(1, 2, 0) @ torch.tensor(camera.rotation)     # world, view z = 1
    oc = torch.tensor(camera.center) - torch.tensor(centre, dtype=F64)
    a, b, k = (dirs * dirs).sum(-1), (dirs * oc).sum(-1), oc @ oc - radius ** 2
    disc = b * b - a * k
    t = (-b - disc.clamp_min(0).sqrt()) / a.clamp_min(1e-30)
    return torch.where((disc > 0) & (a > 0), t, torch.zeros_like(t))


@pytest.mark.parametrize("lens", [None] + list(LENSES))
def test_back_projection_inverts_the_projection(lens):
    """Pixels back-projected at random depths (through a projection matrix with an off-centre
    principal point; through a fisheye or a distorted pinhole too) are read by the fusion at
    the same pixel, on the surface."""
    gen = torch.Generator().manual_seed(3)
    camera = Camera(look_at((0.3, 0.2, -3.0), (0.0, 0.0, 0.0)), 40, 30, 35.0, 33.0)
    settings = camera.raster_settings(dtype=torch.float64)
    proj = settings.projmatrix.clone()
    proj[:, 0] += 0.13 * proj[:, 3]                   # ndc x shifted by 0.13 (clip x += 0.13 w)
    proj[:, 1] -= 0.07 * proj[:, 3]
    plain = settings._replace(projmatrix=proj)
    settings = plain._replace(**LENSES.get(lens, {}))
    depth = (1.0 + 4.0 * torch.rand(30, 40, generator=gen, dtype=F64))
    maps = _ViewMaps(depth, settings, None, None, F64, torch.device("cpu"))
    pixel = torch.arange(30 * 40)
    points = _back_project(maps, pixel)
    seen, value, read = maps.read(points, truncation=0.1)
    assert seen.all() and torch.equal(read, pixel)
    assert value.abs().max() < 1e-9
    if lens is not None:   # not where the pinhole reads them
        pinhole = _ViewMaps(depth, plain, None, None, F64, torch.device("cpu"))
        assert not torch.equal(pinhole.read(points, truncation=0.1)[2], pixel)


@pytest.mark.parametrize("lens", list(LENSES))
def test_tsdf_of_exact_depth_through_a_lens(lens):
    """18 views of a sphere's exact depth seen through a lens (each pixel's ray the lens's):
    the fused mesh, dense and sparse, lies on the sphere (mean error under a quarter voxel)."""
    centre, radius, voxel = (0.2, -0.1, 0.3), 0.8, 0.05
    dense = TSDFVolume([-1.0, -1.2, -0.8], [1.4, 1.0, 1.4], voxel)
    sparse = SparseTSDFVolume(voxel)
    for camera in sphere_views(centre, 48, 36):
        settings = camera.raster_settings()._replace(**LENSES[lens])
        depth = lens_sphere_depth(settings, camera, centre, radius).float()
        assert (depth > 0).sum() > 100
        dense.integrate(depth, settings, mask=depth > 0)
        sparse.integrate(depth, settings, mask=depth > 0)
    for mesh in (dense.extract_mesh(), sparse.extract_mesh()):
        error = (mesh.vertices.double() - torch.tensor(centre)).norm(dim=1) - radius
        assert mesh.faces.shape[0] > 3000
        assert error.abs().mean() < voxel / 4 and error.abs().max() < voxel


def test_sparse_tsdf_checks():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "a", None):
        with pytest.raises(ValueError, match="voxel_size"):
            SparseTSDFVolume(bad)
    with pytest.raises(ValueError, match="truncation"):
        SparseTSDFVolume(0.1, truncation=0.0)
    with pytest.raises(ValueError, match="block_size"):
        SparseTSDFVolume(0.1, block_size=0)
    for bad in ((0.0, 1.0), (0.0, float("nan"), 1.0), "abc"):
        with pytest.raises(ValueError, match="origin: expected three finite numbers"):
            SparseTSDFVolume(0.1, origin=bad)
    with pytest.raises(ValueError, match="lower: expected three"):
        TSDFVolume([0, 0], [1, 1, 1], 0.1)
    volume = SparseTSDFVolume(1e-6)
    settings = test_scenes.make_scene(0, P=4, height=12, width=10).settings
    with pytest.raises(ValueError, match=r"depth: expected shape \(12, 10\)"):
        volume.integrate(torch.zeros(10, 12), settings)
    with pytest.raises(TypeError, match="mask: expected a bool"):
        volume.integrate(torch.zeros(12, 10), settings, mask=torch.ones(12, 10))
    # A surface farther than the block keys reach (2^20 blocks of 8 micro-units: 8.4 units).
    with pytest.raises(ValueError, match="mask such pixels out"):
        volume.integrate(torch.full((12, 10), 50.0), settings)
    empty = SparseTSDFVolume(0.1)
    assert empty.extract_mesh().faces.shape == (0, 3)
    empty.integrate(torch.zeros(12, 10), settings)          # no depth: nothing allocated
    assert empty.num_blocks == 0 and empty.extract_mesh().vertices.shape == (0, 3)


def write_model(tmp_path, gaussians, views):
    """A model in the official layout: point_cloud/iteration_N/point_cloud.ply and
    cameras.json (camera-to-world rotations and centres) beside it."""
    model = tmp_path / "model"
    ply = model / "point_cloud" / "iteration_30000" / "point_cloud.ply"
    save_ply(ply, gaussians)
    (model / "cameras.json").write_text(json.dumps(
        [{"id": i, "img_name": str(i), "width": c.width, "height": c.height,
          "position": c.center.tolist(), "rotation": c.rotation.T.tolist(), "fx": c.fx,
          "fy": c.fy} for i, c in enumerate(views)]))
    return ply


@pytest.mark.parametrize("depth_kind", ["median", "mean"])
def test_mesh_command_meshes_a_trained_model(tmp_path, capsys, depth_kind):
    """A model of flat Gaussians tangent to a sphere, of one colour, in the official layout:
    the command's mesh is the sparse volume's of the training views' depth (median or mean)
    over the pixels of weight > 0.5, it lies on the sphere (a voxel out at most on average:
    the splats' centre depths stand out on a convex surface) and has the model's colour."""
    plyfile = pytest.importorskip("plyfile")
    centre, radius, voxel = torch.tensor([0.2, -0.1, 0.3]), 0.8, 0.05
    means, rotations, scales = tangent_sphere_gaussians(8000, centre, radius, seed=5)
    P = means.shape[0]
    rgb = torch.tensor([0.8, 0.3, 0.2])
    gaussians = scenes.Gaussians(means, scenes.rgb_to_sh_dc(rgb).expand(P, 1, 3).clone(),
                                 torch.full((P, 1), 0.9), scales.clone(), rotations)
    views = sphere_views(centre.tolist())
    ply = write_model(tmp_path, gaussians, views)
    out = tmp_path / "meshes" / "mesh.ply"
    assert main(["mesh", str(ply), "--out", str(out), "--device", "cpu", "--voxel-size",
                 str(voxel), "--depth", depth_kind, "--every", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"fusing the {depth_kind} depth of 9 of the 18 training views" in printed
    data = plyfile.PlyData.read(str(out))
    vertices = torch.tensor(np.stack([data["vertex"][k] for k in "xyz"], 1))
    faces = torch.tensor(np.stack(data["face"]["vertex_indices"])).long()
    colors = np.stack([data["vertex"][k] for k in ("red", "green", "blue")], 1)

    loaded = load_ply(ply)
    volume = SparseTSDFVolume(voxel)
    for camera in views[::2]:
        settings = camera.raster_settings()
        with torch.no_grad():
            color, _, depth, weight, median = GaussianRasterizer(settings)(
                loaded.means, None, loaded.opacities, shs=loaded.sh, scales=loaded.scales,
                rotations=loaded.rotations, median_depth=True)
        surface = median if depth_kind == "median" else depth
        volume.integrate(surface, settings, color=color / weight.clamp_min(1e-6),
                         mask=(weight > 0.5) & (surface > 0))
    want = volume.extract_mesh()
    assert faces.shape[0] > 5000
    assert torch.equal(face_set(Mesh(vertices, faces)),
                       face_set(Mesh(want.vertices.float(), want.faces)))
    error = (vertices.double() - centre.double()).norm(dim=1) - radius
    assert error.abs().mean() < voxel, error.abs().mean()
    assert np.abs(colors.astype(int) - (rgb.numpy() * 255)).max() <= 1
    # --components: the mesh above post-processed (here the sphere alone: no floaters).
    assert main(["mesh", str(ply), "--out", str(out), "--device", "cpu", "--voxel-size",
                 str(voxel), "--depth", depth_kind, "--every", "2", "--components", "1"]) == 0
    assert "largest connected components" in capsys.readouterr().out
    data = plyfile.PlyData.read(str(out))
    vertices = torch.tensor(np.stack([data["vertex"][k] for k in "xyz"], 1))
    faces = torch.tensor(np.stack(data["face"]["vertex_indices"])).long()
    kept = keep_largest_components(want, 1)
    assert torch.equal(face_set(Mesh(vertices, faces)),
                       face_set(Mesh(kept.vertices.float(), kept.faces)))


def test_mesh_command_meshes_the_opacity_field(tmp_path, capsys):
    """`mesh --method opacity`: the mesh is extract_opacity_mesh's of the model over the
    training views it takes (every second one here), on the sphere's outside within a third of
    a voxel on average, its vertices coloured by OpacityField.vertex_colors: the model's colour
    where the view that sees a vertex best sees the sphere opaque."""
    plyfile = pytest.importorskip("plyfile")
    from diff_gaussian_rasterization_depth.mesh import OpacityField, extract_opacity_mesh
    centre, radius, voxel = torch.tensor([0.2, -0.1, 0.3]), 0.8, 0.06
    means, rotations, scales = tangent_sphere_gaussians(8000, centre, radius, seed=5)
    P = means.shape[0]
    rgb = torch.tensor([0.2, 0.7, 0.4])
    gaussians = scenes.Gaussians(means, scenes.rgb_to_sh_dc(rgb).expand(P, 1, 3).clone(),
                                 torch.full((P, 1), 0.9), scales.clone(), rotations)
    views = sphere_views(centre.tolist())
    ply = write_model(tmp_path, gaussians, views)
    out = tmp_path / "mesh.ply"
    assert main(["mesh", str(ply), "--out", str(out), "--device", "cpu", "--voxel-size",
                 str(voxel), "--method", "opacity", "--every", "2", "--refine-steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "meshing the opacity field of 9 of the 18 training views" in printed
    data = plyfile.PlyData.read(str(out))
    vertices = torch.tensor(np.stack([data["vertex"][k] for k in "xyz"], 1))
    faces = torch.tensor(np.stack(data["face"]["vertex_indices"])).long()
    loaded = load_ply(ply)
    field = OpacityField([camera.raster_settings() for camera in views[::2]], loaded.means,
                         loaded.opacities, loaded.scales, loaded.rotations)
    want = extract_opacity_mesh(field, voxel, refine_steps=3)
    assert faces.shape[0] > 5000
    assert torch.equal(face_set(Mesh(vertices, faces)),
                       face_set(Mesh(want.vertices.float(), want.faces)))
    error = (vertices.double() - centre.double()).norm(dim=1) - radius
    assert 0 < error.mean() < voxel / 3, error.mean()
    colors = np.stack([data["vertex"][k] for k in ("red", "green", "blue")], 1)
    assert torch.equal(vertices, want.vertices.float())  # the same vertices, in order
    want_colors = field.vertex_colors(want.vertices, shs=loaded.sh).double().numpy()
    assert (colors == np.clip(want_colors * 255 + 0.5, 0, 255).astype(np.uint8)).all()
    # The model's one colour wherever the best view sees the sphere opaque: at 99% of the
    # vertices (measured: all but a few near the views' grazing rims, where black shows).
    off = np.abs(colors.astype(int) - rgb.numpy() * 255).max(1)
    assert np.quantile(off, 0.99) <= 1, np.quantile(off, [0.5, 0.99])
    assert main(["mesh", str(ply), "--out", str(out), "--device", "cpu", "--method", "opacity",
                 "--refine-steps", "-1"]) == 2
    assert "--refine-steps" in capsys.readouterr().err


def test_mesh_command_errors(tmp_path, capsys):
    g = scenes.demo_scene(200)
    ply = tmp_path / "alone" / "point_cloud.ply"
    save_ply(ply, g)
    assert main(["mesh", str(ply), "--out", str(tmp_path / "m.ply"), "--device", "cpu"]) == 2
    assert "no cameras.json" in capsys.readouterr().err
    ply = write_model(tmp_path, g, scenes.demo_cameras(2, 32, 24))
    for option, value in (("--voxel-size", "0"), ("--scale", "-1"), ("--max-depth", "nan"),
                          ("--min-weight", "1.5"), ("--components", "-1")):
        assert main(["mesh", str(ply), "--out", str(tmp_path / "m.ply"), "--device", "cpu",
                     option, value]) == 2
        assert option in capsys.readouterr().err


def union_find_components(faces, V):
    """The oracle: faces joined where they share an edge, by a plain union-find; each face's
    component as the lowest face index in it."""
    parent = list(range(len(faces)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    first = {}
    for f, tri in enumerate(faces.tolist()):
        for u, v in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edge = (min(u, v), max(u, v))
            if edge in first:
                a, b = root(first[edge]), root(f)
                parent[max(a, b)] = min(a, b)
            else:
                first[edge] = f
    return torch.tensor([root(f) for f in range(len(faces))])


@pytest.mark.parametrize("seed", range(4))
def test_face_components_match_a_union_find(seed):
    """Random triangle soups (few vertices: many shared edges; or many: many components), and a
    strip of 20,000 triangles (one component of large diameter)."""
    gen = torch.Generator().manual_seed(seed)
    V = [12, 40, 300, 2000][seed]
    faces = torch.stack([torch.randperm(V, generator=gen)[:3] for _ in range(600)])
    torch.testing.assert_close(face_components(faces), union_find_components(faces, V),
                               rtol=0, atol=0)
    strip = torch.arange(20000)[:, None] + torch.tensor([0, 1, 2])
    assert (face_components(strip) == 0).all()
    assert face_components(torch.zeros((0, 3), dtype=torch.long)).shape == (0,)


def test_keep_largest_components_drops_the_small_ones():
    """Four separate spheres of decreasing size from one exact field: four components; the two
    largest kept are the two big spheres whole (their faces, vertices and colours, nothing
    else); a face threshold drops the ones under it."""
    voxel, n, origin = 0.05, 61, (-1.5, -1.5, -1.5)
    X, Y, Z = grid(n, voxel, origin)
    spheres = [((-0.7, -0.6, 0.0), 0.6), ((0.75, 0.6, 0.2), 0.45), ((0.8, -0.8, -0.6), 0.25),
               ((-0.8, 0.9, 0.8), 0.15)]
    fields = [((X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2).sqrt() - r
              for c, r in spheres]
    sdf = torch.stack(fields).min(0).values
    colors = torch.stack([X, Y, Z], -1).abs()
    mesh = marching_tetrahedra(sdf, torch.ones(sdf.shape, dtype=torch.bool), origin, voxel,
                               colors)
    label = face_components(mesh.faces)
    sizes = torch.bincount(label)
    sizes = torch.sort(sizes[sizes > 0], descending=True).values
    assert sizes.numel() == 4
    which = torch.stack([((mesh.vertices - torch.tensor(c, dtype=F64)).norm(dim=1) - r).abs()
                         for c, r in spheres]).argmin(0)          # each vertex's sphere
    kept = keep_largest_components(mesh, count=2, min_faces=1)
    assert kept.faces.shape[0] == int(sizes[:2].sum())
    on_big = (which < 2)
    assert kept.vertices.shape[0] == int(on_big.sum())
    assert torch.equal(face_set(kept), face_set(Mesh(mesh.vertices, mesh.faces[
        on_big[mesh.faces].all(1)])))
    assert torch.equal(torch.unique(kept.colors, dim=0), torch.unique(mesh.colors[on_big], dim=0))
    three = keep_largest_components(mesh, count=10, min_faces=int(sizes[2]))
    assert three.faces.shape[0] == int(sizes[:3].sum())
    with pytest.raises(ValueError, match="count"):
        keep_largest_components(mesh, count=0)
    with pytest.raises(TypeError, match="faces: expected an integer tensor"):
        face_components(mesh.faces.double())
    with pytest.raises(ValueError, match="faces: expected shape"):
        face_components(mesh.faces[:, :2])


@pytest.mark.parametrize("device", [real_cuda_param()])
def test_mesh_command_and_sparse_volume_on_cuda(tmp_path, capsys, device):
    """On a GPU (torch's CUDA kernels, not the CPU's): the sparse volume fused from the same
    maps holds the CPU's blocks and, but for the grid points whose pixel rounds the other way,
    its field; the mesh command runs on CUDA (the CUDA rasterizer's maps) and its mesh lies on
    the sphere as the CPU's does."""
    plyfile = pytest.importorskip("plyfile")
    centre, radius, voxel = (0.2, -0.1, 0.3), 0.8, 0.04
    volumes = {d: SparseTSDFVolume(voxel, device=d) for d in ("cpu", "cuda")}
    color = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    for camera in sphere_views(centre):
        depth = sphere_depth(camera, centre, radius).float()
        for d, volume in volumes.items():
            volume.integrate(depth.to(d), camera.raster_settings(device=d), color=color.to(d),
                             mask=(depth > 0).to(d))
    cpu, gpu = volumes["cpu"], volumes["cuda"]
    assert torch.equal(cpu._sorted_keys, gpu._sorted_keys.cpu())
    rows = gpu._sorted_rows.cpu()
    same = (cpu.tsdf[cpu._sorted_rows] - gpu.tsdf.cpu()[rows]).abs() < 1e-5
    assert same.float().mean() > 0.999
    meshes = {d: v.extract_mesh() for d, v in volumes.items()}
    assert meshes["cuda"].vertices.is_cuda
    assert abs(meshes["cuda"].faces.shape[0] - meshes["cpu"].faces.shape[0]) \
        < 0.01 * meshes["cpu"].faces.shape[0]

    means, rotations, scales = tangent_sphere_gaussians(8000, torch.tensor(centre), radius,
                                                        seed=5)
    P = means.shape[0]
    gaussians = scenes.Gaussians(means, scenes.rgb_to_sh_dc(torch.rand(P, 1, 3)),
                                 torch.full((P, 1), 0.9), scales.clone(), rotations)
    ply = write_model(tmp_path, gaussians, sphere_views(centre))
    errors = {}
    for d in ("cpu", "cuda"):
        out = tmp_path / f"{d}.ply"
        assert main(["mesh", str(ply), "--out", str(out), "--device", d, "--voxel-size",
                     str(voxel)]) == 0
        data = plyfile.PlyData.read(str(out))
        v = torch.tensor(np.stack([data["vertex"][k] for k in "xyz"], 1)).double()
        errors[d] = ((v - torch.tensor(centre, dtype=F64)).norm(dim=1) - radius).abs().mean()
    assert "on cuda" in capsys.readouterr().out
    assert abs(errors["cuda"] - errors["cpu"]) < 0.05 * voxel and errors["cuda"] < voxel
