"""A stand-in for torchvision in the LightGaussian and Mini-Splatting checks (doc/migration.md),
put on PYTHONPATH.

LightGaussian's training imports its lpipsPyTorch, which imports `torchvision.models` at the
top; LPIPS itself (with VGG weights it downloads) runs only in its evaluation, which the check
does with tools/cpu_shim/heldout_psnr.py instead (Mini-Splatting's as well). A torchvision from PyPI does not load
against a CPU-only PyTorch build (its operators are registered for another build).
"""
import types

models = types.SimpleNamespace()
