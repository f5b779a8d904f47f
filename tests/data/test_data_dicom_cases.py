"""The DICOM case layout (3D-IRCADb: ``<case>/ct/`` + ``<case>/masks/<structure>/``), read in
place from ../shared/data/liver-ct-ircadb, and the slab split of a one-volume data set."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA, require

from medinfer.data.spec import Preprocessing
from medinfer.data.volumes import find_volume_pairs, is_volume_folder, load_volumes, prepare_volume
from medinfer.errors import InputError
from medinfer.train import VolumeTrainConfig
from medinfer.train.recipes import VolumeRecipe

IRCADB = SHARED_DATA / "liver-ct-ircadb"
CT_PRE = Preprocessing(size=(32, 32, 8), scale=0.004, mean=(0.2,), std=(1.0,), channels=1,
                       window=(-200.0, 300.0), overlap=0.0)


def _number(path: Path) -> int:
    return int(re.sub(r"\D", "", path.name))


def _case(tmp: Path, ct: list[int], masks: dict[str, list[int]]) -> Path:
    """A case folder of symlinks to the shipped (unmodified) files: CT slices ``ct``, mask
    series ``masks`` (structure -> slice numbers)."""
    case = require(IRCADB / "ircadb01_01", "liver-ct-ircadb")
    root = tmp / "case"
    (root / "ct").mkdir(parents=True)
    for n in ct:
        os.symlink(case / "ct" / f"image_{n}", root / "ct" / f"image_{n}")
    for name, numbers in masks.items():
        (root / "masks" / name).mkdir(parents=True)
        for n in numbers:
            os.symlink(case / "masks" / "liver" / f"image_{n}", root / "masks" / name / f"image_{n}")
    return root


def test_the_shipped_liver_ct_is_a_volume_folder_with_its_mask_read_in_place() -> None:
    root = require(IRCADB, "liver-ct-ircadb")
    assert is_volume_folder(root)
    (pair,) = find_volume_pairs(root)
    assert pair.name == "ircadb01_01" and pair.binary and pair.mask.name == "liver"
    data = load_volumes([pair.in_slab(0.75, 1.0)], CT_PRE)
    # the README: 129 slices of 512 x 512; the last quarter is z 97..128 (round(0.75 * 129) = 97)
    assert data.names == ["ircadb01_01[z 97:129]"]
    assert data.images[0].shape == (1, 512, 512, 32) and data.masks[0].shape == (512, 512, 32)
    assert set(np.unique(data.masks[0])) == {0, 1}  # 0/255 in the files -> label 1
    assert data.images[0].min() == pytest.approx(-1.0) and data.images[0].max() == pytest.approx(1.0)


def test_mask_series_of_a_case_are_merged_into_one_label(tmp_path: Path) -> None:
    # "liver" on slices 60-63; a "tumor" series over the same slices adds nothing outside it,
    # so the merged label equals the liver mask (the README's whole-liver rule)
    root = _case(tmp_path, list(range(60, 64)), {"liver": list(range(60, 64)), "tumor": list(range(60, 64))})
    (pair,) = find_volume_pairs(root)
    assert [p.name for p in (pair.mask, *pair.extra_masks)] == ["liver", "tumor"]
    merged = load_volumes([pair], CT_PRE).masks[0]
    liver = load_volumes([find_volume_pairs(_case(tmp_path / "b", list(range(60, 64)),
                                                  {"liver": list(range(60, 64))}))[0]], CT_PRE).masks[0]
    np.testing.assert_array_equal(merged, liver)
    assert merged.sum() > 0


def test_a_mask_series_on_other_slices_is_refused_naming_it(tmp_path: Path) -> None:
    root = _case(tmp_path, list(range(60, 64)), {"liver": list(range(70, 74))})
    with pytest.raises(InputError, match=r"masks/liver.*geometry"):
        load_volumes(find_volume_pairs(root), CT_PRE)


def test_a_mask_series_with_missing_slices_is_refused_naming_it(tmp_path: Path) -> None:
    root = _case(tmp_path, list(range(60, 64)), {"liver": list(range(60, 63))})
    with pytest.raises(InputError, match=r"masks/liver.*shape"):
        load_volumes(find_volume_pairs(root), CT_PRE)


def test_a_case_without_mask_series_is_refused_naming_it(tmp_path: Path) -> None:
    root = _case(tmp_path, list(range(60, 62)), {})
    with pytest.raises(InputError, match=r"masks.*no mask series"):
        find_volume_pairs(root)


def test_the_ct_window_clips_before_scaling() -> None:
    x = np.array([[[[-1000.0, -200.0, 50.0, 300.0, 1000.0]]]], np.float32)
    out = prepare_volume(x, CT_PRE)
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    no_window = prepare_volume(x, CT_PRE.model_copy(update={"window": None}))
    assert no_window.max() == pytest.approx(3.8)


def test_slab_split_trains_outside_the_held_out_slab(tmp_path: Path) -> None:
    root = _case(tmp_path, list(range(50, 70)), {"liver": list(range(50, 70))})
    cfg = VolumeTrainConfig(data=root, out=tmp_path / "art", val_slab=(0.25, 0.5), preprocessing=CT_PRE)
    split = VolumeRecipe().split(cfg)
    assert split.record.unit == "slab"
    assert [p.slab for p in split.train] == [(0.0, 0.25), (0.5, 1.0)]
    assert [p.slab for p in split.val] == [(0.25, 0.5)]
    train, val = (VolumeRecipe().load(cfg, part) for part in (split.train, split.val))
    assert train.names == ["case[z 0:5]", "case[z 10:20]"] and val.names == ["case[z 5:10]"]
    assert sum(m.shape[-1] for m in train.masks) + val.masks[0].shape[-1] == 20


@pytest.mark.parametrize("slab", [(0.5, 0.5), (0.0, 1.0), (-0.1, 0.5), (0.5, 1.2)])
def test_a_slab_that_leaves_nothing_to_train_or_validate_is_refused(tmp_path: Path, slab) -> None:
    with pytest.raises(ValueError, match="val_slab"):
        VolumeTrainConfig(data=tmp_path, out=tmp_path / "a", val_slab=slab)


def test_a_ct_model_trains_and_evaluates_on_the_dicom_case_layout(tmp_path: Path) -> None:
    """Training with a held-out slab, then `medinfer evaluate --json` on the same layout."""
    import json

    from typer.testing import CliRunner

    from medinfer.artifact import ModelArtifact
    from medinfer.cli import app
    from medinfer.train import run_training

    root = _case(tmp_path, list(range(60, 72)), {"liver": list(range(60, 72))})
    pre = CT_PRE.model_copy(update={"size": (128, 128, 4)})
    cfg = VolumeTrainConfig(data=root.parent, out=tmp_path / "art", architecture="test_unet3d",
                            val_slab=(0.75, 1.0), epochs=1, windows_per_volume=2, batch_size=2,
                            preprocessing=pre, segment="liver")
    run_training(cfg)
    art = ModelArtifact.load(cfg.out)
    assert art.spec.training.split.unit == "slab"
    assert art.spec.training.split.val == ["case[z 0.75-1.00]"]
    assert art.spec.preprocessing.window == (-200.0, 300.0)  # the window travels with the model
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(cfg.out), "--data", str(root.parent),
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert payload["n"] == 1 and 0.0 <= payload["dice"] <= 1.0

    # the optimizer's folders: calibration on the trained slices, the gate on the held-out slab
    from medinfer.apps.splits import volume_split

    folders = volume_split(art, tmp_path / "split")
    calib, test = (load_volumes(find_volume_pairs(f), pre) for f in (folders.calib, folders.test))
    assert folders.test_is_val
    assert [m.shape[-1] for m in calib.masks] == [9] and [m.shape[-1] for m in test.masks] == [3]
    (pair,) = find_volume_pairs(root.parent)
    held_out = load_volumes([pair.in_slab(0.75, 1.0)], pre)
    np.testing.assert_array_equal(test.masks[0], held_out.masks[0])
    assert all(p.is_symlink() for p in (folders.test / "case_z9-12" / "ct").iterdir())
