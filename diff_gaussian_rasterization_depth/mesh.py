"""Meshes from rendered depth maps: TSDF fusion and its zero level set, in plain PyTorch.

The last step of the surface methods (2DGS, PGSR, GOF's TSDF variant): render each training
view's depth, fuse the maps into a truncated signed distance field, and mesh its zero crossing.
They call Open3D for it; here it takes no dependency beyond PyTorch:

    volume = TSDFVolume(lower, upper, voxel_size)             # world-space box
    for settings in training_views:
        color, radii, depth, weight = GaussianRasterizer(settings)(...)
        volume.integrate(depth, settings, color=color, mask=weight > 0.5)
    mesh = volume.extract_mesh()                              # Mesh(vertices, faces, colors)
    save_mesh_ply("mesh.ply", mesh)                           # from .ply

The field is projective, as Open3D's: a grid point's value is the depth map's z at its pixel
minus its own view z, divided by the truncation and clamped to [-1, 1], averaged over the views
that see it within the truncation behind the surface. The mesh is marching tetrahedra (each cube
cut into six tetrahedra around its main diagonal; no case table), so neighbouring cubes share
their faces' cuts and the mesh is closed wherever the field is; triangles face the positive side
(the free space the cameras look through).
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .reference import NEAR_PLANE, _ndc2pix, _transform_point
from .surface import _check_shape

__all__ = ["TSDFVolume", "Mesh", "marching_tetrahedra"]

# The cube's corners, numbered by bits (x = 1, y = 2, z = 4), and the six tetrahedra around its
# diagonal 0-7: every cube cuts its faces along the same diagonals, so the cuts of two
# neighbouring cubes meet.
_CORNERS = ((0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1))
_TETRAHEDRA = ((0, 1, 3, 7), (0, 1, 5, 7), (0, 2, 3, 7), (0, 2, 6, 7), (0, 4, 5, 7), (0, 4, 6, 7))


@dataclass
class Mesh:
    vertices: torch.Tensor                  # (V, 3) world positions
    faces: torch.Tensor                     # (F, 3) int64 vertex indices, counter-clockwise
    colors: Optional[torch.Tensor] = None   # (V, 3) in [0, 1], where colours were fused


def marching_tetrahedra(values: torch.Tensor, valid: torch.Tensor, origin: Sequence[float],
                        voxel_size: float, colors: Optional[torch.Tensor] = None) -> Mesh:
    """The zero level set of `values` (nx, ny, nz), sampled at origin + voxel_size * index.

    Only cubes whose eight corners are all `valid` are meshed. A vertex lies on each edge whose
    ends change sign (inside: value < 0), where the linear interpolation crosses 0, shared by
    every triangle cutting that edge; `colors` (nx, ny, nz, 3), interpolated alike, gives the
    vertices' colours. Faces are oriented so that their normal (counter-clockwise) points to
    the positive side."""
    _check_shape("values", values, (None, None, None))
    if not values.is_floating_point():
        raise TypeError(f"values: expected a floating-point tensor, got {values.dtype}")
    _check_mask("valid", valid, tuple(values.shape))
    if colors is not None:
        _check_shape("colors", colors, tuple(values.shape) + (None,))
    device = values.device
    n = values.shape
    cubes = [s - 1 for s in n]
    if min(cubes) < 1:
        return _empty_mesh(values, colors)
    corner = torch.tensor(_CORNERS, device=device)
    # The cubes the surface crosses: all corners valid, some inside and some not. Each corner
    # is a view of the grid, reduced into three (cx, cy, cz) masks in place.
    all_valid = torch.ones(cubes, dtype=torch.bool, device=device)
    any_inside = torch.zeros_like(all_valid)
    all_inside = torch.ones_like(all_valid)
    for x, y, z in _CORNERS:
        window = (slice(x, x + cubes[0]), slice(y, y + cubes[1]), slice(z, z + cubes[2]))
        inside = values[window] < 0
        all_valid &= valid[window]
        any_inside |= inside
        all_inside &= inside
    cube = (all_valid & any_inside & ~all_inside).nonzero()       # (C, 3)
    if cube.shape[0] == 0:
        return _empty_mesh(values, colors)
    grid = cube[:, None, :] + corner[None]                         # (C, 8, 3)
    flat = (grid[..., 0] * n[1] + grid[..., 1]) * n[2] + grid[..., 2]
    tet = torch.tensor(_TETRAHEDRA, device=device)
    ids = flat[:, tet].reshape(-1, 4)                              # (T, 4) grid point ids
    tet_values = values.reshape(-1)[ids]
    tet_inside = tet_values < 0
    count = tet_inside.sum(1)

    # One triangle where one corner is alone on its side: the three edges from it.
    single = (count == 1) | (count == 3)
    alone = torch.where((count == 1)[:, None], tet_inside, ~tet_inside)[single]
    # The lone corner first (torch.sort's stable order: PyTorch 1.12 has no argsort(stable=)).
    order = torch.sort((~alone).to(torch.int8), dim=1, stable=True).indices
    lone, rest = order[:, :1], order[:, 1:]
    single_edges = torch.stack([lone.expand(-1, 3), rest], dim=2)       # (S, 3, 2)
    single_ids = ids[single]
    # Two where the sides split two and two (inside a, b; outside c, d): the quad
    # (a,c) (a,d) (b,d) (b,c) in two triangles.
    double = count == 2
    order2 = torch.sort((~tet_inside[double]).to(torch.int8), dim=1, stable=True).indices
    a, b, c, d = order2.unbind(1)
    quad = [torch.stack(e, 1) for e in ((a, c), (a, d), (b, d), (b, c))]
    double_edges = torch.cat([torch.stack([quad[0], quad[1], quad[2]], 1),
                              torch.stack([quad[0], quad[2], quad[3]], 1)])   # (2D, 3, 2)
    double_ids = ids[double].repeat(2, 1)

    tri_ids = torch.cat([single_ids, double_ids])                      # (F, 4) their tetrahedra
    tri_edges = torch.cat([single_edges, double_edges])                # (F, 3, 2) corner slots
    ends = torch.gather(tri_ids[:, None, :].expand(-1, 3, -1), 2, tri_edges)   # grid ids
    lo, hi = ends.min(2).values, ends.max(2).values
    total = values.numel()
    flat_values = values.reshape(-1)
    # An edge whose outside end is exactly 0 crosses there: its vertex is that grid point, one
    # vertex for every edge ending in it (keys past total^2), and the triangles it collapses
    # are dropped below.
    key = lo * total + hi
    key = torch.where(flat_values[lo] == 0, total * total + lo, key)
    key = torch.where(flat_values[hi] == 0, total * total + hi, key)
    keys, faces = torch.unique(key, return_inverse=True)
    at_point = keys >= total * total
    edge_lo = torch.where(at_point, keys - total * total, keys // total)
    edge_hi = torch.where(at_point, edge_lo, keys % total)
    v_lo, v_hi = flat_values[edge_lo], flat_values[edge_hi]
    # in [0, 1] (the ends' signs differ); 0 at a grid point.
    t = torch.where(at_point, torch.zeros_like(v_lo), v_lo / (v_lo - v_hi))[:, None]
    origin_t = torch.as_tensor(origin, dtype=values.dtype, device=device)

    def position(point_ids):
        z = point_ids % n[2]
        y = (point_ids // n[2]) % n[1]
        x = point_ids // (n[1] * n[2])
        return origin_t + voxel_size * torch.stack([x, y, z], 1).to(values.dtype)

    p_lo, p_hi = position(edge_lo), position(edge_hi)
    vertices = p_lo + t * (p_hi - p_lo)
    vertex_colors = None
    if colors is not None:
        flat_colors = colors.reshape(-1, colors.shape[-1])
        vertex_colors = flat_colors[edge_lo] + t * (flat_colors[edge_hi] - flat_colors[edge_lo])

    # Orientation: the normal towards the tetrahedron's outside corners. Read from the triangle
    # through its edges' midpoints, which winds as the triangle does but is never degenerate
    # (a vertex at t near 0 or 1 can make the triangle itself a sliver of rounding).
    tri_corners = position(tri_ids.reshape(-1)).reshape(-1, 4, 3)
    outside = (flat_values[tri_ids] >= 0).to(values.dtype)[..., None]
    outward = ((tri_corners * outside).sum(1) / outside.sum(1)
               - (tri_corners * (1 - outside)).sum(1) / (1 - outside).sum(1))
    slot = tri_edges.reshape(-1, 6, 1).expand(-1, -1, 3)
    mid = torch.gather(tri_corners, 1, slot).reshape(-1, 3, 2, 3).mean(2)     # (F, 3, 3)
    normal = torch.linalg.cross(mid[:, 1] - mid[:, 0], mid[:, 2] - mid[:, 0])
    flip = (normal * outward).sum(1) < 0
    faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
    collapsed = ((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2])
                 | (faces[:, 2] == faces[:, 0]))
    # Vertices of collapsed triangles alone go too.
    used, faces = torch.unique(faces[~collapsed], return_inverse=True)
    return Mesh(vertices[used], faces.reshape(-1, 3),
                None if vertex_colors is None else vertex_colors[used])


def _check_mask(name: str, mask: torch.Tensor, shape) -> None:
    _check_shape(name, mask, shape)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor, got {mask.dtype}")


def _empty_mesh(values, colors) -> Mesh:
    return Mesh(values.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long,
                                                      device=values.device),
                None if colors is None else values.new_zeros((0, 3)))


class TSDFVolume:
    """A truncated signed distance field on a regular grid over the box [lower, upper] (world
    units), fused from depth maps. `truncation` (default 4 voxels) is the band behind a surface
    within which a view updates a grid point."""

    def __init__(self, lower: Sequence[float], upper: Sequence[float], voxel_size: float,
                 truncation: Optional[float] = None, device="cpu",
                 dtype: torch.dtype = torch.float32):
        if not voxel_size > 0:
            raise ValueError(f"voxel_size: expected a positive number, got {voxel_size}")
        lower_t = torch.as_tensor(lower, dtype=torch.float64).reshape(3)
        upper_t = torch.as_tensor(upper, dtype=torch.float64).reshape(3)
        if not (upper_t > lower_t).all():
            raise ValueError(f"upper: expected above lower in x, y and z, got {lower} .. {upper}")
        self.voxel_size = float(voxel_size)
        self.truncation = float(truncation) if truncation is not None else 4 * self.voxel_size
        if not self.truncation > 0:
            raise ValueError(f"truncation: expected a positive number, got {truncation}")
        self.origin = lower_t.tolist()
        self.shape = tuple(int(math.ceil(float(s) / self.voxel_size - 1e-9)) + 1
                           for s in (upper_t - lower_t))
        self.tsdf = torch.ones(self.shape, dtype=dtype, device=device)
        self.weight = torch.zeros(self.shape, dtype=dtype, device=device)
        self.color: Optional[torch.Tensor] = None

    def points(self) -> torch.Tensor:
        """(N, 3) world positions of the grid points, in the field's memory order."""
        axes = [torch.arange(s, dtype=self.tsdf.dtype, device=self.tsdf.device) * self.voxel_size
                + o for s, o in zip(self.shape, self.origin)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)

    def integrate(self, depth: torch.Tensor, settings, color: Optional[torch.Tensor] = None,
                  mask: Optional[torch.Tensor] = None) -> None:
        """Fuse one view: `depth` (H, W) view-space z (the rasterizer's depth map; 0 where
        nothing was blended), `settings` the rasterizer settings it was rendered with,
        `color` (3, H, W) to fuse too, `mask` (H, W) bool the pixels to use. Each grid point
        reads the pixel its projection falls in (no interpolation across depth edges)."""
        H, W = int(settings.image_height), int(settings.image_width)   # the settings' image
        _check_shape("depth", depth, (H, W))
        if color is not None:
            _check_shape("color", color, (3, H, W))
        if mask is not None:
            _check_mask("mask", mask, (H, W))
        dtype, device = self.tsdf.dtype, self.tsdf.device
        depth = depth.detach().to(device, dtype)
        view = torch.as_tensor(settings.viewmatrix).reshape(-1).to(device, dtype)
        proj = torch.as_tensor(settings.projmatrix).reshape(-1).to(device, dtype)
        p = self.points()
        z = _transform_point(p, view, 2)
        inv_w = 1.0 / (_transform_point(p, proj, 3) + 1e-7)
        col = torch.round(_ndc2pix(_transform_point(p, proj, 0) * inv_w, W))
        row = torch.round(_ndc2pix(_transform_point(p, proj, 1) * inv_w, H))
        seen = (z > NEAR_PLANE) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
        pixel = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).long()
        surface = depth.reshape(-1)[pixel]
        seen &= surface > 0
        if mask is not None:
            seen &= mask.to(device).reshape(-1)[pixel]
        sdf = surface - z
        seen &= sdf > -self.truncation
        value = torch.clamp(sdf / self.truncation, max=1.0)
        tsdf, weight = self.tsdf.reshape(-1), self.weight.reshape(-1)
        new_weight = weight + seen.to(dtype)
        update = torch.where(seen, (tsdf * weight + value) / new_weight.clamp_min(1), tsdf)
        if color is not None:
            if self.color is None:
                self.color = torch.zeros(self.shape + (3,), dtype=dtype, device=device)
            rgb = color.detach().to(device, dtype).reshape(3, -1)[:, pixel].T
            old = self.color.reshape(-1, 3)
            fused = (old * weight[:, None] + rgb) / new_weight.clamp_min(1)[:, None]
            self.color = torch.where(seen[:, None], fused, old).reshape(self.color.shape)
        self.tsdf = update.reshape(self.shape)
        self.weight = new_weight.reshape(self.shape)

    def extract_mesh(self, min_weight: float = 1.0) -> Mesh:
        """The field's zero level set over the grid points seen by at least `min_weight`
        views (marching_tetrahedra), with fused colours where any were given."""
        return marching_tetrahedra(self.tsdf, self.weight >= min_weight, self.origin,
                                   self.voxel_size, self.color)
