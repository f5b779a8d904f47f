"""Slide figures: the ROC plot and the confusion-matrix panels are written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medinfer.metrics.slides import operating_point, threshold_at_sensitivity
from medinfer.report.slides import confusion_figure, roc_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curves() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(25), np.zeros(40)].astype(int)
    good = np.clip(labels * 0.5 + rng.random(labels.size) * 0.6, 0, 1)
    weak = np.clip(labels * 0.1 + rng.random(labels.size) * 0.9, 0, 1)
    return {"top-8 mean": (good, labels), "max": (weak, labels)}


def _points(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    return {name: operating_point(s, y, threshold_at_sensitivity(s, y, 0.96))
            for name, (s, y) in curves.items()}


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_roc_figure_writes_png(tmp_path: Path) -> None:
    curves = _curves()
    out = roc_figure(curves, _points(curves), tmp_path / "figs" / "roc.png", title="slides")
    assert out == tmp_path / "figs" / "roc.png"
    w, h = _png_size(out)
    assert w > 200 and h > 200
    # The marked operating points change the picture.
    bare = roc_figure(curves, {}, tmp_path / "bare.png")
    assert bare.read_bytes() != out.read_bytes()


def test_roc_figure_rejects_point_without_curve(tmp_path: Path) -> None:
    curves = _curves()
    points = _points(curves)
    with pytest.raises(ValueError, match="without a curve"):
        roc_figure({"max": curves["max"]}, points, tmp_path / "roc.png")
    with pytest.raises(ValueError):
        roc_figure({}, {}, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


def test_confusion_figure_one_panel_per_name(tmp_path: Path) -> None:
    points = _points(_curves())
    one = confusion_figure({"max": points["max"]}, tmp_path / "one.png")
    two = confusion_figure(points, tmp_path / "two.png")
    (w1, _), (w2, _) = _png_size(one), _png_size(two)
    assert w2 > 1.5 * w1
    with pytest.raises(ValueError):
        confusion_figure({}, tmp_path / "none.png")


def test_confusion_figure_without_abnormal_slides(tmp_path: Path) -> None:
    # Sensitivity is undefined (NaN) here; the panel still draws and says "n/a".
    p = operating_point(np.array([0.2, 0.7, 0.1]), np.array([0, 0, 0]), 0.5)
    assert _png_size(confusion_figure({"normal only": p}, tmp_path / "c.png"))[0] > 100
