"""Class-folder data (``images/<class>/*.png``), mutually exclusive classes and merged groups:
read, trained one epoch, scored and gated through the classification task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medinfer.artifact import ArtifactSpec, ModelArtifact
from medinfer.apps.splits import classification_split
from medinfer.data.labels import is_class_folder, is_labeled_folder, merge_groups, read_labels
from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.runtime import EngineOptions
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.tasks import GateLimits, task_for
from medinfer.train import ClassifyConfig, run_training
from medinfer.train.cli_config import detect_task

FOLDERS = ("NILM", "LSIL", "HSIL")
COLOURS = {"NILM": (200, 60, 60), "LSIL": (60, 200, 60), "HSIL": (60, 60, 200)}
BINARY = {"normal": ("NILM",), "abnormal": ("LSIL", "HSIL")}


def write_class_folders(root: Path, per_class: int = 8, side: int = 24) -> Path:
    """``per_class`` noisy pictures per folder, tinted by class (names unique across folders)."""
    rng = np.random.default_rng(0)
    for k, cls in enumerate(FOLDERS):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (side, side, 3)).astype(np.int64) + COLOURS[cls]
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(
                root / "images" / cls / f"{100 * k + i}.png")
    return root


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("cells"))


def _cfg(data: Path, out: Path, **kw: object) -> ClassifyConfig:
    args: dict[str, object] = {
        "architecture": "mcnn", "arch_kwargs": {"scales": 2, "width": 4}, "epochs": 1, "batch_size": 4,
        "threads": 1, "split": (0.5, 0.25, 0.25), "preprocessing": Preprocessing(size=(16, 16))}
    return ClassifyConfig(data=data, out=out, **{**args, **kw})


def test_class_folders_read_one_record_per_picture(cells: Path) -> None:
    assert is_class_folder(cells) and is_labeled_folder(cells)
    records = read_labels(cells, FOLDERS)
    assert len(records) == 24
    assert {next(iter(r.findings)) for r in records} == set(FOLDERS)
    assert all(r.patient == r.path.stem and r.path.parent.name in r.findings for r in records)
    assert {r.abnormal for r in records if "NILM" in r.findings} == {0}
    assert {r.abnormal for r in records if "NILM" not in r.findings} == {1}
    merged = read_labels(cells, groups=BINARY)
    assert sorted(next(iter(r.findings)) for r in merged).count("abnormal") == 16


def test_class_folder_errors_name_the_problem(cells: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="'HSIL' is not one of the classes"):
        read_labels(cells, ("NILM", "LSIL"))
    with pytest.raises(InputError, match="'HSIL' is not one of the classes LSIL, NILM"):  # not in a group
        read_labels(cells, groups={"normal": ("NILM",), "low": ("LSIL",)})
    with pytest.raises(InputError, match="HSIL in no class group"):
        merge_groups(read_labels(cells, FOLDERS), {"normal": ("NILM",), "low": ("LSIL",)})
    dup = write_class_folders(tmp_path / "dup", per_class=1)
    (dup / "images" / "LSIL" / "100.png").rename(dup / "images" / "LSIL" / "0.png")
    with pytest.raises(InputError, match="also in"):
        read_labels(dup, FOLDERS)


def test_a_labels_csv_without_findings_leaves_the_class_folders_in_charge(tmp_path: Path) -> None:
    """CRIC ships ``labels.csv`` with ``image,class,...``: no findings column, so its folders are read."""
    root = write_class_folders(tmp_path / "cric", per_class=2)
    (root / "labels.csv").write_text("image,class\nimages/NILM/0.png,NILM\n")
    assert len(read_labels(root, FOLDERS)) == 6
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(flat / "images" / "a.png")
    (flat / "labels.csv").write_text("image,class\na.png,NILM\n")
    with pytest.raises(InputError, match="missing column"):  # no class folders: the CSV's error as before
        read_labels(flat, FOLDERS)


def test_detect_task_tells_class_folders_from_image_mask_folders(cells: Path, tmp_path: Path) -> None:
    assert detect_task(cells) == "classification"
    kvasir = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (kvasir / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(kvasir / sub / "a.png")
    assert not is_class_folder(kvasir) and detect_task(kvasir) == "segmentation"


def test_exclusive_run_trains_and_reports_accuracy(cells: Path, tmp_path: Path) -> None:
    cfg = _cfg(cells, tmp_path / "art", classes=FOLDERS, exclusive=True, normal="NILM")
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    assert art.spec.classification is not None and art.spec.classification.exclusive
    assert art.spec.out_channels == 3 and art.spec.classes == list(FOLDERS)
    assert {"accuracy", "balanced_accuracy", "mean_auc", "abnormal_auc"} <= set(art.spec.metrics)
    assert 0.0 <= art.spec.metrics["accuracy"] <= 1.0
    split = art.spec.training.split
    assert split is not None and sorted(split.train + split.val + split.test, key=int) == sorted(
        [str(100 * k + i) for k in range(3) for i in range(8)], key=int)  # one part per crop
    task = task_for(art)
    assert [c for c, _ in task.columns][:3] == ["mean_auc", "accuracy", "balanced_accuracy"]
    engine = TorchEngine(art.load_network(), "fp32", EngineOptions(threads=1))
    data = task.load_eval(cells)
    scores = task.score(engine, data, n_boot=20)
    assert scores["n"] == 24 and np.asarray(scores["confusion"]).sum() == 24
    assert scores["intervals"]["accuracy"][0] <= scores["accuracy"] <= scores["intervals"]["accuracy"][1]
    probs = task.probabilities(np.stack(task.outputs(engine.infer, data)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)  # softmax, not a sigmoid each
    pred = task.predict(engine, task.read_input([cells / "images" / "HSIL" / "200.png"]))
    assert pred.extra["predicted"] in FOLDERS and sum(pred.scores.values()) == pytest.approx(1.0)


def test_binary_merge_gives_two_classes(cells: Path, tmp_path: Path) -> None:
    cfg = _cfg(cells, tmp_path / "art", groups=BINARY, exclusive=True, normal="normal")
    assert cfg.classes == ("normal", "abnormal")
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    assert art.spec.out_channels == 2 and art.spec.classes == ["normal", "abnormal"]
    assert art.spec.classification.groups == {"normal": ["NILM"], "abnormal": ["LSIL", "HSIL"]}
    data = task_for(art).load_eval(cells)  # the folders merge the same way when evaluated
    assert data.labels.shape == (24, 2) and data.labels.sum(axis=0).tolist() == [8.0, 16.0]
    # The split folders the optimizer and the report read back (labels.csv of merged classes).
    parts = classification_split(art, tmp_path / "split")
    test = task_for(art).load_eval(parts.test)
    split = art.spec.training.split
    assert test.labels.shape[1] == 2 and len(test.labels) == len(split.test or split.val)  # a crop per "patient"


def test_exclusive_gate_checks_accuracy_too(cells: Path, tmp_path: Path) -> None:
    cfg = _cfg(cells, tmp_path / "art", classes=FOLDERS, exclusive=True)
    run_training(cfg)
    task = task_for(ModelArtifact.load(cfg.out))
    ref = {"mean_auc": 0.9, "auc/NILM": 0.9, "accuracy": 0.80}
    assert task.gate(ref, dict(ref), GateLimits()) == ""
    assert "accuracy drop" in task.gate(ref, {**ref, "accuracy": 0.78}, GateLimits(max_drop=0.005))


def test_artifacts_without_the_field_stay_multi_label(tmp_path: Path, cells: Path) -> None:
    cfg = _cfg(cells, tmp_path / "art", classes=FOLDERS)
    run_training(cfg)
    raw = json.loads((cfg.out / "artifact.json").read_text())
    assert raw["classification"] is None  # a plain multi-label run records nothing new
    raw.pop("classification")  # as written before the field existed
    assert ArtifactSpec.model_validate(raw).classification is None
    task = task_for(ModelArtifact.load(cfg.out))
    probs = task.probabilities(np.array([[0.0, 2.0, -2.0]]))
    np.testing.assert_allclose(probs, 1.0 / (1.0 + np.exp(-np.array([[0.0, 2.0, -2.0]]))))
    ref = {"mean_auc": 0.9, "accuracy": 0.8}
    assert task.gate(ref, {**ref, "accuracy": 0.1}, GateLimits()) == ""  # multi-label: no accuracy gate
    assert [c for c, _ in task.columns] == ["mean_auc", "abnormal_auc"]


@pytest.mark.parametrize(("kw", "message"), [
    ({"exclusive": True}, "needs the classes listed"),
    ({"classes": ("a", "b"), "groups": {"b": ("x",), "a": ("y",)}}, "must be the groups' names"),
    ({"groups": {"a": ("x",), "b": ("x",)}}, "in several: x"),
    ({"classes": ("a",), "normal": "b"}, "not one of the classes"),
])
def test_inconsistent_class_settings_are_refused(kw: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        ClassifyConfig(data=tmp_path, out=tmp_path, **kw)
