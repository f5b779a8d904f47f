"""Training augmentation of 2D pictures.

Two segmentation recipes built from MONAI dictionary transforms: the DQ-ResUNet paper's
(rotation + horizontal flip) and a stronger one for training from scratch on a few hundred
images (:func:`strong_augmentation`); and for slide tiles and regions, 90-degree turns,
mirroring and stain jitter with the labelled points moved along (:func:`augment_pictures`,
:func:`turn_points`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from medinfer.data.preprocess import normalize
from medinfer.data.spec import Preprocessing


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


def strong_augmentation(size: tuple[int, int], prob: float = 0.5, max_degrees: float = 30.0,
                        seed: int = 0) -> Compose:
    """Geometry and colour augmentation for endoscopy frames (inputs scaled to [0, 1]).

    Geometry (image bilinear, mask nearest, so it stays binary): flips on both axes, each
    with probability ``prob``; with probability ``prob`` one affine map of rotation up to
    ``max_degrees``, scale 0.75-1.25 and shift up to 10 % of each side of ``size`` (the
    network input's (H, W)). Colour, image only:
    per-channel gain (±20 %, a white-balance / light-source change) and offset (±0.05),
    gamma 0.7-1.5, and rarely blur or noise (camera focus and sensor). Polyps have no
    preferred orientation in an endoscopic frame, so vertical flips and any rotation are
    as plausible as the paper's horizontal flip.
    """
    rad = math.radians(max_degrees)
    keys = ("image", "mask")
    aug = Compose([
        RandFlipd(keys=keys, spatial_axis=0, prob=prob),
        RandFlipd(keys=keys, spatial_axis=1, prob=prob),
        RandAffined(keys=keys, prob=prob, rotate_range=rad, scale_range=(0.25, 0.25),
                    translate_range=(0.1 * size[0], 0.1 * size[1]), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd(keys="image", factors=0.2, prob=prob, channel_wise=True),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=prob, channel_wise=True),
        RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=prob / 2),
        RandGaussianSmoothd(keys="image", sigma_x=(0.5, 1.2), sigma_y=(0.5, 1.2), prob=0.1),
        RandGaussianNoised(keys="image", std=0.02, prob=0.1),
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


def augment_pictures(pixels: np.ndarray, rng: np.random.Generator, spec: Preprocessing,
                     stain: float = 0.1) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Random 90-degree turns, mirroring and stain jitter of (n, h, w, 3) uint8 pictures,
    normalized by ``spec``. Returns the batch (n, 3, h, w) and each picture's turns and
    flips (to move labelled points along, :func:`turn_points`)."""
    n = len(pixels)
    turns = rng.integers(0, 4, n)
    flips = rng.random(n) < 0.5
    out = np.empty((n, 3, pixels.shape[1], pixels.shape[2]), np.float32)
    od_scale = np.exp(rng.normal(0, stain, (n, 3))).astype(np.float32)
    for i in range(n):
        p = np.rot90(pixels[i], turns[i])
        if flips[i]:
            p = p[:, ::-1]
        od = -np.log(np.maximum(p.astype(np.float32), 1.0) / 255.0) * od_scale[i]
        out[i] = np.moveaxis(np.exp(-od) * 255.0, -1, 0)
    return torch.from_numpy(normalize(out, spec)), turns, flips


def turn_points(points: np.ndarray, side: int, turns: int, flip: bool) -> np.ndarray:
    """(m, 2) ``(x, y)`` of a ``side``-pixel square picture after ``np.rot90(k=turns)`` and,
    when ``flip``, a left-right mirror (the same moves :func:`augment_pictures` made)."""
    x, y = points[:, 0].copy(), points[:, 1].copy()
    for _ in range(turns % 4):  # np.rot90 turns counter-clockwise: (x, y) -> (y, side - 1 - x)
        x, y = y, side - 1 - x
    if flip:
        x = side - 1 - x
    return np.stack([x, y], 1).astype(np.float32)
