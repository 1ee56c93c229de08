"""PyTorch stand-ins for the CUDA-only pieces of gsplat's PyTorch rasterizer, so that it runs on
a CPU for the side-by-side in cpu_bench.py.

gsplat 1.5.3's `rendering._rasterization` (its pure-PyTorch path, gradients by autograd) still
calls three things with no CPU code: its tile intersection (`isect_tiles`,
`isect_offset_encode`: gsplat ships PyTorch twins of these, used here), the kernel that lists
which Gaussian meets which pixel (`rasterize_to_indices_in_range`), and two functions of the
nerfacc package (`render_weight_from_alpha`, `accumulate_along_rays`), whose packed form is
CUDA-only too. The last three are written here from their documented behaviour; everything
else that runs is gsplat's own code.

    install() -> None      patches gsplat and puts the nerfacc stand-in in its place (for this
                           process); raises ImportError when gsplat is not installed.
"""
import sys
import types

import torch

ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4  # a pixel stops before a splat would take T to this or below
ALPHA_MAX = 0.999


def rasterize_to_indices_in_range(range_start, range_end, transmittances, means2d, conics,
                                  opacities, image_width, image_height, tile_size,
                                  isect_offsets, flatten_ids):
    """(Gaussian ids, pixel ids, image ids) of every blend that batches [range_start,
    range_end) of each tile's list (tile_size^2 Gaussians a batch) make, starting each pixel
    from its transmittance; sorted by (image, pixel), and front to back within a pixel."""
    image_dims = means2d.shape[:-2]
    images = image_dims.numel()
    N = means2d.shape[-2]
    tiles_y, tiles_x = isect_offsets.shape[-2:]
    means2d = means2d.reshape(images, N, 2)
    conics = conics.reshape(images, N, 3)
    opacities = opacities.reshape(images, N)
    transmittances = transmittances.reshape(images, image_height * image_width)
    offsets = isect_offsets.reshape(-1).tolist() + [len(flatten_ids)]
    block = tile_size * tile_size
    found = []
    for image in range(images):
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                t = (image * tiles_y + ty) * tiles_x + tx
                begin = offsets[t] + range_start * block
                end = min(offsets[t + 1], offsets[t] + range_end * block)
                if begin >= end:
                    continue
                ids = flatten_ids[begin:end].long() % N
                ys = torch.arange(ty * tile_size, min((ty + 1) * tile_size, image_height))
                xs = torch.arange(tx * tile_size, min((tx + 1) * tile_size, image_width))
                py, px = torch.meshgrid(ys, xs, indexing="ij")
                pixels = (py * image_width + px).reshape(-1)
                dx = (px.reshape(-1, 1) + 0.5) - means2d[image, ids, 0]
                dy = (py.reshape(-1, 1) + 0.5) - means2d[image, ids, 1]
                c = conics[image, ids]
                sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
                alpha = (opacities[image, ids] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
                hit = (sigma >= 0) & (alpha >= ALPHA_MIN)
                # T after each splat if every hit before it blends; T only falls, so the first
                # splat that would take it to 1e-4 or below ends the pixel, and every later too.
                after = transmittances[image, pixels, None] * torch.cumprod(
                    torch.where(hit, 1 - alpha, torch.ones_like(alpha)), dim=1)
                pixel, splat = torch.nonzero(hit & (after > TRANSMITTANCE_MIN), as_tuple=True)
                found.append((ids[splat], image * image_height * image_width + pixels[pixel]))
    if not found:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    gauss = torch.cat([g for g, _ in found])
    index = torch.cat([i for _, i in found])
    order = torch.sort(index, stable=True).indices
    gauss, index = gauss[order], index[order]
    plane = image_height * image_width
    return gauss, index % plane, index // plane


def render_weight_from_alpha(alphas, ray_indices, n_rays):
    """nerfacc's packed form: per ray (samples grouped by ray, front to back), the
    transmittance before each sample (an exclusive product of 1 - alpha) and the weight
    alpha * T."""
    # In double: the running sum spans every ray's samples (millions in a dense frame), and in
    # float32 its rounding at that size (about 0.01 at 1e5) would show in each ray's T.
    log_keep = torch.log1p(-alphas.double())
    inclusive = torch.cumsum(log_keep, 0)
    # Subtract the running sum at the start of each ray's run of samples.
    starts = torch.ones_like(ray_indices, dtype=torch.bool)
    starts[1:] = ray_indices[1:] != ray_indices[:-1]
    run = torch.cumsum(starts.long(), 0) - 1
    before_run = (inclusive - log_keep)[starts]
    trans = torch.exp(inclusive - log_keep - before_run[run]).to(alphas.dtype)
    return alphas * trans, trans


def accumulate_along_rays(weights, values, ray_indices, n_rays):
    """sum of weight x value over each ray's samples (value 1 when values is None)."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def install() -> None:
    from gsplat import rendering
    from gsplat.cuda import _torch_impl, _wrapper

    rendering.isect_tiles = lambda means2d, radii, depths, tile_size, tile_width, \
        tile_height, **_: _torch_impl._isect_tiles(means2d, radii, depths, tile_size,
                                                    tile_width, tile_height)
    rendering.isect_offset_encode = _torch_impl._isect_offset_encode
    _wrapper.rasterize_to_indices_in_range = rasterize_to_indices_in_range
    # gsplat imports nerfacc when it composites; a real nerfacc's packed form needs CUDA.
    stand_in = types.ModuleType("nerfacc")
    stand_in.render_weight_from_alpha = render_weight_from_alpha
    stand_in.accumulate_along_rays = accumulate_along_rays
    sys.modules["nerfacc"] = stand_in
