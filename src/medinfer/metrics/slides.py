"""Slide-level fusion of tile probabilities and the slide operating point.

A tile classifier gives every tile of a whole slide a probability of holding an
abnormal cell. This module turns one slide's tile probabilities into one slide score
(:func:`topk_mean`, or the learned :class:`LogisticAggregator` over
:func:`slide_features`), picks an operating point on validation slides
(:func:`threshold_at_sensitivity`) and scores it on evaluation slides
(:func:`operating_point`, :func:`roc_points`).

Conventions: labels are 0 (normal) / 1 (abnormal); a slide is called abnormal when
``score >= threshold``. AUC comes from :func:`medinfer.metrics.classification.roc_auc`.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit
from scipy.stats import norm

logger = logging.getLogger(__name__)

#: Tiles at or above these probabilities are counted (log1p of the count) in the features.
COUNT_CUTS = (0.5, 0.9)
#: Floor of a feature's standard deviation: a constant feature standardises to 0, not NaN.
SCALE_FLOOR = 1e-6


# --------------------------------------------------------------------- validation


def _check_k(k: Any) -> int:
    try:
        k = operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


def _check_tile_probs(tile_probs: Any) -> np.ndarray:
    """``tile_probs`` as a 1-D float64 array of probabilities in [0, 1]."""
    arr = np.asarray(tile_probs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"tile probabilities must be 1-D (one per tile), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("tile probabilities hold NaN or infinite values")
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"tile probabilities must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
    return arr


def _check_labels(labels: Any, n: int | None = None) -> np.ndarray:
    """``labels`` as a 1-D int64 array of 0/1, of length ``n`` when given."""
    raw = np.asarray(labels)
    if raw.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {raw.shape}")
    if n is not None and raw.shape[0] != n:
        raise ValueError(f"scores and labels differ in length: {n} scores, {raw.shape[0]} labels")
    if raw.size and not np.isin(raw, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (abnormal), got {np.unique(raw)[:5]}")
    return raw.astype(np.int64)


def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """1-D finite float64 scores and 0/1 int64 labels of the same, non-zero length."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if s.size == 0:
        raise ValueError("no scores given")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    return s, _check_labels(labels, s.shape[0])


# ------------------------------------------------------------------ fusion rules


def topk_mean(tile_probs: np.ndarray, k: int) -> float:
    """Mean of the ``k`` highest tile probabilities of one slide.

    Args:
        tile_probs: (n_tiles,) probabilities in [0, 1].
        k: how many of the highest tiles to average (all of them when fewer); >= 1.

    Returns:
        The mean, or 0.0 for a slide without tiles.

    Example:
        >>> topk_mean(np.array([0.1, 0.9, 0.5]), 2)
        0.7
    """
    probs = _check_tile_probs(tile_probs)
    k = _check_k(k)
    if probs.size == 0:
        return 0.0
    return float(_top_desc(probs, k).mean())


def _top_desc(probs: np.ndarray, k: int) -> np.ndarray:
    """The min(k, n) highest values, descending (partition first: slides have many tiles)."""
    if probs.size > k:
        probs = np.partition(probs, probs.size - k)[probs.size - k:]
    return np.sort(probs)[::-1]


def feature_names(k: int) -> tuple[str, ...]:
    """Names of the :func:`slide_features` entries, in order (``k + 4`` of them)."""
    k = _check_k(k)
    counts = tuple(f"log1p_n_ge_{c}" for c in COUNT_CUTS)
    return (*(f"top{i}" for i in range(1, k + 1)), f"top{k}_mean", "mean", *counts)


def slide_features(tile_probs: np.ndarray, k: int) -> np.ndarray:
    """Fixed-length feature vector of one slide's tile probabilities.

    Order (``k + 4`` float64 values, named by :func:`feature_names`):

    0. ``top1 .. topk``: the ``k`` highest probabilities, descending, padded with 0
       when the slide has fewer than ``k`` tiles;
    1. ``topk_mean``: :func:`topk_mean` (mean of the real top tiles, padding excluded);
    2. ``mean``: the mean over all tiles;
    3. ``log1p_n_ge_0.5``: log1p of the number of tiles with probability >= 0.5;
    4. ``log1p_n_ge_0.9``: log1p of the number of tiles with probability >= 0.9.

    A slide without tiles gives all zeros.

    Args:
        tile_probs: (n_tiles,) probabilities in [0, 1] (not logits).
        k: number of top tiles kept; >= 1.
    """
    probs = _check_tile_probs(tile_probs)
    k = _check_k(k)
    out = np.zeros(k + 2 + len(COUNT_CUTS), dtype=np.float64)
    if probs.size == 0:
        return out
    top = _top_desc(probs, k)
    out[:top.size] = top
    out[k] = top.mean()
    out[k + 1] = probs.mean()
    for i, cut in enumerate(COUNT_CUTS):
        out[k + 2 + i] = math.log1p(int(np.count_nonzero(probs >= cut)))
    return out


# ------------------------------------------------------------ logistic regression


def _objective(a: np.ndarray, y: np.ndarray, theta: np.ndarray, pen: np.ndarray) -> float:
    """Penalised negative log-likelihood: sum of log-losses + 0.5 * sum(pen * theta**2)."""
    z = a @ theta
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * theta**2))


def _newton_logistic(a: np.ndarray, y: np.ndarray, pen: np.ndarray, max_iter: int = 100,
                     tol: float = 1e-12) -> np.ndarray:
    """Minimise :func:`_objective` by Newton's method (IRLS) with backtracking.

    Args:
        a: (n, d) design matrix (last column the ones of the bias).
        y: (n,) 0/1 targets as float.
        pen: (d,) L2 penalty per coefficient (0 for the bias).

    Returns:
        (d,) coefficients.
    """
    theta = np.zeros(a.shape[1])
    f = _objective(a, y, theta, pen)
    for _ in range(max_iter):
        p = expit(a @ theta)
        grad = a.T @ (p - y) + pen * theta
        # The tiny ridge keeps the system solvable if every tile saturates; it changes the
        # step, not the optimum (the gradient above is exact).
        hess = (a.T * (p * (1.0 - p))) @ a + np.diag(pen + 1e-10)
        step = np.linalg.solve(hess, grad)
        decrement = float(grad @ step)  # Newton decrement squared
        if decrement / 2.0 <= tol * max(1.0, abs(f)):
            return theta
        t = 1.0
        while True:
            new = theta - t * step
            f_new = _objective(a, y, new, pen)
            if f_new <= f - 1e-4 * t * decrement or t < 1e-10:
                break
            t /= 2.0
        theta, f = new, f_new
    logger.warning("logistic aggregator: Newton's method stopped after %d iterations", max_iter)
    return theta


def _floats(values: Any, what: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"LogisticAggregator: {what} holds NaN or infinite values")
    return out


@dataclass(frozen=True)
class LogisticAggregator:
    """Learned slide score: logistic regression on standardised :func:`slide_features`.

    ``score = sigmoid(weights . ((slide_features(p, k) - mean) / scale) + bias)``.

    Attributes:
        k: number of top tiles in the features.
        weights: (k + 4,) coefficients of the standardised features.
        bias: intercept.
        mean: (k + 4,) feature means on the training slides.
        scale: (k + 4,) feature standard deviations, floored at :data:`SCALE_FLOOR`.

    Example:
        >>> agg = LogisticAggregator.fit(train_slides, train_labels, k=8)
        >>> score = agg(tile_probs)  # slide probability in (0, 1)
        >>> same = LogisticAggregator.from_dict(json.loads(json.dumps(agg.to_dict())))
    """

    k: int
    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]

    def __post_init__(self) -> None:
        k = _check_k(self.k)
        n = len(feature_names(k))
        for what in ("weights", "mean", "scale"):
            values = _floats(getattr(self, what), what)
            if len(values) != n:
                raise ValueError(f"LogisticAggregator: {what} needs {n} values for k={k}, "
                                 f"got {len(values)}")
            object.__setattr__(self, what, values)
        if min(self.scale) <= 0.0:
            raise ValueError("LogisticAggregator: scale values must be > 0")
        object.__setattr__(self, "k", k)
        object.__setattr__(self, "bias", _floats((self.bias,), "bias")[0])

    @classmethod
    def fit(cls, slides: Sequence[np.ndarray], labels: np.ndarray, k: int = 8,
            l2: float = 1.0) -> LogisticAggregator:
        """Fit on labelled slides by L2-penalised logistic regression (Newton / IRLS).

        Minimises ``sum_i logloss_i + l2 / 2 * ||weights||**2`` (the bias is not
        penalised; ``l2`` is scikit-learn's ``1 / C``). The penalty keeps the weights
        finite on separable slides; a constant feature gets weight 0.

        Args:
            slides: one (n_tiles,) probability array per slide.
            labels: (n_slides,) 0/1, both classes present.
            k: number of top tiles in the features.
            l2: penalty strength, > 0.
        """
        y = _check_labels(labels, len(slides))
        if y.size == 0 or y.min() == y.max():
            raise ValueError("fitting a slide aggregator needs both normal and abnormal slides")
        if not (math.isfinite(l2) and l2 > 0):
            raise ValueError(f"l2 must be a finite number > 0, got {l2}")
        x = np.stack([slide_features(s, k) for s in slides])
        mean = x.mean(axis=0)
        scale = np.maximum(x.std(axis=0), SCALE_FLOOR)
        a = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
        pen = np.full(a.shape[1], float(l2))
        pen[-1] = 0.0
        theta = _newton_logistic(a, y.astype(np.float64), pen)
        return cls(k=k, weights=tuple(theta[:-1]), bias=float(theta[-1]), mean=tuple(mean),
                   scale=tuple(scale))

    def __call__(self, tile_probs: np.ndarray) -> float:
        """Slide probability of being abnormal from its (n_tiles,) tile probabilities."""
        z = (slide_features(tile_probs, self.k) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(expit(float(z @ np.asarray(self.weights)) + self.bias))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain ints, floats and lists); :meth:`from_dict` inverts it."""
        return {"kind": "logistic", "k": self.k, "features": list(feature_names(self.k)),
                "weights": list(self.weights), "bias": self.bias, "mean": list(self.mean),
                "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogisticAggregator:
        """The aggregator :meth:`to_dict` described; ``kind`` and ``features`` are checked."""
        missing = {"k", "weights", "bias", "mean", "scale"} - set(d)
        if missing:
            raise ValueError(f"LogisticAggregator: missing keys {sorted(missing)}")
        if d.get("kind", "logistic") != "logistic":
            raise ValueError(f"LogisticAggregator: not a logistic aggregator: kind={d['kind']!r}")
        agg = cls(k=d["k"], weights=tuple(d["weights"]), bias=d["bias"], mean=tuple(d["mean"]),
                  scale=tuple(d["scale"]))
        if "features" in d and tuple(d["features"]) != feature_names(agg.k):
            raise ValueError("LogisticAggregator: feature names differ from this version's")
        return agg


# -------------------------------------------------------------- operating point


def threshold_at_sensitivity(scores: np.ndarray, labels: np.ndarray, target: float = 0.96) -> float:
    """Highest threshold ``t`` at which ``score >= t`` reaches ``sensitivity >= target``.

    The threshold is the score of the m-th highest abnormal slide, m the smallest
    count with ``m / n_abnormal >= target`` (the same division :func:`operating_point`
    makes, so 24 of 25 meets 0.96 exactly). Ties at ``t`` may raise the sensitivity
    above the target; any higher ``t`` falls below it.

    Args:
        scores: (n,) slide scores.
        labels: (n,) 0/1, 1 = abnormal.
        target: sensitivity to reach, in (0, 1].

    Raises:
        ValueError: no abnormal slide, or bad inputs.

    Example:
        >>> threshold_at_sensitivity(np.array([0.9, 0.8, 0.3, 0.7]), np.array([1, 1, 0, 1]), 0.6)
        0.8
    """
    s, y = _check_scores_labels(scores, labels)
    if not (0.0 < target <= 1.0):
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("no abnormal (label 1) slide: sensitivity is undefined")
    m = int(np.argmax(np.arange(1, pos.size + 1) / pos.size >= target)) + 1
    return float(pos[m - 1])


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``; (NaN, NaN) if n == 0."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple):
        return [_nan_to_none(v) for v in value]
    return value


@dataclass(frozen=True)
class OperatingPoint:
    """Confusion counts at one threshold (``score >= threshold`` is abnormal) and rates.

    ``sensitivity`` and ``specificity`` are NaN (and their intervals (NaN, NaN)) when
    the slides hold no abnormal, respectively no normal, slide. Intervals: 95 % Wilson.
    """

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    specificity: float
    sensitivity_ci: tuple[float, float]
    specificity_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: tuples become lists, NaN becomes None."""
        return {name: _nan_to_none(getattr(self, name)) for name in self.__dataclass_fields__}


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> OperatingPoint:
    """Counts, sensitivity and specificity of the rule ``score >= threshold``.

    Args:
        scores: (n,) slide scores.
        labels: (n,) 0/1, 1 = abnormal.
        threshold: e.g. from :func:`threshold_at_sensitivity` on validation slides.
    """
    s, y = _check_scores_labels(scores, labels)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    pred = s >= threshold
    tp = int(np.count_nonzero(pred & (y == 1)))
    fp = int(np.count_nonzero(pred & (y == 0)))
    fn = int(np.count_nonzero(~pred & (y == 1)))
    tn = int(np.count_nonzero(~pred & (y == 0)))
    sens = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    return OperatingPoint(threshold, tp, fp, tn, fn, sens, spec, wilson_interval(tp, tp + fn),
                          wilson_interval(tn, tn + fp))


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of ``score >= t`` over every distinct score (tied scores: one step).

    Args:
        scores: (n,) slide scores.
        labels: (n,) 0/1 with both classes present.

    Returns:
        ``fpr``, ``tpr``, ``thresholds``, each (n_distinct + 1,): thresholds descending,
        starting at ``+inf`` (the (0, 0) end) and ending at the lowest score (the (1, 1) end).
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("an ROC curve needs both normal and abnormal slides")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / (y.size - n_pos)]
    return fpr, tpr, np.r_[np.inf, s[last]]
