"""examples/surface_regularization.py: the ray caster's normals, the truth the example scores
against, its render with the surface outputs, and a short fit in which the surface terms do what
they are for."""
import importlib.util
import os

import pytest
import torch

from diff_gaussian_rasterization_depth import _backend
from diff_gaussian_rasterization_depth.cameras import Camera

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
                     "surface_regularization.py")
_spec = importlib.util.spec_from_file_location("surface_regularization", _PATH)
sr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sr)
sv = sr.sv

needs_backend = pytest.mark.skipif(_backend._C is None,
                                   reason="the compiled extension is not built")


def test_raycast_normals_are_the_surfaces():
    """Unit normals, the plane's own or (p - c) / r on a sphere, facing the camera; in view
    space a wall seen head-on has normal (0, 0, -1)."""
    scene = sv.default_scene()
    cam = Camera.looking_at((1.5, -4.0, 2.0), sv.SCENE_TARGET, 40, 30, 60.0)
    rc = sv.raycast(scene, cam)
    origin, dirs = cam.world_rays()
    pts = torch.as_tensor(origin) + torch.as_tensor(dirs) * rc["depth"][..., None]
    n = rc["normal"].permute(1, 2, 0)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(30, 40, dtype=torch.float64))
    objects = list(scene.planes) + list(scene.spheres)
    for i, o in enumerate(objects):
        sel = rc["object"] == i
        if isinstance(o, sv.Plane):
            want = torch.tensor(o.normal, dtype=torch.float64).expand(int(sel.sum()), 3)
        else:
            want = (pts[sel] - torch.tensor(o.center, dtype=torch.float64)) / o.radius
        torch.testing.assert_close(n[sel], want, rtol=0, atol=1e-9)
    assert ((n * torch.as_tensor(dirs)).sum(-1) < 0).all()
    wall = sv.AnalyticScene([sv.Plane((0, 3, 0), (0, -1, 0), "wall")], [])
    head_on = Camera.looking_at((0.2, -1.0, 0.7), (0.2, 3.0, 0.7), 12, 9, 60.0)
    view_n = sr.true_view_normals(sv.raycast(wall, head_on)["normal"], head_on)
    torch.testing.assert_close(view_n, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
                               [:, None, None].expand(3, 9, 12), rtol=0, atol=1e-12)


def test_interior_leaves_out_edges_and_the_border():
    objects = torch.zeros(6, 7, dtype=torch.int64)
    objects[:, 4:] = 1
    objects[0, 0] = -1
    got = sr.interior(objects)
    want = torch.zeros(6, 7, dtype=torch.bool)
    want[1:-1, 1:3] = True     # column 3 touches object 1, column 4 object 0
    want[1:-1, 5] = True
    assert torch.equal(got, want)


@needs_backend
def test_short_fit_surface_terms_work():
    """A short fit on small views: the variant with the surface terms ends with normals of its
    depth map closer to its normal map and a lower distortion on its training views, and a
    smaller normal error on the held-out views, than the photometric fit from the same start;
    held to the plane depth instead, the plane depth's normals are the better; held to the
    RaDe-GS depth with its planes' normal map, that depth's normals are better than the
    photometric fit's and than those of the fit held to the expected depth; the photometric
    fit's opacity-field mesh is nearer the true scene than its fused depths' meshes."""
    torch.manual_seed(0)
    cfg = sr.ExperimentConfig(width=48, height=36, gaussians=1200,
                              surface=sr.SurfaceConfig(iterations=150))
    scene = sv.default_scene()
    cams = sv.make_cameras(cfg.width, cfg.height, cfg.n_cameras)
    train = sv.make_views(scene, cams, [1, 5, 10, 14, 19, 23], "cpu", supersample=1)
    test = sv.make_views(scene, cams, [8, 16], "cpu", supersample=1)
    truth = [sv.raycast(scene, cams[i]) for i in (8, 16)]
    init = sv.random_init([v.camera for v in train], cfg.gaussians,
                          torch.Generator().manual_seed(0))
    fits = {name: sr.fit(init, train, cfg.surface, 0, surface)
            for name, surface in (("photometric", None), ("surface", "expected"),
                                  ("plane", "plane"), ("rade", "rade"))}
    terms, scores = {}, {}
    with torch.no_grad():
        for name, model in fits.items():
            g = model.activated()
            for depth in ("expected", "rade"):
                if depth == "rade" and name not in ("photometric", "rade"):
                    continue
                depth = "plane" if name == "plane" else depth
                rs = [sr.surface_terms(sr.render_surface(g, v.camera, rade=depth == "rade"),
                                       g, depth) for v in train]
                key = name if depth != "rade" else name + "-rade"
                terms[key] = {k: sum(float(r[k]) for r in rs) / len(rs) for k in rs[0]}
            scores[name], _ = sr.evaluate(model, test, truth)
    assert terms["surface"]["normal"] < 0.7 * terms["photometric"]["normal"], terms
    assert terms["surface"]["dist"] < terms["photometric"]["dist"], terms
    assert terms["surface"]["flat"] < terms["photometric"]["flat"], terms
    assert scores["surface"]["depth_normal_deg"] < scores["photometric"]["depth_normal_deg"] - 3
    assert scores["surface"]["psnr"] > 12   # the colour still fits
    # Held to the plane depth's normals, the plane depth's normals come out better still.
    assert terms["plane"]["normal"] < 0.7 * terms["photometric"]["normal"], terms
    assert scores["plane"]["plane_normal_deg"] < scores["surface"]["plane_normal_deg"], scores
    # Held to the RaDe-GS depth's normals with the planes' normal map.
    assert terms["rade-rade"]["normal"] < 0.7 * terms["photometric-rade"]["normal"], terms
    assert scores["rade"]["rade_normal_deg"] < scores["photometric"]["rade_normal_deg"] - 3
    assert scores["rade"]["rade_normal_deg"] < scores["surface"]["rade_normal_deg"], scores
    # Their meshes (TSDF of the training views' depths): from the plane depth, the surface
    # terms' is the nearer the true scene.
    points = torch.cat([sr.world_points(rc["depth"], cams[i])[(rc["object"] >= 0).reshape(-1)]
                        for rc, i in zip(truth, (8, 16))])
    chamfer = {(name, depth): sr.chamfer(mesh, scene, points)
               for name in ("photometric", "surface")
               for depth, mesh in sr.fuse_meshes(fits[name], train,
                                                 opacity=name == "photometric").items()}
    assert chamfer["surface", "plane"] < chamfer["photometric", "plane"], chamfer
    # The photometric fit's opacity field meshed (GOF's way, no depth maps) is nearer the true
    # scene than any of its fused depths' meshes (measured: 0.240 against 0.271 at best).
    assert chamfer["photometric", "opacity"] < min(
        chamfer["photometric", d] for d in ("expected", "plane", "rade")), chamfer


def test_mesh_scores_of_the_true_depths():
    """The meshes' scoring: fused from the ray caster's exact depths, the mesh lies on the true
    scene (Chamfer distance under a voxel); moved by 0.1 the score grows by about that."""
    scene = sv.default_scene()
    cams = sv.make_cameras(64, 48, 24)
    truth = [sv.raycast(scene, c) for c in cams]
    depths = [t["depth"].float() for t in truth]
    masks = [t["object"] >= 0 for t in truth]
    mesh = sr.fuse_depths(depths[1::2], cams[1::2], masks[1::2])
    points = torch.cat([sr.world_points(t["depth"], c)[m.reshape(-1)]
                        for t, c, m in zip(truth[::8], cams[::8], masks[::8])])
    exact = sr.chamfer(mesh, scene, points)
    assert exact < sr.MESH_VOXEL, exact
    moved = sr.Mesh(mesh.vertices + torch.tensor([0.0, 0.0, 0.1]), mesh.faces)
    assert sr.chamfer(moved, scene, points) > exact + 0.03
