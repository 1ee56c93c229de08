"""Seeded random scenes for the tests: a pinhole camera looking at a cloud of Gaussians.

`make_scene(seed, ...)` returns a `Scene`: the rasterizer's keyword inputs and a
`GaussianRasterizationSettings`, built by the conventions of SPEC 4 (viewmatrix = W2C.T,
projmatrix = W2C.T @ P.T with an OpenGL-style perspective P). The Gaussians are drawn in camera
space, so their place on screen is controlled whatever the image size: most inside the view, and
(with `outliers=True`) some behind the camera, some just in front of the near plane, some on the
image border and some far outside it. Their screen size is drawn in pixels, so a 1x1 image and a
64x40 image both get Gaussians of a few pixels.

`smooth=True` makes scenes where the rasterizer is a smooth function of its inputs, for
`torch.autograd.gradcheck` (see `make_scene`).

`config_scene(family, configs, name, seed)` draws scene `seed` of a named configuration.

`ambiguous(scene)` finds the pixels and Gaussians whose result two correct implementations may
legitimately disagree on in float32, because a value lies within rounding of one of the SPEC's
thresholds (alpha = 1/255, T = 1e-4, the integer radius, the tile rectangle, the near plane).
The backend comparisons leave those out, so that they test the arithmetic, not luck;
`ambiguous_checked(scene)` also asserts that those are few (`check_ambiguity_rare`).
"""
import math
import zlib
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from diff_gaussian_rasterization_depth import GaussianRasterizationSettings
from diff_gaussian_rasterization_depth import _backend, reference
from diff_gaussian_rasterization_depth._validation import check_gaussians
from diff_gaussian_rasterization_depth.cameras import orthographic_matrix

ZNEAR = 0.01
ZFAR = 100.0

INPUT_NAMES = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales",
               "rotations", "cov3D_precomp", "dc")
# Inputs that take a gradient (means2D through the screen-space carrier convention).
GRAD_NAMES = ("means3D", "means2D", "opacities", "shs", "colors_precomp", "scales",
              "rotations", "cov3D_precomp", "dc")


@dataclass
class Scene:
    inputs: Dict[str, Optional[torch.Tensor]]
    settings: GaussianRasterizationSettings
    options: Dict = field(default_factory=dict)

    @property
    def P(self) -> int:
        return self.inputs["means3D"].shape[0]

    def with_grad(self, names=GRAD_NAMES) -> Dict[str, Optional[torch.Tensor]]:
        """Fresh leaf copies of the inputs, those in `names` requiring grad."""
        out = {}
        for k, v in self.inputs.items():
            if v is None:
                out[k] = None
            else:
                out[k] = v.detach().clone().requires_grad_(k in names)
        return out


# ----------------------------------------------------------------------------------------------
# Camera
# ----------------------------------------------------------------------------------------------

def perspective_matrix(tanfovx: float, tanfovy: float, znear=ZNEAR, zfar=ZFAR) -> torch.Tensor:
    """OpenGL-style projection acting on column vectors, z forward (maps z to [0, 1] * w)."""
    top = tanfovy * znear
    right = tanfovx * znear
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[0, 0] = znear / right
    m[1, 1] = znear / top
    m[3, 2] = 1.0
    m[2, 2] = zfar / (zfar - znear)
    m[2, 3] = -(zfar * znear) / (zfar - znear)
    return m


def look_at_w2c(campos: torch.Tensor, target: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
    """4x4 world-to-camera matrix (OpenCV: x right, y down, z forward) acting on columns."""
    z = target - campos
    z = z / z.norm()
    x = torch.linalg.cross(z, hint)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot_c2w = torch.stack([x, y, z], dim=1)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = rot_c2w.T
    w2c[:3, 3] = -rot_c2w.T @ campos
    return w2c


def _noncontiguous(m: torch.Tensor) -> torch.Tensor:
    """The same (1,4,4) values through a transposed view: not contiguous."""
    out = m.T.contiguous().T.unsqueeze(0)
    assert not out.is_contiguous()
    return out


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------

def _uniform(gen, shape, lo, hi):
    return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _log_uniform(gen, shape, lo, hi):
    return torch.exp(_uniform(gen, shape, math.log(lo), math.log(hi)))


def random_quaternions(gen, n, normalize=True):
    q = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    if normalize:
        q = q / q.norm(dim=1, keepdim=True)
    else:
        q = q * _uniform(gen, (n, 1), 0.5, 1.5) / q.norm(dim=1, keepdim=True)
    return q


def rotation_matrices(q: torch.Tensor) -> torch.Tensor:
    """Rotation polynomial of quaternions (w,x,y,z), float64; independent of the reference."""
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(-1, 3, 3)


def make_scene(seed: int, P: int = 48, height: int = 29, width: int = 37,
               sh_degree: Optional[int] = 0, precomp_colors: bool = False,
               precomp_cov: bool = False, scale_modifier: float = 1.0,
               antialiasing: bool = False, dc: bool = False, outliers: bool = True,
               dtype: torch.dtype = torch.float32, noncontiguous: bool = False,
               smooth: bool = False, normalize_rotations: bool = True,
               all_culled: bool = False, means2d_cols: int = 3,
               kernel_size: float = 0.3) -> Scene:
    """A random scene, reproducible from `seed` and the options.

    sh_degree: active SH degree of the settings; with precomp_colors the Gaussians carry
      colours instead of SH (the degree is then only passed along, as 3DGS does).
    precomp_cov: cov3D_precomp instead of scales and rotations.
    dc: SH split as `dc` (P,1,3) plus the rest (P,M-1,3), as the 2024 upstream does.
    outliers: also Gaussians behind the camera, near the near plane, on the border, far out.
    all_culled: every Gaussian behind the camera.
    smooth: a scene where the function is smooth, for gradcheck in float64. Gaussians are
      large (a third of the image and more), all inside the view and in front, with
      opacities in 0.05..0.34. Why these numbers: with o < 0.35 the clamp at 0.99 never acts,
      and every pixel outside a Gaussian's 3-sigma radius (hence outside its tile rectangle)
      has alpha <= 0.35 exp(-4.5) < 1/255, so the integer radius and the tile rectangle, which
      jump, never change a blended value; and a few such Gaussians cannot bring T near 1e-4.
      What remains is alpha crossing 1/255 inside the rectangle, a set of measure zero that
      `smooth_margin` checks (the caller draws another seed when it fails); large Gaussians
      keep many pixels well above 1/255 so the gradients are not tiny.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    # Camera: field of view, pose looking at the origin from a distance of 4..6.
    tanfovx = float(_uniform(gen, (), 0.3, 0.8))
    tanfovy = tanfovx * height / width * float(_uniform(gen, (), 0.9, 1.1))
    focal_x = width / (2 * tanfovx)
    focal_y = height / (2 * tanfovy)
    direction = torch.randn(3, generator=gen, dtype=f64)
    campos = direction / direction.norm() * _uniform(gen, (), 4.0, 6.0)
    target = 0.3 * torch.randn(3, generator=gen, dtype=f64)
    hint = torch.randn(3, generator=gen, dtype=f64)
    w2c = look_at_w2c(campos, target, hint)
    c2w = torch.linalg.inv(w2c)
    viewmatrix = w2c.T
    projmatrix = w2c.T @ perspective_matrix(tanfovx, tanfovy).T

    # Gaussian centres in camera space: u, v in units of the half field of view.
    if smooth:
        z = _uniform(gen, P, 2.5, 6.0)
        u = _uniform(gen, P, -0.6, 0.6)
        v = _uniform(gen, P, -0.6, 0.6)
    else:
        z = _uniform(gen, P, 1.5, 8.0)
        u = _uniform(gen, P, -1.1, 1.1)
        v = _uniform(gen, P, -1.1, 1.1)
    if outliers and not smooth and P > 0:
        kind = torch.randint(0, 12, (P,), generator=gen)
        behind, near, border, far = kind == 0, kind == 1, kind == 2, kind == 3
        z = torch.where(behind, _uniform(gen, P, -3.0, 0.19), z)
        z = torch.where(near, _uniform(gen, P, 0.21, 0.6), z)
        sign = torch.where(torch.rand(P, generator=gen) < 0.5, -1.0, 1.0).to(f64)
        u = torch.where(border, sign * _uniform(gen, P, 0.95, 1.05), u)
        u = torch.where(far, sign * _log_uniform(gen, P, 2.0, 30.0), u)
    if all_culled:
        z = _uniform(gen, P, -3.0, 0.19)
    cam = torch.stack([u * z * tanfovx, v * z * tanfovy, z], dim=1)
    means3D = cam @ c2w[:3, :3].T + c2w[:3, 3]

    # Size: standard deviations of 0.4..6 pixels (smooth: a third of the image and more).
    focal = min(focal_x, focal_y)
    if smooth:
        sigma_px = _uniform(gen, (P, 3), 0.3, 0.6) * max(height, width)
        opacities = _uniform(gen, (P, 1), 0.05, 0.34)
    else:
        sigma_px = _log_uniform(gen, (P, 3), 0.4, 6.0)
        opacities = _uniform(gen, (P, 1), 0.05, 1.0)
        # A tenth nearly opaque and wide, so that alpha = o G is clamped at 0.99 on a few
        # pixels around their centres (o G > 0.99 needs G > 0.99 / o).
        saturated = torch.rand(P, generator=gen) < 0.1
        n = int(saturated.sum())
        opacities[saturated] = _uniform(gen, (n, 1), 0.997, 1.0)
        sigma_px[saturated] = _uniform(gen, (n, 3), 4.0, 10.0)
    scales = sigma_px * z.abs().clamp_min(0.5)[:, None] / focal / scale_modifier
    rotations = random_quaternions(gen, P, normalize=normalize_rotations)

    # Colour: SH (M = 16 as 3DGS allocates, or exactly (degree+1)^2) or precomputed.
    degree = 0 if sh_degree is None else sh_degree
    shs = colors_precomp = None
    if precomp_colors:
        colors_precomp = _uniform(gen, (P, 3), 0.0, 1.0)
    else:
        M = 16 if torch.rand((), generator=gen) < 0.5 else (degree + 1) ** 2
        shs = torch.randn(P, M, 3, generator=gen, dtype=f64) * 0.3
        if smooth:
            shs[:, 0] = _uniform(gen, (P, 3), -0.5, 1.5)
            shs[:, 1:] *= 0.3
        else:
            shs[:, 0] = torch.randn(P, 3, generator=gen, dtype=f64)

    cov3D = None
    if precomp_cov:
        rot = rotation_matrices(random_quaternions(gen, P))
        s = scales * scale_modifier
        sigma = rot @ torch.diag_embed(s * s) @ rot.transpose(1, 2)
        cov3D = sigma[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
        scales = rotations = None

    means2D = torch.randn(P, means2d_cols, generator=gen, dtype=f64)  # values are ignored
    bg = torch.rand(3, generator=gen, dtype=f64)

    def cast(t):
        return None if t is None else t.to(dtype).contiguous()

    dc_t = None
    if dc and shs is not None:
        dc_t, shs = shs[:, :1], shs[:, 1:]

    view_t, proj_t = cast(viewmatrix), cast(projmatrix)
    if noncontiguous:
        view_t, proj_t = _noncontiguous(view_t), _noncontiguous(proj_t)
    settings = GaussianRasterizationSettings(
        image_height=height, image_width=width, tanfovx=tanfovx, tanfovy=tanfovy,
        bg=cast(bg), scale_modifier=scale_modifier, viewmatrix=view_t, projmatrix=proj_t,
        sh_degree=degree, campos=cast(campos), prefiltered=False, debug=False,
        antialiasing=antialiasing, kernel_size=kernel_size)
    inputs = dict(means3D=cast(means3D), means2D=cast(means2D), opacities=cast(opacities),
                  shs=cast(shs), colors_precomp=cast(colors_precomp), scales=cast(scales),
                  rotations=cast(rotations), cov3D_precomp=cast(cov3D), dc=cast(dc_t))
    options = dict(seed=seed, P=P, height=height, width=width, sh_degree=sh_degree,
                   precomp_colors=precomp_colors, precomp_cov=precomp_cov,
                   scale_modifier=scale_modifier, antialiasing=antialiasing, dc=dc,
                   outliers=outliers, dtype=dtype, noncontiguous=noncontiguous, smooth=smooth,
                   kernel_size=kernel_size)
    return Scene(inputs=inputs, settings=settings, options=options)


# ----------------------------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------------------------

# Configurations of the smooth scenes that gradcheck runs on (reference and CPU backend).
GRADCHECK_CONFIGS = {
    "sh0": dict(sh_degree=0),
    "sh1-dc": dict(sh_degree=1, dc=True),
    "sh2-aa": dict(sh_degree=2, antialiasing=True),
    "sh3-mod": dict(sh_degree=3, scale_modifier=1.3),
    "colors-cov": dict(precomp_colors=True, precomp_cov=True),
    "colors-aa-unnormalized": dict(precomp_colors=True, antialiasing=True,
                                   normalize_rotations=False),
    "sh1-mip-kernel0.1": dict(sh_degree=1, antialiasing=True, kernel_size=0.1),
}


def gradcheck_inputs(scene):
    """Names of the differentiable inputs present (means2D excluded: a convention, SPEC 6)."""
    return [n for n in ("means3D", "opacities", "shs", "colors_precomp", "scales", "rotations",
                        "cov3D_precomp", "dc") if scene.inputs[n] is not None]


def make_gradcheck_fn(scene, rasterize):
    """(fn, leaves) for gradcheck: fn(*leaves) = (color, depth, weight) of rasterize(kwargs)."""
    names = gradcheck_inputs(scene)
    fixed = {k: v for k, v in scene.inputs.items() if k not in names}

    def fn(*tensors):
        kwargs = dict(fixed)
        kwargs.update(zip(names, tensors))
        color, radii, depth, weight = rasterize(kwargs)
        return color, depth, weight

    leaves = tuple(scene.inputs[n].detach().clone().requires_grad_() for n in names)
    return fn, leaves


def make_smooth_scene(seed: int, **kwargs) -> Scene:
    """The first scene from seed, seed + 1000, ... that passes `smooth_margin`."""
    kwargs.setdefault("P", 4)
    kwargs.setdefault("height", 12)
    kwargs.setdefault("width", 10)
    kwargs.setdefault("dtype", torch.float64)
    for attempt in range(50):
        scene = make_scene(seed + 1000 * attempt, smooth=True, **kwargs)
        if smooth_margin(scene):
            return scene
    raise RuntimeError(f"no smooth scene found from seed {seed}")


# ----------------------------------------------------------------------------------------------
# Thresholds: smoothness and float32 ambiguity
# ----------------------------------------------------------------------------------------------

def reference_internals(scene: Scene):
    """Run the reference forward without autograd; returns (outputs, everyone, blend, idx).

    `everyone`: the preprocess of all P Gaussians; `blend`: per-pixel tensors over the visible
    Gaussians, in blending order (`blend["order"]` maps back to positions in `idx`).
    """
    i = scene.inputs
    with torch.no_grad():
        (means3D, opacities, shs, colors_precomp, scales, rotations, cov3D,
         settings) = check_gaussians(*(i.get(k) for k in INPUT_NAMES[:8]), i.get("dc"),
                                     scene.settings)
        out, everyone, _, blend, idx = reference._forward(
            means3D, opacities, shs, colors_precomp, scales, rotations, cov3D, settings)
    return out, everyone, blend, idx, settings


def smooth_margin(scene: Scene, rel: float = 1e-3) -> bool:
    """True when no value the forward thresholds lies within `rel` (relative) of a threshold."""
    out, everyone, blend, idx, settings = reference_internals(scene)
    if not bool(everyone["visible"].all()):
        return False
    considered = blend["considered"]
    alpha = blend["raw_alpha"][considered]
    if (alpha - reference.ALPHA_MIN).abs().min() <= rel * reference.ALPHA_MIN:
        return False
    if alpha.max() >= reference.ALPHA_MAX * (1 - rel):
        return False
    if blend["test_T"][considered].min() <= reference.TRANSMITTANCE_MIN * (1 + rel):
        return False
    # Frustum clamp of the Jacobian, and the SH colour clamp at 0.
    i = scene.inputs
    p = i["means3D"].to(torch.float64)
    view = settings.viewmatrix.to(torch.float64).reshape(4, 4)
    t = torch.cat([p, torch.ones_like(p[:, :1])], dim=1) @ view
    if ((t[:, 0] / t[:, 2]).abs() >= reference.FRUSTUM_CLAMP * settings.tanfovx * (1 - rel)).any():
        return False
    if ((t[:, 1] / t[:, 2]).abs() >= reference.FRUSTUM_CLAMP * settings.tanfovy * (1 - rel)).any():
        return False
    shs = i["shs"] if i["dc"] is None else torch.cat([i["dc"], i["shs"]], dim=1)
    if shs is not None:
        raw = reference._sh_to_color(shs, settings.sh_degree, i["means3D"], settings.campos)
        if raw.min() <= rel:
            return False
    return True


def ambiguous(scene: Scene, rel: float = 1e-4, internals=None):
    """(pixels (H,W) bool, gaussians (P,) bool) within rounding of a threshold.

    A pixel is ambiguous when some Gaussian's alpha there is within `rel` of 1/255, when the
    transmittance test of some blendable Gaussian is within `rel` of 1e-4, or when a Gaussian
    whose culling or tile rectangle is on a knife's edge has alpha >= 1/255 there. A Gaussian is
    ambiguous when its integer radius or its culling is on a knife's edge.
    """
    if internals is None:
        internals = reference_internals(scene)
    out, everyone, blend, idx, settings = internals
    H, W = settings.image_height, settings.image_width
    P = scene.P
    pixels = torch.zeros(H, W, dtype=torch.bool)
    gaussians = torch.zeros(P, dtype=torch.bool)
    if P == 0:
        return pixels, gaussians

    # Alpha and transmittance tests of the Gaussians the reference blends.
    considered = blend["considered"]
    near_alpha = considered & ((blend["raw_alpha"] - reference.ALPHA_MIN).abs()
                               <= rel * reference.ALPHA_MIN)
    near_T = blend["blendable"] & ((blend["test_T"] - reference.TRANSMITTANCE_MIN).abs()
                                   <= rel * reference.TRANSMITTANCE_MIN)
    pixels |= (near_alpha | near_T).any(dim=0)

    # Radius, tile rectangle and near plane, over every projectable Gaussian.
    proj = everyone["projectable"]
    g = {k: v.detach().to(torch.float64) for k, v in everyone.items()}
    extent = reference.SIGMA_EXTENT * torch.sqrt(g["lam"])
    r_lo = torch.ceil(extent * (1 - rel))
    r_hi = torch.ceil(extent * (1 + rel))
    gaussians |= proj & (r_lo != r_hi)
    slack = rel * (g["mean2d"].abs() + 16.0)
    tiles = torch.tensor([(W + 15) // 16, (H + 15) // 16], dtype=torch.float64)

    def rect(radius, sign):
        lo = torch.floor((g["mean2d"] - radius[:, None] + sign * slack) / 16).clamp(min=0)
        hi = torch.floor((g["mean2d"] + radius[:, None] + 15 - sign * slack) / 16).clamp(min=0)
        return torch.minimum(lo, tiles), torch.minimum(hi, tiles)

    inner = rect(r_lo, +1.0)
    outer = rect(r_hi, -1.0)
    inner_empty = (inner[1] - inner[0]).prod(dim=1) == 0
    outer_empty = (outer[1] - outer[0]).prod(dim=1) == 0
    computable = (torch.isfinite(g["mean2d"]).all(dim=1) & torch.isfinite(g["conic"]).all(dim=1)
                  & torch.isfinite(g["opacity"]) & torch.isfinite(g["lam"]))
    near_plane = computable & ((g["depth"] - reference.NEAR_PLANE).abs() <= rel)
    edge_culled = (proj | near_plane) & (inner_empty != outer_empty)
    gaussians |= edge_culled | near_plane

    tile_x = torch.arange(W) // 16
    tile_y = torch.arange(H) // 16

    def covers(r):
        x = (r[0][:, 0, None] <= tile_x) & (tile_x < r[1][:, 0, None])
        y = (r[0][:, 1, None] <= tile_y) & (tile_y < r[1][:, 1, None])
        return y[:, :, None] & x[:, None, :]

    edge_pixels = covers(outer) & ~covers(inner)
    edge_pixels &= proj[:, None, None]
    edge_pixels |= (edge_culled | near_plane)[:, None, None] & covers(outer)
    if edge_pixels.any():
        xs = torch.arange(W, dtype=torch.float64)[None, :]
        ys = torch.arange(H, dtype=torch.float64)[:, None]
        offset = getattr(settings, "subpixel_offset", None)
        if offset is not None:  # each pixel's sample point
            xs, ys = xs + offset[..., 0].double(), ys + offset[..., 1].double()
        dx = g["mean2d"][:, 0, None, None] - xs
        dy = g["mean2d"][:, 1, None, None] - ys
        con = g["conic"]
        power = (-0.5 * (con[:, 0, None, None] * dx * dx + con[:, 2, None, None] * dy * dy)
                 - con[:, 1, None, None] * dx * dy)
        alpha = g["opacity"][:, None, None] * torch.exp(power.clamp(max=0))
        visible_alpha = (power <= 0) & (alpha >= reference.ALPHA_MIN * (1 - rel))
        pixels |= (edge_pixels & visible_alpha).any(dim=0)
    return pixels, gaussians


def orthographic(scene: Scene, extent_depth: Optional[float] = None) -> Scene:
    """The scene seen by an orthographic camera (settings `orthographic=True`) with the same
    view matrix: the view's half-extents those of the perspective frustum at `extent_depth`
    (by default the Gaussians' median view depth), its projmatrix the orthographic projection
    of that box, so that the Gaussians fill the image about as they did."""
    s = scene.settings
    view = s.viewmatrix.detach().reshape(4, 4).to(torch.float64)
    if extent_depth is None:
        means = scene.inputs["means3D"].detach().to(torch.float64)
        z = (torch.cat([means, torch.ones_like(means[:, :1])], 1) @ view)[:, 2]
        extent_depth = float(z.median()) if len(z) else 3.0
    half_width, half_height = s.tanfovx * extent_depth, s.tanfovy * extent_depth
    P = torch.from_numpy(orthographic_matrix(half_width, half_height)).to(view)
    proj = (view @ P.T).to(s.projmatrix.dtype).reshape(s.projmatrix.shape)
    return Scene(scene.inputs, s._replace(orthographic=True, tanfovx=half_width,
                                          tanfovy=half_height, projmatrix=proj))


def fisheye(scene: Scene, half_angle: Optional[float] = None, yaw: float = 0.0,
            shift=(0.0, 0.0), distortion=None) -> Scene:
    """The scene seen by an equidistant fisheye (settings `fisheye=True`) from the same camera
    centre turned by `yaw` radians about its y axis. The image's half-width spans `half_angle`
    radians (by default the angle the pinhole view spanned, atan(tanfovx)): the fisheye's
    focal W / (2 tanfovx) px per radian makes tanfovx that angle, tanfovy in proportion. The
    projmatrix is the pinhole projection of the same focal lengths with the principal point
    moved by `shift` px, from which the fisheye takes its own. `distortion`: the settings'
    fisheye_distortion, OpenCV's (k1, k2, k3, k4)."""
    s = scene.settings
    view = s.viewmatrix.detach().reshape(4, 4).to(torch.float64)
    if half_angle is None:
        half_angle = math.atan(s.tanfovx)
    tanfovx, tanfovy = half_angle, half_angle * s.tanfovy / s.tanfovx
    c, n = math.cos(yaw), math.sin(yaw)
    turn = torch.tensor([[c, 0, n, 0], [0, 1, 0, 0], [-n, 0, c, 0], [0, 0, 0, 1]],
                        dtype=torch.float64)
    view = view @ turn.T   # [p, 1] @ view: view space, then turned
    P = torch.zeros(4, 4, dtype=torch.float64)
    P[0, 0], P[1, 1] = 1.0 / tanfovx, 1.0 / tanfovy
    P[0, 2] = 2.0 * shift[0] / s.image_width    # ndc.x = P00 x / z + P02: the shift in NDC
    P[1, 2] = 2.0 * shift[1] / s.image_height
    P[2, 2] = ZFAR / (ZFAR - ZNEAR)
    P[2, 3] = -ZFAR * ZNEAR / (ZFAR - ZNEAR)
    P[3, 2] = 1.0
    dtype = s.projmatrix.dtype
    return Scene(scene.inputs, s._replace(
        fisheye=True, fisheye_distortion=distortion, tanfovx=tanfovx, tanfovy=tanfovy,
        viewmatrix=view.to(dtype).reshape(s.viewmatrix.shape).requires_grad_(
            s.viewmatrix.requires_grad),
        projmatrix=(view @ P.T).to(dtype).reshape(s.projmatrix.shape).requires_grad_(
            s.projmatrix.requires_grad)))


def distorted_pinhole(scene: Scene, distortion, shift=(0.0, 0.0)) -> Scene:
    """The scene seen by its own pinhole camera with OpenCV's `distortion` (settings
    `pinhole_distortion`: (k1, k2, p1, p2) or (k1, k2, p1, p2, k3)), the principal point moved
    by `shift` px (projmatrix's, which the distorted pinhole takes as its own)."""
    s = scene.settings
    view = s.viewmatrix.detach().reshape(4, 4).to(torch.float64)
    proj = torch.linalg.solve(view, s.projmatrix.detach().reshape(4, 4).to(torch.float64))
    proj[2, 0] += 2.0 * shift[0] / s.image_width   # ndc.x += P[2, 0] z / z: the shift in NDC
    proj[2, 1] += 2.0 * shift[1] / s.image_height
    dtype = s.projmatrix.dtype
    return Scene(scene.inputs, s._replace(
        pinhole_distortion=distortion,
        projmatrix=(view @ proj).to(dtype).reshape(s.projmatrix.shape).requires_grad_(
            s.projmatrix.requires_grad)))


def config_scene(family: str, configs: dict, name: str, seed: int) -> Scene:
    """Scene `seed` of configuration `name` (make_scene's keywords in configs[name]): seeds
    differ between test families and configurations, and stay put when configurations are
    added."""
    return make_scene(zlib.crc32((family + name).encode()) % 100000 * 100 + seed, **configs[name])


def check_ambiguity_rare(pixels, gaussians, scene: Scene) -> None:
    """Left-out pixels and radii stay few (a radius on a knife's edge can leave out a whole
    row of 16 pixels of a tile), so that the comparisons are not vacuous."""
    assert pixels.sum() <= max(2, 0.1 * pixels.numel()), f"{int(pixels.sum())} ambiguous pixels"
    assert gaussians.sum() <= max(2, 0.2 * scene.P), f"{int(gaussians.sum())} ambiguous radii"


def ambiguous_checked(scene: Scene, internals=None):
    """ambiguous(scene), asserting that they are few."""
    pixels, gaussians = ambiguous(scene, internals=internals)
    check_ambiguity_rare(pixels, gaussians, scene)
    return pixels, gaussians


def backend_call(scene: Scene):
    """The compiled backend's (config, gaussians) for a scene, as the package builds them (on
    the device of the scene's tensors)."""
    i = scene.inputs
    means3D, opacities, sh, colors, scales, rotations, cov, checked = check_gaussians(
        i["means3D"], i["means2D"], i["opacities"], i.get("shs"), i.get("colors_precomp"),
        i["scales"], i["rotations"], i.get("cov3D_precomp"), i.get("dc"), scene.settings)
    return (_backend.make_config(checked),
            _backend.make_gaussians(means3D, opacities, sh, colors, scales, rotations, cov))
