"""3DGS-MCMC's relocation (Kheradmand et al., NeurIPS 2024, eq. 9), as its rasterizer fork offers it.

    from diff_gaussian_rasterization_depth import compute_relocation
    new_opacity, new_scale = compute_relocation(opacity_old, scale_old, N)

3DGS-MCMC moves dead Gaussians onto live ones and adds new Gaussians the same way: a Gaussian
sampled k times ends as N = k + 1 copies at its place, each with the opacity and scales given
here, so that the N stacked render about as the one did. The copies' opacity keeps the stack's
peak, 1 - (1 - o_N)^N = o; their scales keep its integral along each axis,
s_N = s o / sum_{j=1..N} (-1)^(j+1) C(N, j) o_N^j / sqrt(j) (the paper's double sum over
binomial coefficients, summed over i first). Computed in double by one compiled loop (CPU)
or kernel (CUDA), exact where the fork's float32 sums cancel to noise (an opacity near 1
shared among many copies: cuda_rasterizer/relocation.h). The fork's whole API, rasterizer
included: the `mcmc` module.
"""
import torch

from . import _backend
from ._validation import _describe

__all__ = ["compute_relocation"]

_WHERE = "compute_relocation"


def _rows(name: str, t, rows_text: str) -> torch.Tensor:
    """t as a 1-D tensor of its P rows: shape (P,) or (P, 1)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_WHERE}: {name}: expected a torch.Tensor, got {_describe(t)}")
    if t.dim() == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 1:
        raise ValueError(f"{_WHERE}: {name}: expected shape {rows_text}, got {tuple(t.shape)}")
    return t


@_backend.run_eagerly_under_compile
@torch.no_grad()
def compute_relocation(opacity_old, scale_old, N, binoms=None, n_max=None):
    """Each copy's opacity and scales when each Gaussian becomes N[i] Gaussians (3DGS-MCMC).

    opacity_old: (P,) or (P, 1) activated opacities in [0, 1], float32 or float64.
    scale_old: (P, ...) activated scales (3DGS: (P, 3); 2DGS: (P, 2)), the same dtype and device.
    N: (P,) or (P, 1) integer counts >= 1 (3DGS-MCMC: the times sampled, plus one).
    binoms, n_max: the fork's table of binomial coefficients (n_max x n_max) and its size,
    accepted so that its calls run unchanged; the coefficients are computed exactly here, so N
    is not bounded by n_max.

    Returns (new_opacity, new_scale) shaped as opacity_old and scale_old, without gradient.
    A Gaussian of opacity 0 keeps its scales (the limit as the opacity goes to 0).
    """
    opacity = _rows("opacity_old", opacity_old, "(P,) or (P, 1)")
    copies = _rows("N", N, "(P,) or (P, 1)")
    P = opacity.shape[0]
    if opacity.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{_WHERE}: opacity_old: expected float32 or float64, got "
                        f"{opacity.dtype}")
    if not isinstance(scale_old, torch.Tensor):
        raise TypeError(f"{_WHERE}: scale_old: expected a torch.Tensor, got "
                        f"{_describe(scale_old)}")
    if scale_old.dim() == 0 or scale_old.shape[0] != P:
        raise ValueError(f"{_WHERE}: scale_old: expected a row per Gaussian ({P}, ...), got "
                         f"shape {tuple(scale_old.shape)}")
    if scale_old.dtype != opacity.dtype or scale_old.device != opacity.device:
        raise ValueError(f"{_WHERE}: scale_old: expected opacity_old's dtype and device "
                         f"({opacity.dtype}, {opacity.device}), got {_describe(scale_old)}")
    if copies.shape[0] != P:
        raise ValueError(f"{_WHERE}: N: expected {P} counts (one per opacity), got "
                         f"{copies.shape[0]}")
    if copies.dtype.is_floating_point or copies.dtype.is_complex or copies.dtype == torch.bool:
        raise TypeError(f"{_WHERE}: N: expected an integer tensor, got {copies.dtype}")
    if copies.device != opacity.device:
        raise ValueError(f"{_WHERE}: N: expected a tensor on {opacity.device}, got one on "
                         f"{copies.device}")
    if binoms is not None or n_max is not None:
        if not isinstance(binoms, torch.Tensor) or isinstance(n_max, bool) or \
                not isinstance(n_max, int) or tuple(binoms.shape) != (n_max, n_max):
            raise ValueError(f"{_WHERE}: binoms and n_max: expected the fork's table, a "
                             f"tensor (n_max, n_max), and n_max, got {_describe(binoms)} and "
                             f"{n_max!r}")
    if P > 0:
        # One reduction each (a single synchronization on CUDA): relocation runs every hundred
        # or so steps, and a NaN opacity or a zero count would otherwise spread silently.
        if not bool(((opacity >= 0) & (opacity <= 1)).all()):
            bad = opacity[~((opacity >= 0) & (opacity <= 1))][0].item()
            raise ValueError(f"{_WHERE}: opacity_old: expected values in [0, 1] (activated "
                             f"opacities), got {bad}")
        if not bool((copies >= 1).all()):
            raise ValueError(f"{_WHERE}: N: expected counts >= 1, got "
                             f"{int(copies.min())}")
    new_opacity, new_scale = _backend.compute_relocation(
        opacity.contiguous(), scale_old.contiguous(), copies.to(torch.int64).contiguous())
    return new_opacity.view(opacity_old.shape), new_scale.view(scale_old.shape)
