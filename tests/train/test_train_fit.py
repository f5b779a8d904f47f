"""One training loop for every recipe: tiny runs that write a usable, truthful artifact."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medinfer.artifact import ModelArtifact
from medinfer.data.spec import Preprocessing
from medinfer.runtime import EngineOptions
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.tasks import task_for
from medinfer.train import (
    ClassifyConfig,
    TrainConfig,
    VolumeTrainConfig,
    fit,
    recipe_for,
    run_training,
)
from medinfer.train.recipes import ClassificationRecipe, SegmentationRecipe, VolumeRecipe

CLASSES = ("Effusion", "Mass")  # the classes tests/train/conftest.py labels

WINDOW = (16, 16, 8)


def _seg_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    args: dict[str, object] = {"architecture": "test_resunet", "epochs": 3, "batch_size": 4,
                               "preprocessing": Preprocessing(size=(32, 32))}
    return TrainConfig(data=data, out=out, **{**args, **kw})


def _vol_cfg(data: Path, out: Path, **kw: object) -> VolumeTrainConfig:
    pre = Preprocessing(size=WINDOW, scale=1.0, mean=(0.0,), std=(1.0,), channels=1, intensity="zscore")
    args: dict[str, object] = {"architecture": "test_unet3d", "val_prefixes": ("held",), "epochs": 3,
                               "windows_per_volume": 2, "batch_size": 2, "val_every": 2, "preprocessing": pre}
    return VolumeTrainConfig(data=data, out=out, **{**args, **kw})


def _assert_best_is_recorded(art: ModelArtifact, primary: str) -> None:
    """The best epoch is the best validated one, and its metrics are the artifact's."""
    rec = art.spec.training
    validated = rec.validated()
    assert validated, "no epoch was validated"
    best = rec.best()
    assert best is not None and best.epoch == rec.best_epoch
    assert best.metrics[primary] == max(h.metrics[primary] for h in validated)
    np.testing.assert_equal(art.spec.metrics, best.metrics)
    assert rec.epochs_run == len(rec.history) and rec.seconds is not None and rec.torch


def test_recipes_are_chosen_by_task(tmp_path: Path) -> None:
    assert isinstance(recipe_for(TrainConfig(data=tmp_path, out=tmp_path)), SegmentationRecipe)
    assert isinstance(recipe_for(ClassifyConfig(data=tmp_path, out=tmp_path)), ClassificationRecipe)
    assert isinstance(recipe_for(VolumeTrainConfig(data=tmp_path, out=tmp_path)), VolumeRecipe)


def test_segmentation_fit_keeps_the_best_epoch_weights(seg_data: Path, tmp_path: Path) -> None:
    cfg = _seg_cfg(seg_data, tmp_path / "art")
    result = fit(SegmentationRecipe(), cfg, command="pytest")
    loaded = ModelArtifact.load(cfg.out)
    _assert_best_is_recorded(loaded, "dice")
    rec = loaded.spec.training
    assert rec.command == "pytest" and rec.config["task"] == "segmentation" and rec.config["epochs"] == 3
    assert rec.n_train == 10 and rec.n_val == 2 and rec.n_test is None
    assert rec.split is not None and rec.split.unit == "case"
    assert sorted(rec.split.train + rec.split.val) == [f"c{i:02d}" for i in range(12)]
    assert [h.epoch for h in rec.history] == [1, 2, 3] and all(h.lr == 1e-3 for h in rec.history)
    assert result.best_epoch == rec.best_epoch
    # The saved weights are the best epoch's: scoring them again gives the recorded Dice.
    val = SegmentationRecipe().load(cfg, SegmentationRecipe().split(cfg).val)
    engine = TorchEngine(loaded.load_network(), "fp32", EngineOptions(threads=1))
    assert task_for(loaded).score(engine, val)["dice"] == pytest.approx(loaded.spec.metrics["dice"], abs=1e-6)


def test_classification_fit_records_patients_and_thresholds(cls_data: Path, tmp_path: Path) -> None:
    cfg = ClassifyConfig(data=cls_data, out=tmp_path / "art", architecture="test_densenet", classes=CLASSES,
                         epochs=2, batch_size=4, preprocessing=Preprocessing(size=(32, 32)))
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    _assert_best_is_recorded(art, "mean_auc")
    assert art.spec.task == "classification" and art.spec.classes == list(CLASSES) and art.spec.out_channels == 2
    assert set(art.spec.thresholds) == set(CLASSES)
    assert all(0.0 <= t <= 1.0 for t in art.spec.thresholds.values())
    split = art.spec.training.split
    assert split is not None and split.unit == "patient" and split.test
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 20  # a patient is in one part only
    assert art.spec.training.n_test == len(split.test)
    assert {"mean_auc", "n"} <= set(art.spec.metrics)
    assert art.load_network()  # the weights fit the recorded architecture


def test_volume_fit_validates_every_few_epochs(vol_data: Path, tmp_path: Path) -> None:
    cfg = _vol_cfg(vol_data, tmp_path / "art")
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    _assert_best_is_recorded(art, "dice")
    rec = art.spec.training
    assert [bool(h.metrics) for h in rec.history] == [False, True, True]  # val_every=2, and the last
    assert rec.best_epoch in (2, 3)
    assert rec.split is not None and rec.split.val == ["held-a"] and sorted(rec.split.train) == ["train-a", "train-b"]
    assert art.spec.segments == {1: "tumour"} and art.spec.input.spatial == WINDOW
    assert art.weights_path.is_file()


def test_time_budget_stops_after_a_validated_epoch(vol_data: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # Spent during epoch 1, which is not due for validation (val_every=3): it is validated
    # anyway, so the stopped run still leaves a scored model.
    cfg = _vol_cfg(vol_data, tmp_path / "art", epochs=5, val_every=3, max_minutes=1e-6)
    with caplog.at_level(logging.WARNING, logger="medinfer.train.fit"):
        run_training(cfg)
    rec = ModelArtifact.load(cfg.out).spec.training
    assert rec.epochs_run == 1 and rec.best_epoch == 1 and rec.history[0].metrics
    assert "time budget" in caplog.text


def test_unknown_architecture_argument_is_a_clear_error(seg_data: Path, tmp_path: Path) -> None:
    from medinfer.errors import MedinferError

    cfg = _seg_cfg(seg_data, tmp_path / "art", arch_kwargs={"chanels": [4, 8, 16]})
    with pytest.raises(MedinferError, match="test_resunet"):
        run_training(cfg)


def test_init_starts_from_an_artifacts_weights(seg_data: Path, tmp_path: Path) -> None:
    import torch

    from medinfer.errors import ArtifactError

    first = run_training(_seg_cfg(seg_data, tmp_path / "a", epochs=1)).artifact
    # a learning rate too small to move a weight: the continued run keeps the start's weights
    again = run_training(_seg_cfg(seg_data, tmp_path / "b", epochs=1, lr=1e-20, init=first.root)).artifact
    start, now = first.load_network().state_dict(), again.load_network().state_dict()
    weights = [k for k in start if k.endswith("conv.weight")]
    assert weights and all(torch.equal(start[k], now[k]) for k in weights)
    fresh = run_training(_seg_cfg(seg_data, tmp_path / "c", epochs=1, lr=1e-20, seed=7)).artifact
    assert not all(torch.equal(start[k], fresh.load_network().state_dict()[k]) for k in weights)
    with pytest.raises(ArtifactError, match="init: its network"):
        run_training(_seg_cfg(seg_data, tmp_path / "d", epochs=1, init=first.root,
                              arch_kwargs={"channels": [4, 8, 32]}))
