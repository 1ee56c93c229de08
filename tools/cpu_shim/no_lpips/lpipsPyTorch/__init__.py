"""A stand-in for the `lpipsPyTorch` that 3DGS forks carry, put on PYTHONPATH before the fork's
directory in the Mini-Splatting check (doc/migration.md): its evaluation during training then
runs (PSNR and SSIM as the fork computes them) with LPIPS reported as NaN. The real one needs
torchvision, which does not load against a CPU-only PyTorch, and VGG weights from the network.
"""
import torch


def lpips(x: torch.Tensor, y: torch.Tensor, net_type: str = "alex", version: str = "0.1"):
    return torch.tensor(float("nan"))
