"""Multi-label classification metrics: per-class ROC-AUC with bootstrap 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from monai.metrics import compute_roc_auc
import torch


@dataclass(frozen=True)
class AucScore:
    """ROC-AUC with a percentile-bootstrap 95% interval; ``positives`` of ``n`` cases."""

    auc: float
    low: float
    high: float
    positives: int
    n: int


@dataclass(frozen=True)
class ClassificationScores:
    """Per-class AUC, the mean over classes present in the data, and the abnormal AUC.

    ``mean_auc`` averages the classes that have both positives and negatives in the
    evaluation data (AUC is undefined otherwise); ``classes_scored`` names them.
    """

    per_class: dict[str, AucScore]
    mean_auc: AucScore
    abnormal_auc: AucScore | None
    classes_scored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def flat(self) -> dict[str, float]:
        """Flat metrics for the artifact: ``mean_auc``, ``abnormal_auc``, ``auc/<class>``, ``n``."""
        out = {"mean_auc": self.mean_auc.auc, "n": float(self.mean_auc.n)}
        if self.abnormal_auc is not None:
            out["abnormal_auc"] = self.abnormal_auc.auc
        out.update({f"auc/{k}": v.auc for k, v in self.per_class.items()})
        return out


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC of 1-D ``scores`` against 0/1 ``labels`` (MONAI); NaN if one class is absent."""
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(np.asarray(scores, np.float64)),
                                 torch.as_tensor(labels.astype(np.float64))))


def _auc_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-column AUC by the rank-sum formula (ties averaged); NaN where a column lacks a class."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    pos = labels.sum(axis=0)
    neg = labels.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * labels).sum(axis=0) - pos * (pos + 1) / 2) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc


def percentile_interval(boot: np.ndarray) -> tuple[float, float]:
    """2.5th-97.5th percentile of the finite bootstrap values (NaN when there are none)."""
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(lo), float(hi)


def classification_scores(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                          abnormal: np.ndarray | None = None, n_boot: int = 1000,
                          seed: int = 0) -> ClassificationScores:
    """AUCs of ``probs`` (N, K) against 0/1 ``labels`` (N, K), with bootstrap 95% intervals.

    The abnormal score of an image is its highest finding probability (an image is
    abnormal when any finding is present). Bootstrap: ``n_boot`` resamples of the
    images with replacement; each interval is the 2.5th-97.5th percentile of the
    resampled statistic (resamples where it is undefined are skipped).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    n = len(probs)
    point = np.array([roc_auc(probs[:, k], labels[:, k]) for k in range(len(classes))])
    present = np.isfinite(point)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = (np.stack([_auc_matrix(probs[i], labels[i]) for i in idx]) if n_boot
            else np.full((0, len(classes)), np.nan))  # (n_boot, K)
    with np.errstate(invalid="ignore"):
        boot_mean = np.nanmean(np.where(present, boot, np.nan), axis=1) if present.any() else boot[:, 0]
    per_class = {}
    for k, c in enumerate(classes):
        lo, hi = percentile_interval(boot[:, k])
        per_class[c] = AucScore(float(point[k]), lo, hi, int(labels[:, k].sum()), n)
    mean = float(np.mean(point[present])) if present.any() else float("nan")
    mean_score = AucScore(mean, *percentile_interval(boot_mean), int(present.sum()), n)
    abn = None
    if abnormal is not None:
        abnormal = np.asarray(abnormal, np.float64)
        top = probs.max(axis=1)
        a = roc_auc(top, abnormal)
        b = _auc_matrix(top[idx].T, abnormal[idx].T) if n_boot else np.array([])  # columns: resamples
        abn = AucScore(a, *percentile_interval(b), int(abnormal.sum()), n)
    return ClassificationScores(per_class, mean_score, abn, [c for c, p in zip(classes, present) if p])
