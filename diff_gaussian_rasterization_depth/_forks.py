"""Glue shared by forks' APIs: a fork's settings class and module base, the package's settings
of a fork's call, its second screen-space carrier for the absolute gradient, the pixels' rays as
the forks' kernels take them, and for the semantic
forks (`.langsplat`, `.feature_3dgs`, `.gaussian_grouping`) their per-Gaussian tensors checked
under their own names and rendered as the package's feature channels."""
from typing import NamedTuple, Optional

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import GaussianRasterizer as _PackageRasterizer
from . import rasterize_gaussians as _rasterize
from ._precision import LOW_PRECISION
from ._validation import real_value


# The original's twelve settings fields, in order, with the package's types and defaults.
ORIGINAL_FIELDS = tuple(_PackageSettings._fields[:12])


def fork_settings(module: str, fields, own_types, defaults):
    """A fork's GaussianRasterizationSettings (for `module`): `fields` in the fork's order, each
    the package's field of that name and type or one of the fork's own (`own_types`: name ->
    type), the trailing ones defaulting to `defaults` (name -> value, in order), so that
    positional and keyword calls both fit."""
    types = dict(_PackageSettings.__annotations__, **own_types)
    cls = NamedTuple("GaussianRasterizationSettings", [(f, types[f]) for f in fields])
    assert tuple(defaults) == tuple(fields[len(fields) - len(defaults):])
    cls.__new__.__defaults__ = tuple(defaults.values())
    cls._field_defaults = dict(defaults)
    cls.__module__ = module
    return cls


def settings_class(module: str, extra: str, extra_type, default):
    """The original's twelve fields, then the fork's own `extra` (defaulting to `default`)."""
    return fork_settings(module, ORIGINAL_FIELDS + (extra,), {extra: extra_type},
                         {"prefiltered": _PackageSettings._field_defaults["prefiltered"],
                          "debug": _PackageSettings._field_defaults["debug"], extra: default})


def package_settings(settings) -> _PackageSettings:
    """The package's settings of a fork's call whose first 12 fields are the original's (the
    package's own class passes as it is, its later fields included)."""
    if isinstance(settings, _PackageSettings):
        return settings
    return _PackageSettings(*settings[:len(ORIGINAL_FIELDS)])


class ForkRasterizer(_PackageRasterizer):
    """The base of a fork's module: `markVisible` as the package's, on the package's settings of
    the fork's (`to_package`: `package_settings` unless the fork's fields differ from the
    original's twelve); `forward` the original's call of the fork's functional form
    (`functional`, set by a fork whose call takes the original's arguments and nothing else)."""

    to_package = staticmethod(package_settings)
    functional = None

    def markVisible(self, positions):
        return _PackageRasterizer(self.to_package(self.raster_settings)).markVisible(positions)

    def forward(self, means3D, means2D, opacities, shs=None, colors_precomp=None, scales=None,
                rotations=None, cov3D_precomp=None):
        return self.functional(means3D, means2D, shs, colors_precomp, opacities, scales,
                               rotations, cov3D_precomp, self.raster_settings)


def with_absolute_columns(name: str, means3D, means2D, means2D_abs):
    """The package's (P, 4) carrier of a fork's two: columns 0-1 route their gradient to
    means2D, columns 2-3 (AbsGS's absolute gradient, doc/api.md) to the first two of the fork's
    own carrier `means2D_abs` (named `name` in errors)."""
    if not isinstance(means2D_abs, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or None, got {type(means2D_abs).__name__}")
    if not isinstance(means3D, torch.Tensor):
        return means2D  # the package names means3D
    if means2D_abs.dim() != 2 or means2D_abs.shape[1] < 2 or \
            means2D_abs.shape[0] != means3D.shape[0]:
        raise ValueError(f"{name}: expected ({means3D.shape[0]}, 2 or more), got shape "
                         f"{tuple(means2D_abs.shape)}")
    if means2D is None:
        means2D = torch.zeros_like(means2D_abs[:, :2])
    return torch.cat([means2D[:, :2], means2D_abs[:, :2].to(means2D)], dim=1)


def focal_lengths(settings):
    """(f_x, f_y) in pixels, from the fields of view as the rasterizer takes them."""
    return (int(settings.image_width) / (2.0 * real_value(settings.tanfovx)),
            int(settings.image_height) / (2.0 * real_value(settings.tanfovy)))


def centred_rays(settings, like: torch.Tensor):
    """(x (W,), y (H,)): each pixel column's and row's ray (x / z, y / z) with the principal
    point at (W / 2, H / 2), as the forks' kernels take it (half a pixel off the projection's
    (W - 1) / 2), in `like`'s dtype and device."""
    H, W = int(settings.image_height), int(settings.image_width)
    fx, fy = focal_lengths(settings)
    x = (torch.arange(W, dtype=like.dtype, device=like.device) - W / 2.0) / fx
    y = (torch.arange(H, dtype=like.dtype, device=like.device) - H / 2.0) / fy
    return x, y


def _per_gaussian(name: str, values, means3D) -> Optional[torch.Tensor]:
    """A fork's per-Gaussian values, (P, C) or (P, 1, C), as (P, C) feature channels; errors
    name the fork's argument (a means3D that is not a tensor is left to the package)."""
    if values is None or not isinstance(means3D, torch.Tensor) or means3D.dim() != 2:
        return values
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or None, got {type(values).__name__}")
    P = means3D.shape[0]
    if values.dim() < 2 or values.shape[0] != P or values[0].numel() < 1:
        raise ValueError(f"{name}: expected ({P}, C) or ({P}, 1, C) values, got shape "
                         f"{tuple(values.shape)}")
    # float16 / bfloat16 values (an autocast region's) are the package's to convert.
    if (values.dtype != means3D.dtype and values.dtype not in LOW_PRECISION) or \
            values.device != means3D.device:
        raise TypeError(f"{name}: expected {means3D.dtype} on {means3D.device} (as means3D), "
                        f"got {values.dtype} on {values.device}")
    return values.reshape(P, -1)


def render_with_features(name, values, means3D, means2D, sh, colors_precomp, opacities, scales,
                         rotations, cov3Ds_precomp, settings):
    """(color, radii, depth, weight, feature_map): the package's call on the fork's settings,
    with the fork's per-Gaussian `values` (named `name`) as feature channels; feature_map
    (C, H, W) = sum_i w_i values_i, an empty (0, H, W) map where values is None."""
    features = _per_gaussian(name, values, means3D)
    out = _rasterize(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                     cov3Ds_precomp, package_settings(settings), features=features)
    if features is not None:
        return out
    color = out[0]
    return out + (color.new_zeros((0,) + tuple(color.shape[1:])),)
