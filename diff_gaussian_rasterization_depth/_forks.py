"""Glue shared by forks' APIs: a fork's settings class and module base, the package's settings
of a fork's call, and for the semantic
forks (`.langsplat`, `.feature_3dgs`, `.gaussian_grouping`) their per-Gaussian tensors checked
under their own names and rendered as the package's feature channels."""
from typing import NamedTuple, Optional

import torch

from . import GaussianRasterizationSettings as _PackageSettings
from . import GaussianRasterizer as _PackageRasterizer
from . import rasterize_gaussians as _rasterize


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
    if values.dtype != means3D.dtype or values.device != means3D.device:
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
