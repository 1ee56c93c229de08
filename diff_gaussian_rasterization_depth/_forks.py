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


def settings_class(module: str, extra: str, extra_type, default):
    """A fork's GaussianRasterizationSettings (for `module`): the original's twelve fields,
    then its own `extra` field (defaulting to `default`), so that positional and keyword calls
    both fit."""
    cls = NamedTuple("GaussianRasterizationSettings",
                     [(f, _PackageSettings.__annotations__[f]) for f in ORIGINAL_FIELDS]
                     + [(extra, extra_type)])
    defaults = {"prefiltered": _PackageSettings._field_defaults["prefiltered"],
                "debug": _PackageSettings._field_defaults["debug"], extra: default}
    cls.__new__.__defaults__ = tuple(defaults.values())
    cls._field_defaults = defaults
    cls.__module__ = module
    return cls


def package_settings(settings) -> _PackageSettings:
    """The package's settings of a fork's call whose first 12 fields are the original's (the
    package's own class passes as it is, its later fields included)."""
    if isinstance(settings, _PackageSettings):
        return settings
    return _PackageSettings(*settings[:len(ORIGINAL_FIELDS)])


class ForkRasterizer(_PackageRasterizer):
    """The base of a fork's module: `markVisible` as the package's, on the fork's settings."""

    def markVisible(self, positions):
        return _PackageRasterizer(package_settings(self.raster_settings)).markVisible(positions)


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
