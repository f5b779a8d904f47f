"""Distances between feature vectors, and a shrunk covariance for the Mahalanobis one.

Pure numpy functions: a query ``q`` (D,) against reference rows ``ref`` (N, D), each
returning (N,) distances. The covariance of 1024-d DenseNet features estimated from a few
hundred images is singular, so :func:`ledoit_wolf` shrinks it towards a scaled identity
(Ledoit & Wolf 2004, the estimator of ``sklearn.covariance.ledoit_wolf``).
"""

from __future__ import annotations

import numpy as np

DISTANCES = ("euclidean", "cosine", "mahalanobis")


def euclidean(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distances from ``q`` (D,) to each row of ``ref`` (N, D)."""
    return np.sqrt(np.maximum(((ref - q) ** 2).sum(axis=1), 0.0))


def cosine(q: np.ndarray, ref: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(N,) cosine distances ``1 - cos(q, ref_i)`` in [0, 2]."""
    num = ref @ q
    den = np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(q), eps)
    return 1.0 - num / den


def mahalanobis(q: np.ndarray, ref: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(N,) distances ``sqrt((q - r)^T P (q - r))`` for a precision matrix ``P`` (D, D).

    With ``P`` the identity this is the Euclidean distance.
    """
    diff = ref - q
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, precision, diff), 0.0))


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of the rows of ``x`` (N, D) and the shrinkage in [0, 1].

    ``(1 - s) * S + s * mu * I`` with ``S`` the empirical (biased) covariance and ``mu`` its
    mean eigenvalue; ``s`` minimizes the expected squared Frobenius error.
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    x2 = xc**2
    emp = xc.T @ xc / n
    trace = x2.sum(axis=0) / n
    mu = trace.sum() / d
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum(emp**2)) - 2.0 * mu * trace.sum() + d * mu**2
    beta = (beta_ / n - float(np.sum(emp**2))) / (d * n)
    delta = delta_ / d
    shrink = 0.0 if delta == 0 else min(beta, delta) / delta
    return (1.0 - shrink) * emp + shrink * mu * np.eye(d), float(shrink)


def precision_matrix(cov: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite covariance (via its eigen-decomposition)."""
    w, v = np.linalg.eigh(cov)
    w = np.maximum(w, w.max() * 1e-12)
    return (v / w) @ v.T


def nearest(distances: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest distances, ascending (ties in index order)."""
    return np.argsort(distances, kind="stable")[:k]
