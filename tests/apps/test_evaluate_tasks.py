"""`medinfer evaluate` and the optimizer's task adapters on classification and volume data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medinfer.apps.evaluate import evaluate_folder
from medinfer.tasks import Classification, Segmentation3D, task_for
from medinfer.cli import app
from medinfer.errors import InputError
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.runtime import EngineOptions

runner = CliRunner()


def test_classification_evaluate_json_has_aucs_and_intervals(cls_artifact, cls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    res = runner.invoke(app, ["evaluate", "--model", str(cls_artifact.root), "--data", str(cls_data),
                              "--bootstrap", "50", "--json", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["task"] == "classification" and payload["n"] == 12
    assert {"mean_auc", "abnormal_auc", "auc/Effusion", "intervals", "positives"} <= set(payload)
    low, high = payload["intervals"]["mean_auc"]
    assert low <= payload["mean_auc"] <= high
    assert payload["backend"] == "torch" and payload["precision"] == "fp32"


def test_volume_evaluate_scores_whole_volumes(vol_artifact, vol_data: Path) -> None:
    result = evaluate_folder(vol_artifact, vol_data, n_boot=0)
    assert result["task"] == "segmentation3d" and result["n"] == 2
    assert 0.0 <= result["iou"] <= result["dice"] <= 1.0


def test_task_outputs_match_a_direct_sliding_window(vol_artifact, vol_data: Path) -> None:
    task = task_for(vol_artifact)
    assert isinstance(task, Segmentation3D)
    data = task.load_eval(vol_data)
    engine = TorchEngine(vol_artifact.load_network(), "fp32", EngineOptions())
    outs = task.outputs(engine.infer, data)
    assert [o.shape[1:] for o in outs] == [m.shape for m in data.masks]
    sub = task.subset(data, [1])
    np.testing.assert_allclose(task.outputs(engine.infer, sub)[0], outs[1], atol=1e-6)
    calib = task.load_calib(vol_data, 3)
    assert calib.shape == (3, 1, 16, 16, 8)


def test_classification_subset_keeps_labels(cls_artifact, cls_data: Path) -> None:
    task = task_for(cls_artifact)
    assert isinstance(task, Classification)
    data = task.load_eval(cls_data)
    sub = task.subset(data, [2, 5])
    assert sub.names == [data.names[2], data.names[5]]
    np.testing.assert_array_equal(sub.labels, data.labels[[2, 5]])


def test_wrong_layout_is_a_clear_error(cls_artifact, vol_artifact, vol_data: Path, cls_data: Path) -> None:
    with pytest.raises(InputError, match="needs labels.csv"):
        evaluate_folder(cls_artifact, vol_data)
    with pytest.raises(InputError, match="needs images/"):
        evaluate_folder(vol_artifact, cls_data)


@pytest.mark.slow  # runs the whole optimizer (export, quantization, NNCF)
def test_optimize_classification_gates_on_auc(cls_artifact, cls_data: Path, tmp_path: Path) -> None:
    import shutil

    from medinfer.artifact import ModelArtifact
    from medinfer.optimize.pipeline import OptimizeConfig, optimize

    art = ModelArtifact.load(shutil.copytree(cls_artifact.root, tmp_path / "art"))
    records = optimize(art, OptimizeConfig(calib=cls_data, val=cls_data, latency_runs=1, max_class_drop=1.0))
    ref = records[0]
    assert ref.name == "torch-fp32" and {"mean_auc", "auc/Mass"} <= set(ref.metrics)
    for r in records:
        assert r.passed == (ref.metrics["mean_auc"] - r.metrics["mean_auc"] <= 0.005), r.name
    fp32 = next(r for r in records if r.name == "openvino-fp32")
    assert fp32.metrics["mean_auc"] == pytest.approx(ref.metrics["mean_auc"], abs=1e-3)
    assert ModelArtifact.load(art.root).spec.chosen == art.spec.chosen


def test_volume_folder_errors(tmp_path: Path, vol_data: Path) -> None:
    import shutil

    from medinfer.data.volumes import find_volume_pairs

    with pytest.raises(InputError, match="no masks/"):
        (tmp_path / "a" / "images").mkdir(parents=True)
        find_volume_pairs(tmp_path / "a")
    broken = shutil.copytree(vol_data, tmp_path / "b")
    (broken / "masks" / "v1.nii.gz").unlink()
    with pytest.raises(InputError, match="no matching mask") as info:
        find_volume_pairs(broken)
    assert "v1.nii.gz" in str(info.value)


def test_segmentation_evaluate_has_bootstrap_intervals_over_cases(vol_artifact, vol_data: Path) -> None:
    result = evaluate_folder(vol_artifact, vol_data, n_boot=200)
    lo, hi = result["intervals"]["dice"]
    assert lo <= result["dice"] <= hi and set(result["intervals"]) >= {"dice", "iou"}
    assert "intervals" not in evaluate_folder(vol_artifact, vol_data, n_boot=0)
