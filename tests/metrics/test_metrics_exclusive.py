"""Top-1 metrics of mutually exclusive classes: hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.metrics.exclusive import balanced_accuracy, confusion_matrix, exclusive_scores


def test_confusion_rows_are_truth_columns_predictions() -> None:
    conf = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_balanced_accuracy_skips_classes_without_images() -> None:
    conf = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])  # class 1 absent from the truth
    assert balanced_accuracy(conf) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert np.isnan(balanced_accuracy(np.zeros((2, 2), int)))


def test_scores_with_imbalance_differ_from_plain_accuracy() -> None:
    # 8 of class 0 all right, 2 of class 1 all wrong: accuracy 0.8, balanced 0.5
    labels = np.eye(2)[[0] * 8 + [1] * 2]
    probs = np.tile([0.7, 0.3], (10, 1))
    s = exclusive_scores(probs, labels, ["a", "b"], n_boot=200)
    assert s.accuracy == pytest.approx(0.8) and s.balanced_accuracy == pytest.approx(0.5)
    assert s.recall == {"a": 1.0, "b": 0.0} and s.n == 10
    lo, hi = s.accuracy_ci
    assert 0.4 < lo < 0.8 < hi < 1.0  # Wilson: inside (0, 1), around the point
    # every resample predicts class 0 only: 0.5 with a class-1 case in it, 1.0 without (only class 0 scored)
    assert s.balanced_ci == pytest.approx((0.5, 1.0))
