"""`quaternion_to_matrix` as PyTorch3D documents it, written here for the PGSR check: (..., 4)
quaternions, real part first, to (..., 3, 3) rotation matrices, scaled by 2 / |q|^2 so that a
quaternion of any length gives the rotation of its direction."""
import torch


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.unbind(quaternions, -1)
    s = 2.0 / (quaternions * quaternions).sum(-1)
    rows = (1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y),
            s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x),
            s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y))
    return torch.stack(rows, -1).reshape(quaternions.shape[:-1] + (3, 3))
