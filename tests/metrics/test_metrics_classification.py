"""ROC-AUC, mean over present classes, abnormal AUC and bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.metrics import classification_scores, roc_auc


def test_roc_auc_known_values() -> None:
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert np.isnan(roc_auc(np.array([0.2, 0.3]), np.array([0, 0])))


def test_mean_covers_present_classes_only_and_intervals_bracket_point() -> None:
    rng = np.random.default_rng(0)
    n = 200
    labels = np.zeros((n, 3))
    labels[:, 0] = rng.random(n) < 0.3
    labels[:, 1] = rng.random(n) < 0.2
    probs = np.clip(labels * 0.3 + rng.random((n, 3)) * 0.7, 0, 1)  # informative for 0 and 1
    s = classification_scores(probs, labels, ["a", "b", "c"], abnormal=labels.max(axis=1), n_boot=300)
    assert s.classes_scored == ["a", "b"]  # class c has no positives: AUC undefined, not averaged
    assert np.isnan(s.per_class["c"].auc)
    assert s.mean_auc.auc == pytest.approx((s.per_class["a"].auc + s.per_class["b"].auc) / 2)
    for score in (s.mean_auc, s.per_class["a"], s.abnormal_auc):
        assert score.low <= score.auc <= score.high
        assert score.high - score.low < 0.3
    assert s.per_class["a"].positives == int(labels[:, 0].sum())
    flat = s.flat()
    assert flat["mean_auc"] == s.mean_auc.auc and "auc/b" in flat and flat["n"] == n


def test_bootstrap_is_deterministic_and_optional() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((50, 2)) < 0.4).astype(float)
    probs = rng.random((50, 2))
    a = classification_scores(probs, labels, ["x", "y"], n_boot=100, seed=3)
    b = classification_scores(probs, labels, ["x", "y"], n_boot=100, seed=3)
    assert a == b
    c = classification_scores(probs, labels, ["x", "y"], n_boot=0)
    assert c.mean_auc.auc == a.mean_auc.auc and np.isnan(c.mean_auc.low)
