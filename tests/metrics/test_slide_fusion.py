"""Slide fusion: top-k mean, slide features, the logistic aggregator and the operating point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize

from medinfer.metrics import roc_auc
from medinfer.metrics.slides import (LogisticAggregator, feature_names, operating_point,
                                     roc_points, slide_features, threshold_at_sensitivity,
                                     topk_mean, wilson_interval)


def synthetic_slides(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` slides of 100-300 low tiles; abnormal ones also hold 2-5 high tiles."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.int64)
    slides = []
    for y in labels:
        tiles = rng.beta(1.0, 6.0, size=int(rng.integers(100, 300)))
        if y:
            m = int(rng.integers(2, 6))
            tiles[:m] = rng.uniform(0.6, 1.0, size=m)
        slides.append(rng.permutation(tiles))
    return slides, labels


# ---------------------------------------------------------------------- top-k


@pytest.mark.parametrize("probs, k, expected", [
    ([], 3, 0.0),
    ([0.2], 3, 0.2),  # fewer tiles than k: all of them
    ([0.1, 0.9, 0.5], 2, 0.7),
    ([0.1, 0.9, 0.5], 3, 0.5),
    ([0.4, 0.4, 0.4, 0.1], 2, 0.4),  # ties
    ([0.3, 0.8, 0.1, 0.6, 0.2], 1, 0.8),  # k = 1 is the max
])
def test_topk_mean(probs: list[float], k: int, expected: float) -> None:
    assert topk_mean(np.array(probs), k) == pytest.approx(expected)


@pytest.mark.parametrize("probs, k", [([0.5], 0), ([1.5], 1), ([-0.1], 1), ([np.nan], 1),
                                      ([[0.1, 0.2]], 1), ([0.5], 1.5)])
def test_topk_mean_rejects_bad_input(probs: list, k: object) -> None:
    with pytest.raises(ValueError):
        topk_mean(np.array(probs), k)  # type: ignore[arg-type]


def test_slide_features_order_and_padding() -> None:
    f = slide_features(np.array([0.1, 0.95, 0.6]), 4)
    assert f.dtype == np.float64 and f.shape == (len(feature_names(4)),) == (8,)
    mean = (0.95 + 0.6 + 0.1) / 3
    np.testing.assert_allclose(f, [0.95, 0.6, 0.1, 0.0, mean, mean, np.log1p(2), np.log1p(1)])
    many = np.r_[np.full(50, 0.2), 0.91, 0.7]
    g = slide_features(many, 2)
    np.testing.assert_allclose(g, [0.91, 0.7, 0.805, many.mean(), np.log1p(2), np.log1p(1)])
    np.testing.assert_array_equal(slide_features(np.array([]), 3), np.zeros(7))


# ------------------------------------------------------------------ aggregator


def test_aggregator_separates_synthetic_slides_and_round_trips() -> None:
    train, y_train = synthetic_slides(60, seed=0)
    test, y_test = synthetic_slides(60, seed=1)
    agg = LogisticAggregator.fit(train, y_train, k=8, l2=1.0)
    scores = np.array([agg(s) for s in test])
    assert ((scores > 0) & (scores < 1)).all()
    assert roc_auc(scores, y_test) > 0.95
    # The mean of all tiles alone cannot tell these slides apart as well.
    assert roc_auc(np.array([s.mean() for s in test]), y_test) < roc_auc(scores, y_test)
    again = LogisticAggregator.from_dict(json.loads(json.dumps(agg.to_dict())))
    assert again == agg
    np.testing.assert_array_equal([again(s) for s in test], scores)


def test_aggregator_is_the_penalised_optimum() -> None:
    slides, labels = synthetic_slides(40, seed=2)
    agg = LogisticAggregator.fit(slides, labels, k=4, l2=2.0)
    x = (np.stack([slide_features(s, 4) for s in slides]) - agg.mean) / agg.scale

    def objective(theta: np.ndarray) -> float:
        z = x @ theta[:-1] + theta[-1]
        return float(np.sum(np.logaddexp(0, z) - labels * z) + np.sum(theta[:-1] ** 2))

    ours = np.r_[agg.weights, agg.bias]
    ref = minimize(objective, np.zeros_like(ours), method="BFGS", options={"gtol": 1e-8})
    assert objective(ours) <= ref.fun + 1e-8
    np.testing.assert_allclose(ours, ref.x, atol=1e-3)


def test_aggregator_separable_data_and_constant_features() -> None:
    # Three tiles per slide with k = 8: the five padded features are constant 0, and a
    # single high tile separates the classes perfectly.
    slides = [np.array([0.05, 0.1, 0.95 if i % 2 else 0.2]) for i in range(20)]
    labels = np.arange(20) % 2
    agg = LogisticAggregator.fit(slides, labels, k=8, l2=1.0)
    assert np.isfinite(agg.weights).all() and np.isfinite(agg.bias)
    assert agg.weights[3:8] == (0.0,) * 5
    assert min(agg.scale) > 0
    assert agg(slides[1]) > 0.5 > agg(slides[0])


@pytest.mark.parametrize("kwargs", [dict(labels=np.zeros(4)), dict(labels=np.array([0, 1, 2, 1])),
                                    dict(labels=np.array([0, 1, 0])), dict(l2=0.0)])
def test_aggregator_fit_rejects_bad_input(kwargs: dict) -> None:
    args = dict(slides=[np.array([0.1, 0.2])] * 4, labels=np.array([0, 1, 0, 1])) | kwargs
    with pytest.raises(ValueError):
        LogisticAggregator.fit(**args)


def test_aggregator_from_dict_rejects_inconsistent_lengths() -> None:
    d = LogisticAggregator(k=1, weights=(0.0,) * 5, bias=0.0, mean=(0.0,) * 5,
                           scale=(1.0,) * 5).to_dict()
    with pytest.raises(ValueError, match="weights"):
        LogisticAggregator.from_dict(d | {"weights": [0.0] * 4})
    with pytest.raises(ValueError, match="missing"):
        LogisticAggregator.from_dict({k: v for k, v in d.items() if k != "bias"})


# ------------------------------------------------------------- operating point


def test_threshold_hits_target_exactly() -> None:
    pos = np.linspace(0.99, 0.51, 25)  # 25 abnormal slides, distinct scores
    neg = np.linspace(0.0, 0.6, 30)
    scores, labels = np.r_[pos, neg], np.r_[np.ones(25), np.zeros(30)].astype(int)
    t = threshold_at_sensitivity(scores, labels, 0.96)
    assert t == pos[23]  # keeps 24 of 25: 24 / 25 = 0.96
    assert operating_point(scores, labels, t).sensitivity == 0.96
    assert operating_point(scores, labels, np.nextafter(t, 1.0)).sensitivity < 0.96
    assert threshold_at_sensitivity(scores, labels, 1.0) == pos[-1]
    assert threshold_at_sensitivity(scores, labels, 0.9601) == pos[-1]


def test_threshold_with_ties() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.8, 0.1])
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    # Sensitivity 0.5 needs 3 of 5; 0.8 keeps 4 (ties), and anything above 0.8 keeps 1.
    t = threshold_at_sensitivity(scores, labels, 0.5)
    assert t == 0.8
    assert operating_point(scores, labels, t).sensitivity == 0.8
    assert threshold_at_sensitivity(scores, labels, 0.2) == 0.9


@pytest.mark.parametrize("scores, labels, target", [
    ([0.1, 0.2], [0, 0], 0.96),  # no positive
    ([0.1, 0.2], [0, 1, 1], 0.96),  # lengths differ
    ([0.1, 0.2], [0, 2], 0.96),
    ([0.1, np.nan], [0, 1], 0.96),
    ([0.1, 0.2], [0, 1], 0.0),
    ([0.1, 0.2], [0, 1], 1.2),
])
def test_threshold_rejects_bad_input(scores: list, labels: list, target: float) -> None:
    with pytest.raises(ValueError):
        threshold_at_sensitivity(np.array(scores), np.array(labels), target)


def test_operating_point_counts_and_intervals() -> None:
    scores = np.array([0.9, 0.7, 0.5, 0.5, 0.4, 0.2, 0.6, 0.1])
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    p = operating_point(scores, labels, 0.5)  # >= 0.5: 0.9 0.7 0.5 | 0.5 0.6
    assert (p.tp, p.fp, p.tn, p.fn) == (3, 2, 2, 1)
    assert (p.sensitivity, p.specificity) == (0.75, 0.5)
    assert p.sensitivity_ci[0] < 0.75 < p.sensitivity_ci[1]
    assert p.specificity_ci == pytest.approx((0.1500, 0.8500), abs=1e-4)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["tp"] == 3 and d["sensitivity_ci"] == list(p.sensitivity_ci)
    none = operating_point(np.array([0.9, 0.1]), np.array([0, 0]), 0.5)
    assert np.isnan(none.sensitivity) and none.to_dict()["sensitivity"] is None
    assert none.specificity == 0.5


@pytest.mark.parametrize("k, n, low, high", [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0),
                                             (24, 25, 0.8046, 0.9929)])
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)


# ------------------------------------------------------------------------- ROC


def test_roc_points_ties_and_ends() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.3, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 1, 0, 0])
    fpr, tpr, thr = roc_points(scores, labels)
    assert (fpr[0], tpr[0], thr[0]) == (0.0, 0.0, np.inf)
    assert (fpr[-1], tpr[-1], thr[-1]) == (1.0, 1.0, 0.1)
    assert len(thr) == len(np.unique(scores)) + 1  # one step per tie group
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thr) < 0).all()
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    # Every point is the operating point at its threshold.
    for f, t, th in zip(fpr[1:], tpr[1:], thr[1:], strict=True):
        p = operating_point(scores, labels, th)
        assert (p.sensitivity, 1 - p.specificity) == pytest.approx((t, f))
    # Trapezoids under the curve give the rank AUC (ties count one half).
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(scores, labels))


def test_roc_points_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        roc_points(np.array([0.2, 0.4]), np.array([1, 1]))
