"""Dice and IoU of binary masks (MONAI's ``compute_dice`` / ``compute_iou``)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou

from medinfer.metrics.classification import percentile_interval


def dice_iou_per_image(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of binary masks.

    Args:
        pred: bool (N, H, W) predicted masks (already thresholded at 0.5).
        target: bool (N, H, W) ground truth.

    Returns:
        Two float64 arrays of length N. An image where both masks are empty scores 1.0.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    if pred.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
    t = torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[:, None]
    dice = compute_dice(p, t, include_background=True, ignore_empty=False)[:, 0]
    iou = compute_iou(p, t, include_background=True, ignore_empty=False)[:, 0]
    return dice.double().numpy(), iou.double().numpy()


def mean_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95 % interval of the mean of per-case ``values`` (cases resampled with
    replacement ``n_boot`` times; 2.5th-97.5th percentile). NaN for fewer than 2 cases."""
    values = np.asarray(values, np.float64)
    if len(values) < 2 or n_boot <= 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    return percentile_interval(values[idx].mean(axis=1))
