"""Slide-level figures: ROC curves with their operating points, and confusion matrices.

Both functions write a PNG (matplotlib, Agg backend) and return its path. Scores,
labels and operating points follow :mod:`medinfer.metrics.slides` (label 1 = abnormal,
``score >= threshold`` is called abnormal).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medinfer.metrics.classification import roc_auc
from medinfer.metrics.slides import OperatingPoint, roc_points


def _pyplot():
    """matplotlib.pyplot on the Agg backend (imported lazily, as the other report modules do)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    return out


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f} %"


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
               points: Mapping[str, OperatingPoint], out: Path, title: str = "") -> Path:
    """One ROC plot: a curve per name, its AUC in the legend, its operating point marked.

    Args:
        curves: name -> (scores (n,), labels (n,) 0/1 with both classes), e.g. one entry
            per fusion rule on the evaluation slides.
        points: name -> the operating point drawn on the curve of the same name (at
            ``(1 - specificity, sensitivity)``); names without a point get none.
        out: PNG path to write (parent folders are created).
        title: figure title.

    Returns:
        ``out``.

    Raises:
        ValueError: no curve, a point whose name has no curve, or bad scores/labels.
    """
    if not curves:
        raise ValueError("roc_figure: no curve to draw")
    extra = sorted(set(points) - set(curves))
    if extra:
        raise ValueError(f"roc_figure: operating points without a curve: {extra}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    try:
        for name, (scores, labels) in curves.items():
            fpr, tpr, _ = roc_points(scores, labels)
            auc = roc_auc(np.asarray(scores), np.asarray(labels))
            line, = ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {auc:.3f})")
            if name in points:
                p = points[name]
                ax.plot([1.0 - p.specificity], [p.sensitivity], "o", ms=7, mfc="white",
                        mec=line.get_color(), mew=2, label=f"{name}: sens {_percent(p.sensitivity)}"
                                                          f", spec {_percent(p.specificity)}")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
               xlabel="1 - specificity (false-positive rate)", ylabel="sensitivity")
        ax.legend(loc="lower right", fontsize=7)
        if title:
            ax.set_title(title, fontsize=10)
        return _save(fig, out)
    finally:
        plt.close(fig)


def _confusion_panel(ax, name: str, p: OperatingPoint) -> None:
    """Draw one 2x2 matrix: rows truth normal/abnormal, columns predicted normal/abnormal."""
    counts = np.array([[p.tn, p.fp], [p.fn, p.tp]])
    rows = counts.sum(axis=1, keepdims=True)
    # Shade by the row rate so that a large normal class does not wash out the abnormal row.
    rates = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, str(c), ha="center", va="center", fontsize=12,
                color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], ["normal", "abnormal"])
    ax.set_yticks([0, 1], ["normal", "abnormal"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(f"{name}\nsens {_percent(p.sensitivity)} · spec {_percent(p.specificity)}",
                 fontsize=9)


def confusion_figure(points: Mapping[str, OperatingPoint], out: Path) -> Path:
    """One 2x2 confusion-matrix panel per name, counts in the cells, rates in the title.

    Args:
        points: name -> operating point (counts at its threshold).
        out: PNG path to write (parent folders are created).

    Returns:
        ``out``.
    """
    if not points:
        raise ValueError("confusion_figure: no operating point to draw")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(3.2 * len(points), 3.4), squeeze=False)
    try:
        for ax, (name, p) in zip(axes[0], points.items(), strict=True):
            _confusion_panel(ax, name, p)
        fig.tight_layout()
        return _save(fig, out)
    finally:
        plt.close(fig)
