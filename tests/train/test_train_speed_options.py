"""Multi-label 3D training and the step options (bf16 autocast, channels-last): each run
writes a truthful artifact recording the CPU and the arithmetic it trained with."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from medinfer.artifact import ModelArtifact
from medinfer.data.spec import Preprocessing
from medinfer.data.volumes import find_volume_pairs, load_volumes
from medinfer.errors import InputError
from medinfer.tasks import GateLimits, task_for
from medinfer.train import TrainConfig, VolumeTrainConfig, run_training
from medinfer.train.fit import StepOptions
from medinfer.train.recipes import VolumeRecipe

LABELS = {1: "hippocampus anterior", 2: "hippocampus posterior"}


def _cfg(data: Path, out: Path, **kw: object) -> VolumeTrainConfig:
    pre = Preprocessing(size=(16, 16, 8), scale=1.0, mean=(0.0,), std=(1.0,), channels=1,
                        intensity="zscore", overlap=0.0)
    args: dict[str, object] = {"architecture": "test_unet3d", "val_prefixes": ("held",),
                               "epochs": 2, "windows_per_volume": 2, "batch_size": 2,
                               "val_every": 1, "segments": LABELS, "preprocessing": pre}
    return VolumeTrainConfig(data=data, out=out, **{**args, **kw})


def test_float_label_masks_load_as_integer_labels(labels_data: Path) -> None:
    data = load_volumes(find_volume_pairs(labels_data), _cfg(labels_data, labels_data).preprocessing)
    assert all(m.dtype == np.uint8 and set(np.unique(m)) == {0, 1, 2} for m in data.masks)


def test_a_mask_that_is_not_labels_is_refused_naming_it(labels_data: Path, tmp_path: Path) -> None:
    import nibabel as nib

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    img = np.ones((8, 8, 4), np.float32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "images" / "a.nii.gz")
    nib.save(nib.Nifti1Image(img * 0.5, np.eye(4)), tmp_path / "masks" / "a.nii.gz")
    with pytest.raises(InputError, match="a.nii.gz.*not integer labels"):
        load_volumes(find_volume_pairs(tmp_path), _cfg(tmp_path, tmp_path).preprocessing)


def test_multi_label_volume_training_scores_each_label(labels_data: Path, tmp_path: Path) -> None:
    cfg = _cfg(labels_data, tmp_path / "art")
    assert VolumeRecipe().out_channels(cfg) == 3  # background + two labels, softmax
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    assert art.spec.segments == LABELS and art.spec.out_channels == 3
    metrics = art.spec.metrics
    per = [metrics["dice/hippocampus anterior"], metrics["dice/hippocampus posterior"]]
    assert metrics["dice"] == pytest.approx(np.mean(per))
    task = task_for(art)
    assert ("dice/hippocampus posterior", "Dice hippocampus posterior") in task.columns
    # the gate holds every label to the limit, not only the mean
    ref = {"dice": 0.8, "dice/hippocampus anterior": 0.9, "dice/hippocampus posterior": 0.7}
    worse = {"dice": 0.8, "dice/hippocampus anterior": 0.95, "dice/hippocampus posterior": 0.65}
    assert "posterior" in task.gate(ref, worse, GateLimits(max_drop=0.005))
    assert task.gate(ref, dict(ref), GateLimits(max_drop=0.005)) == ""


def test_auto_precision_follows_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(data=tmp_path, out=tmp_path, precision="auto")
    fit_module = importlib.import_module("medinfer.train.fit")  # the module, not fit()
    monkeypatch.setattr(fit_module, "has_bf16", lambda: True)
    assert StepOptions.of(cfg).precision == "bf16"
    monkeypatch.setattr(fit_module, "has_bf16", lambda: False)
    assert StepOptions.of(cfg).precision == "fp32"  # emulated BF16 would be slower
    assert StepOptions.of(cfg.model_copy(update={"precision": "bf16"})).bf16


def test_bf16_channels_last_training_records_how_it_ran(seg_data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=seg_data, out=tmp_path / "art", architecture="test_resunet", epochs=1,
                      batch_size=4, preprocessing=Preprocessing(size=(32, 32)),
                      precision="bf16", channels_last=True)
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    machine = art.spec.training.machine
    assert (machine["precision"], machine["channels_last"]) == ("bf16", True)
    assert "isa" in machine and machine["logical_cores"] >= 1
    net = art.load_network()  # the weights load back into a plain FP32 network
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert np.isfinite(art.spec.metrics["dice"])


def test_channels_last_input_keeps_values() -> None:
    step = StepOptions(channels_last=True)
    x = torch.randn(2, 3, 8, 8)
    y = step.input(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    v = step.input(torch.randn(1, 1, 4, 4, 4))
    assert v.is_contiguous(memory_format=torch.channels_last_3d)


def test_a_run_without_a_test_part_gates_on_validation_and_tunes_on_nothing(
        cls_data: Path, tmp_path: Path) -> None:
    from medinfer.apps.splits import classification_split
    from medinfer.data.labels import read_labels
    from medinfer.train import ClassifyConfig

    cfg = ClassifyConfig(data=cls_data, out=tmp_path / "art", architecture="test_densenet",
                         classes=("Effusion", "Mass"), epochs=1, batch_size=4,
                         split=(0.8, 0.2, 0.0), preprocessing=Preprocessing(size=(32, 32)))
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    folders = classification_split(art, tmp_path / "work")
    assert folders.test_is_val and folders.tune is None
    gate = {r.patient for r in read_labels(folders.test, cfg.classes)}
    calib = {r.patient for r in read_labels(folders.calib, cfg.classes)}
    assert gate == set(art.spec.training.split.val) and not gate & calib
