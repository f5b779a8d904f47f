"""The typed, versioned training record: the committed artifacts (version 1) still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medinfer.artifact import (
    TRAINING_RECORD_VERSION,
    DataSplit,
    EpochRecord,
    ModelArtifact,
    TrainingRecord,
)

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name, unit, primary", [
    ("polyp-resunet", "case", "dice"),  # retrained in issue 11: written as version 2
    ("cxr-densenet121", "patient", "mean_auc"),
    ("brain-unet3d", "case", "dice"),
])
def test_committed_artifacts_load_into_typed_records(name: str, unit: str | None, primary: str) -> None:
    art = ModelArtifact.load(MODELS / name)
    rec = art.spec.training
    assert isinstance(rec, TrainingRecord) and rec.format_version == TRAINING_RECORD_VERSION
    assert all(isinstance(h, EpochRecord) for h in rec.history) and rec.epochs_run == len(rec.history)
    assert (rec.split.unit if rec.split else None) == unit
    best = rec.best()
    assert best is not None and primary in best.metrics
    assert all(art.spec.metrics[k] == v for k, v in best.metrics.items())  # val_<k> of v1 -> metrics[k]
    assert rec.optimize and rec.command.startswith("medinfer train")
    raw = json.loads((MODELS / name / "artifact.json").read_text())["training"]
    assert rec.n_train == raw["n_train"] and rec.best_epoch == raw["best_epoch"]
    if unit == "patient":
        assert rec.split.train == [str(p) for p in raw["split_patients"]["train"]]
    if unit == "case" and "train" in raw:  # version 1 kept the volume lists at the top
        assert (rec.split.train, rec.split.val) == (raw["train"], raw["val"])
    if unit == "case" and "split" in raw:
        assert (rec.split.train, rec.split.val) == (raw["split"]["train"], raw["split"]["val"])


def test_version1_shapes_are_read_and_written_back_as_version2(tmp_path: Path) -> None:
    rec = TrainingRecord.model_validate({
        "split_patients": {"train": [1, 2], "val": ["3"], "test": []},
        "history": [{"epoch": 1, "train_loss": 0.5, "seconds": 2.0},
                    {"epoch": 2, "train_loss": 0.4, "val_dice": 0.7, "val_iou": 0.6, "seconds": 2.0}],
        "best_epoch": 2, "custom": {"kept": True}})
    assert rec.split == DataSplit(unit="patient", train=["1", "2"], val=["3"])
    assert rec.history[0].metrics == {} and rec.history[1].metrics == {"dice": 0.7, "iou": 0.6}
    assert [h.epoch for h in rec.validated()] == [2] and rec.best() == rec.history[1]
    assert rec.model_extra == {"custom": {"kept": True}}  # unknown keys are kept (extra="allow")
    again = TrainingRecord.model_validate_json(rec.model_dump_json())
    assert again == rec and "split_patients" not in json.loads(rec.model_dump_json())


def test_a_newer_record_is_refused() -> None:
    with pytest.raises(ValueError, match="newer"):
        TrainingRecord.model_validate({"format_version": TRAINING_RECORD_VERSION + 1})
