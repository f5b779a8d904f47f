"""Re-create a trained artifact's data split as folders other commands can take.

Training records which patients (classification) or volumes (3D) it trained, validated
and tested on; these helpers lay those parts out again as symlink folders so that
calibration, accuracy-control tuning and the final gate each see the right part, and the
gate never sees data the model was trained, tuned or calibrated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medinfer.artifact import ModelArtifact, label_groups
from medinfer.data.labels import read_labels, write_subset
from medinfer.data.volumes import find_volume_pairs, slab_split, write_volume_subset
from medinfer.errors import ArtifactError


@dataclass(frozen=True)
class SplitFolders:
    """``calib``: training data for calibration; ``tune``: the validation part (accuracy
    control; None when the validation part is the gate's); ``test``: never seen in
    training, tuning or calibration (the gate). ``test_is_val``: the run kept no test part,
    so the gate sees the validation patients, which chose the best epoch (and the
    thresholds) but were never trained or calibrated on."""

    calib: Path
    tune: Path | None
    test: Path
    test_is_val: bool = False


def classification_split(art: ModelArtifact, work: Path, data: Path | None = None,
                         n_calib: int = 128) -> SplitFolders:
    """Folders of the artifact's train (first ``n_calib``), validation and test patients.

    A run trained with no test part (``split: [0.8, 0.2, 0.0]``: the data set's own test
    split is kept elsewhere) gates on the validation patients and tunes on none
    (``test_is_val``): accuracy control must not tune on what gates it."""
    split = art.spec.training.split
    if split is None or split.unit != "patient":
        raise ArtifactError(art.root, "no recorded patient split (train it with `medinfer train`)")
    data = Path(data or str(art.spec.training.data))
    records = read_labels(data, art.spec.classes, label_groups(art.spec))
    parts = {k: [r for r in records if r.patient in set(getattr(split, k) or ())]
             for k in ("train", "val", "test")}
    calib = write_subset(parts["train"][:n_calib], work / "calib")
    if not parts["test"]:
        return SplitFolders(calib, None, write_subset(parts["val"], work / "test"), test_is_val=True)
    return SplitFolders(calib, write_subset(parts["val"], work / "tune"),
                        write_subset(parts["test"], work / "test"))


def volume_split(art: ModelArtifact, work: Path, data: Path | None = None) -> SplitFolders:
    """Folders of the artifact's training volumes (calibration and tuning) and held-out ones (test).

    With six volumes there is no separate validation part: accuracy control tunes on the
    training volumes, and the gate still only sees the held-out patient.
    """
    split = art.spec.training.split
    if split is None or split.unit not in ("case", "slab") or not split.val:
        raise ArtifactError(art.root, "no recorded volume split (train it with `medinfer train`)")
    pairs = find_volume_pairs(Path(data or str(art.spec.training.data)))
    if split.unit == "slab":  # one volume: train on its slices outside the held-out slab
        start, stop = art.spec.training.config["val_slab"]
        tr, te = slab_split(pairs, start, stop)
        calib = write_volume_subset(tr, work / "calib")
        # no accuracy-control tuning: NNCF's ranker compares the whole-volume outputs of the
        # tuning items with window-sized ones and fails on volumes larger than the window
        return SplitFolders(calib, None, write_volume_subset(te, work / "test"), test_is_val=True)
    train, val = split.train, split.val
    tr = [p for p in pairs if p.name in train]
    te = [p for p in pairs if p.name in val]
    calib = write_volume_subset(tr, work / "calib")
    # the held-out volumes also chose the best epoch: they gate, nothing tunes on them
    return SplitFolders(calib, calib, write_volume_subset(te, work / "test"), test_is_val=True)
