"""medinfer.data.synthetic: every writer's output is read back by medinfer's own readers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medinfer.data import synthetic
from medinfer.data.labels import NIH_FINDINGS, read_labels
from medinfer.data.pairs import find_pairs, load_pairs
from medinfer.data.spec import Preprocessing
from medinfer.data.volumes import find_volume_pairs
from medinfer.io import read_dicom_series, read_image


@pytest.mark.parametrize(("size", "image_suffix", "mask_suffix"), [
    ((32, 32), ".png", ".png"),
    ((48, 40), ".jpg", ".png"),
    ((24, 36), ".jpg", ".jpg"),
])
def test_kvasir_pairs_read_back(tmp_path: Path, size: tuple[int, int], image_suffix: str,
                                mask_suffix: str) -> None:
    names = ["b", "a", "c"]  # pair i (in this order) has box_mask(i, size)
    root = synthetic.write_kvasir_pairs(tmp_path / "ds", names, size, image_suffix=image_suffix,
                                        mask_suffix=mask_suffix)
    pairs = {p.name: p for p in find_pairs(root)}
    assert sorted(pairs) == ["a", "b", "c"]
    assert read_image(pairs["a"].image).array.shape == (3, *size)
    data = load_pairs([pairs[n] for n in names], Preprocessing(size=size))
    assert data.images.shape == (3, 3, *size) and data.masks.shape == (3, *size)
    min_agreement = 1.0 if mask_suffix == ".png" else 0.97  # JPEG blurs the box's edges
    for i in range(3):
        assert (data.masks[i] == (synthetic.box_mask(i, size) > 0)).mean() >= min_agreement


def test_kvasir_pairs_are_deterministic_per_seed(tmp_path: Path) -> None:
    a = synthetic.write_kvasir_pairs(tmp_path / "a", ["x"], seed=3)
    b = synthetic.write_kvasir_pairs(tmp_path / "b", ["x"], seed=3)
    c = synthetic.write_kvasir_pairs(tmp_path / "c", ["x"], seed=4)
    read = [read_image(r / "images" / "x.png").array for r in (a, b, c)]
    np.testing.assert_array_equal(read[0], read[1])
    assert not np.array_equal(read[0], read[2])


def test_labeled_folder_reads_back(tmp_path: Path) -> None:
    rows = [("a.png", "Effusion|Mass", 1), ("b.png", "No Finding", 2), ("c.png", "Hernia", "p3")]
    root = synthetic.write_labeled_folder(tmp_path / "d", rows, side=24)
    records = read_labels(root)
    assert [r.name for r in records] == ["a.png", "b.png", "c.png"]
    assert [set(r.findings) for r in records] == [{"Effusion", "Mass"}, set(), {"Hernia"}]
    assert [r.abnormal for r in records] == [1, 0, 1]
    assert [r.patient for r in records] == ["1", "2", "p3"]
    assert all(f in NIH_FINDINGS for r in records for f in r.findings)
    assert read_image(records[0].path).array.shape == (3, 24, 24)


@pytest.mark.parametrize("shape", [(20, 18, 9), (10, 20, 30)])
def test_volume_pairs_read_back(tmp_path: Path, shape: tuple[int, int, int]) -> None:
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    root = synthetic.write_volume_pairs(tmp_path / "v", ["v0", "v1"], shape, affine=affine)
    pairs = find_volume_pairs(root)
    assert [p.name for p in pairs] == ["v0", "v1"]
    for i, pair in enumerate(pairs):
        image, mask = read_image(pair.image), read_image(pair.mask)
        assert image.array.shape == (1, *shape) and mask.array.shape == (1, *shape)
        assert image.spacing == pytest.approx((0.8, 0.8, 2.0))
        box = np.zeros(shape, bool)
        box[synthetic.volume_box(i, shape)] = True
        np.testing.assert_array_equal(mask.array[0] > 0, box)
        assert image.array[0][box].mean() > image.array[0][~box].mean() + 40  # the box is brighter


@pytest.mark.parametrize(("n", "size"), [(4, 16), (3, 32)])
def test_mr_series_reads_back_as_one_volume(tmp_path: Path, n: int, size: int) -> None:
    folder = synthetic.write_mr_series(tmp_path / "series", n, size)
    assert len(list(folder.iterdir())) == n
    image = read_dicom_series(folder)
    assert image.array.shape == (1, size, size, n)
    assert image.spacing == pytest.approx((1.0, 1.0, 2.0))
    assert set(np.unique(image.array)) == {10, 200}


def test_mr_series_in_memory_is_one_series_of_one_study() -> None:
    series = synthetic.mr_series(3, 8, modality="DX", study_uid="1.2.3")
    assert {ds.StudyInstanceUID for ds in series} == {"1.2.3"}
    assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert [ds.InstanceNumber for ds in series] == [1, 2, 3]
    assert {ds.Modality for ds in series} == {"DX"}
    assert [ds.Rows for ds in synthetic.mr_series(3, sizes=[16, 16, 20])] == [16, 16, 20]


def test_bare_dicom_slice_has_no_file_meta(tmp_path: Path) -> None:
    from pydicom import dcmread

    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ds = synthetic.dicom_slice(pixels, position=None, instance=None)
    path = synthetic.write_dicom(ds, tmp_path / "bare.dcm", file_meta=False)
    assert path.read_bytes()[128:132] != b"DICM" and "file_meta" in dir(ds)  # ds itself unchanged
    back = dcmread(path, force=True)
    assert "ImagePositionPatient" not in back and "InstanceNumber" not in back
    full = read_image(synthetic.write_dicom(ds, tmp_path / "full.dcm"))
    np.testing.assert_array_equal(full.array[0], pixels)  # one slice reads as (1, rows, columns)


def test_import_needs_neither_torch_nor_pydicom_nor_nibabel() -> None:
    code = ("import sys, medinfer.data.synthetic; "
            "print(sorted(m for m in ('torch', 'pydicom', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
