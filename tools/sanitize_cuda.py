"""Forward + backward of a few small scenes on CUDA, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
        python tools/sanitize_cuda.py [--cases 0,1,2]
    (the same with --tool racecheck)

Image sizes that are not multiples of 16, an empty scene, a scene with Gaussians behind the
camera and far outside, antialiasing, precomputed colours and covariances, and long tile lists
walked by the backward in parts of 256 (split_length: TileSplits; faint, so that pixels blend
past the parts' ends), and a dim scene split likewise with the median, feature channels and
inverse depth (the split forward's medians found in later parts), and the touch count's kernel
on three of them (the empty scene and split lists included). Exits non-zero if an
output is not finite. Without PYTORCH_NO_CUDA_MEMORY_CACHING=1, PyTorch's caching allocator
hands out pieces of larger cached blocks, and memcheck cannot see an access past the end of a
piece. --cases picks some (run_gpu.sh: the first three, all sizes not multiples of 16, and the
split lists). --emulated runs the cases on the emulated CUDA backend instead (no GPU; what
tests/test_emulation.py does, so that this script cannot rot).

--valgrind (no GPU either): the emulated cases under valgrind's memcheck, compute-sanitizer's
initcheck for the emulation. The emulation marks what it poisons as unwritten (device buffers
made without a fill, every __shared__ variable as its block starts, a shuffle's value from a
lane outside the mask), so memcheck reports a kernel that branches on, or indexes by, a value
nothing wrote, which the NaN poison alone can let pass (a comparison with NaN is false: the
splat is skipped, unseen); and every output and gradient is checked to hold no unwritten byte.
Reports from the Python interpreter and PyTorch are left out; those with a frame of this
package's code are printed, and make the exit status 1. About 2 minutes (valgrind runs PyTorch's
import, about 80 s, 50 times slower than natively).
"""
import contextlib
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

# PyTorch's rule for torch.use_deterministic_algorithms on a GPU (case 13): cuBLAS's
# deterministic workspace, set before any cuBLAS call.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import scenes  # noqa: E402  (tests/scenes.py)
from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend, ssim_map  # noqa: E402
from diff_gaussian_rasterization_depth.sparse_adam import SparseGaussianAdam  # noqa: E402
from diff_gaussian_rasterization_depth.relocation import compute_relocation  # noqa: E402

CASES = [
    dict(P=48, height=29, width=37, sh_degree=3),
    dict(P=64, height=33, width=17, sh_degree=1, antialiasing=True, touch_count=True,
         contributions=True, points=600),
    dict(P=200, height=40, width=100, precomp_colors=True, precomp_cov=True),
    dict(P=300, height=64, width=64, sh_degree=2, dc=True),
    dict(P=0, height=20, width=20, sh_degree=0, touch_count=True, contributions=True,
         dominant=True, points=50),
    dict(P=30, height=16, width=48, sh_degree=1, all_culled=True),
    dict(P=16, height=1, width=1, sh_degree=0, ssim=True),
    dict(P=900, height=21, width=35, sh_degree=1, split_length=256, opacity_scale=0.05,
         touch_count=True, contributions=True, dominant=True, points=700),
    # Parts of 512: the split forward's own of 256, the backward's state at every other split.
    dict(P=1200, height=16, width=16, sh_degree=1, split_length=512, opacity_scale=0.03,
         outliers=False, channels=3, median_depth=True, inverse_depth=True),
    # The kernels the cases above leave out: the camera's gradient, 20 feature channels (a
    # chunk of 16 and one of 4) and with them AbsGS's absolute gradient (its own walk, 8
    # channels in registers and 12 read from memory), split lists, a step of the 2024 API's
    # SparseGaussianAdam, 3DGS-MCMC's relocation and the fused SSIM; then the techniques that
    # can be switched off, off (warp skipping, the scatter sum, the depth-first sort, the split
    # forward), with the median.
    dict(P=700, height=23, width=41, sh_degree=2, split_length=256, opacity_scale=0.1,
         channels=20, camera_grad=True, means2d_cols=4, sparse_adam=True, ssim=True),
    dict(P=500, height=19, width=30, sh_degree=1, split_length=256, opacity_scale=0.1,
         channels=5, median_depth=True,
         tuning=dict(warp_skip=False, scatter_reduce=False, depth_first_sort=False,
                     split_forward=False)),
    # Per-pixel sample offsets of up to 3 px (each tile thread reads its pixel's, those past
    # the image's edge none) through every walk, with an orthographic camera and its gradient.
    dict(P=400, height=27, width=35, sh_degree=1, split_length=256, opacity_scale=0.2,
         jitter=3.0, orthographic=True, camera_grad=True, channels=3, median_depth=True,
         touch_count=True, contributions=True, dominant=True),
    # A wide fisheye (80 degrees each side, the Gaussians up to 80 degrees off its axis, the
    # principal point moved) with its camera gradient: the preprocess and its backward through
    # the fisheye's own branches (the series near the axis, the closed forms beyond).
    dict(P=300, height=25, width=39, sh_degree=2, split_length=256, opacity_scale=0.3,
         fisheye=dict(half_angle=1.4, yaw=0.87, shift=(3.5, -2.0)), camera_grad=True,
         channels=2, median_depth=True),
    # The ordered sums (torch.use_deterministic_algorithms): every render backward kernel
    # (the maps' with the median, 6 feature channels' in parts, AbsGS's with them) and the
    # contribution statistics summing into pair rows through shared memory on split lists,
    # then the gathers per Gaussian.
    dict(P=500, height=21, width=37, sh_degree=1, split_length=256, opacity_scale=0.1,
         means2d_cols=4, median_depth=True, channels=6, contributions=True, dominant=True,
         deterministic=True),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=None,
                    help=f"comma-separated indices into the {len(CASES)} cases (default: all)")
    ap.add_argument("--emulated", action="store_true",
                    help="run on the emulated CUDA backend (CPU tensors), not a GPU")
    ap.add_argument("--valgrind", action="store_true",
                    help="the emulated cases under valgrind's memcheck: reads of what nothing "
                    "wrote (see above)")
    ap.add_argument("--plant", action="store_true",
                    help="tests: after the cases, two planted kernels that read a shared "
                    "variable nobody wrote: one branches on it, one copies it to its output "
                    "(with --valgrind, each must be reported)")
    args = ap.parse_args(argv)
    chosen = (range(len(CASES)) if args.cases is None
              else [int(t) for t in args.cases.split(",") if t.strip()])
    if any(not 0 <= i < len(CASES) for i in chosen):
        ap.error(f"--cases: expected indices in 0..{len(CASES) - 1}, got {args.cases}")
    if args.valgrind:
        sys.exit(under_valgrind(args.cases, args.plant))
    if args.emulated:
        device, backend = "cpu", _backend.emulated_cuda()
    elif not torch.cuda.is_available():
        sys.exit("sanitize_cuda: no CUDA device")
    else:
        device, backend = "cuda", contextlib.nullcontext()
    if not args.emulated and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") != "1":
        print("sanitize_cuda: PYTORCH_NO_CUDA_MEMORY_CACHING is not 1: memcheck misses accesses "
              "inside the allocator's cached blocks", file=sys.stderr)
    with backend:
        for i in chosen:
            run_case(i, device)
        _backend.set_cuda_tuning()
        if args.plant:
            checks = _backend._renderer().checks
            checks.unwritten_branch()  # leaves its output written: only memcheck sees it
            print("planted branch on an unwritten value: ran")
            require_written("planted unwritten output", checks.unwritten_shared())
            print("planted unwritten output: not seen")


def require_written(what, t):
    """Under valgrind, exits naming `what` when some byte of t was never written since the
    emulation poisoned it (a no-op elsewhere)."""
    emulated = _backend._emulated
    if emulated is None or not emulated.under_valgrind():
        return
    at = emulated.first_unwritten_byte(t.detach().contiguous())
    if at >= 0:
        sys.exit(f"sanitize_cuda: {what}: byte {at} of {t.numel() * t.element_size()} "
                 f"was never written")


OUR_TOP_FRAMES = 6   # how deep our code may sit under the reported line (memcpy, inlined STL)


def our_reports(log_text):
    """memcheck's error reports from a valgrind log with a frame of this package's code (its
    namespace, the emulation, the glue), each as its lines."""
    reports, current = [], None
    for line in log_text.splitlines():
        body = re.sub(r"^==\d+== ?", "", line)
        if not body.strip() or not body.startswith(" "):
            # A blank line ends a report; so does a line that is not indented: valgrind's
            # warnings ("set address range perms: large range") come with no blank line after.
            if current:
                reports.append(current)
            current = [body] if body.strip() else None
        elif current is not None:
            current.append(body)
    if current:
        reports.append(current)
    # Ours: a report whose first frames are this package's code. Not any frame: CPython's
    # garbage collector, walking objects whose bytes memcheck takes for undefined (ints made by
    # int.from_bytes, seen with case 0 alone and in no call of ours), reports from wherever a
    # collection happens to start, inside one of our calls too, with our frames further down.
    ours = re.compile(r"dgrd::|_emulated_cuda|cuda_emulation|rasterize_points|ext_emulated")
    return [r for r in reports
            if len(r) > 1 and r[1].lstrip().startswith("at ")
            and any(ours.search(l) for l in r[1:1 + OUR_TOP_FRAMES])]


def under_valgrind(cases, plant):
    """This script's emulated cases under valgrind's memcheck (see memcheck)."""
    args = [os.path.abspath(__file__), "--emulated"]
    if cases is not None:
        args += ["--cases", cases]
    if plant:
        args.append("--plant")
    return memcheck(args)


def memcheck(python_args):
    """Runs Python with `python_args` under valgrind's memcheck, one log per process (some tests
    start Python processes of their own), and prints the reports that name this package's code;
    0 when there are none and the run passed, else 1 (or a message)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return "memcheck: needs valgrind on PATH"
    with tempfile.TemporaryDirectory() as tmp:
        command = [valgrind, "--tool=memcheck", "--error-limit=no", "--num-callers=40",
                   f"--log-file={tmp}/memcheck.%p.log", sys.executable, *python_args]
        # Python's own allocator hands out pieces of its arenas, which memcheck cannot follow.
        run = subprocess.run(command, env=dict(os.environ, PYTHONMALLOC="malloc"))
        reports = []
        for log in sorted(glob.glob(os.path.join(tmp, "memcheck.*.log"))):
            with open(log) as f:
                reports += our_reports(f.read())
    for report in reports:  # their first frames: PyTorch's below them are long
        print("\n".join(line[:240] for line in report[:12]) + "\n")
    print(f"memcheck: {len(reports)} report(s) in this package's code, run exit status "
          f"{run.returncode}")
    return 1 if reports or run.returncode != 0 else 0


def run_case(i, device):
    """Forward and backward of case i on `device`, a loss on every output; under
    torch.use_deterministic_algorithms where the case says `deterministic`."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(CASES[i].get("deterministic", False) or previous)
    try:
        forward_and_backward(i, device)
    finally:
        torch.use_deterministic_algorithms(previous)


def forward_and_backward(i, device):
    """run_case's work."""
    case = dict(CASES[i])
    case.pop("deterministic", None)
    _backend.set_cuda_tuning(split_length=case.pop("split_length", 0), **case.pop("tuning", {}))
    opacity_scale = case.pop("opacity_scale", 1.0)
    channels = case.pop("channels", 0)
    camera_grad = case.pop("camera_grad", False)
    sparse_adam = case.pop("sparse_adam", False)
    ssim = case.pop("ssim", False)
    point_count = case.pop("points", 0)
    jitter = case.pop("jitter", 0.0)
    orthographic = case.pop("orthographic", False)
    fisheye = case.pop("fisheye", None)
    options = {k: case.pop(k) for k in ("median_depth", "inverse_depth", "touch_count",
                                         "contributions", "dominant") if k in case}
    scene = scenes.make_scene(100 + i, **case)
    if orthographic:
        scene = scenes.orthographic(scene)
    if fisheye is not None:
        scene = scenes.fisheye(scene, **fisheye)
    scene.inputs["opacities"] = scene.inputs["opacities"] * opacity_scale
    leaves = {k: (None if v is None else v.to(device).requires_grad_())
              for k, v in scene.inputs.items()}
    if channels:
        options["features"] = torch.rand(scene.P, channels, device=device, requires_grad=True)
    if point_count:
        # The opacity field's kernels: points about the Gaussians (a tile holding more than a
        # round of 256 of them), behind the camera and off the image among them.
        gen = torch.Generator().manual_seed(i)
        around = (scene.inputs["means3D"][torch.randint(0, scene.P, (point_count,),
                                                        generator=gen)]
                  if scene.P else torch.zeros((point_count, 3)))
        spread = torch.randn(point_count, 3, generator=gen) * (0.05 + 3 * torch.rand(
            point_count, 1, generator=gen))
        options["points3D"] = (around + spread).to(device)
    s = scene.settings
    camera = {k: getattr(s, k).to(device).requires_grad_(camera_grad)
              for k in ("viewmatrix", "projmatrix", "campos")}
    settings = s._replace(bg=s.bg.to(device), **camera)
    if jitter:
        gen = torch.Generator().manual_seed(i)
        offset = (torch.rand(s.image_height, s.image_width, 2, generator=gen) * 2 - 1) * jitter
        settings = settings._replace(subpixel_offset=offset.to(device))
    color, radii, *maps = GaussianRasterizer(settings)(**leaves, **options)
    point_opacity = maps.pop() if point_count else None
    dominant = maps.pop() if options.get("dominant") else None
    contribution = maps.pop() if options.get("contributions") else None
    touched = maps.pop() if options.get("touch_count") else None
    loss = color.square().sum() + sum((m * torch.rand_like(m)).sum() for m in maps)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    names = ["depth", "weight"] + (["feature_map"] if channels else []) + (
        ["median"] if options.get("median_depth") else [])

    def check(what, t):  # finite, and written (under valgrind)
        require_written(f"case {i}: {what}", t)
        if not torch.isfinite(t).all():
            sys.exit(f"sanitize_cuda: case {i}: non-finite {what}")

    for name, t in [("color", color)] + list(zip(names, maps)):
        check(name, t)
    if touched is not None:  # the touch count's own kernel (after the forward)
        check("touch count", touched)
        if bool((touched < 0).any()) or bool((touched[radii == 0] != 0).any()):
            sys.exit(f"sanitize_cuda: case {i}: a touch count below 0, or of a culled Gaussian")
    if contribution is not None:  # the statistics' own kernel (after the forward)
        check("contribution statistics", contribution)
        if bool((contribution < 0).any()) or bool((contribution[radii == 0] != 0).any()):
            sys.exit(f"sanitize_cuda: case {i}: a statistic below 0, or of a culled Gaussian")
    if point_opacity is not None:  # every point written, an opacity
        check("point opacity", point_opacity)
        if bool((point_opacity < 0).any()) or bool((point_opacity > 1).any()):
            sys.exit(f"sanitize_cuda: case {i}: a point opacity outside [0, 1]")
    if dominant is not None:  # every pixel written, each an index of a blended Gaussian or -1
        require_written(f"case {i}: dominant map", dominant)
        if bool((dominant < -1).any()) or bool((dominant >= max(scene.P, 1)).any()):
            sys.exit(f"sanitize_cuda: case {i}: a dominant index out of range")
    gradients = dict(leaves, **(camera if camera_grad else {}),
                     features=options.get("features"))
    for name, leaf in gradients.items():
        if leaf is not None:
            check(f"gradient of {name}", leaf.grad)
    if sparse_adam:
        # One step of the visible Gaussians' rows (the CUDA kernel of sparse_adam_cuda.cu):
        # every parameter and moment stays written.
        params = [v for k, v in leaves.items() if v is not None and k != "means2D"]
        optimizer = SparseGaussianAdam(params, lr=0.01, eps=1e-15)
        optimizer.step(radii > 0, scene.P)
        for k, p in enumerate(params):
            for t in [p] + [optimizer.state[p][m] for m in ("exp_avg", "exp_avg_sq")]:
                check(f"sparse Adam step of parameter {k}", t)
        # 3DGS-MCMC's relocation kernel (mcmc_cuda.cu), counts from 1 to past the sum's range.
        counts = torch.randint(1, 60, (scene.P,), device=device)
        for t in compute_relocation(leaves["opacities"].detach().clamp(0, 1),
                                    leaves["scales"].detach(), counts):
            check("relocation", t)
    if ssim:
        # The fused SSIM's kernels (fused_ssim_cuda.cu): the render against a random image, the
        # map and both images' gradients (partial tiles; a 1x1 image is all halo).
        render = color.detach().requires_grad_()
        photo = torch.rand_like(render).requires_grad_()
        similarity = ssim_map(render, photo)
        (similarity * torch.rand_like(similarity)).sum().backward()
        for what, t in (("SSIM map", similarity), ("SSIM gradient of the render", render.grad),
                        ("SSIM gradient of the photo", photo.grad)):
            check(what, t)
    print(f"case {i} ok: {CASES[i]}")


if __name__ == "__main__":
    main()
