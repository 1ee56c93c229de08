"""A stand-in for Open3D, put on PYTHONPATH in the RaDe-GS check (doc/migration.md): its
training code imports Open3D at module level (its point-cloud reader's fallback and its TSDF
mesh extraction) but never calls it while training, and Open3D's wheel is 400 MB. Anything
taken from it raises, so nothing can quietly run without it."""


def __getattr__(name):
    raise ImportError(f"open3d.{name}: Open3D is not installed (tools/cpu_shim/no_open3d is a "
                      f"stand-in for training only)")
