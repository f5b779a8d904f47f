"""Labeled (multi-label) folders: parsing, clear errors, patient-level splits, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medinfer.data.labels import (NIH_FINDINGS, is_labeled_folder, label_matrix, load_labeled, read_labels,
                                  split_by_patient, write_subset)
from medinfer.data.spec import Preprocessing
from medinfer.data.synthetic import write_labeled_folder
from medinfer.errors import InputError


@pytest.fixture(scope="module")
def cxr(shared_path) -> Path:
    """The shipped NIH chest X-ray subset (skipped, or failed under CI=true, when absent)."""
    return shared_path("nih-cxr-1000")


def test_reads_the_shipped_labels_and_agrees_with_the_readme(cxr: Path) -> None:
    records = read_labels(cxr)
    assert len(records) == 800
    counts = label_matrix(records, NIH_FINDINGS).sum(axis=0)
    assert dict(zip(NIH_FINDINGS, counts.astype(int)))["Effusion"] == 136  # data README's count
    assert sum(r.abnormal == 0 for r in records) == 402
    assert all((r.abnormal == 0) == (not r.findings) for r in records)


def test_patient_split_is_disjoint_deterministic_and_sized(cxr: Path) -> None:
    records = read_labels(cxr)
    a = split_by_patient(records, (0.6, 0.15, 0.25), seed=0)
    b = split_by_patient(records, (0.6, 0.15, 0.25), seed=0)
    assert [[r.name for r in g] for g in a] == [[r.name for r in g] for g in b]
    patients = [{r.patient for r in g} for g in a]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sum(len(g) for g in a) == 800
    assert abs(len(a[2]) - 200) < 40  # about a quarter, give or take one patient's images
    c = split_by_patient(records, (0.6, 0.15, 0.25), seed=1)
    assert [r.name for r in c[2]] != [r.name for r in a[2]]


def test_load_labeled_prepares_images_and_labels(tmp_path: Path) -> None:
    root = write_labeled_folder(tmp_path / "d", [("a.png", "Effusion|Mass", 1),
                                                 ("b.png", "No Finding", 2)])
    spec = Preprocessing(size=(8, 8))
    data = load_labeled(read_labels(root), spec)
    assert data.images.shape == (2, 3, 8, 8) and data.images.dtype == np.float32
    assert data.labels.shape == (2, 14)
    assert data.labels[0, NIH_FINDINGS.index("Effusion")] == 1 and data.labels[0].sum() == 2
    assert data.labels[1].sum() == 0 and list(data.abnormal) == [1, 0]


def test_write_subset_round_trips(tmp_path: Path) -> None:
    root = write_labeled_folder(tmp_path / "d", [("a.png", "Hernia", 1), ("b.png", "No Finding", 2)])
    sub = write_subset(read_labels(root)[:1], tmp_path / "sub")
    assert is_labeled_folder(sub)
    (rec,) = read_labels(sub)
    assert rec.name == "a.png" and rec.findings == {"Hernia"} and rec.path.resolve() == (root / "images" / "a.png")


@pytest.mark.parametrize(("csv", "message"), [
    ("image,abnormal\na.png,1\n", "missing column"),
    ("image,findings\na.png,Flu\n", "row 2: unknown finding"),
    ("image,findings\nmissing.png,Mass\n", "does not exist"),
    ("image,findings\n", "no rows"),
])
def test_bad_labels_name_the_file(tmp_path: Path, csv: str, message: str) -> None:
    root = write_labeled_folder(tmp_path / "d", [("a.png", "Mass", 1)])
    (root / "labels.csv").write_text(csv)
    with pytest.raises(InputError, match=message) as info:
        read_labels(root)
    assert "labels.csv" in str(info.value)


def test_not_a_labeled_folder(tmp_path: Path) -> None:
    assert not is_labeled_folder(tmp_path)
    with pytest.raises(InputError, match="no labels.csv"):
        read_labels(tmp_path)


def test_single_finding_layout_reads_its_own_column_names(tmp_path) -> None:
    """pneumonia-cxr-224's columns: finding / label / patient stand for findings /
    abnormal / patient_id."""
    from PIL import Image as PILImage

    from medinfer.data.labels import read_labels

    (tmp_path / "images").mkdir()
    rows = ["image,label,finding,subtype,patient,source_split"]
    for i, (finding, patient) in enumerate([("Pneumonia", "person1"), ("No Finding", "IM-0001"),
                                            ("Pneumonia", "person1")]):
        PILImage.new("RGB", (8, 8)).save(tmp_path / "images" / f"{i}.jpeg")
        rows.append(f"{i}.jpeg,{int(finding != 'No Finding')},{finding},x,{patient},train")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    records = read_labels(tmp_path, ["Pneumonia"])
    assert [sorted(r.findings) for r in records] == [["Pneumonia"], [], ["Pneumonia"]]
    assert [r.abnormal for r in records] == [1, 0, 1]
    assert [r.patient for r in records] == ["person1", "IM-0001", "person1"]  # split by patient
