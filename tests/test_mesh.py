"""Meshes from depth maps (`diff_gaussian_rasterization_depth.mesh`): marching tetrahedra on
exact fields (closed, consistently oriented, outward, on the surface), TSDF fusion of exact and
of rendered depth maps, and the mesh PLY."""
import numpy as np
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer
from diff_gaussian_rasterization_depth.cameras import orbit_cameras
from diff_gaussian_rasterization_depth.mesh import Mesh, TSDFVolume, marching_tetrahedra
from diff_gaussian_rasterization_depth.ply import save_mesh_ply
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


def test_tsdf_of_rendered_depth():
    """The package's own depth maps: 10,000 small flat Gaussians tangent to a sphere, rendered
    from 18 views and fused. From PGSR's plane depth (surface.render_surface) the mesh lies on
    the sphere to a third of a voxel on average, near what exact depths give; from the expected
    depth, which blends the splats' centre depths, it stands out by over half a voxel (on a
    convex surface the splats around a pixel's hit lie nearer the camera)."""
    gen = torch.Generator().manual_seed(4)
    centre, radius, voxel = torch.tensor([0.2, -0.1, 0.3]), 0.8, 0.04
    P = 10000
    n = torch.nn.functional.normalize(torch.randn(P, 3, generator=gen), dim=1)
    # The rotation taking z to the sphere's normal n: (1 + z.n, z x n), normalized.
    tangent = torch.nn.functional.normalize(
        torch.stack([1 + n[:, 2], -n[:, 1], n[:, 0], torch.zeros(P)], 1), dim=1)
    inputs = dict(means3D=centre + radius * n, means2D=None, opacities=torch.full((P, 1), 0.9),
                  colors_precomp=torch.ones(P, 3),
                  scales=torch.tensor([0.03, 0.03, 0.002]).expand(P, 3), rotations=tangent)
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
    settings = scenes.make_scene(0, P=4, height=12, width=10).settings
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
