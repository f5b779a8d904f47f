"""Helpers of the partition tests: tiny networks, the shipped 3D data, tolerances.

A plain module (not conftest.py) so that ``from partition_helpers import ...`` cannot
pick up another folder's conftest.
"""

from __future__ import annotations

import numpy as np
import torch
from shared_data import SHARED_DATA

BRAIN = SHARED_DATA / "brain-tumor-progression-3d" / "images" / "PGBM-001_04-02-1992.nii.gz"


def tiny_net(kind: str) -> torch.nn.Module:
    """Small seeded MONAI networks (eval mode; batch-norm statistics made non-trivial)."""
    from monai.networks.nets import BasicUNet, DynUNet, UNet

    torch.manual_seed(0)
    if kind in ("unet-instance", "unet-batch"):
        net = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=2, norm=kind.split("-")[1])
    elif kind == "basicunet":
        net = BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4))
    elif kind == "dynunet":
        net = DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                      upsample_kernel_size=[2, 2], filters=[4, 8, 16], res_block=True)
    else:
        raise ValueError(kind)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def brain_crop(shape: tuple[int, int, int] = (32, 32, 16)) -> torch.Tensor:
    """(1, *shape) z-scored crop around the centre of a shipped brain MR volume."""
    from medinfer.io import read_image

    arr = read_image(BRAIN).array[0].astype(np.float32)
    lo = [(n - s) // 2 for n, s in zip(arr.shape, shape)]
    crop = arr[tuple(slice(a, a + s) for a, s in zip(lo, shape))]
    crop = (crop - crop.mean()) / (crop.std() + 1e-6)
    return torch.from_numpy(np.ascontiguousarray(crop))[None]
