"""Classification helpers of the CheXNet recipe: class weights, augmentation, thresholds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import RandAffine


def pos_weight(labels: np.ndarray, cap: float) -> torch.Tensor:
    """(K,) negatives/positives per class of (N, K) 0/1 ``labels``, clipped to [1, ``cap``].

    Rare findings weigh more in the BCE loss, without exploding for a class with one positive.
    """
    pos = labels.sum(axis=0)
    w = (len(labels) - pos) / np.maximum(pos, 1.0)
    return torch.as_tensor(np.clip(w, 1.0, cap), dtype=torch.float32)


def affine_augmentation(prob: float, side: int, seed: int) -> RandAffine:
    """Small random affine (rotation ±0.12 rad, scale ±10 %, shift ±6 % of ``side`` px), seeded."""
    aug = RandAffine(prob=prob, rotate_range=(0.12,), scale_range=(0.1, 0.1),
                     translate_range=(0.06 * side,) * 2, padding_mode="border")
    aug.set_random_state(seed)
    return aug


def augment_images(aug: RandAffine, x: np.ndarray) -> torch.Tensor:
    """``aug`` applied image by image to (N, C, H, W) ``x``; a float32 tensor of the same shape."""
    return torch.stack([torch.as_tensor(np.asarray(aug(im))) for im in x]).float()


def int_or_str(value: str) -> tuple[int, str]:
    """Sort key putting numeric patient ids in numeric order."""
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def youden_thresholds(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Per class, the probability cut maximizing sensitivity + specificity - 1 (0.5 if undefined).

    Args:
        probs: (N, K) probabilities.
        labels: (N, K) 0/1 truth.
        classes: the K class names (the keys of the result).
    """
    out = {}
    for k, c in enumerate(classes):
        y = labels[:, k] > 0.5
        if y.all() or not y.any():
            out[c] = 0.5
            continue
        cuts = np.unique(probs[:, k])
        j = [(probs[y, k] >= t).mean() + (probs[~y, k] < t).mean() - 1 for t in cuts]
        out[c] = float(cuts[int(np.argmax(j))])
    return out
