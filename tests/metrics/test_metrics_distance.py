"""Feature-space distances and the Ledoit-Wolf covariance (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.metrics.distance import cosine, euclidean, ledoit_wolf, mahalanobis, nearest, precision_matrix

rng = np.random.default_rng(0)
REF = rng.normal(size=(20, 6))
Q = rng.normal(size=6)


def test_mahalanobis_with_identity_covariance_is_euclidean():
    np.testing.assert_allclose(mahalanobis(Q, REF, np.eye(6)), euclidean(Q, REF), rtol=1e-12)


def test_mahalanobis_whitens_a_scaled_axis():
    # Variance 4 along axis 0: a step of 2 along it is as far as a step of 1 along axis 1.
    precision = np.diag([0.25, 1.0])
    d = mahalanobis(np.zeros(2), np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), precision)
    np.testing.assert_allclose(d, [1.0, 1.0, 2.0])


def test_euclidean_and_cosine_known_values():
    ref = np.array([[3.0, 4.0], [-1.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    np.testing.assert_allclose(euclidean(np.zeros(2), ref), [5.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(cosine(np.array([1.0, 0.0]), ref), [0.4, 2.0, 1.0, 0.0], atol=1e-12)


def test_nearest_is_ascending_and_stable():
    d = np.array([0.5, 0.1, 0.3, 0.1, 2.0])
    idx = nearest(d, 4)
    assert idx.tolist() == [1, 3, 2, 0]
    assert np.all(np.diff(d[idx]) >= 0)


def test_ledoit_wolf_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.covariance")
    x = rng.normal(size=(15, 40)) * np.linspace(1, 5, 40)  # more features than samples
    cov, shrink = ledoit_wolf(x)
    want_cov, want_shrink = sk.ledoit_wolf(x)
    assert shrink == pytest.approx(want_shrink, rel=1e-10)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-10, atol=1e-12)


def test_shrunk_covariance_is_invertible_when_features_outnumber_samples():
    x = rng.normal(size=(10, 50))
    cov, shrink = ledoit_wolf(x)
    assert 0.0 < shrink <= 1.0
    assert np.linalg.eigvalsh(cov).min() > 0
    np.testing.assert_allclose(precision_matrix(cov) @ cov, np.eye(50), atol=1e-8)
