"""Predictor: one call per image for every task, results on the input's own grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medinfer.apps.predictor import Predictor
from medinfer.errors import InputError
from medinfer.io import read_image


def test_classification_prediction_has_every_finding(cls_artifact, cls_data: Path) -> None:
    image = read_image(cls_data / "images" / "0.png")
    with Predictor.open(cls_artifact.root) as p:
        pred = p.predict(image)
    assert pred.task == "classification" and pred.mask is None
    assert list(pred.scores) == cls_artifact.spec.classes
    assert all(0.0 <= v <= 1.0 for v in pred.scores.values())
    assert pred.positive == [c for c, v in pred.scores.items() if v >= 0.5]
    assert pred.variant == "torch-fp32" and set(pred.seconds) == {"preprocess", "infer", "postprocess"}
    assert pred.summary()["scores"] == pred.scores


def test_volume_prediction_on_the_volume_grid(vol_artifact, vol_data: Path) -> None:
    image = read_image(vol_data / "images" / "v0.nii.gz")
    with Predictor.open(vol_artifact.root) as p:
        pred = p.predict(image)
    assert pred.mask.shape == image.array.shape[1:] and pred.mask.dtype == np.uint8
    assert set(np.unique(pred.mask)) <= {0, 1}
    assert pred.segments == {1: "tumour"}
    assert pred.summary()["segments"]["tumour"] == int(pred.mask.sum())


def test_wrong_dimensionality_names_the_file(vol_artifact, cls_data: Path) -> None:
    path = cls_data / "images" / "1.png"
    with Predictor.open(vol_artifact.root) as p, pytest.raises(InputError, match="takes 3D") as info:
        p.predict(read_image(path))
    assert str(path) in str(info.value)
