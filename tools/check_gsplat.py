"""gsplat's own code against the package's `diff_gaussian_rasterization_depth.gsplat`, on the
CPU. gsplat is not a dependency: these checks run by hand (doc/migration.md has the figures),
and tests/test_gsplat_api.py runs `api` and `strategy`, smaller, wherever gsplat is installed
(CI installs it).

1. `api`: gsplat's PyTorch rasterizer (`gsplat.rendering._rasterization`, gradients by
   autograd; its three CUDA-only pieces replaced by benchmarks/gsplat_cpu_twins.py) and the
   package's `rasterization` on tests/test_gsplat_api.py's scenes (opacities at most 0.34,
   means inside the views, off-centre principal points, two cameras), classic and antialiased,
   pinhole, orthographic and fisheye cameras, float32: images, alphas, means2d and the
   gradients of every input. A pixel may differ by one splat where the two draw a footprint's rim
   differently: its alpha within float32 rounding of 1/255, or its tile left out by the
   original's tile rectangle (a 3-sigma square ending less than a pixel into a tile's first
   column, floor((x + r + 15) / 16), does not list the splat there; gsplat's 3.33-sigma
   rectangle does). The check allows 0.2% of pixels that (measured: 0.12% at most, the
   fisheye's seed 2, one splat's rim down a column of 4 pixels).
2. `garden`: a trained model, the garden 112k frame at 648x420 (opaque splats: where the
   footprints and alpha caps differ), gsplat's PyTorch rasterizer against the package's call:
   the colour's PSNR between the two must be above 60 dB.
3. `strategy`: gsplat's own densification, `gsplat.strategy.DefaultStrategy`, training with
   the package as gsplat's simple_trainer does (its learning rates, 0.8 L1 + 0.2 D-SSIM, SH
   degree raised every 250 steps), on the sparse-view example's analytic scene (21 training
   and 3 held-out cameras, 2,000 random Gaussians to start), densified every 100 steps from
   step 100: unpacked, packed (the same model: packing changes only the meta's layout) and
   with absgrad (AbsGS's criterion, with gsplat's threshold for it).

Give it gsplat's Python sources (its 1.5.3 wheel is pure Python; its CUDA is compiled only
when a CUDA function is called, and neither check calls one):

    pip download gsplat==1.5.3 --no-deps -d /tmp/gsplat-wheel
    python -m zipfile -e /tmp/gsplat-wheel/gsplat-1.5.3-py3-none-any.whl /tmp/gsplat-src
    PYTHONPATH=/tmp/gsplat-src python tools/check_gsplat.py [--only api|garden|strategy]

Exits 1 where the renders or gradients differ beyond those bounds, densification did not grow
the model, the held-out PSNR did not rise by 5 dB, or packed and unpacked differ.
"""
import argparse
import contextlib
import functools
import importlib.util
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from diff_gaussian_rasterization_depth import fused_ssim
from diff_gaussian_rasterization_depth.gsplat import rasterization

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "benchmarks"), os.path.join(HERE, "..", "tests")]
try:
    from gsplat.strategy import DefaultStrategy
    import gsplat_cpu_twins  # benchmarks/: gsplat's CUDA-only pieces in PyTorch
    gsplat_cpu_twins.install()
    from gsplat.rendering import _rasterization as gsplat_rasterization
except ImportError as error:  # pragma: no cover - the script's one prerequisite
    sys.exit(f"check_gsplat: gsplat's sources are not importable ({error}); see the "
             "docstring for how to get them")
from test_gsplat_api import H as TWIN_H, W as TWIN_W, twin_scene  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "sparse_view_depth", os.path.join(HERE, "..", "examples", "sparse_view_depth.py"))
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors", "viewmats")


@contextlib.contextmanager
def gsplat_camera_model(camera_model):
    """gsplat's PyTorch rasterizer with `camera_model`: its `_rasterization` takes none and
    projects by `_torch_impl._fully_fused_projection` (imported at each call), whose own
    `camera_model` argument is set here for the duration."""
    from gsplat.cuda import _torch_impl
    plain = _torch_impl._fully_fused_projection
    _torch_impl._fully_fused_projection = functools.partial(plain, camera_model=camera_model)
    try:
        yield
    finally:
        _torch_impl._fully_fused_projection = plain


def check_api(seeds, camera_model="pinhole") -> bool:
    """gsplat's PyTorch rasterizer against the package's call, float32, with gsplat's
    `camera_model` ("pinhole", "ortho" or "fisheye"); prints the largest differences per seed
    and mode."""
    ok = True
    print(f"gsplat's PyTorch rasterizer against the package's, float32, {camera_model} cameras, "
          f"40 Gaussians, 2 cameras at {TWIN_W}x{TWIN_H}; largest |difference| (gradients: "
          "over the largest |gradient|)")
    ortho = camera_model == "ortho"
    for seed in seeds:
        for mode in ("classic", "antialiased"):
            scene = twin_scene(seed, N=40, cameras=2, dtype=torch.float32, ortho=ortho)
            theirs = {k: v.clone().requires_grad_(k != "Ks") for k, v in scene.items()}
            ours = {k: v.clone().requires_grad_(k != "Ks") for k, v in scene.items()}
            with gsplat_camera_model(camera_model):
                image_t, alpha_t, meta_t = gsplat_rasterization(
                    **theirs, width=TWIN_W, height=TWIN_H, render_mode="RGB+ED",
                    rasterize_mode=mode)
            image_o, alpha_o, meta_o = rasterization(
                **ours, width=TWIN_W, height=TWIN_H, render_mode="RGB+ED", rasterize_mode=mode,
                packed=False, camera_model=camera_model)
            weights = torch.rand(image_t.shape, generator=torch.Generator().manual_seed(seed))
            ((image_t * weights).sum() + alpha_t.sum()).backward()
            ((image_o * weights).sum() + alpha_o.sum()).backward()
            pixel = torch.maximum((image_t - image_o).abs().amax(-1),
                                  (alpha_t - alpha_o).abs()[..., 0]).detach()
            off = float((pixel > 1e-4).float().mean())
            grads = {k: float((theirs[k].grad - ours[k].grad).abs().max()
                              / theirs[k].grad.abs().max()) for k in GRAD_NAMES}
            means2d = float((meta_t["means2d"] - meta_o["means2d"]).detach().abs().max())
            same_radii = bool(torch.equal(meta_t["radii"] > 0, meta_o["radii"] > 0))
            good = off <= 2e-3 and max(grads.values()) < 1e-2 and means2d < 1e-4 and same_radii
            ok &= good
            print(f"  seed {seed} {mode:11s}: pixels {float(pixel.max()):.1e} ({off:.2%} over "
                  f"1e-4), means2d {means2d:.1e}, drawn alike {same_radii}, gradients "
                  + " ".join(f"{k} {v:.0e}" for k, v in grads.items())
                  + ("" if good else "  <- FAILED"))
    return ok


def check_garden(scale: float) -> bool:
    """A trained model (the garden 112k frame, opaque splats, where the footprints and alpha
    caps of the two differ): gsplat's PyTorch rasterizer against the package's call."""
    from scenes import garden_scene  # benchmarks/
    scene = garden_scene("112k", scale=scale)
    inputs = scene.gsplat_inputs()
    with torch.no_grad():
        t0 = time.perf_counter()
        image_t, alpha_t, _ = gsplat_rasterization(**inputs, render_mode="RGB+ED",
                                                   near_plane=0.2)
        t1 = time.perf_counter()
        image_o, alpha_o, _ = rasterization(**inputs, render_mode="RGB+ED", near_plane=0.2,
                                            packed=False)
        t2 = time.perf_counter()
    colour = (image_t[..., :3] - image_o[..., :3]).abs()
    psnr = 10 * np.log10(1.0 / float(colour.square().mean()))
    over = float((colour.amax(-1) > 1 / 255).float().mean())
    print(f"garden 112k at {inputs['width']}x{inputs['height']} (gsplat's PyTorch rasterizer "
          f"{t1 - t0:.1f} s, the package's {t2 - t1:.2f} s): colour mean |difference| "
          f"{float(colour.mean()):.1e}, largest {float(colour.max()):.3f}, PSNR {psnr:.1f} dB, "
          f"{over:.3%} of pixels over 1/255; alpha largest "
          f"{float((alpha_t - alpha_o).abs().max()):.3f}")
    return psnr > 60


def gsplat_camera(camera):
    """gsplat's (viewmat (4, 4), K (3, 3)) of a package camera: the same OpenCV
    world-to-camera matrix, the principal point at the image centre (gsplat's pixel centres sit
    at half pixels, the package's at whole ones: the same rays)."""
    viewmat = torch.as_tensor(camera.world_to_camera, dtype=torch.float32)
    K = torch.tensor([[camera.fx, 0.0, camera.width / 2], [0.0, camera.fy, camera.height / 2],
                      [0.0, 0.0, 1.0]], dtype=torch.float32)
    return viewmat, K


def initial_splats(init: sv.GaussianModel, sh_degree: int) -> torch.nn.ParameterDict:
    """simple_trainer's parameters: log scales, opacity logits (N,), sh0 (N, 1, 3), shN."""
    n = init.means.shape[0]
    return torch.nn.ParameterDict({
        "means": torch.nn.Parameter(init.means.detach().clone()),
        "scales": torch.nn.Parameter(init.log_scales.detach().clone()),
        "quats": torch.nn.Parameter(init.quats.detach().clone()),
        "opacities": torch.nn.Parameter(init.opacity_logits.detach()[:, 0].clone()),
        "sh0": torch.nn.Parameter(init.sh_dc.detach().clone()),
        "shN": torch.nn.Parameter(torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3)),
    })


def render(splats, camera, sh_degree, **options):
    viewmat, K = gsplat_camera(camera)
    colors = torch.cat([splats["sh0"], splats["shN"]], dim=1)
    image, alpha, info = rasterization(
        splats["means"], splats["quats"], torch.exp(splats["scales"]),
        torch.sigmoid(splats["opacities"]), colors, viewmat[None], K[None], camera.width,
        camera.height, sh_degree=sh_degree, **options)
    return image[0].permute(2, 0, 1), alpha, info


def train(init, views, args, packed: bool, absgrad: bool):
    torch.manual_seed(0)
    splats = initial_splats(init, args.sh_degree)
    centres = np.stack([v.camera.center for v in views])
    scene_scale = float(np.linalg.norm(centres - centres.mean(0), axis=1).max()) * 1.1
    # simple_trainer's learning rates (batch size 1).
    lrs = {"means": 1.6e-4 * scene_scale, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2,
           "sh0": 2.5e-3, "shN": 2.5e-3 / 20}
    optimizers = {name: torch.optim.Adam([{"params": splats[name], "lr": lr, "name": name}],
                                         eps=1e-15) for name, lr in lrs.items()}
    strategy = DefaultStrategy(refine_start_iter=100, refine_stop_iter=int(args.steps * 0.7),
                               refine_every=100, reset_every=10 ** 9, absgrad=absgrad,
                               grow_grad2d=0.0008 if absgrad else 0.0002, verbose=False)
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    order = np.random.default_rng(0).integers(0, len(views), size=args.steps)
    counts = []
    for step in range(args.steps):
        view = views[order[step]]
        degree = min(step // 250, args.sh_degree)
        image, _, info = render(splats, view.camera, degree, packed=packed, absgrad=absgrad)
        strategy.step_pre_backward(splats, optimizers, state, step, info)
        loss = 0.8 * F.l1_loss(image, view.color) + 0.2 * (1 - fused_ssim(image[None],
                                                                          view.color[None]))
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        strategy.step_post_backward(splats, optimizers, state, step, info, packed=packed)
        if step % 100 == 0 or step == args.steps - 1:
            counts.append((step, splats["means"].shape[0]))
    return splats, counts


@torch.no_grad()
def held_out_psnr(splats, views, sh_degree):
    return float(np.mean([sv.psnr(render(splats, v.camera, sh_degree, packed=False)[0], v.color)
                          for v in views]))


def check_strategy(args) -> bool:
    cams = sv.make_cameras(args.width, args.height, 24)
    train_ids, test_ids = sv.split_views(24, 21, 8)
    scene = sv.default_scene()
    views = sv.make_views(scene, cams, train_ids, "cpu")
    test = sv.make_views(scene, cams, test_ids, "cpu")
    init = sv.random_init([v.camera for v in views], args.gaussians,
                          torch.Generator().manual_seed(0))
    start = held_out_psnr(initial_splats(init, args.sh_degree), test, 0)
    print(f"DefaultStrategy; {len(views)} training views at {args.width}x{args.height}, "
          f"{len(test)} held out; {args.steps} steps")
    print(f"  initial: {args.gaussians} Gaussians, held-out PSNR {start:.2f} dB")
    ok = True
    results = {}
    for name, packed, absgrad in (("unpacked", False, False), ("packed", True, False),
                                  ("absgrad", False, True)):
        t0 = time.perf_counter()
        splats, counts = train(init, views, args, packed, absgrad)
        seconds = time.perf_counter() - t0
        psnr = held_out_psnr(splats, test, args.sh_degree)
        results[name] = splats
        trail = ", ".join(f"{n}" for _, n in counts[::2])
        print(f"  {name:9s}: {splats['means'].shape[0]} Gaussians (every 200 steps: {trail}), "
              f"held-out PSNR {psnr:.2f} dB, {seconds:.0f} s")
        grew = max(n for _, n in counts) > args.gaussians
        ok &= grew and psnr > start + 5
    same = all(torch.equal(results["unpacked"][k], results["packed"][k])
               for k in results["unpacked"].keys())
    print(f"  packed and unpacked give the same model: {same}")
    return ok and same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["api", "garden", "strategy"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--gaussians", type=int, default=2000)
    p.add_argument("--sh-degree", type=int, default=1)
    args = p.parse_args(argv)
    print(f"gsplat {__import__('gsplat').__version__}")
    ok = True
    if args.only in (None, "api"):
        ok &= (check_api(args.seeds) and check_api(args.seeds, "ortho")
               and check_api(args.seeds, "fisheye"))
    if args.only in (None, "garden"):
        ok &= check_garden(1.0)
    if args.only in (None, "strategy"):
        ok &= check_strategy(args)
    print("check_gsplat:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
