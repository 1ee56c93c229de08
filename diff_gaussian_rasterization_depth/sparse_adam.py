"""SparseGaussianAdam: the 2024 upstream's Adam that steps only the Gaussians seen in this view.

    optimizer = SparseGaussianAdam(param_groups, lr=0.0, eps=1e-15)
    ...
    loss.backward()
    optimizer.step(radii > 0, radii.shape[0])

For each parameter of each group, the P = N Gaussians are rows of numel / N entries; a row whose
visibility is True gets m = 0.9 m + 0.1 g, v = 0.999 v + 0.001 g^2, p -= lr m / (sqrt(v) + eps)
(no bias correction, as upstream); every other row, of the parameter and of both moments, is
left untouched bit for bit. The moments live in `optimizer.state[param]` under `exp_avg` and
`exp_avg_sq`, where 3DGS densification edits them, and `step` counts the calls that stepped
the parameter. The update runs in one fused kernel (OpenMP on the CPU, CUDA on the GPU).
"""
import torch

from . import _backend

__all__ = ["SparseGaussianAdam"]


def _check_visibility(visibility, N, param: torch.Tensor, where: str):
    if not isinstance(visibility, torch.Tensor):
        raise TypeError(f"{where}: visibility: expected a bool tensor of shape ({N},), got "
                        f"{type(visibility).__name__}")
    if visibility.dtype != torch.bool:
        raise TypeError(f"{where}: visibility: expected dtype torch.bool, got {visibility.dtype}")
    if visibility.device != param.device:
        raise ValueError(f"{where}: visibility: expected a tensor on {param.device} (the "
                         f"parameter's device), got one on {visibility.device}")
    if tuple(visibility.shape) != (N,):
        raise ValueError(f"{where}: visibility: expected shape ({N},) (N = {N}), got "
                         f"{tuple(visibility.shape)}")
    if param.dim() == 0 or param.shape[0] != N:
        raise ValueError(f"{where}: the parameter has shape {tuple(param.shape)}, expected N = "
                         f"{N} rows (one per Gaussian) to match visibility; was it replaced "
                         "(densification) since the mask was computed?")


def _contiguous_state(state, key: str, param: torch.Tensor) -> torch.Tensor:
    t = state.get(key)
    if t is None:
        t = state[key] = torch.zeros_like(param, memory_format=torch.contiguous_format)
    elif t.shape != param.shape or t.dtype != param.dtype or t.device != param.device:
        raise ValueError(f"SparseGaussianAdam.step: state[{key!r}] has shape {tuple(t.shape)}, "
                         f"dtype {t.dtype}, device {t.device}; expected those of the parameter "
                         f"({tuple(param.shape)}, {param.dtype}, {param.device})")
    elif not t.is_contiguous():
        t = state[key] = t.contiguous()
    return t


class SparseGaussianAdam(torch.optim.Adam):
    """Adam whose `step(visibility, N)` updates only the visible Gaussians' rows."""

    def __init__(self, params, lr, eps):
        super().__init__(params=params, lr=lr, eps=eps)

    @_backend.run_eagerly_under_compile
    @torch.no_grad()
    def step(self, visibility, N):
        N = int(N)
        for index, group in enumerate(self.param_groups):
            lr, eps = float(group["lr"]), float(group["eps"])
            beta1, beta2 = (float(b) for b in group["betas"])
            name = group.get("name", index)
            for param in group["params"]:
                # Skipped before anything is checked: 3DGS steps right after densification with
                # the old, shorter mask while the replaced parameters have no gradient yet.
                if param.grad is None:
                    continue
                where = f"SparseGaussianAdam.step (param group {name!r})"
                _check_visibility(visibility, N, param, where)
                if param.grad.is_sparse:
                    raise TypeError(f"{where}: sparse gradients are not supported")
                state = self.state[param]
                exp_avg = _contiguous_state(state, "exp_avg", param)
                exp_avg_sq = _contiguous_state(state, "exp_avg_sq", param)
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                # The kernel works on contiguous rows; a strided parameter is stepped through a
                # copy (untouched entries copy back unchanged).
                work = param if param.is_contiguous() else param.contiguous()
                _backend.sparse_adam_step(work, param.grad.contiguous(), exp_avg, exp_avg_sq,
                                          visibility.contiguous(), lr, beta1, beta2, eps)
                if work is not param:
                    param.copy_(work)
                state["step"] += 1
        return None
