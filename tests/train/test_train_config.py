"""`medinfer train` settings: YAML + --set overrides, typed flags, today's flags, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medinfer.artifact import ModelArtifact
from medinfer.cli import app
from medinfer.errors import InputError, MedinferError
from medinfer.train import ClassifyConfig, TrainConfig, VolumeTrainConfig
from medinfer.train.cli_config import (
    TrainFlags,
    build_config,
    from_flags,
    load_config,
    parse_set,
    validate,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def _yaml(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_set_overrides_reach_the_config(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "task: classification\ndata: d\nout: o\nepochs: 9\npreprocessing: {channels: 3}\n")
    cfg = build_config(path, ["epochs=3", "preprocessing.size=[64,64]", "arch_kwargs.growth_rate=4"], TrainFlags())
    assert isinstance(cfg, ClassifyConfig)
    assert cfg.epochs == 3 and cfg.arch_kwargs == {"growth_rate": 4}
    assert cfg.preprocessing.size == (64, 64)
    # keys the file does not name keep the recipe's default (ImageNet mean for classification)
    assert cfg.preprocessing.mean == ClassifyConfig.model_fields["preprocessing"].default.mean
    assert cfg.optimizer == "adamw" and cfg.schedule == "cosine"


def test_typed_flags_override_the_file_and_set_overrides_both(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "task: segmentation\ndata: d\nout: o\nepochs: 9\nlr: 0.01\n")
    flags = TrainFlags(epochs=7, lr=0.5, channels="4,8")
    cfg = build_config(path, ["lr=0.002"], flags, given=["epochs", "lr", "channels"])
    assert cfg.epochs == 7 and cfg.lr == 0.002 and cfg.arch_kwargs == {"channels": [4, 8]}
    # a flag left at its default does not override the file
    assert build_config(path, [], TrainFlags(), given=[]).epochs == 9


def test_shipped_polyp_config_is_the_recorded_recipe() -> None:
    # the shipped polyp model was trained by config/train.polyp-strong.yaml (issue 11);
    # config/train.polyp.yaml keeps the first model's DQ-ResUNet paper recipe
    cfg = load_config(REPO / "config" / "train.polyp-strong.yaml")
    recorded = ModelArtifact.load(REPO / "models" / "polyp-resunet").spec.training.config
    assert isinstance(cfg, TrainConfig)
    mine = cfg.model_dump(mode="json")
    # every setting of the recorded run, except where it writes (never over the shipped model)
    same = [k for k in recorded if k not in ("preprocessing", "out")]
    assert {k: mine[k] for k in same} == {k: recorded[k] for k in same}
    assert mine["out"] == "runs/polyp-resunet-strong"
    assert {k: mine["preprocessing"][k] for k in recorded["preprocessing"]} == recorded["preprocessing"]


@pytest.mark.parametrize("text, needle", [
    ("task: segmentation\ndata: d\nout: o\nepoch: 3\n", "epoch: Extra inputs are not permitted"),
    ("task: segmentation\ndata: d\nout: o\npreprocessing: {siz: [64, 64]}\n", "unknown preprocessing key(s) siz"),
    ("task: segmentation\ndata: d\nout: o\nloss: focal\n", "loss"),
    ("task: segmentaton\ndata: d\nout: o\n", "task"),
    ("task: segmentation\nout: o\n", "data: Field required"),
    ("- just\n- a list\n", "must be a mapping"),
    ("epochs: [3\n", "not valid YAML"),
])
def test_bad_config_is_refused_naming_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = _yaml(tmp_path, text, "bad.yaml")
    with pytest.raises(InputError) as err:
        load_config(path)
    assert err.value.path == path and needle in str(err.value)


def test_bad_set_items_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MedinferError, match="KEY=VALUE"):
        parse_set("epochs")
    path = _yaml(tmp_path, "task: segmentation\ndata: d\nout: o\n")
    with pytest.raises(InputError, match="epoch: Extra inputs"):
        build_config(path, ["epoch=3"], TrainFlags())
    with pytest.raises(InputError, match="not a mapping"):
        build_config(path, ["epochs=3", "epochs.x=1"], TrainFlags())


def test_flags_pick_the_recipe_and_its_flags_as_before(seg_data: Path, cls_data: Path, vol_data: Path) -> None:
    flags = {"out": Path("o"), "epochs": 5, "batch_size": 8, "loss": "dicece", "lr_step": 7, "size": 32, "limit": 6}
    seg = validate(from_flags(TrainFlags(data=seg_data, **flags)))
    cls = validate(from_flags(TrainFlags(data=cls_data, **flags)))
    vol = validate(from_flags(TrainFlags(data=vol_data, **flags)))
    assert isinstance(seg, TrainConfig) and seg.architecture == "resunet"
    assert (seg.loss, seg.lr_step, seg.batch_size, seg.limit, seg.preprocessing.size) == ("dicece", 7, 8, 6, (224, 224))
    assert isinstance(cls, ClassifyConfig) and cls.architecture == "densenet121"
    assert (cls.epochs, cls.batch_size, cls.limit, cls.preprocessing.size) == (5, 8, 6, (32, 32))
    assert isinstance(vol, VolumeTrainConfig) and vol.architecture == "unet3d"
    assert (vol.epochs, vol.batch_size) == (5, 4)  # --batch-size never reached the 3D recipe
    # the command's own defaults, not the configs': 100 epochs, batch 16 for classification
    assert (validate(from_flags(TrainFlags(data=cls_data, out=Path("o")))).epochs,
            validate(from_flags(TrainFlags(data=cls_data, out=Path("o")))).batch_size) == (100, 16)


def test_cli_refuses_a_misspelt_key_naming_the_file(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "task: segmentation\ndata: d\nout: o\nepcohs: 3\n", "typo.yaml")
    res = runner.invoke(app, ["train", "--config", str(path)])
    assert res.exit_code == 2
    assert "typo.yaml" in res.output and "epcohs" in res.output and "Traceback" not in res.output


def test_cli_without_data_or_config_is_a_clear_error() -> None:
    res = runner.invoke(app, ["train", "--out", "x"])
    assert res.exit_code == 2 and "--config" in res.output


def test_cli_trains_from_flags_and_from_yaml(seg_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "flags"
    res = runner.invoke(app, ["train", "--data", str(seg_data), "--out", str(out), "--model", "test_resunet",
                              "--epochs", "1", "--batch-size", "4", "--limit", "6"])
    assert res.exit_code == 0, res.output
    assert "best epoch 1: val Dice" in res.output
    rec = ModelArtifact.load(out).spec.training
    assert rec.config["architecture"] == "test_resunet" and rec.n_train == 5 and rec.config["batch_size"] == 4

    path = _yaml(tmp_path, f"data: {seg_data}\nout: {tmp_path / 'yaml'}\narchitecture: test_resunet\n"
                           "epochs: 5\nbatch_size: 4\nlimit: 6\n")
    res = runner.invoke(app, ["train", "--config", str(path), "--set", "epochs=1",
                              "--set", "preprocessing.size=[32,32]"])
    assert res.exit_code == 0, res.output
    art = ModelArtifact.load(tmp_path / "yaml")
    assert art.spec.input.spatial == (32, 32) and art.spec.training.epochs_run == 1
    assert art.spec.training.config["task"] == "segmentation"  # picked from the data layout
