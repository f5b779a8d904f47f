"""Predictor: one call per image for every task, results on the input's own grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medinfer.tasks import Predictor
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


def test_predict_cli_writes_each_tasks_result(cls_artifact, vol_artifact, cls_data: Path, vol_data: Path,
                                              tmp_path: Path) -> None:
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from medinfer.cli import app

    runner = CliRunner()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    res = runner.invoke(app, ["predict", str(cls_data / "images" / "0.png"), str(bad),
                              "--model", str(cls_artifact.root), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1  # one of two inputs failed; the other's result is kept
    payload = json.loads((tmp_path / "c" / "0.json").read_text())
    assert set(payload["scores"]) == set(cls_artifact.spec.classes) and payload["input"].endswith("0.png")
    res = runner.invoke(app, ["predict", str(vol_data / "images" / "v1.nii.gz"),
                              "--model", str(vol_artifact.root), "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    written = nib.load(tmp_path / "v" / "v1_mask.nii.gz")
    source = nib.load(vol_data / "images" / "v1.nii.gz")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
