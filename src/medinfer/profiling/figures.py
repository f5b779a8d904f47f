"""Figures of a MoA analysis: the confusion matrix and a 2D embedding.

PNGs drawn on plain ``matplotlib.figure.Figure`` objects (the Agg canvas), never through
``pyplot``, so importing this module changes no global backend state.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from medinfer.profiling.moa import MoaResult
from medinfer.profiling.normalize import TreatmentProfiles

__all__ = ["confusion_figure", "embedding_figure", "pca_2d"]


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal components 1 and 2 of the rows of ``x`` ``(n, d)`` by an SVD of the centred
    matrix (no whitening). Returns ``(coords (n, 2), explained variance ratio (2,))``."""
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    var = s**2
    return u[:, :2] * s[:2], var[:2] / var.sum()


def confusion_figure(result: MoaResult, path: str | Path) -> Path:
    """Write the MoA x MoA confusion matrix of ``result`` (rows true, columns predicted)."""
    path = Path(path)
    n = len(result.moas)
    fig = Figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n), dpi=110)
    ax = fig.subplots()
    ax.imshow(result.confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            v = result.confusion[i, j]
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                        color="white" if v > result.confusion.max() / 2 else "black")
    ax.set_xticks(range(n), result.moas, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), result.moas, fontsize=8)
    ax.set_xlabel("predicted MoA (1-NN, cosine)")
    ax.set_ylabel("true MoA")
    ax.set_title(f"{result.protocol.upper()}: accuracy {result.accuracy:.2f} "
                 f"({result.n_scored} scored, {result.n_unscored} unscored)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def embedding_figure(t: TreatmentProfiles, path: str | Path) -> Path:
    """Write the treatment profiles on their first two principal components, coloured by MoA."""
    path = Path(path)
    xy, ratio = pca_2d(t.features)
    moas = sorted(set(t.moa.tolist()))
    cmap = matplotlib.colormaps["tab20"].resampled(max(len(moas), 1))
    fig = Figure(figsize=(8, 6), dpi=110)
    ax = fig.subplots()
    for k, m in enumerate(moas):
        rows = t.moa == m
        ax.scatter(xy[rows, 0], xy[rows, 1], s=22, color=cmap(k), label=m)
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    ax.set_title(f"{t.n_treatments} treatment profiles (PCA by SVD)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    return path
