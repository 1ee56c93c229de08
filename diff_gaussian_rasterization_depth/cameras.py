"""Pinhole cameras in the rasterizer's conventions (SPEC 4): look-at, orbits, settings.

Every camera in this package (demo, `render` command, examples, tests) is built here, so the
transposed-matrix conventions live in exactly one place:

- `world_to_camera` is the 4x4 OpenCV world-to-camera matrix acting on column vectors
  (camera x right, y down, z forward);
- `viewmatrix = world_to_camera.T` and `projmatrix = world_to_camera.T @ P.T` with the
  OpenGL-style perspective `P` (z mapped forward), which is the layout the rasterizer takes;
- the principal point is the image centre and pixel centres sit at integer coordinates, so the
  pixel (col, row) looks along camera-space `((col - (W-1)/2) / fx, (row - (H-1)/2) / fy, 1)`.

Matrices are built in float64 and cast when the settings are made. Only torch and numpy.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ._precision import full_precision
from ._validation import KERNEL_SIZE_DEFAULT

ZNEAR = 0.01
ZFAR = 100.0


def _vec3(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,):
        raise ValueError(f"expected a 3-vector, got shape {np.asarray(v).shape}")
    return a


def _normalized(v: np.ndarray, what: str) -> np.ndarray:
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"{what}: cannot normalize a zero or non-finite vector {v}")
    return v / n


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera matrix (4x4, float64, OpenCV axes) of a camera at `eye` facing `target`.

    `up` is the world direction that should appear upwards in the image (camera -y).
    """
    eye, target, up = _vec3(eye), _vec3(target), _vec3(up)
    forward = _normalized(target - eye, "look_at(target - eye)")
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9 * np.linalg.norm(up):
        raise ValueError("look_at: the viewing direction is parallel to `up`; pick another up")
    right = _normalized(right, "look_at(right)")
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])      # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = rotation
    w2c[:3, 3] = -rotation @ eye
    return w2c


def _projection_rows(tanfovx, tanfovy, shift_x, shift_y, orthographic: bool, znear: float,
                     zfar: float):
    """The projection's rows (column-vector form, z mapped forward), entries numbers or 0-dim
    tensors as given: the perspective's NDC x = x / (z tanfovx) + shift_x (the shift in column
    2), or the orthographic's x / half_width + shift_x (column 3, w = 1); y likewise."""
    if orthographic:
        return [[1.0 / tanfovx, 0.0, 0.0, shift_x], [0.0, 1.0 / tanfovy, 0.0, shift_y],
                [0.0, 0.0, 1.0 / (zfar - znear), -znear / (zfar - znear)],
                [0.0, 0.0, 0.0, 1.0]]
    return [[1.0 / tanfovx, 0.0, shift_x, 0.0], [0.0, 1.0 / tanfovy, shift_y, 0.0],
            [0.0, 0.0, zfar / (zfar - znear), -zfar * znear / (zfar - znear)],
            [0.0, 0.0, 1.0, 0.0]]


def perspective_matrix(tanfovx: float, tanfovy: float, znear: float = ZNEAR,
                       zfar: float = ZFAR) -> np.ndarray:
    """OpenGL-style projection (column-vector form), z mapped forward, centred principal point."""
    return np.array(_projection_rows(tanfovx, tanfovy, 0.0, 0.0, False, znear, zfar))


def orthographic_matrix(half_width: float, half_height: float, znear: float = ZNEAR,
                        zfar: float = ZFAR) -> np.ndarray:
    """Orthographic projection (column-vector form) of the view-space box |x| <= half_width,
    |y| <= half_height, z in [znear, zfar] onto NDC, z mapped forward: the projmatrix of
    `orthographic=True` settings whose tanfovx, tanfovy are half_width, half_height."""
    return np.array(_projection_rows(half_width, half_height, 0.0, 0.0, True, znear, zfar))


def projection_from_intrinsics(fx, fy, cx, cy, width: int, height: int,
                               orthographic: bool = False, znear: float = ZNEAR,
                               zfar: float = ZFAR):
    """(tanfovx, tanfovy, P) of a camera with focal lengths fx, fy and principal point (cx, cy)
    in pixels, pixel centres at integer coordinates (the rasterizer's: (W - 1) / 2 is the
    centre): the settings' fields of view, W / (2 fx) and H / (2 fy), and its projection P
    (4, 4, column-vector form: projmatrix = viewmatrix @ P.T), perspective_matrix with the
    principal point moved, or with `orthographic` orthographic_matrix (focal in px per
    view-space unit) likewise. Where an intrinsic is a tensor (0-dim or one element) that
    requires grad, its gradient arrives through both the fields of view (the EWA Jacobian, whose
    gradient the rasterizer returns: doc/camera_gradients.md) and P (the projected means), and
    P is in its dtype and on its device. From Python numbers: float fields of view and a
    float64 P, made in one tensor call."""
    tanfovx, tanfovy = width / (2.0 * fx), height / (2.0 * fy)
    # The axis lands at pixel c when its NDC is (2 c + 1) / size - 1 (pixel = ((ndc + 1) size
    # - 1) / 2): the perspective's shift of x / z (column 2), the orthographic's of x (column 3).
    shift_x, shift_y = (2.0 * cx + 1.0) / width - 1.0, (2.0 * cy + 1.0) / height - 1.0
    rows = _projection_rows(tanfovx, tanfovy, shift_x, shift_y, orthographic, znear, zfar)
    like = next((v for v in (fx, fy, cx, cy) if isinstance(v, torch.Tensor)), None)
    if like is None:
        return tanfovx, tanfovy, torch.tensor(rows, dtype=torch.float64)
    if isinstance(tanfovx, torch.Tensor):
        tanfovx = tanfovx.reshape(())
    if isinstance(tanfovy, torch.Tensor):
        tanfovy = tanfovy.reshape(())
    P = torch.stack([torch.as_tensor(v, dtype=like.dtype, device=like.device).reshape(())
                     for row in rows for v in row])
    return tanfovx, tanfovy, P.reshape(4, 4)


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a full field of view of `fov_deg` across `size` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov: expected degrees in (0, 180), got {fov_deg}")
    return size / (2.0 * math.tan(math.radians(fov_deg) / 2.0))


@dataclass
class Camera:
    """A pinhole camera: OpenCV world-to-camera matrix, image size and focal lengths (pixels)."""
    world_to_camera: np.ndarray
    width: int
    height: int
    fx: float
    fy: float

    def __post_init__(self):
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float64).reshape(4, 4)
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera size: expected positive width and height, got "
                             f"{self.width}x{self.height}")

    @classmethod
    def looking_at(cls, eye, target, width: int, height: int, fov_x_deg: float = 50.0,
                   up=(0.0, 0.0, 1.0)) -> "Camera":
        """Square pixels; `fov_x_deg` is the horizontal field of view."""
        f = focal_from_fov(fov_x_deg, width)
        return cls(look_at(eye, target, up), width, height, f, f)

    # --- the quantities the rasterizer wants ---------------------------------------------
    @property
    def tanfovx(self) -> float:
        return self.width / (2.0 * self.fx)

    @property
    def tanfovy(self) -> float:
        return self.height / (2.0 * self.fy)

    @property
    def rotation(self) -> np.ndarray:
        """World-to-camera rotation (3x3); its rows are the camera axes in world space."""
        return self.world_to_camera[:3, :3]

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates (`campos`)."""
        return -self.rotation.T @ self.world_to_camera[:3, 3]

    def viewmatrix(self) -> np.ndarray:
        return self.world_to_camera.T.copy()

    def projmatrix(self) -> np.ndarray:
        P = perspective_matrix(self.tanfovx, self.tanfovy)
        return self.world_to_camera.T @ P.T

    def raster_settings(self, bg=(0.0, 0.0, 0.0), sh_degree: int = 0,
                        scale_modifier: float = 1.0, device="cpu", dtype=torch.float32,
                        antialiasing: bool = False,
                        kernel_size: float = KERNEL_SIZE_DEFAULT):
        """`GaussianRasterizationSettings` for this camera, tensors on `device`."""
        from . import GaussianRasterizationSettings

        def t(a):
            return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)

        return GaussianRasterizationSettings(
            image_height=int(self.height), image_width=int(self.width),
            tanfovx=float(self.tanfovx), tanfovy=float(self.tanfovy),
            bg=t(bg).reshape(3), scale_modifier=float(scale_modifier),
            viewmatrix=t(self.viewmatrix()), projmatrix=t(self.projmatrix()),
            sh_degree=int(sh_degree), campos=t(self.center), prefiltered=False, debug=False,
            antialiasing=antialiasing, kernel_size=kernel_size)

    # --- geometry helpers for ray casting and checks --------------------------------------
    def pixel_directions(self) -> np.ndarray:
        """(H, W, 3) camera-space directions with z = 1, one per pixel centre.

        A point at ray parameter t along such a direction has view-space depth exactly t.
        """
        cols = (np.arange(self.width) - (self.width - 1) / 2.0) / self.fx
        rows = (np.arange(self.height) - (self.height - 1) / 2.0) / self.fy
        u, v = np.meshgrid(cols, rows)
        return np.stack([u, v, np.ones_like(u)], axis=-1)

    def world_rays(self):
        """(origin (3,), directions (H, W, 3)) in world space; directions have view z = 1."""
        return self.center, self.pixel_directions() @ self.rotation

    def project(self, points) -> np.ndarray:
        """(N, 3) world points -> (N, 3) array of (col, row, view depth)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cam = p @ self.rotation.T + self.world_to_camera[:3, 3]
        z = cam[:, 2]
        col = self.fx * cam[:, 0] / z + (self.width - 1) / 2.0
        row = self.fy * cam[:, 1] / z + (self.height - 1) / 2.0
        return np.stack([col, row, z], axis=1)

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera at another resolution (focal lengths scaled with the size)."""
        return Camera(self.world_to_camera.copy(), width, height,
                      self.fx * width / self.width, self.fy * height / self.height)


def orbit_cameras(center, radius: float, n_views: int, width: int, height: int,
                  elevation_deg: float = 25.0, fov_x_deg: float = 50.0, up=(0.0, 0.0, 1.0),
                  start_azimuth_deg: float = 0.0,
                  arc_deg: float = 360.0) -> List[Camera]:
    """`n_views` cameras on a circle around `center`, all facing it.

    The circle lies in the plane orthogonal to `up`, raised by `elevation_deg`; azimuths are
    spread evenly over `arc_deg` degrees (a full circle by default, then the last view does not
    repeat the first).
    """
    if n_views < 1:
        raise ValueError(f"n_views: expected >= 1, got {n_views}")
    if not radius > 0:
        raise ValueError(f"radius: expected a positive number, got {radius}")
    center, up = _vec3(center), _normalized(_vec3(up), "up")
    # An orthonormal basis (a, b) of the plane orthogonal to up.
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = _normalized(helper - up * (helper @ up), "orbit basis")
    b = np.cross(up, a)
    full = abs(arc_deg - 360.0) < 1e-9
    steps = n_views if full else max(n_views - 1, 1)
    cams = []
    elev = math.radians(elevation_deg)
    for k in range(n_views):
        az = math.radians(start_azimuth_deg + arc_deg * k / steps)
        direction = math.cos(elev) * (math.cos(az) * a + math.sin(az) * b) + math.sin(elev) * up
        eye = center + radius * direction
        cams.append(Camera.looking_at(eye, center, width, height, fov_x_deg, up))
    return cams


def fit_orbit_radius(points, center, fov_x_deg: float, width: int, height: int,
                     coverage: float = 0.9, margin: float = 1.15) -> float:
    """An orbit radius at which a sphere holding `coverage` of `points` fills the view."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    d = np.linalg.norm(p - _vec3(center), axis=1)
    extent = float(np.quantile(d, coverage)) if len(d) else 1.0
    extent = max(extent, 1e-6)
    tan_half = min(math.tan(math.radians(fov_x_deg) / 2.0),
                   math.tan(math.radians(fov_x_deg) / 2.0) * height / width)
    return margin * extent / math.sin(math.atan(tan_half))


def focus_point(origins, directions) -> np.ndarray:
    """The point closest (least squares) to a set of rays: what a ring of cameras looks at."""
    o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    A = np.zeros((3, 3))
    rhs = np.zeros(3)
    for oi, di in zip(o, d):
        M = np.eye(3) - np.outer(di, di)
        A += M
        rhs += M @ oi
    if np.linalg.cond(A) > 1e8:   # parallel rays: no focus, fall back to their mean origin
        return o.mean(axis=0)
    return np.linalg.solve(A, rhs)


# --------------------------------------------------------------------------------------------
# Differentiable poses: what pose refinement and tracking optimize (the rasterizer's camera
# gradients reach these tensors; doc/camera_gradients.md)
# --------------------------------------------------------------------------------------------

def _check_pose_tensor(what: str, t, shape) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point tensor, got "
                        f"{getattr(t, 'dtype', type(t).__name__)}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{what}: expected shape {shape}, got {tuple(t.shape)}")


def _skew(v: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    return torch.stack([torch.stack([zero, -v[2], v[1]]),
                        torch.stack([v[2], zero, -v[0]]),
                        torch.stack([-v[1], v[0], zero])])


@full_precision
def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """4x4 rigid transform exp(xi) of xi = (rho, omega) (6,), differentiable everywhere: a pose
    correction applied as `se3_exp(xi) @ world_to_camera` (in camera coordinates, as MonoGS's
    update), starting at xi = 0.

    R = I + A K + B K^2 and t = (I + B K + C K^2) rho, with K = skew(omega), theta = |omega|,
    A = sin(theta)/theta, B = (1 - cos(theta))/theta^2, C = (theta - sin(theta))/theta^3; near
    theta = 0 their Taylor series (at xi = 0, where the optimization starts, the closed forms
    are 0/0).
    """
    _check_pose_tensor("se3_exp: xi", xi, (6,))
    rho, omega = xi[:3], xi[3:]
    theta2 = (omega * omega).sum()
    small = theta2 < 1e-6
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta2), theta2))
    A = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    B = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta * theta))
    C = torch.where(small, 1.0 / 6 - theta2 / 120, (theta - torch.sin(theta)) / theta ** 3)
    K = _skew(omega)
    K2 = K @ K
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = eye + A * K + B * K2
    t = (eye + B * K + C * K2) @ rho
    bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=xi.dtype, device=xi.device)
    return torch.cat([torch.cat([R, t[:, None]], dim=1), bottom], dim=0)


@full_precision
def camera_centre(w2c):
    """(3,) the camera's centre in world space, -R^T t, of a world-to-camera matrix (4x4, or
    its top 3 rows; a tensor, differentiable in it, or a NumPy array): the rasterizer's
    campos."""
    return -w2c[:3, :3].T @ w2c[:3, 3]


@full_precision
def camera_matrices(w2c: torch.Tensor, camera: Camera):
    """(viewmatrix, projmatrix, campos) of `camera`'s intrinsics at the pose w2c (a 4x4
    world-to-camera tensor) in the rasterizer's layout, differentiable in w2c."""
    _check_pose_tensor("camera_matrices: w2c", w2c, (4, 4))
    proj_t = torch.as_tensor(perspective_matrix(camera.tanfovx, camera.tanfovy).T,
                             dtype=w2c.dtype, device=w2c.device)
    viewmatrix = w2c.T
    projmatrix = viewmatrix @ proj_t
    return viewmatrix, projmatrix, camera_centre(w2c)


@full_precision
def pose_settings(w2c: torch.Tensor, camera: Camera, sh_degree: int = 0, bg=(0.0, 0.0, 0.0),
                  focal_scale: Optional[torch.Tensor] = None):
    """`GaussianRasterizationSettings` of `camera` at the pose w2c (a 4x4 tensor), its matrices
    differentiable in w2c; with focal_scale (a 0-dim tensor), the camera's focal lengths times
    it (principal point at the centre), differentiable in it too."""
    from . import GaussianRasterizationSettings
    viewmatrix, projmatrix, campos = camera_matrices(w2c, camera)
    tanfovx, tanfovy = camera.tanfovx, camera.tanfovy
    if focal_scale is not None:
        tanfovx, tanfovy, P = projection_from_intrinsics(
            camera.fx * focal_scale, camera.fy * focal_scale, (camera.width - 1) / 2,
            (camera.height - 1) / 2, camera.width, camera.height)
        projmatrix = viewmatrix @ P.to(viewmatrix.dtype).T
    return GaussianRasterizationSettings(
        image_height=camera.height, image_width=camera.width, tanfovx=tanfovx,
        tanfovy=tanfovy, bg=torch.tensor(bg, dtype=w2c.dtype, device=w2c.device),
        scale_modifier=1.0, viewmatrix=viewmatrix, projmatrix=projmatrix, sh_degree=sh_degree,
        campos=campos)


def pose_errors(w2c, w2c_true):
    """(distance between the two camera centres in the scene's units, angle of the relative
    rotation in degrees) of two 4x4 world-to-camera poses (tensors or arrays)."""
    w2c = torch.as_tensor(w2c).detach().double().cpu()
    w2c_true = torch.as_tensor(w2c_true).detach().double().cpu()
    center, center_true = camera_centre(w2c), camera_centre(w2c_true)
    relative = w2c[:3, :3] @ w2c_true[:3, :3].T
    cos = ((torch.trace(relative) - 1) / 2).clamp(-1.0, 1.0)
    return float((center - center_true).norm()), math.degrees(float(torch.arccos(cos)))


def perturbed_pose(w2c: np.ndarray, translation: float, degrees: float,
                   rng: np.random.Generator) -> np.ndarray:
    """w2c with its centre moved by `translation` and its rotation turned by `degrees` (about
    the camera centre), along and about random directions drawn from `rng`."""
    if not (translation >= 0 and degrees >= 0):
        raise ValueError(f"perturbed_pose: expected a distance and an angle >= 0, got "
                         f"{translation} and {degrees}")
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3)
    shift *= translation / np.linalg.norm(shift)
    xi = torch.tensor(np.concatenate([np.zeros(3), axis * math.radians(degrees)]))
    turned = se3_exp(xi).numpy() @ np.asarray(w2c, dtype=np.float64)
    center = camera_centre(turned) + shift
    out = turned.copy()
    out[:3, 3] = -turned[:3, :3] @ center
    return out


def choose_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when both PyTorch and this package's build have it, else CPU."""
    from . import has_cuda_backend
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and has_cuda_backend()
                            else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: this PyTorch has no usable CUDA device")
        if not has_cuda_backend():
            raise RuntimeError("--device cuda: diff_gaussian_rasterization_depth was built "
                               "without its CUDA kernels; rebuild with nvcc and a CUDA PyTorch "
                               "(pip install --no-build-isolation --force-reinstall .)")
    elif dev.type != "cpu":
        raise ValueError(f"device: expected auto, cpu or cuda, got {name}")
    return dev


def training_cameras_from_json(entries: Sequence[dict]) -> List[Camera]:
    """Cameras from the `cameras.json` that the official 3DGS training writes next to its model.

    Each entry holds `position` (camera centre), `rotation` (3x3 camera-to-world rotation, rows
    as stored), `width`, `height`, `fx`, `fy`.
    """
    cams = []
    for i, e in enumerate(entries):
        try:
            c2w_rot = np.asarray(e["rotation"], dtype=np.float64).reshape(3, 3)
            pos = _vec3(e["position"])
            w, h = int(e["width"]), int(e["height"])
            fx, fy = float(e["fx"]), float(e["fy"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"cameras.json entry {i}: expected position, rotation, width, "
                             f"height, fx, fy ({err})") from None
        w2c = np.eye(4)
        w2c[:3, :3] = c2w_rot.T
        w2c[:3, 3] = -c2w_rot.T @ pos
        cams.append(Camera(w2c, w, h, fx, fy))
    return cams


def estimate_up(cameras: Sequence[Camera]) -> np.ndarray:
    """World up of a set of photographs taken without camera roll.

    Without roll every camera's right axis is horizontal, so up is the direction most
    orthogonal to all of them (the mean of the cameras' up axes would lean towards whatever the
    cameras look down on). When the right axes are all parallel (a forward-facing capture),
    the mean up axis made orthogonal to them is used instead.
    """
    rights = np.stack([c.rotation[0] for c in cameras])
    mean_up = _normalized(np.stack([-c.rotation[1] for c in cameras]).mean(axis=0),
                          "mean camera up")
    evals, evecs = np.linalg.eigh(rights.T @ rights)
    if evals[1] > 1e-3 * evals[2]:
        up = evecs[:, 0]
    else:
        r = _normalized(rights.mean(axis=0), "mean camera right")
        up = mean_up - (mean_up @ r) * r
    up = _normalized(up, "estimated up")
    return up if up @ mean_up >= 0 else -up


def estimate_up_from_points(points, center=None, coverage: float = 0.9) -> np.ndarray:
    """A guess of world up from a point layout alone: the direction of least spread (the
    normal of the ground most captured scenes stand on), pointing to the side where the
    layout is skewed (things stick up from the ground more than they hang below it).

    Only the `coverage` fraction of points nearest to `center` (default: the median) count,
    so that far background points do not decide.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    c = np.median(p, axis=0) if center is None else _vec3(center)
    d = np.linalg.norm(p - c, axis=1)
    near = p[d <= np.quantile(d, coverage)] if len(p) > 10 else p
    q = near - near.mean(axis=0)
    _, evecs = np.linalg.eigh(q.T @ q)
    axis = evecs[:, 0]
    h = q @ axis
    skew = float(np.mean(h ** 3))
    return axis if skew >= 0 else -axis


def orbit_like(cameras: Sequence[Camera], n_views: int, width: int, height: int,
               fov_x_deg: Optional[float] = None) -> List[Camera]:
    """An orbit through the region a set of (training) cameras covers.

    Centre: the point the cameras look at; up: their mean up direction; radius and elevation:
    their median distance and elevation about that centre.
    """
    origins = np.stack([c.center for c in cameras])
    forwards = np.stack([c.rotation[2] for c in cameras])
    up = estimate_up(cameras)
    center = focus_point(origins, forwards)
    offsets = origins - center
    radius = float(np.median(np.linalg.norm(offsets, axis=1)))
    sin_elev = (offsets @ up) / np.maximum(np.linalg.norm(offsets, axis=1), 1e-12)
    elevation = math.degrees(math.asin(float(np.clip(np.median(sin_elev), -0.99, 0.99))))
    if fov_x_deg is None:
        ref = cameras[0]
        fov_x_deg = math.degrees(2.0 * math.atan(ref.tanfovx))
    # Start the orbit where the first training camera is, so view 0 looks familiar.
    helper = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    a = _normalized(helper - up * (helper @ up), "orbit basis")
    b = np.cross(up, a)
    start = math.degrees(math.atan2(offsets[0] @ b, offsets[0] @ a))
    return orbit_cameras(center, radius, n_views, width, height, elevation, fov_x_deg, up,
                         start_azimuth_deg=start)
