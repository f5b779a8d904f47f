"""The DQ-ResUNet paper's training augmentation, built from MONAI dictionary transforms."""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import Compose, RandFlipd, RandRotated


def paper_augmentation(prob: float = 0.5, max_degrees: float = 30.0, seed: int = 0) -> Compose:
    """Random rotation and horizontal flip, each with probability ``prob`` (paper: 0.5).

    Image is interpolated bilinearly, the mask with nearest neighbour, so it stays binary.
    Keys: ``"image"`` (C, H, W) float, ``"mask"`` (1, H, W) float.
    """
    rad = math.radians(max_degrees)
    aug = Compose([
        RandRotated(keys=("image", "mask"), range_x=rad, prob=prob,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=("image", "mask"), spatial_axis=1, prob=prob),  # axis 1 of (H, W): horizontal
    ])
    aug.set_random_state(seed=seed)
    return aug


def augment_batch(aug: Compose, images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``aug`` sample by sample; returns (N, C, H, W) and (N, 1, H, W) float tensors."""
    xs, ys = [], []
    for im, m in zip(images, masks, strict=True):
        out = aug({"image": torch.from_numpy(im), "mask": torch.from_numpy(m[None].astype(np.float32))})
        xs.append(torch.as_tensor(out["image"]))
        ys.append(torch.as_tensor(out["mask"]))
    return torch.stack(xs).float(), torch.stack(ys).float()
