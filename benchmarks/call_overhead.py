"""The Python around one call: the rasterizer's forward and backward against the raw backend.

On a frame so small (16 Gaussians, 16x16) that the render costs little, the difference between a
call through `GaussianRasterizer` and the same work through `_backend.forward` / `.backward` is
what the checks, the autograd Function and torch's dispatch add per call: a fixed cost of every
training step, which on a GPU counts against the 112k target's 0.5 ms (doc/performance.md).

    PYTHONPATH=. python benchmarks/call_overhead.py [--calls 3000] [--device cpu|cuda] [--json F]

Prints each figure in us as the best of seven timings taken in turns (each call once a round),
and the machine's load; compare two checkouts by running it in each, in turn. `autograd_one_op` and `autograd_python_node`: a
one-op graph's forward, sum and backward() without the rasterizer, through torch's op alone and
through a Python Function: autograd's own cost on the device, which any Function pays (on a GPU
the engine runs a CUDA graph's backward on a thread of its own). `*_python_checks`: the same calls checked by the
Python checks alone, without the common call's C++ checks (`_C.check_common`), and
`common_check_saves` the forward's difference. `gsplat_api_*`: the same frame through gsplat's
call on the package (`diff_gaussian_rasterization_depth.gsplat.rasterization`, a quarter of
the calls), and `gsplat_api_overhead` what its glue adds to the forward.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
import scenes  # noqa: E402

from diff_gaussian_rasterization_depth import GaussianRasterizer, _backend  # noqa: E402
from diff_gaussian_rasterization_depth.gsplat import rasterization  # noqa: E402


def best_times_us(calls_by_name, sync, rounds=7):
    """Each call's best time per call in us over `rounds` timings of `n` calls, the calls taking
    turns within each round: a load that comes and goes falls on all of them alike, so their
    differences (what the figures are) keep their sign on a busy machine."""
    for call, n in calls_by_name.values():
        for _ in range(max(n // 10, 1)):
            call()
    best = dict.fromkeys(calls_by_name, float("inf"))
    for _ in range(rounds):
        for name, (call, n) in calls_by_name.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                call()
            sync()
            best[name] = min(best[name], (time.perf_counter() - t0) / n * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the figures to this file, on one line")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    scene = scenes.make_scene(0, P=16, height=16, width=16, sh_degree=1)
    settings = scene.settings._replace(**{k: getattr(scene.settings, k).to(device) for k in
                                          ("bg", "viewmatrix", "projmatrix", "campos")})
    leaves = {k: None if v is None else v.detach().to(device).requires_grad_()
              for k, v in scene.inputs.items()}

    def forward():
        with torch.no_grad():
            GaussianRasterizer(settings)(**leaves)

    def forward_backward():
        color, _, depth, weight = GaussianRasterizer(settings)(**leaves)
        (color.sum() + depth.sum() + weight.sum()).backward()
        for v in leaves.values():
            if v is not None:
                v.grad = None

    # The same frame as gsplat's call: the camera's world-to-camera matrix and intrinsics with
    # the principal point at the image centre (the settings' own camera).
    W, H = settings.image_width, settings.image_height
    fx, fy = W / (2 * settings.tanfovx), H / (2 * settings.tanfovy)
    gsplat_inputs = dict(
        means=leaves["means3D"], quats=leaves["rotations"], scales=leaves["scales"],
        opacities=leaves["opacities"][:, 0], colors=leaves["shs"], sh_degree=settings.sh_degree,
        viewmats=settings.viewmatrix.reshape(4, 4).T.contiguous()[None],
        Ks=torch.tensor([[fx, 0, W / 2], [0, fy, H / 2], [0, 0, 1]], device=device)[None],
        width=W, height=H, render_mode="RGB+ED", packed=False)

    def gsplat_forward():
        with torch.no_grad():
            rasterization(**gsplat_inputs)

    def gsplat_forward_backward():
        colors, alphas, _ = rasterization(**gsplat_inputs)
        (colors.sum() + alphas.sum()).backward()
        for v in leaves.values():
            if v is not None:
                v.grad = None

    # The same work through the backend alone, built as the package builds it
    # (tests/scenes.backend_call), with unit gradients of the three maps.
    config, gaussians = scenes.backend_call(scenes.Scene(leaves, settings))
    color, depth, weight, *_, state = _backend.forward(config, gaussians)
    grads = [torch.ones_like(m) for m in (color, depth, weight)]

    def raw_forward():
        _backend.forward(config, gaussians)

    def raw_backward():
        _backend.backward(config, gaussians, state, *grads)

    # Autograd's own cost on this device, without the rasterizer: a one-op graph and its sum
    # through backward(), and the same through a Python Function, as ours is (on a GPU the
    # engine hands a CUDA graph to its device thread, and a Python node takes the GIL there):
    # what of `backward_and_loss_overhead` any Function would pay.
    x = torch.randn(16, 3, device=device, requires_grad=True)

    class PythonNode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    def graph_backward(node):
        def run():
            node(x).sum().backward()
            x.grad = None
        return run

    def by_python_checks(call):
        """The call with the common call's C++ checks off (_backend.common_check): what
        `_C.check_common` saves against the Python checks it stands in for."""
        def run():
            _backend.common_check = False
            try:
                call()
            finally:
                _backend.common_check = True
        return run

    n, gsplat_n = args.calls, max(args.calls // 4, 10)
    times = best_times_us(
        {"forward": (forward, n), "forward_backward": (forward_backward, n),
         "raw_forward": (raw_forward, n), "raw_backward": (raw_backward, n),
         "forward_python_checks": (by_python_checks(forward), n),
         "forward_backward_python_checks": (by_python_checks(forward_backward), n),
         "autograd_one_op": (graph_backward(lambda t: t * 2), n),
         "autograd_python_node": (graph_backward(PythonNode.apply), n),
         "gsplat_api_forward": (gsplat_forward, gsplat_n),
         "gsplat_api_forward_backward": (gsplat_forward_backward, gsplat_n)}, sync)
    times["gsplat_api_overhead"] = times["gsplat_api_forward"] - times["forward"]
    times["forward_overhead"] = times["forward"] - times["raw_forward"]
    times["backward_and_loss_overhead"] = (times["forward_backward"] - times["forward"]
                                           - times["raw_backward"])
    times["common_check_saves"] = times["forward_python_checks"] - times["forward"]
    report = {k: round(v, 1) for k, v in times.items()}
    report.update(device=str(device), torch=torch.__version__, cores=os.cpu_count(),
                  load_average_1min=round(os.getloadavg()[0], 2))
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
