"""Metrics of mutually exclusive classes (one class per image): top-1 accuracy with a Wilson
interval, balanced accuracy (mean recall over the classes present) with a bootstrap interval,
per-class recall and the confusion matrix.

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> labels = np.array([[1, 0], [0, 1], [0, 1]])
    >>> s = exclusive_scores(probs, labels, ["a", "b"])
    >>> round(s.accuracy, 3), s.balanced_accuracy, s.confusion.tolist()
    (0.667, 0.75, [[1, 0], [1, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medinfer.metrics.classification import percentile_interval
from medinfer.metrics.slides import wilson_interval


@dataclass(frozen=True)
class ExclusiveScores:
    """Top-1 scores of ``n`` images.

    Attributes:
        accuracy: fraction of images whose highest-probability class is their class;
            ``accuracy_ci`` its 95 % Wilson interval.
        balanced_accuracy: mean of the per-class recalls over the classes with images;
            ``balanced_ci`` its 95 % percentile-bootstrap interval (NaN without ``n_boot``).
        recall: per class, the fraction of its images predicted as it (NaN: no image).
        confusion: (K, K) counts, rows the true class, columns the predicted one.
        n: images scored.
    """

    accuracy: float
    accuracy_ci: tuple[float, float]
    balanced_accuracy: float
    balanced_ci: tuple[float, float]
    recall: dict[str, float]
    confusion: np.ndarray
    n: int


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) int counts of (N,) class indices ``truth`` (rows) against ``pred`` (columns)."""
    truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k)


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the rows (true classes) of ``confusion`` that hold images (NaN: none)."""
    rows = confusion.sum(axis=1)
    present = rows > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(confusion)[present] / rows[present]))


def exclusive_scores(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     n_boot: int = 0, seed: int = 0) -> ExclusiveScores:
    """Top-1 scores of ``probs`` (N, K) against one-hot ``labels`` (N, K).

    Args:
        probs: per-class probabilities (or any scores ranked the same way), one row per image.
        labels: 0/1 truth with exactly one 1 per row.
        classes: the K class names.
        n_boot: bootstrap resamples of the images for the balanced-accuracy interval (0: none).
        seed: seeds the resampling.
    """
    probs = np.asarray(probs, np.float64).reshape(len(labels), len(classes))
    k, n = len(classes), len(labels)
    truth = np.asarray(labels).argmax(axis=1)
    pred = probs.argmax(axis=1)
    conf = confusion_matrix(truth, pred, k)
    hits = int(np.trace(conf))
    rows = conf.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(rows > 0, np.diag(conf) / np.maximum(rows, 1), np.nan)
    boot = np.full(0, np.nan)
    if n_boot and n:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        boot = np.array([balanced_accuracy(confusion_matrix(truth[i], pred[i], k)) for i in idx])
    return ExclusiveScores(
        accuracy=hits / n if n else float("nan"), accuracy_ci=wilson_interval(hits, n),
        balanced_accuracy=balanced_accuracy(conf), balanced_ci=percentile_interval(boot),
        recall={c: float(r) for c, r in zip(classes, recall)}, confusion=conf, n=n)
