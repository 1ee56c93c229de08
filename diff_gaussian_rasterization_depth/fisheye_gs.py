"""Fisheye-GS's rasterizer API (the `fisheye_gs_rasterizer` submodule of zmliao/Fisheye-GS, Liao
et al., ECCV 2024 workshops): change

    from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer

into `from diff_gaussian_rasterization_depth.fisheye_gs import ...` and nothing else.

    settings = GaussianRasterizationSettings(..., campos=..., is_fisheye=True, prefiltered=False,
                                             debug=False)
    color, radii = GaussianRasterizer(settings)(means3D, means2D, opacities, shs=..., ...)

`is_fisheye=True` renders through the equidistant fisheye: a point theta radians off the optical
axis lands focal * theta px from the image centre, focal = W / (2 tanfovx) (the package's
`fisheye=True`; its principal point is where projmatrix puts the axis, the centre for the
original's projection matrices). `is_fisheye=False` is the original's pinhole camera.

For the depth and weight maps (and everything else the package renders) through the same
fisheye, give the package's rasterizer `package_settings(settings)`:

    color, radii, depth, weight = diff_gaussian_rasterization_depth.GaussianRasterizer(
        package_settings(settings))(means3D, means2D, opacities, ...)

One difference: Fisheye-GS culls every Gaussian more than 0.403 * 3.14 radians (72.5 degrees)
off the axis; here a Gaussian is drawn at any angle up to where its view z reaches the near
plane (0.2), so a view wider than 145 degrees also shows what lies beyond 72.5 degrees.
"""
from . import GaussianRasterizationSettings as _PackageSettings
from .original import rasterize_gaussians as _color_and_radii
from ._forks import ORIGINAL_FIELDS, ForkRasterizer, fork_settings

__all__ = ["GaussianRasterizationSettings", "GaussianRasterizer", "rasterize_gaussians",
           "package_settings"]

# The original's fields with Fisheye-GS's flag between campos and prefiltered.
GaussianRasterizationSettings = fork_settings(
    __name__, ORIGINAL_FIELDS[:10] + ("is_fisheye",) + ORIGINAL_FIELDS[10:],
    {"is_fisheye": bool}, {"prefiltered": False, "debug": False})


def package_settings(settings: GaussianRasterizationSettings) -> _PackageSettings:
    """The package's settings of a Fisheye-GS call: its flag is the package's `fisheye`."""
    return _PackageSettings(settings.image_height, settings.image_width, settings.tanfovx,
                            settings.tanfovy, settings.bg, settings.scale_modifier,
                            settings.viewmatrix, settings.projmatrix, settings.sh_degree,
                            settings.campos, settings.prefiltered, settings.debug,
                            fisheye=bool(settings.is_fisheye))


def rasterize_gaussians(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                        cov3Ds_precomp, raster_settings):
    """Fisheye-GS's functional form and argument order; returns (color, radii)."""
    return _color_and_radii(means3D, means2D, sh, colors_precomp, opacities, scales, rotations,
                            cov3Ds_precomp, package_settings(raster_settings))


class GaussianRasterizer(ForkRasterizer):
    """Fisheye-GS's module: `markVisible` as the package's (the near plane alone), `forward`
    returning (color, radii)."""

    to_package = staticmethod(package_settings)
    functional = staticmethod(rasterize_gaussians)
