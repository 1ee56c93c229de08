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

from ._validation import CheckedSettings, real_value
from .reference import (NEAR_PLANE, _lens, _lens_pixels, _lens_unfolded, _ndc2pix,
                        _transform_point)
from .surface import _check_shape, depth_to_points

__all__ = ["TSDFVolume", "SparseTSDFVolume", "Mesh", "marching_tetrahedra", "face_components",
           "keep_largest_components", "OpacityField", "extract_opacity_mesh"]

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
                        voxel_size: float, colors: Optional[torch.Tensor] = None,
                        refine=None) -> Mesh:
    """The zero level set of `values` (nx, ny, nz), sampled at origin + voxel_size * index.

    Only cubes whose eight corners are all `valid` are meshed. A vertex lies on each edge whose
    ends change sign (inside: value < 0), where the linear interpolation crosses 0, shared by
    every triangle cutting that edge; `colors` (nx, ny, nz, 3), interpolated alike, gives the
    vertices' colours. Faces are oriented so that their normal (counter-clockwise) points to
    the positive side. `refine(p_lo, p_hi, v_lo, v_hi)`, when given, places the vertices
    instead of the linear interpolation: each edge's ends (V, 3) and values (V,), of opposite
    signs (or one 0), to the vertices (V, 3) (a search of the field along the edge, as
    extract_opacity_mesh's)."""
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
    origin_t = torch.as_tensor(origin, dtype=values.dtype, device=device)

    def position(point_ids):
        z = point_ids % n[2]
        y = (point_ids // n[2]) % n[1]
        x = point_ids // (n[1] * n[2])
        return _grid_positions(torch.stack([x, y, z], 1), origin_t, voxel_size)

    return _mesh_cubes(flat, values.reshape(-1), position, None,
                       None if colors is None else colors.reshape(-1, colors.shape[-1]), refine)


def _grid_positions(coords: torch.Tensor, origin: torch.Tensor, voxel_size: float):
    """World positions of integer grid coordinates (N, 3): one expression for the dense and the
    sparse volume, so that both give a grid point the same bits."""
    return coords.to(origin.dtype) * voxel_size + origin


def _mesh_cubes(cube_ids: torch.Tensor, flat_values: torch.Tensor, position, before,
                flat_colors: Optional[torch.Tensor], refine=None) -> Mesh:
    """Marching tetrahedra over the cubes `cube_ids` (C, 8): each cube's corners (numbered as
    _CORNERS) as ids into `flat_values` (N,); `position(ids)` gives their world positions;
    `before(a, b)` (bool), or None for a < b, orders the two ends of an edge (the vertex is
    interpolated from the first), so that a vertex does not depend on where a grid point is
    stored."""
    device, dtype = flat_values.device, flat_values.dtype
    tet = torch.tensor(_TETRAHEDRA, device=device)
    ids = cube_ids[:, tet].reshape(-1, 4)                          # (T, 4) grid point ids
    tet_type = torch.arange(len(_TETRAHEDRA), device=device).repeat(cube_ids.shape[0])
    tet_values = flat_values[ids]
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
    tri_type = torch.cat([tet_type[single], tet_type[double].repeat(2)])
    tri_edges = torch.cat([single_edges, double_edges])                # (F, 3, 2) corner slots
    ends = torch.gather(tri_ids[:, None, :].expand(-1, 3, -1), 2, tri_edges)   # grid ids
    if before is None:
        lo, hi = ends.min(2).values, ends.max(2).values
    else:
        first = before(ends[..., 0], ends[..., 1])
        lo = torch.where(first, ends[..., 0], ends[..., 1])
        hi = torch.where(first, ends[..., 1], ends[..., 0])
    total = flat_values.numel()
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
    p_lo, p_hi = position(edge_lo), position(edge_hi)
    vertices = p_lo + t * (p_hi - p_lo) if refine is None else refine(p_lo, p_hi, v_lo, v_hi)
    vertex_colors = None
    if flat_colors is not None:
        vertex_colors = flat_colors[edge_lo] + t * (flat_colors[edge_hi] - flat_colors[edge_lo])

    # Orientation: the normal towards the tetrahedron's outside corners. Read from the triangle
    # through its edges' midpoints, which winds as the triangle does but is never degenerate
    # (a vertex at t near 0 or 1 can make the triangle itself a sliver of rounding), in the
    # corners' integer offsets within their cube (exact; a grid's positions are a translation
    # and a positive scale of them, which keep every sign).
    offsets = torch.tensor(_CORNERS, dtype=dtype, device=device)[tet]          # (6, 4, 3)
    tri_corners = offsets[tri_type]
    outside = (flat_values[tri_ids] >= 0).to(dtype)[..., None]
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
    return _used_part(Mesh(vertices, faces[~collapsed], vertex_colors))


def _used_part(mesh: Mesh) -> Mesh:
    """The mesh without the vertices no face uses; the others keep their order (a running count
    renumbers them: no sort)."""
    used = torch.zeros(mesh.vertices.shape[0], dtype=torch.bool, device=mesh.vertices.device)
    used[mesh.faces.reshape(-1)] = True
    renumber = torch.cumsum(used.long(), 0) - 1
    return Mesh(mesh.vertices[used], renumber[mesh.faces],
                None if mesh.colors is None else mesh.colors[used])


def face_components(faces: torch.Tensor) -> torch.Tensor:
    """(F,) int64: the connected component of each face, faces joined where they share an edge
    (Open3D's `cluster_connected_triangles`), numbered by the lowest face index in each. Min-label
    hooking with pointer jumping on the faces' edge graph: rounds grow with the logarithm of a
    component's size rather than its diameter."""
    _check_shape("faces", faces, (None, 3))
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"faces: expected an integer tensor, got {faces.dtype}")
    device = faces.device
    F = faces.shape[0]
    label = torch.arange(F, device=device)
    if F == 0:
        return label
    edges = torch.sort(torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                       dim=1).values
    owner = torch.arange(F, device=device).repeat(3)
    # Faces sharing an edge are neighbours in the sorted edge list: join each to the next.
    key = edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1]
    key, order = torch.sort(key)
    owner = owner[order]
    same = key[1:] == key[:-1]
    a, b = owner[:-1][same], owner[1:][same]
    while True:
        la, lb = label[a], label[b]
        low, high = torch.minimum(la, lb), torch.maximum(la, lb)
        hooked = label.scatter_reduce(0, high, low, reduce="amin")     # roots to smaller roots
        while True:                                                  # every face to its root
            jumped = hooked[hooked]
            if torch.equal(jumped, hooked):
                break
            hooked = jumped
        if torch.equal(hooked, label):
            return label
        label = hooked


def keep_largest_components(mesh: Mesh, count: int = 50, min_faces: int = 50) -> Mesh:
    """The mesh's `count` largest connected components (faces joined by edges) of at least
    `min_faces` faces each (ties at the last size kept), and only the vertices they use: 2DGS's
    `post_process_mesh`, which drops the floaters that fusion meshes from stray Gaussians."""
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"count: expected a positive integer, got {count}")
    label = face_components(mesh.faces)
    if label.numel() == 0:
        return mesh
    sizes = torch.bincount(label, minlength=label.numel())
    ranked = torch.sort(sizes[sizes > 0], descending=True).values
    threshold = max(int(ranked[min(count, ranked.numel()) - 1]), int(min_faces))
    return _used_part(Mesh(mesh.vertices, mesh.faces[sizes[label] >= threshold], mesh.colors))


def _check_mask(name: str, mask: torch.Tensor, shape) -> None:
    _check_shape(name, mask, shape)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool tensor, got {mask.dtype}")


def _empty_mesh(values, colors) -> Mesh:
    return Mesh(values.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long,
                                                      device=values.device),
                None if colors is None else values.new_zeros((0, 3)))


def _pixel_of(points: torch.Tensor, view: torch.Tensor, proj: torch.Tensor, H: int, W: int):
    """(z, inside, pixel) of points (N, 3) in a view (flat viewmatrix and projmatrix): view
    depth, whether the projection falls in the image in front of the near plane, and the flat
    index of the pixel it falls in (the nearest pixel centre; clamped into the image)."""
    z = _transform_point(points, view, 2)
    inv_w = 1.0 / (_transform_point(points, proj, 3) + 1e-7)
    col = torch.round(_ndc2pix(_transform_point(points, proj, 0) * inv_w, W))
    row = torch.round(_ndc2pix(_transform_point(points, proj, 1) * inv_w, H))
    inside = (z > NEAR_PLANE) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
    pixel = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).long()
    return z, inside, pixel


def _lens_pixel_of(points: torch.Tensor, lens, H: int, W: int):
    """`_pixel_of` through a lens (the checked float64 settings `lens` of a fisheye or a
    distorted pinhole: the reference's projection), float64; a point past the lens's fold
    falls in no pixel."""
    view = lens.viewmatrix
    tx, ty, z = (_transform_point(points.double(), view, k) for k in range(3))
    front = z > NEAR_PLANE
    safe_z = torch.where(front, z, torch.ones_like(z))   # keeps the unused points finite
    px, py = _lens_pixels(tx, ty, safe_z, lens)
    col, row = torch.round(px), torch.round(py)
    inside = (front & _lens_unfolded(tx, ty, safe_z, lens) & (col >= 0) & (col < W) & (row >= 0)
              & (row < H))
    col, row = torch.nan_to_num(col), torch.nan_to_num(row)
    pixel = (row.clamp(0, H - 1) * W + col.clamp(0, W - 1)).long()
    return z.to(points.dtype), inside, pixel


class _ViewMaps:
    """One view's maps as integrate() takes them, checked, on the volume's device and dtype:
    what the fusion of any grid point reads. Through a lens (a fisheye, a distorted pinhole)
    `lens` holds the view's checked float64 settings, and points project by its formula."""

    def __init__(self, depth, settings, color, mask, dtype, device):
        self.H, self.W = int(settings.image_height), int(settings.image_width)
        _check_shape("depth", depth, (self.H, self.W))
        if color is not None:
            _check_shape("color", color, (3, self.H, self.W))
        if mask is not None:
            _check_mask("mask", mask, (self.H, self.W))
        self.depth = depth.detach().to(device, dtype).reshape(-1)
        self.color = None if color is None else color.detach().to(device, dtype).reshape(3, -1)
        self.mask = None if mask is None else mask.to(device).reshape(-1)
        self.view = torch.as_tensor(settings.viewmatrix).reshape(-1).to(device, dtype)
        self.proj = torch.as_tensor(settings.projmatrix).reshape(-1).to(device, dtype)
        self.settings = settings
        self.lens = None
        if _lens(settings):
            with torch.no_grad():
                self.lens = CheckedSettings(settings, device, torch.float64)

    @staticmethod
    def pixels(points: torch.Tensor, settings) -> torch.Tensor:
        """(N,) the flat index of the pixel each point falls in, in the view of `settings`
        (clamped into the image: see `_pixel_of`)."""
        H, W = int(settings.image_height), int(settings.image_width)
        if _lens(settings):
            with torch.no_grad():
                lens = CheckedSettings(settings, points.device, torch.float64)
            return _lens_pixel_of(points, lens, H, W)[2]
        flat = [torch.as_tensor(m).reshape(-1).to(points) for m in
                (settings.viewmatrix, settings.projmatrix)]
        return _pixel_of(points, *flat, H, W)[2]

    def read(self, points: torch.Tensor, truncation: float):
        """(seen, value, pixel) of grid points (N, 3): whether this view updates each (in front
        of the near plane, inside the image, on a pixel with depth and in the mask, not farther
        than the truncation behind the surface), its truncated distance (surface z - own z) /
        truncation clamped to at most 1, and the pixel it reads (the one its projection falls
        in: no interpolation across depth edges)."""
        if self.lens is None:
            z, seen, pixel = _pixel_of(points, self.view, self.proj, self.H, self.W)
        else:
            z, seen, pixel = _lens_pixel_of(points, self.lens, self.H, self.W)
        surface = self.depth[pixel]
        seen &= surface > 0
        if self.mask is not None:
            seen &= self.mask[pixel]
        sdf = surface - z
        seen &= sdf > -truncation
        return seen, torch.clamp(sdf / truncation, max=1.0), pixel

    def fuse(self, points, truncation, tsdf, weight, color):
        """Fuse this view into the grid points' running averages `tsdf`, `weight` (N,) and
        `color` (N, 3) or None, in place."""
        seen, value, pixel = self.read(points, truncation)
        new_weight = weight + seen.to(weight.dtype)
        divisor = new_weight.clamp_min(1)
        if color is not None and self.color is not None:
            rgb = self.color[:, pixel].T
            color.copy_(torch.where(seen[:, None], (color * weight[:, None] + rgb)
                                    / divisor[:, None], color))
        tsdf.copy_(torch.where(seen, (tsdf * weight + value) / divisor, tsdf))
        weight.copy_(new_weight)


class TSDFVolume:
    """A truncated signed distance field on a regular grid over the box [lower, upper] (world
    units), fused from depth maps. `truncation` (default 4 voxels) is the band behind a surface
    within which a view updates a grid point. Memory: 8 bytes a grid point in float32 (20 with
    colours), and the fusion's temporaries, about 15 times that; for a scene larger than an
    object, SparseTSDFVolume keeps the blocks near the surface alone."""

    def __init__(self, lower: Sequence[float], upper: Sequence[float], voxel_size: float,
                 truncation: Optional[float] = None, device="cpu",
                 dtype: torch.dtype = torch.float32):
        self.voxel_size, self.truncation = _check_voxel(voxel_size, truncation)
        lower_t, upper_t = _check_box(lower, upper)
        self.origin = lower_t.tolist()
        self.shape = tuple(int(math.ceil(float(s) / self.voxel_size - 1e-9)) + 1
                           for s in (upper_t - lower_t))
        self.tsdf = torch.ones(self.shape, dtype=dtype, device=device)
        self.weight = torch.zeros(self.shape, dtype=dtype, device=device)
        self.color: Optional[torch.Tensor] = None

    def points(self) -> torch.Tensor:
        """(N, 3) world positions of the grid points, in the field's memory order."""
        device = self.tsdf.device
        axes = [torch.arange(s, device=device) for s in self.shape]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        origin = torch.tensor(self.origin, dtype=self.tsdf.dtype, device=device)
        return _grid_positions(coords, origin, self.voxel_size)

    def integrate(self, depth: torch.Tensor, settings, color: Optional[torch.Tensor] = None,
                  mask: Optional[torch.Tensor] = None) -> None:
        """Fuse one view: `depth` (H, W) view-space z (the rasterizer's depth map; 0 where
        nothing was blended), `settings` the rasterizer settings it was rendered with,
        `color` (3, H, W) to fuse too, `mask` (H, W) bool the pixels to use. Each grid point
        reads the pixel its projection falls in (no interpolation across depth edges)."""
        maps = _ViewMaps(depth, settings, color, mask, self.tsdf.dtype, self.tsdf.device)
        if color is not None and self.color is None:
            self.color = torch.zeros(self.shape + (3,), dtype=self.tsdf.dtype,
                                     device=self.tsdf.device)
        maps.fuse(self.points(), self.truncation, self.tsdf.view(-1), self.weight.view(-1),
                  None if self.color is None else self.color.view(-1, 3))

    def extract_mesh(self, min_weight: float = 1.0) -> Mesh:
        """The field's zero level set over the grid points seen by at least `min_weight`
        views (marching_tetrahedra), with fused colours where any were given."""
        return marching_tetrahedra(self.tsdf, self.weight >= min_weight, self.origin,
                                   self.voxel_size, self.color)


def _point3(name: str, value) -> list:
    """Three finite numbers (a sequence, an array, a tensor) as a list of floats."""
    try:
        point = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        point = None
    if point is None or point.numel() != 3 or not torch.isfinite(point).all():
        raise ValueError(f"{name}: expected three finite numbers (x, y, z), got {value}")
    return point.tolist()


def _check_box(lower, upper):
    """The box's corners as float64 tensors (3,); ValueError unless upper > lower in x, y, z."""
    lower_t = torch.tensor(_point3("lower", lower), dtype=torch.float64)
    upper_t = torch.tensor(_point3("upper", upper), dtype=torch.float64)
    if not (upper_t > lower_t).all():
        raise ValueError(f"upper: expected above lower in x, y and z, got {lower} .. {upper}")
    return lower_t, upper_t


def _check_voxel(voxel_size, truncation):
    """(voxel_size, truncation) as floats (any real number type: NumPy's, a 0-d tensor);
    truncation defaults to 4 voxels."""
    def positive(name, value):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (number > 0 and math.isfinite(number)):
            raise ValueError(f"{name}: expected a positive number, got {value}")
        return number
    voxel_size = positive("voxel_size", voxel_size)
    return voxel_size, (positive("truncation", truncation) if truncation is not None
                        else 4 * voxel_size)


# Block coordinates packed into one int64 key, 21 bits an axis (x, y, z in that order, so keys
# sort as the coordinates do lexicographically): |coordinate| < 2^20 blocks.
_KEY_BITS = 21
_KEY_OFFSET = 1 << (_KEY_BITS - 1)


def _block_keys(coords: torch.Tensor) -> torch.Tensor:
    c = coords + _KEY_OFFSET
    return (c[..., 0] << (2 * _KEY_BITS)) | (c[..., 1] << _KEY_BITS) | c[..., 2]


def _box_lattice(lo: torch.Tensor, hi: torch.Tensor, budget: int = 1 << 22):
    """The integer points (M, 3) of the boxes [lo_i, hi_i] (N, 3) (int64), yielded in chunks of
    about `budget` candidates: the boxes grouped by their largest side, so that a few large
    boxes do not size every small one's enumeration."""
    if lo.shape[0] == 0:
        return
    span = (hi - lo).amax(1) + 1
    for s in torch.unique(span).tolist():
        group = (span == s).nonzero()[:, 0]
        steps = torch.arange(max(s, 1), device=lo.device)
        offsets = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"),
                              -1).reshape(-1, 3)
        step = max(1, budget // offsets.shape[0])
        for start in range(0, group.numel(), step):
            ids = group[start:start + step]
            candidates = lo[ids, None, :] + offsets[None]
            yield candidates[(candidates <= hi[ids, None, :]).all(-1)]


class SparseTSDFVolume:
    """A truncated signed distance field in blocks of `block_size`^3 grid points, allocated
    where a depth map puts a surface (within the truncation of a back-projected pixel): no box
    to choose, memory in proportion to the surface's area rather than the scene's volume (as
    Open3D's ScalableTSDFVolume, which 2DGS and PGSR mesh unbounded scenes with). Grid points
    lie at origin + voxel_size * (i, j, k) for any integers; each view updates every allocated
    point it sees, as TSDFVolume does its grid, so on the points both hold the two fields agree
    bit for bit. A view fuses after it allocates its own blocks; `allocate` all views first to
    let each view carve the free space in blocks that later views allocate."""

    def __init__(self, voxel_size: float, truncation: Optional[float] = None,
                 block_size: int = 8, origin: Sequence[float] = (0.0, 0.0, 0.0), device="cpu",
                 dtype: torch.dtype = torch.float32, chunk_points: int = 1 << 21):
        self.voxel_size, self.truncation = _check_voxel(voxel_size, truncation)
        if not (isinstance(block_size, int) and block_size >= 1):
            raise ValueError(f"block_size: expected a positive integer, got {block_size}")
        self.block_size = block_size
        self.origin = _point3("origin", origin)
        self.dtype, self.device = dtype, torch.device(device)
        self.chunk_blocks = max(1, chunk_points // block_size ** 3)
        self._origin_t = torch.tensor(self.origin, dtype=dtype, device=self.device)
        b3 = block_size ** 3
        self._local = torch.stack(torch.meshgrid(*[torch.arange(block_size, device=self.device)]
                                                 * 3, indexing="ij"), -1).reshape(b3, 3)
        # The blocks' rows in allocation order, in buffers that grow by half again when full
        # (a view's new blocks then cost no copy of the others, amortized); the rows past
        # num_blocks hold a new block's values already.
        self._count = 0
        self._store = {"block_coords": torch.zeros((0, 3), dtype=torch.long, device=self.device),
                       "tsdf": torch.ones((0, b3), dtype=dtype, device=self.device),
                       "weight": torch.zeros((0, b3), dtype=dtype, device=self.device)}
        # The blocks' keys sorted, and their rows.
        self._sorted_keys = torch.zeros(0, dtype=torch.long, device=self.device)
        self._sorted_rows = torch.zeros(0, dtype=torch.long, device=self.device)

    @property
    def num_blocks(self) -> int:
        return self._count

    @property
    def block_coords(self) -> torch.Tensor:
        """(B, 3) int64: each block's coordinates (its first grid point is block_size times)."""
        return self._store["block_coords"][:self._count]

    @property
    def tsdf(self) -> torch.Tensor:
        """(B, block_size^3): the field at each block's points, (i, j, k) at (i b + j) b + k."""
        return self._store["tsdf"][:self._count]

    @property
    def weight(self) -> torch.Tensor:
        """(B, block_size^3): the views fused at each point."""
        return self._store["weight"][:self._count]

    @property
    def color(self) -> Optional[torch.Tensor]:
        """(B, block_size^3, 3) once a view was fused with colours, else None."""
        store = self._store.get("color")
        return None if store is None else store[:self._count]

    def _grow(self, blocks: int) -> None:
        """Room for `blocks` more blocks (the new rows: tsdf 1, weight and colour 0)."""
        needed = self._count + blocks
        capacity = self._store["tsdf"].shape[0]
        if needed <= capacity:
            return
        capacity = max(needed, capacity + capacity // 2)
        for name, store in list(self._store.items()):
            grown = store.new_full((capacity,) + tuple(store.shape[1:]),
                                   1 if name == "tsdf" else 0)
            grown[:self._count] = store[:self._count]
            self._store[name] = grown

    def _rows_of(self, coords: torch.Tensor) -> torch.Tensor:
        """The rows of blocks at integer coordinates (..., 3); -1 where none is allocated."""
        keys = _block_keys(coords)
        if self.num_blocks == 0:
            return torch.full_like(keys, -1)
        at = torch.searchsorted(self._sorted_keys, keys).clamp_max(self.num_blocks - 1)
        return torch.where(self._sorted_keys[at] == keys, self._sorted_rows[at],
                           torch.full_like(keys, -1))

    def allocate(self, depth: torch.Tensor, settings, mask: Optional[torch.Tensor] = None) -> int:
        """Allocate the blocks within the truncation of every pixel of `depth` with a depth
        (and in `mask`), its centre back-projected; returns how many were new."""
        return self._allocate(_ViewMaps(depth, settings, None, mask, self.dtype, self.device))

    def _allocate(self, maps: "_ViewMaps") -> int:
        keep = maps.depth > 0
        if maps.mask is not None:
            keep &= maps.mask
        pixel = keep.nonzero()[:, 0]
        return self._allocate_near(_back_project(maps, pixel), self.truncation, "depth",
                                   "mask such pixels out")

    def _allocate_near(self, points: torch.Tensor, reach, name: str, advice: str) -> int:
        """Allocate the blocks that meet the box of half-width `reach` (a distance, or one a
        point (N, 1)) around each of `points` (N, 3) (float64); returns how many were new.
        `name` and `advice`: for the error where a point lies beyond the blocks' addresses."""
        extent = self.voxel_size * self.block_size
        origin = torch.tensor(self.origin, dtype=torch.float64, device=self.device)
        lo = torch.floor((points - reach - origin) / extent).long()
        hi = torch.floor((points + reach - origin) / extent).long()
        limit = _KEY_OFFSET - 1
        if lo.numel() and (lo.min() < -limit or hi.max() > limit):
            raise ValueError(f"{name}: a surface point lies over {limit} blocks "
                             f"({limit * extent:g} units) from the origin; {advice} "
                             "or take a larger voxel_size")
        keys = [torch.unique(_block_keys(c)) for c in _box_lattice(lo, hi)]
        if not keys:
            return 0
        keys = torch.unique(torch.cat(keys))
        if self.num_blocks:
            at = torch.searchsorted(self._sorted_keys, keys).clamp_max(self.num_blocks - 1)
            keys = keys[self._sorted_keys[at] != keys]
        if keys.numel() == 0:
            return 0
        c = torch.stack([(keys >> (2 * _KEY_BITS)) & ((1 << _KEY_BITS) - 1),
                         (keys >> _KEY_BITS) & ((1 << _KEY_BITS) - 1),
                         keys & ((1 << _KEY_BITS) - 1)], 1) - _KEY_OFFSET
        first = self.num_blocks
        rows = torch.arange(first, first + keys.numel(), device=self.device)
        self._grow(keys.numel())
        self._store["block_coords"][first:first + keys.numel()] = c
        self._count += keys.numel()
        all_keys = torch.cat([self._sorted_keys, keys])
        all_rows = torch.cat([self._sorted_rows, rows])
        order = torch.argsort(all_keys)
        self._sorted_keys, self._sorted_rows = all_keys[order], all_rows[order]
        return int(keys.numel())

    def _block_points(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows) * block_size^3, 3) world positions of the blocks' grid points."""
        coords = (self.block_coords[rows][:, None, :] * self.block_size + self._local[None])
        return _grid_positions(coords.reshape(-1, 3), self._origin_t, self.voxel_size)

    def _visible_rows(self, maps: "_ViewMaps") -> torch.Tensor:
        """The blocks that may hold a grid point the view sees: a conservative test of each
        block's bounding sphere against the near plane and the image (with a pixel to spare)."""
        extent = self.voxel_size * (self.block_size - 1)
        centre = _grid_positions(self.block_coords * self.block_size, self._origin_t.double(),
                                 self.voxel_size) + extent / 2
        # Half the diagonal, and room for the rounding of positions far from the origin.
        radius = extent * math.sqrt(3) / 2 + 1e-6 * (1 + centre.abs().amax(1, keepdim=True)
                                                     .squeeze(1))
        view = maps.view.double()
        x, y, z = (_transform_point(centre, view, k) for k in range(3))
        near = z - radius
        visible = z + radius > NEAR_PLANE
        ahead = near > 1e-3 * radius          # wholly in front of the camera's plane
        if maps.lens is not None:   # no bound of a lens's image: the near plane's test alone
            return visible.nonzero()[:, 0]
        s = maps.settings
        W, H = maps.W, maps.H
        proj = maps.proj.double()
        w = _transform_point(centre, proj, 3)
        for size, tan_half, along, column in ((W, real_value(s.tanfovx), x, 0),
                                              (H, real_value(s.tanfovy), y, 1)):
            focal = size / (2 * tan_half)
            pix = _ndc2pix(_transform_point(centre, proj, column) / (w + 1e-7), size)
            # A point q of the sphere projects within r f (1 + |c_x / c_z|) / (c_z - r) of c.
            reach = radius * focal * (1 + (along / z).abs()) / near.clamp_min(1e-12) + 1.0
            inside = (pix + reach >= -0.5) & (pix - reach <= size - 0.5)
            visible &= ~ahead | inside
        return visible.nonzero()[:, 0]

    def integrate(self, depth: torch.Tensor, settings, color: Optional[torch.Tensor] = None,
                  mask: Optional[torch.Tensor] = None) -> None:
        """Allocate this view's blocks, then fuse it into every allocated block it sees, as
        TSDFVolume.integrate (same arguments)."""
        maps = _ViewMaps(depth, settings, color, mask, self.dtype, self.device)
        self._allocate(maps)
        if color is not None and self.color is None:
            self._store["color"] = self._store["tsdf"].new_zeros(self._store["tsdf"].shape
                                                                 + (3,))
        rows = self._visible_rows(maps) if self.num_blocks else self.block_coords[:0, 0]
        b3 = self.block_size ** 3
        for start in range(0, rows.numel(), self.chunk_blocks):
            chunk = rows[start:start + self.chunk_blocks]
            tsdf, weight = self.tsdf[chunk].reshape(-1), self.weight[chunk].reshape(-1)
            color_chunk = None if self.color is None else self.color[chunk].reshape(-1, 3)
            maps.fuse(self._block_points(chunk), self.truncation, tsdf, weight, color_chunk)
            self.tsdf[chunk] = tsdf.reshape(-1, b3)
            self.weight[chunk] = weight.reshape(-1, b3)
            if color_chunk is not None:
                self.color[chunk] = color_chunk.reshape(-1, b3, 3)

    def extract_mesh(self, min_weight: float = 1.0, refine=None) -> Mesh:
        """The field's zero level set over the grid points seen by at least `min_weight` views,
        cubes across block borders included (marching tetrahedra, as TSDFVolume's; `refine` as
        marching_tetrahedra's)."""
        b = self.block_size
        b3 = b ** 3
        flat_values = self.tsdf.reshape(-1)
        flat_colors = None if self.color is None else self.color.reshape(-1, 3)
        empty = Mesh(flat_values.new_zeros((0, 3)),
                     torch.zeros((0, 3), dtype=torch.long, device=self.device),
                     None if flat_colors is None else flat_values.new_zeros((0, 3)))
        if self.num_blocks == 0:
            return empty
        valid_flat = self.weight.reshape(-1) >= min_weight
        # A block padded by one grid point up in x, y and z with its neighbours' points: the
        # padded point (i, j, k) lies in neighbour (i == b, j == b, k == b) at (i, j, k) mod b.
        pad = torch.arange(b + 1, device=self.device)
        padded = torch.stack(torch.meshgrid(pad, pad, pad, indexing="ij"), -1).reshape(-1, 3)
        over = (padded == b).long()
        neighbour = over[:, 0] + 2 * over[:, 1] + 4 * over[:, 2]
        local = padded % b
        local_id = (local[:, 0] * b + local[:, 1]) * b + local[:, 2]
        corner = torch.tensor(_CORNERS, device=self.device)
        cube_ids = []
        for start in range(0, self.num_blocks, self.chunk_blocks):
            rows = torch.arange(start, min(start + self.chunk_blocks, self.num_blocks),
                                device=self.device)
            around = self._rows_of(self.block_coords[rows][:, None, :] + corner[None])  # (B, 8)
            row = around[:, neighbour]                                   # (B, (b+1)^3)
            ids = row * b3 + local_id[None]
            ok = row >= 0
            ids = torch.where(ok, ids, torch.zeros_like(ids))
            valid = (ok & valid_flat[ids]).reshape(-1, b + 1, b + 1, b + 1)
            inside = (flat_values[ids] < 0).reshape(valid.shape)
            ids = ids.reshape(valid.shape)
            all_valid = torch.ones((rows.numel(), b, b, b), dtype=torch.bool, device=self.device)
            any_inside = torch.zeros_like(all_valid)
            all_inside = torch.ones_like(all_valid)
            for x, y, z in _CORNERS:
                window = (slice(None), slice(x, x + b), slice(y, y + b), slice(z, z + b))
                all_valid &= valid[window]
                any_inside |= inside[window]
                all_inside &= inside[window]
            cube = (all_valid & any_inside & ~all_inside).nonzero()     # (C, 4): block, i, j, k
            if cube.shape[0]:
                at = cube[:, None, 1:] + corner[None]                    # (C, 8, 3)
                cube_ids.append(ids[cube[:, :1].expand(-1, 8), at[..., 0], at[..., 1],
                                    at[..., 2]])
        if not cube_ids:
            return empty
        block_coords = self.block_coords

        def coords(point_ids):  # integer grid coordinates of stored points, from their ids
            local = self._local[point_ids % b3]
            return block_coords[torch.div(point_ids, b3, rounding_mode="floor")] * b + local

        # Edge ends ordered by position (x, then y, then z, as the dense grid's ids are), so
        # that the vertices are those of a dense grid over the same points, bit for bit.
        def before(first, second):
            a, c = coords(first), coords(second)
            x, y, z = (a[..., k] - c[..., k] for k in range(3))
            return (x < 0) | ((x == 0) & ((y < 0) | ((y == 0) & (z < 0))))

        def position(point_ids):
            return _grid_positions(coords(point_ids), self._origin_t, self.voxel_size)

        return _mesh_cubes(torch.cat(cube_ids), flat_values, position, before, flat_colors,
                           refine)


def _back_project(maps: "_ViewMaps", pixel: torch.Tensor) -> torch.Tensor:
    """(N, 3) world points (float64) at the centres of the pixels `pixel` (flat indices) at their
    depth: the point whose view z is the depth and whose projection is the pixel's centre,
    solved from the settings' own matrices (any principal point they encode); through a lens,
    on the pixel's ray (`surface.depth_to_points`)."""
    H, W = maps.H, maps.W
    if maps.lens is not None:
        with torch.no_grad():
            rays = depth_to_points(torch.ones(H, W, dtype=torch.float64, device=pixel.device),
                                   maps.settings).reshape(3, -1)[:, pixel]
        V = maps.lens.viewmatrix.reshape(4, 4)   # [p, 1] @ V: view = p R + T
        view_points = (rays * maps.depth.double()[pixel]).T
        return torch.linalg.solve(V[:3, :3].T, (view_points - V[3, :3]).T).T
    view, proj = maps.view.double(), maps.proj.double()
    ndc_x = (2.0 * (pixel % W).double() + 1.0) / W - 1.0
    ndc_y = (2.0 * torch.div(pixel, W, rounding_mode="floor").double() + 1.0) / H - 1.0
    # [p, 1] @ M: column c is p . M[0:12:4 + c] + M[12 + c]. Rows of the 3x3 system:
    # view z = depth; proj x - ndc_x proj w = 0; proj y - ndc_y proj w = 0.
    col = lambda m, c: m[[c, 4 + c, 8 + c]]
    n = pixel.numel()
    A = torch.stack([col(view, 2).expand(n, 3),
                     col(proj, 0)[None] - ndc_x[:, None] * col(proj, 3)[None],
                     col(proj, 1)[None] - ndc_y[:, None] * col(proj, 3)[None]], 1)
    b = torch.stack([maps.depth.double()[pixel] - view[14],
                     ndc_x * proj[15] - proj[12], ndc_y * proj[15] - proj[13]], 1)
    if n == 0:
        return b
    return torch.linalg.solve(A, b[..., None])[..., 0]


# ----------------------------------------------------------------------------------------------
# Gaussian Opacity Fields: the mesh of the opacity field itself, no depth maps
# ----------------------------------------------------------------------------------------------

class OpacityField:
    """The opacity field of trained Gaussians over a set of views (Gaussian Opacity Fields): at a
    point, the least opacity any view that sees it gives (the rasterizer's `points3D=` output:
    1 - the transmittance of the point's ray up to the point), 1 where no view sees it. A seen
    point's opacity is at most 1 - 1e-4 (the render's early stop keeps T >= 1e-4), so
    `field(points) < 1` tells exactly which points some view sees.

        field = OpacityField(training_views, means3D, opacities, scales, rotations)
        mesh = extract_opacity_mesh(field, voxel_size)

    `views`: the rasterizer settings of the views (the training cameras, as GOF takes them);
    `kernel_size`, antialiasing and the scale modifier are theirs. Inputs as the rasterizer
    takes them (`cov3D_precomp` instead of scales and rotations); no gradient. `rasterizer`:
    the class that renders (GaussianRasterizer, or a subclass). `chunk`: points per call."""

    def __init__(self, views, means3D: torch.Tensor, opacities: torch.Tensor,
                 scales: Optional[torch.Tensor] = None, rotations: Optional[torch.Tensor] = None,
                 cov3D_precomp: Optional[torch.Tensor] = None, rasterizer=None,
                 chunk: int = 1 << 22):
        from . import GaussianRasterizer
        self.views = list(views)
        if not self.views:
            raise ValueError("views: expected at least one view")
        if not (isinstance(chunk, int) and chunk >= 1):
            raise ValueError(f"chunk: expected a positive integer, got {chunk}")
        self.rasterizer = GaussianRasterizer if rasterizer is None else rasterizer
        self.gaussians = dict(means3D=means3D.detach(), opacities=opacities.detach(),
                              scales=None if scales is None else scales.detach(),
                              rotations=None if rotations is None else rotations.detach(),
                              cov3D_precomp=None if cov3D_precomp is None
                              else cov3D_precomp.detach())
        # The render's colour is not read: one colour for all, the cheapest input there is.
        self.colors = means3D.new_zeros((means3D.shape[0], 3))
        self.chunk = chunk

    def _render(self, points: torch.Tensor, view, shs=None, colors_precomp=None):
        """(colour (3, H, W), opacity (N,)) of one view's render with points (N, 3), in chunks
        of `self.chunk` points (the image is the first chunk's; the field's own zero colours
        where no colours are given)."""
        g = self.gaussians
        if shs is None and colors_precomp is None:
            colors_precomp = self.colors
        image, parts = None, []
        with torch.no_grad():
            for start in range(0, max(points.shape[0], 1), self.chunk):
                out = self.rasterizer(view)(
                    g["means3D"], None, g["opacities"], shs=shs, colors_precomp=colors_precomp,
                    scales=g["scales"], rotations=g["rotations"],
                    cov3D_precomp=g["cov3D_precomp"], points3D=points[start:start + self.chunk])
                image = out[0] if image is None else image
                parts.append(out[-1])
        return image, torch.cat(parts)

    def view_opacity(self, points: torch.Tensor, view) -> torch.Tensor:
        """(N,) the opacity of points (N, 3) in one view (1 where it does not see them)."""
        return self._render(points, view)[1]

    def vertex_colors(self, points: torch.Tensor, shs: Optional[torch.Tensor] = None,
                      colors_precomp: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, 3) GOF's colours of points (N, 3), a mesh's vertices (its extract_mesh.py
        --texture_mesh): each takes the rendered colour, background included, of the pixel it
        falls in, in the view where its opacity is least (the view that sees it best; the
        first of equals); white (1, 1, 1), as GOF's, where no view sees it. The Gaussians'
        colours: `shs` (P, M, 3) with each view's `sh_degree`, or `colors_precomp` (P, 3)."""
        _check_shape("points", points, (None, 3))
        if (shs is None) == (colors_precomp is None):
            raise ValueError("shs, colors_precomp: expected exactly one of them")
        least = torch.ones_like(points[:, 0])
        colors = torch.ones_like(points)
        for view in self.views:
            image, opacity = self._render(points, view, shs, colors_precomp)
            pixel = _ViewMaps.pixels(points, view)
            # A point the view does not see has opacity 1: never less than the least.
            better = opacity < least
            colors = torch.where(better[:, None], image.reshape(3, -1)[:, pixel].T, colors)
            least = torch.where(better, opacity, least)
        return colors

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N,) the field at points (N, 3), of the Gaussians' dtype and device."""
        _check_shape("points", points, (None, 3))
        field = torch.ones_like(points[:, 0])
        for view in self.views:
            field = torch.minimum(field, self.view_opacity(points, view))
        return field


def _largest_scales(g) -> torch.Tensor:
    """(P,) each Gaussian's largest standard deviation (its scales', or its covariance's)."""
    if g["scales"] is not None:
        return g["scales"].abs().amax(dim=1)
    c = g["cov3D_precomp"]
    dense = torch.stack([c[:, [0, 1, 2]], c[:, [1, 3, 4]], c[:, [2, 4, 5]]], 1)
    return torch.linalg.eigvalsh(dense.double()).amax(dim=1).clamp_min(0).sqrt().to(c.dtype)


def _points_near(volume: "SparseTSDFVolume", centres: torch.Tensor,
                 reach: torch.Tensor) -> torch.Tensor:
    """(B, block_size^3) bool: the volume's grid points within the box of half-width reach_i
    (N, 1) around some centre (N, 3) (float64); the blocks holding them must be allocated."""
    b = volume.block_size
    near = torch.zeros((volume.num_blocks, b ** 3), dtype=torch.bool, device=volume.device)
    origin = torch.tensor(volume.origin, dtype=torch.float64, device=volume.device)
    lo = torch.ceil((centres - reach - origin) / volume.voxel_size).long()
    hi = torch.floor((centres + reach - origin) / volume.voxel_size).long()
    for coords in _box_lattice(lo, hi):
        block = torch.div(coords, b, rounding_mode="floor")
        local = coords - block * b
        near[volume._rows_of(block), (local[:, 0] * b + local[:, 1]) * b + local[:, 2]] = True
    return near


def extract_opacity_mesh(field, voxel_size: float, level: float = 0.5,
                         refine_steps: int = 8, margin: Optional[float] = None,
                         max_reach_voxels: int = 16, lower: Optional[Sequence[float]] = None,
                         upper: Optional[Sequence[float]] = None, block_size: int = 8,
                         chunk_blocks: int = 2048) -> Mesh:
    """GOF's mesh of an OpacityField: its level set `field(x) = level` (0.5, as GOF's) on the
    grid points origin + voxel_size * (i, j, k) in the box of each Gaussian's 3 sigma (3 times
    its largest scale about its centre, as GOF takes its points from those boxes), or within
    `margin` of every centre where given; at least a voxel and at most `max_reach_voxels` (a
    Gaussian larger than that, such as a background's, is meshed near its centre alone); kept in
    blocks of block_size^3 as SparseTSDFVolume's, and within the box [lower, upper] where given.
    Marching tetrahedra over the cubes that some view sees (field < 1), each vertex then placed by `refine_steps` bisections of
    its edge against the field (GOF's binary search; 0: the linear interpolation), which puts
    it within voxel_size / 2^steps of the crossing wherever the field crosses once along the
    edge. Faces point out of the opaque side (towards the free space the cameras see).
    Why near the Gaussians: free space that every view sees only through a surface (behind a
    wall, inside an object) is as opaque as the surface, and a grid far from any Gaussian would
    wrap it in sheets. Memory: the blocks (as SparseTSDFVolume's), the field evaluated on
    `chunk_blocks` of them at a time, one view at a time."""
    if not isinstance(field, OpacityField):
        raise TypeError(f"field: expected an OpacityField, got {type(field).__name__}")
    voxel_size, _ = _check_voxel(voxel_size, None)
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level: expected a value in (0, 1), got {level}")
    if not (isinstance(refine_steps, int) and refine_steps >= 0):
        raise ValueError(f"refine_steps: expected a non-negative integer, got {refine_steps}")
    if not (isinstance(chunk_blocks, int) and chunk_blocks >= 1):
        raise ValueError(f"chunk_blocks: expected a positive integer, got {chunk_blocks}")
    if not (isinstance(max_reach_voxels, int) and max_reach_voxels >= 1):
        raise ValueError(f"max_reach_voxels: expected a positive integer, got {max_reach_voxels}")
    g = field.gaussians
    if margin is not None and not (float(margin) >= 0):
        raise ValueError(f"margin: expected a non-negative distance, got {margin}")
    box = None
    if (lower is None) != (upper is None):
        raise ValueError("lower, upper: expected both or neither")
    if lower is not None:
        box = _check_box(lower, upper)
    like = g["means3D"]
    volume = SparseTSDFVolume(voxel_size, block_size=block_size, device=like.device,
                              dtype=like.dtype)
    centres = g["means3D"].double()
    reach = (3.0 * _largest_scales(g).double() if margin is None
             else torch.full_like(centres[:, 0], float(margin)))
    reach = reach.clamp(voxel_size, max_reach_voxels * voxel_size)[:, None]
    keep = torch.isfinite(centres).all(1) & torch.isfinite(reach[:, 0])
    if box is not None:
        lo_box, hi_box = (b.to(centres.device) for b in box)
        keep &= ((centres >= lo_box - reach) & (centres <= hi_box + reach)).all(1)
    volume._allocate_near(centres[keep], reach[keep], "means3D", "pass lower and upper")
    near = _points_near(volume, centres[keep], reach[keep])
    # The field's values as the volume's tsdf (inside, opaque: negative) and whether a view
    # sees each point as its weight.
    for start in range(0, volume.num_blocks, chunk_blocks):
        rows = torch.arange(start, min(start + chunk_blocks, volume.num_blocks),
                            device=volume.device)
        points = volume._block_points(rows)
        seen = near[rows].reshape(-1)
        if box is not None:
            seen &= ((points.double() >= lo_box.to(points.device))
                     & (points.double() <= hi_box.to(points.device))).all(1)
        opacity = torch.ones(points.shape[0], dtype=like.dtype, device=points.device)
        opacity[seen] = field(points[seen])
        volume.tsdf[rows] = (level - opacity).reshape(rows.numel(), -1)
        volume.weight[rows] = (opacity < 1).to(like.dtype).reshape(rows.numel(), -1)

    def bisect(p_lo, p_hi, v_lo, v_hi):
        # Keep [a, b] around the crossing, a on v_lo's side; then interpolate in the last one.
        a, b, va, vb = p_lo, p_hi, v_lo, v_hi
        for _ in range(refine_steps):
            mid = 0.5 * (a + b)
            vm = level - field(mid)
            with_a = (vm < 0) == (va < 0)
            a = torch.where(with_a[:, None], mid, a)
            va = torch.where(with_a, vm, va)
            b = torch.where(with_a[:, None], b, mid)
            vb = torch.where(with_a, vb, vm)
        denominator = va - vb
        t = torch.where(denominator != 0, va / torch.where(denominator != 0, denominator,
                                                             torch.ones_like(va)),
                        torch.zeros_like(va))
        return a + t.clamp(0, 1)[:, None] * (b - a)

    return volume.extract_mesh(min_weight=1.0, refine=bisect if refine_steps else None)
