"""Mini-Splatting's API (`diff_gaussian_rasterization_depth.mini_splatting`): the forward's three
statistics against the reference's blended set, the colour and its gradients as the package's,
and the depth call's maps (the dominant Gaussian's densest point on each ray, its depth, the
final transmittance, the 3-sigma discriminant) against computations of their own."""
import pytest
import torch

import scenes
from diff_gaussian_rasterization_depth import GaussianRasterizer as PackageRasterizer
from diff_gaussian_rasterization_depth import mini_splatting
from diff_gaussian_rasterization_depth.reference import _covariance_3d, rasterize_reference
from robust_helpers import DEVICES, settings_on

F32, F64 = torch.float32, torch.float64


def fork_inputs(scene, with_grad=False):
    inputs = scene.with_grad() if with_grad else dict(scene.inputs)
    assert inputs.pop("dc", None) is None
    return inputs


@pytest.mark.parametrize("seed", range(2))
def test_statistics_against_reference(seed):
    """float64: the weight sums, the blended pixels (int32) and the dominated pixels (float) of
    the reference's blend; no gradient on them; the colour, the radii and every gradient of a
    colour loss the package's, bit for bit."""
    scene = scenes.make_scene(9700 + seed, P=150, height=34, width=46, sh_degree=1, dtype=F64)
    ours = fork_inputs(scene, with_grad=True)
    color, radii, weights, count, max_count = mini_splatting.GaussianRasterizer(
        scene.settings)(**ours)
    assert (weights.dtype, count.dtype, max_count.dtype) == (F64, torch.int32, F64)
    assert not (weights.requires_grad or count.requires_grad or max_count.requires_grad)
    with torch.no_grad():
        want = rasterize_reference(**fork_inputs(scene), raster_settings=scene.settings,
                                   contributions=True)[-1]
    torch.testing.assert_close(weights, want[:, 0], rtol=1e-10, atol=1e-12)
    assert torch.equal(count, want[:, 2].to(torch.int32))
    assert torch.equal(max_count, want[:, 3])
    assert count.max() > 20 and max_count.sum() > 300 and (count == 0).any()
    assert (max_count <= count).all() and (max_count < count).any()
    package = fork_inputs(scene, with_grad=True)
    plain = PackageRasterizer(scene.settings)(**package)
    assert torch.equal(color, plain[0]) and torch.equal(radii, plain[1])
    upstream = torch.randn(color.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    (color * upstream).sum().backward()
    (plain[0] * upstream).sum().backward()
    for name, t in ours.items():
        if t is not None and t.requires_grad:
            assert torch.equal(t.grad, package[name].grad), name


@pytest.mark.parametrize("device", DEVICES)
def test_statistics_are_the_contribution_columns(device):
    """On each backend (float32): the three statistics are columns 0, 2 and 3 of the package's
    contribution statistics from the same call, the functional form the module's."""
    scene = scenes.make_scene(9750, P=200, height=40, width=52, sh_degree=0)
    settings = settings_on(scene.settings, device)
    inputs = {k: None if v is None else v.to(device) for k, v in fork_inputs(scene).items()}
    out = mini_splatting.GaussianRasterizer(settings)(**inputs)
    *_, contribution = PackageRasterizer(settings)(**inputs, contributions=True)
    assert torch.equal(out[2], contribution[:, 0])
    assert torch.equal(out[3], contribution[:, 2].to(torch.int32))
    assert torch.equal(out[4], contribution[:, 3]) and out[4].sum() > 500
    functional = mini_splatting.rasterize_gaussians(
        inputs["means3D"], inputs["means2D"], inputs["shs"], None, inputs["opacities"],
        inputs["scales"], inputs["rotations"], None, settings)
    for got, want in zip(functional, out):
        assert torch.equal(got, want)


@pytest.mark.parametrize("seed", range(2))
def test_render_depth_maps(seed):
    """float64, the depth call: gidx the reference's dominant Gaussian (-1 where nothing is
    blended); out_pts on each pixel's ray where that Gaussian's density along the ray peaks
    (the derivative of its Mahalanobis distance along the ray is 0 there); rendered_depth
    their view z; accum_alpha the final transmittance, 1 - weight; discriminants b^2 - 4ac of
    the ray o + t d (unit d) against the 3-sigma ellipsoid, written out; all 0 (gidx -1) where
    nothing is blended; no gradient; cov3D_precomp gives the same maps."""
    scene = scenes.make_scene(9800 + seed, P=25, height=28, width=38, sh_degree=0, dtype=F64,
                              outliers=False)
    s = scene.settings
    inputs = fork_inputs(scene, with_grad=True)
    res = mini_splatting.GaussianRasterizer(s).render_depth(**inputs)
    assert set(res) == {"render", "out_pts", "rendered_depth", "discriminants", "gidx",
                        "accum_alpha"}
    assert all(not v.requires_grad for v in res.values())
    with torch.no_grad():
        ref = rasterize_reference(**fork_inputs(scene), raster_settings=s, dominant=True)
    gidx = res["gidx"][0]
    assert res["gidx"].dtype == torch.int32 and torch.equal(gidx, ref[-1].to(torch.int32))
    empty = gidx < 0
    assert empty.any() and (~empty).sum() > 300
    torch.testing.assert_close(res["accum_alpha"][0], 1 - ref[3], rtol=0, atol=1e-12)
    assert (res["accum_alpha"][0][empty] == 1).all()
    torch.testing.assert_close(res["render"], ref[0], rtol=1e-10, atol=1e-10)
    for name in ("out_pts", "rendered_depth", "discriminants"):
        assert (res[name][:, empty] == 0).all(), name
    # The densest point: on the ray from the camera centre, d^T Sigma^-1 (x - mu) = 0 there.
    view = s.viewmatrix.reshape(4, 4)
    centre = -view[3, :3] @ torch.linalg.inv(view[:3, :3])
    points = res["out_pts"].permute(1, 2, 0)[~empty]
    ids = gidx[~empty].long()
    i = scene.inputs
    cov = _covariance_3d(i["scales"][ids], i["rotations"][ids], None, float(s.scale_modifier))
    direction = points - centre
    direction = direction / direction.norm(dim=1, keepdim=True)
    offset = points - i["means3D"][ids]
    slope = (direction[:, None, :] @ torch.linalg.solve(cov, offset[:, :, None]))[:, 0, 0]
    scale = (direction[:, None, :] @ torch.linalg.solve(cov, direction[:, :, None]))[:, 0, 0]
    assert (slope.abs() < 1e-8 * scale * offset.norm(dim=1).clamp_min(1)).all()
    hom = torch.cat([points, torch.ones_like(points[:, :1])], 1) @ s.projmatrix.reshape(4, 4)
    rows, cols = torch.nonzero(~empty, as_tuple=True)
    torch.testing.assert_close(((hom[:, 0] / hom[:, 3] + 1) * 38 - 1) / 2, cols.double())
    torch.testing.assert_close(((hom[:, 1] / hom[:, 3] + 1) * 28 - 1) / 2, rows.double())
    z = points @ view[:3, 2] + view[3, 2]
    torch.testing.assert_close(res["rendered_depth"][0][~empty], z, rtol=1e-12, atol=1e-12)
    # The discriminant of |o + t d - mu|^2 / 9 = 1 in the Gaussian's precision, written out.
    precision = torch.linalg.inv(cov) / 9
    to_centre = centre - i["means3D"][ids]
    quad = lambda u, v: (u[:, None, :] @ precision @ v[:, :, None])[:, 0, 0]  # noqa: E731
    a, b, c = quad(direction, direction), 2 * quad(direction, to_centre), \
        quad(to_centre, to_centre) - 1
    torch.testing.assert_close(res["discriminants"][0][~empty], b * b - 4 * a * c, rtol=1e-7,
                               atol=1e-9)
    # >= 0 exactly where the ray meets the 3-sigma ellipsoid: the Mahalanobis distance at the
    # densest point within 3.
    inside = res["discriminants"][0][~empty] >= 0
    assert inside.any()
    assert torch.equal(inside, quad(offset, offset) * 9 <= 9)
    full = _covariance_3d(i["scales"], i["rotations"], None, float(s.scale_modifier))
    upper = full[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    precomp = dict(fork_inputs(scene), scales=None, rotations=None, cov3D_precomp=upper)
    again = mini_splatting.GaussianRasterizer(s).render_depth(**precomp)
    for name, value in res.items():
        torch.testing.assert_close(again[name], value, rtol=1e-9, atol=1e-9, msg=name)


def test_the_forks_call_as_its_training_code_writes_it():
    """Settings with the original's 12 fields, keyword calls as Mini-Splatting's render_imp and
    render_depth write them, markVisible, the exported names."""
    scene = scenes.make_scene(9900, P=60, height=24, width=32, sh_degree=1)
    s = scene.settings
    settings = mini_splatting.GaussianRasterizationSettings(
        image_height=s.image_height, image_width=s.image_width, tanfovx=s.tanfovx,
        tanfovy=s.tanfovy, bg=s.bg, scale_modifier=s.scale_modifier, viewmatrix=s.viewmatrix,
        projmatrix=s.projmatrix, sh_degree=s.sh_degree, campos=s.campos, prefiltered=False,
        debug=False)
    rasterizer = mini_splatting.GaussianRasterizer(raster_settings=settings)
    i = fork_inputs(scene)
    rendered_image, radii, accum_weights_ptr, accum_weights_count, accum_max_count = rasterizer(
        means3D=i["means3D"], means2D=i["means2D"], shs=i["shs"], colors_precomp=None,
        opacities=i["opacities"], scales=i["scales"], rotations=i["rotations"],
        cov3D_precomp=None)
    res = rasterizer.render_depth(means3D=i["means3D"], means2D=i["means2D"], shs=i["shs"],
                                  colors_precomp=None, opacities=i["opacities"],
                                  scales=i["scales"], rotations=i["rotations"],
                                  cov3D_precomp=None)
    assert torch.equal(res["render"], rendered_image)
    # Mini-Splatting's sampling: prob = 1 - accum_alpha over the pixels (the weight).
    prob = 1 - res["accum_alpha"]
    assert prob.shape == (1, 24, 32) and (prob >= 0).all() and prob.sum() > 0
    assert torch.equal(rasterizer.markVisible(i["means3D"]),
                       PackageRasterizer(settings).markVisible(i["means3D"]))
    assert set(mini_splatting.__all__) == {"GaussianRasterizationSettings", "GaussianRasterizer",
                                           "rasterize_gaussians", "rasterize_gaussians_depth"}


def test_render_depth_of_flat_gaussians_is_finite():
    """float32 Gaussians with a scale of exactly 0 (what training makes of thin ones, and what
    a solve finds singular): every map finite, the points valid where a Gaussian dominates."""
    scene = scenes.make_scene(9950, P=60, height=30, width=40, sh_degree=0, outliers=False)
    inputs = fork_inputs(scene)
    inputs["scales"] = inputs["scales"].clone()
    inputs["scales"][:, 2] = 0
    res = mini_splatting.GaussianRasterizer(scene.settings).render_depth(**inputs)
    assert all(torch.isfinite(v.float()).all() for v in res.values())
    seen = res["gidx"][0] >= 0
    in_front = res["rendered_depth"][0] > 0
    # Where the ray meets a flat Gaussian's plane behind the camera there is no point (0).
    assert seen.sum() > 500 and in_front[seen].float().mean() > 0.9
    assert (res["out_pts"][:, ~in_front] == 0).all()
