"""Read and write 3DGS `point_cloud.ply` files as the official training code lays them out.

Per vertex: x, y, z; nx, ny, nz (unused, written as 0); f_dc_0..2; f_rest_0..K-1 with
K = 3 * (M - 1) stored channel-major (all of red's higher-order coefficients, then green's, then
blue's), i.e. (3, M-1) per point; opacity as a logit; scale_0..2 as log scales; rot_0..3 an
unnormalised quaternion (w, x, y, z). Loading activates them as the training code does (sigmoid,
exp, normalize) and returns a `Gaussians`; saving inverts that. A Mip-Splatting model's
`filter_3D` (each Gaussian's 3D filter, a standard deviation) is applied on loading as its
renderer applies it: scales sqrt(s^2 + f^2), opacities scaled by sqrt(prod s^2 / prod
(s^2 + f^2)).

Needs the `plyfile` package (extra `demo`), imported only when a function here is called.
"""
import math
import os

import numpy as np
import torch

from .scenes import Gaussians

REQUIRED = (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
FILTER_3D = "filter_3D"  # Mip-Splatting's per-Gaussian 3D filter


class PlyFormatError(ValueError):
    """The file is not a 3DGS point_cloud.ply; the message says what is missing or wrong."""


def _plyfile():
    try:
        import plyfile
    except ImportError:
        raise ImportError("reading and writing PLY files needs the `plyfile` package: "
                          "pip install plyfile (or the package's [demo] extra)") from None
    return plyfile


def _rest_count(names) -> int:
    """Number of f_rest_* properties, checking they are f_rest_0..K-1 without gaps."""
    idx = sorted(int(n[len("f_rest_"):]) for n in names
                 if n.startswith("f_rest_") and n[len("f_rest_"):].isdigit())
    if idx != list(range(len(idx))):
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise PlyFormatError(f"f_rest_* properties are not numbered 0..{max(idx)}: missing "
                             + ", ".join(f"f_rest_{i}" for i in missing[:8])
                             + (" ..." if len(missing) > 8 else ""))
    return len(idx)


def load_ply(path, device="cpu") -> Gaussians:
    """Load a 3DGS PLY and activate its values (float32 Gaussians on `device`).

    Raises `FileNotFoundError` for a missing file and `PlyFormatError` (a ValueError) for a file
    that is not a PLY or lacks the 3DGS vertex properties, naming what is missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    plyfile = _plyfile()
    try:
        data = plyfile.PlyData.read(path)
    except Exception as e:       # plyfile raises several types for malformed headers/bodies
        raise PlyFormatError(f"{path}: not a readable PLY file ({type(e).__name__}: {e})") \
            from None
    names_of = {el.name: el for el in data.elements}
    if "vertex" not in names_of:
        raise PlyFormatError(f"{path}: a 3DGS PLY needs a 'vertex' element; this file has "
                             f"{sorted(names_of) or 'no elements'}")
    vertex = names_of["vertex"]
    props = [p.name for p in vertex.properties]
    missing = [n for n in REQUIRED if n not in props]
    if missing:
        raise PlyFormatError(f"{path}: not a 3DGS point_cloud.ply: the vertex element lacks "
                             f"{', '.join(missing)} (it has {', '.join(props) or 'nothing'})")
    n_rest = _rest_count(props)
    if n_rest % 3:
        raise PlyFormatError(f"{path}: {n_rest} f_rest_* properties; expected a multiple of 3 "
                             "(3 colour channels)")
    M = 1 + n_rest // 3
    degree = int(round(math.sqrt(M))) - 1
    if (degree + 1) ** 2 != M or degree > 3:
        raise PlyFormatError(f"{path}: {n_rest} f_rest_* properties give {M} SH coefficients "
                             "per channel; expected 1, 4, 9 or 16 (SH degree 0..3), i.e. 0, 9, "
                             "24 or 45 f_rest_* properties")
    P = vertex.count
    if P == 0:
        raise PlyFormatError(f"{path}: the vertex element is empty (0 Gaussians)")

    def cols(names):
        return np.stack([np.asarray(vertex[n], dtype=np.float64) for n in names], axis=1)

    means = cols(["x", "y", "z"])
    dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])                       # (P, 3)
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((P, 0))
    sh = np.concatenate([dc[:, None, :],
                         rest.reshape(P, 3, M - 1).transpose(0, 2, 1)], axis=1)   # (P, M, 3)
    logit = cols(["opacity"])
    log_scales = cols([f"scale_{i}" for i in range(3)])
    quat = cols([f"rot_{i}" for i in range(4)])

    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    opacities, scales = torch.sigmoid(t(logit)), torch.exp(t(log_scales))
    if FILTER_3D in props:
        squared = scales.square()
        filtered = squared + t(cols([FILTER_3D])).square()
        scales = filtered.sqrt()
        opacities = opacities * (squared.prod(dim=1) / filtered.prod(dim=1)).sqrt()[:, None]
    return Gaussians(
        means=t(means), sh=t(sh), opacities=opacities, scales=scales,
        rotations=torch.nn.functional.normalize(t(quat), dim=1))


def vertex_properties(path) -> list:
    """The names of the vertex element's properties, read from the PLY header alone."""
    names, in_vertex = [], False
    with open(os.fspath(path), "rb") as f:
        for line in f:
            words = line.decode("ascii", "replace").split()
            if words[:1] == ["end_header"]:
                break
            if words[:1] == ["element"]:
                in_vertex = words[1:2] == ["vertex"]
            elif words[:1] == ["property"] and in_vertex:
                names.append(words[-1])
    return names


def save_ply(path, gaussians: Gaussians):
    """Write `gaussians` (activated values) as a 3DGS point_cloud.ply (binary, float32)."""
    plyfile = _plyfile()
    g = gaussians
    P, M = g.sh.shape[0], g.sh.shape[1]
    as_np = lambda x: x.detach().to("cpu", torch.float64).numpy()  # noqa: E731
    sh = as_np(g.sh)
    eps = 1e-7
    op = np.clip(as_np(g.opacities).reshape(P, 1), eps, 1 - eps)
    columns = {
        "x": as_np(g.means)[:, 0], "y": as_np(g.means)[:, 1], "z": as_np(g.means)[:, 2],
        "nx": np.zeros(P), "ny": np.zeros(P), "nz": np.zeros(P),
    }
    for c in range(3):
        columns[f"f_dc_{c}"] = sh[:, 0, c]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(P, 3 * (M - 1))   # channel-major
    for i in range(rest.shape[1]):
        columns[f"f_rest_{i}"] = rest[:, i]
    columns["opacity"] = np.log(op / (1 - op))[:, 0]
    log_scales = np.log(as_np(g.scales))
    quat = as_np(g.rotations)
    for i in range(3):
        columns[f"scale_{i}"] = log_scales[:, i]
    for i in range(4):
        columns[f"rot_{i}"] = quat[:, i]
    records = np.empty(P, dtype=[(name, "f4") for name in columns])
    for name, values in columns.items():
        records[name] = values
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    plyfile.PlyData([plyfile.PlyElement.describe(records, "vertex")]).write(os.fspath(path))


def save_mesh_ply(path, mesh) -> None:
    """Write a `mesh.Mesh` as a binary PLY: vertex x, y, z (float32) and, where the mesh has
    colours, red, green, blue (uchar); face vertex_indices (int32 triples)."""
    plyfile = _plyfile()
    vertices = mesh.vertices.detach().to("cpu", torch.float64).numpy()
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    records = np.empty(len(vertices), dtype=fields)
    for i, name in enumerate("xyz"):
        records[name] = vertices[:, i]
    if mesh.colors is not None:
        rgb = np.clip(mesh.colors.detach().to("cpu", torch.float64).numpy() * 255 + 0.5, 0, 255)
        for i, name in enumerate(("red", "green", "blue")):
            records[name] = rgb[:, i].astype(np.uint8)
    faces = np.empty(mesh.faces.shape[0], dtype=[("vertex_indices", "i4", (3,))])
    faces["vertex_indices"] = mesh.faces.detach().cpu().numpy().astype(np.int32)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    plyfile.PlyData([plyfile.PlyElement.describe(records, "vertex"),
                     plyfile.PlyElement.describe(faces, "face")]).write(os.fspath(path))
