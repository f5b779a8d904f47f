"""Image classification data: a folder with ``labels.csv`` and ``images/``, or class folders.

The layout is the NIH ChestX-ray14 one (``../shared/data/nih-cxr-1000``): one row per
image, ``findings`` holding NIH's 'Finding Labels' ('|'-separated, 'No Finding' for
none), ``abnormal`` a 0/1 label and ``patient_id`` for patient-level splits. The
single-finding layout of ``../shared/data/pneumonia-cxr-224`` reads the same way: its
columns ``finding``, ``label`` and ``patient`` stand for ``findings``, ``abnormal`` and
``patient_id`` (:data:`COLUMN_ALIASES`).

The class-folder layout (``../shared/data/cervical-cytology-cric``: ``images/<class>/<N>.png``)
reads through the same functions: one record per file, its class the folder's name, its
"patient" the file's own stem (there are no patient ids: a split is then per image). A
``labels.csv`` beside the class folders is used only when it has a findings column; CRIC's
(``image,class,...``) has none, so its folders are read.

``groups`` (:func:`read_labels`) merges labels into coarser classes, e.g. the six Bethesda
folders into ``{"normal": ["NILM"], "abnormal": ["ASC-US", "LSIL", "ASC-H", "HSIL", "SCC"]}``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.data.pairs import IMAGE_SUFFIXES
from medinfer.data.preprocess import prepare_batch
from medinfer.io import read_image

LABELS_FILE = "labels.csv"
NO_FINDING = "No Finding"
# The 14 ChestX-ray14 findings in the order CheXNet reports them.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
_REQUIRED = ("image", "findings")
#: Other names of a column, tried in order when the canonical one is absent.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "findings": ("finding",), "abnormal": ("label",), "patient_id": ("patient",)}
#: Class-folder names (case-insensitive) whose images count as normal (``abnormal`` 0).
NORMAL_FOLDERS = frozenset({"nilm", "no finding", "normal", "negative"})
Groups = Mapping[str, Sequence[str]]
"""Output class -> the labels (findings or class folders) merged into it."""


def _column(fieldnames: Sequence[str], name: str) -> str | None:
    """The column of ``labels.csv`` that holds ``name`` (itself or an alias), if any."""
    for candidate in (name, *COLUMN_ALIASES.get(name, ())):
        if candidate in fieldnames:
            return candidate
    return None


@dataclass(frozen=True)
class LabeledImage:
    """One row of ``labels.csv`` or one picture of a class folder: an image file and its findings."""

    path: Path
    findings: frozenset[str]
    abnormal: int
    patient: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class LabeledArrays:
    """Images prepared for the network and their labels.

    Attributes:
        images: (N, C, H, W) float32 network inputs.
        labels: (N, K) float32 0/1, one column per class of ``classes``.
        abnormal: (N,) int 0/1.
        names: file names, in order.
        classes: the K class names.
    """

    images: np.ndarray
    labels: np.ndarray
    abnormal: np.ndarray
    names: list[str]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int]) -> LabeledArrays:
        idx = list(index)
        return LabeledArrays(self.images[idx], self.labels[idx], self.abnormal[idx],
                             [self.names[i] for i in idx], self.classes)


def is_class_folder(root: str | Path) -> bool:
    """Whether ``root/images`` holds class sub-folders of pictures and no picture itself
    (``images/<class>/<file>.png``; Kvasir's ``images/`` holds the pictures directly)."""
    images = Path(root) / "images"
    if not images.is_dir():
        return False
    entries = [p for p in images.iterdir() if not p.name.startswith(".")]
    if any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
        return False
    return any(_pictures(d) for d in entries if d.is_dir())


def is_labeled_folder(root: str | Path) -> bool:
    """Whether ``root`` holds a ``labels.csv`` or class folders (the classification layouts)."""
    return (Path(root) / LABELS_FILE).is_file() or is_class_folder(root)


def read_labels(root: str | Path, classes: Sequence[str] = NIH_FINDINGS,
                groups: Groups | None = None) -> list[LabeledImage]:
    """The labeled images of ``root``: rows of ``root/labels.csv`` (images looked up under
    ``root/images``) or, without a usable ``labels.csv``, the files of its class folders.

    Args:
        root: the data folder.
        classes: the known classes (an image labeled otherwise is an error).
        groups: output class -> the labels merged into it; the records then carry the
            output classes, and the labels themselves must be among the groups' members
            (``classes`` is then the groups' names).

    Raises:
        InputError: naming the CSV (and row) when it is missing, lacks a column, names an
            unknown finding or an image that does not exist; naming a class folder that is
            not a known class, or a file name found in two class folders.
    """
    root = Path(root)
    csv_path = root / LABELS_FILE
    known = {m for members in groups.values() for m in members} | set(groups) if groups else set(classes)
    if csv_path.is_file() and not (is_class_folder(root) and not _has_findings(csv_path)):
        records = _read_csv(root, known)
    elif is_class_folder(root):
        records = _read_class_folders(root, known)
    else:
        raise InputError(root, f"no {LABELS_FILE} and no class folders under images/: "
                               "not a classification data folder")
    return merge_groups(records, groups) if groups else records


def _has_findings(csv_path: Path) -> bool:
    with csv_path.open(newline="") as fh:
        return _column(next(csv.reader(fh), []), "findings") is not None


def _read_csv(root: Path, known: set[str]) -> list[LabeledImage]:
    csv_path = root / LABELS_FILE
    out = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        missing = [c for c in _REQUIRED if _column(fields, c) is None]
        if missing:
            raise InputError(csv_path, f"missing column(s) {', '.join(missing)}")
        col = {c: _column(fields, c) for c in ("findings", "abnormal", "patient_id")}
        for line, row in enumerate(reader, start=2):
            raw = (row[col["findings"]] or "").strip()
            found = frozenset() if raw in ("", NO_FINDING) else frozenset(raw.split("|"))
            unknown = found - known
            if unknown:
                raise InputError(csv_path, f"row {line}: unknown finding(s) {', '.join(sorted(unknown))}")
            path = root / "images" / row["image"]
            if not path.is_file():
                raise InputError(csv_path, f"row {line}: image {path} does not exist")
            abnormal = int((row[col["abnormal"]] if col["abnormal"] else "") or (1 if found else 0))
            patient = row[col["patient_id"]] if col["patient_id"] else ""
            out.append(LabeledImage(path, found, abnormal, str(patient or row["image"])))
    if not out:
        raise InputError(csv_path, "no rows")
    return out


def _pictures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_class_folders(root: Path, known: set[str]) -> list[LabeledImage]:
    """One record per picture of ``root/images/<class>/``, sorted by class, then name."""
    out: list[LabeledImage] = []
    seen: dict[str, Path] = {}
    for folder in sorted(p for p in (root / "images").iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _pictures(folder)
        if not files:
            continue
        if folder.name not in known:
            raise InputError(folder, f"class folder {folder.name!r} is not one of the classes "
                                     f"{', '.join(sorted(known))}")
        abnormal = int(folder.name.lower() not in NORMAL_FOLDERS)
        for path in files:
            if path.name in seen:  # records are named by file: a split folder links them by name
                raise InputError(path, f"the file name is also in {seen[path.name].parent}")
            seen[path.name] = path
            out.append(LabeledImage(path, frozenset({folder.name}), abnormal, path.stem))
    return out


def merge_groups(records: Sequence[LabeledImage], groups: Groups) -> list[LabeledImage]:
    """``records`` with each finding replaced by the group holding it (e.g. the five
    abnormal Bethesda classes -> ``abnormal``); ``abnormal`` and the patient are kept.

    Raises:
        InputError: naming an image whose finding is in no group.
    """
    owner = {m: g for g, members in groups.items() for m in members}
    owner.update({g: g for g in groups})  # already merged (a folder written by write_subset)
    out = []
    for r in records:
        missing = sorted(f for f in r.findings if f not in owner)
        if missing:
            raise InputError(r.path, f"finding(s) {', '.join(missing)} in no class group")
        out.append(replace(r, findings=frozenset(owner[f] for f in r.findings)))
    return out


def check_exclusive(records: Sequence[LabeledImage]) -> None:
    """Mutually exclusive classes need exactly one class per image.

    Raises:
        InputError: naming the first image with none or several.
    """
    for r in records:
        if len(r.findings) != 1:
            raise InputError(r.path, f"{len(r.findings)} classes ({', '.join(sorted(r.findings)) or 'none'}): "
                                     "mutually exclusive classes need exactly one per image")


def split_by_patient(records: Sequence[LabeledImage], fractions: Sequence[float],
                     seed: int = 0) -> list[list[LabeledImage]]:
    """Split into groups of about ``fractions`` of the images, never splitting a patient.

    Patients are shuffled with ``seed`` and dealt to the groups in turn until each is
    full; the result is deterministic for a given seed and record set.
    """
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions}")
    by_patient: dict[str, list[LabeledImage]] = {}
    for r in sorted(records, key=lambda r: r.name):
        by_patient.setdefault(r.patient, []).append(r)
    patients = sorted(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    targets = np.cumsum(fractions) * len(records)
    groups: list[list[LabeledImage]] = [[] for _ in fractions]
    g, taken = 0, 0
    for i in order:
        while g < len(groups) - 1 and taken >= targets[g]:
            g += 1
        groups[g].extend(by_patient[patients[i]])
        taken += len(by_patient[patients[i]])
    return groups


def label_matrix(records: Sequence[LabeledImage], classes: Sequence[str]) -> np.ndarray:
    """(N, K) float32 0/1 matrix of ``records``' findings over ``classes``."""
    return np.array([[c in r.findings for c in classes] for r in records], np.float32).reshape(
        len(records), len(classes))


def load_labeled(records: Sequence[LabeledImage], spec: Preprocessing,
                 classes: Sequence[str] = NIH_FINDINGS,
                 progress: Callable[[int], None] | None = None) -> LabeledArrays:
    """Read and prepare ``records``' images (resize, channels, normalize) with their labels."""
    images = []
    for r in records:
        images.append(prepare_batch([read_image(r.path).array], spec)[0])
        if progress:
            progress(1)
    arr = np.stack(images) if images else np.zeros((0, spec.channels, *spec.size), np.float32)
    return LabeledArrays(arr, label_matrix(records, classes),
                         np.array([r.abnormal for r in records], np.int64),
                         [r.name for r in records], tuple(classes))


def write_subset(records: Sequence[LabeledImage], dest: str | Path) -> Path:
    """Make ``dest`` a labeled folder of ``records`` (images symlinked, ``labels.csv`` written)."""
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    with (dest / LABELS_FILE).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "abnormal", "findings", "patient_id"])
        for r in records:
            link = dest / "images" / r.name
            if not link.exists():
                os.symlink(r.path.resolve(), link)
            w.writerow([r.name, r.abnormal, "|".join(sorted(r.findings)) or NO_FINDING, r.patient])
    return dest
