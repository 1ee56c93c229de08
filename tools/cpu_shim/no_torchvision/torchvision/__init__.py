"""A stand-in for torchvision in the LightGaussian check (doc/migration.md), put on PYTHONPATH.

LightGaussian's training imports its lpipsPyTorch, which imports `torchvision.models` at the
top; LPIPS itself (with VGG weights it downloads) runs only in its evaluation, which the check
does with tools/cpu_shim/lightgaussian_eval.py instead. A torchvision from PyPI does not load
against a CPU-only PyTorch build (its operators are registered for another build).
"""
import types

models = types.SimpleNamespace()
