"""DICOM series and file reading: ordering, rescale, geometry and multi-frame."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medinfer.errors import InputError
from medinfer.io import read_dicom_series, read_image
from medinfer.io.writers import ras_affine

REAL_SERIES = "dicom-mr-brain-tumor-progression/PGBM-001/11-T1post-80644"
REAL_NIFTI = "brain-tumor-progression-3d/images/PGBM-001_04-02-1992.nii.gz"

# Oblique plane: row cosine along x, column cosine tilted 30 degrees out of y.
_ROW = np.array([1.0, 0.0, 0.0])
_COL = np.array([0.0, np.cos(np.pi / 6), -np.sin(np.pi / 6)])
_NORMAL = np.cross(_ROW, _COL)
_ORIGIN = np.array([-20.0, 5.0, 40.0])
_GAP = 2.5


def _plane(k: int) -> np.ndarray:
    return (np.arange(20, dtype=np.uint16).reshape(4, 5) + 100 * (k + 1)).astype(np.uint16)


def _write_series(folder: Path, writer, n: int = 5, **kw) -> list[int]:
    """Write n slices in a shuffled file/instance order; return the shuffle."""
    order = [3, 0, 4, 1, 2][:n] if n == 5 else list(np.random.default_rng(0).permutation(n))
    for file_index, k in enumerate(order):
        writer(
            folder / f"im{file_index:02d}.dcm",
            _plane(k),
            position=_ORIGIN + k * _GAP * _NORMAL,
            orientation=(*_ROW, *_COL),
            instance=n - file_index,  # deliberately unrelated to the position order
            **kw,
        )
    return order


def test_synthetic_series_sorted_by_position_with_rescale(tmp_path, write_dicom_slice) -> None:
    _write_series(tmp_path, write_dicom_slice, slope=2, intercept=-100)
    img = read_dicom_series(tmp_path)
    assert img.array.shape == (1, 4, 5, 5) and img.array.dtype == np.float32
    for k in range(5):
        np.testing.assert_array_equal(img.array[0, :, :, k], _plane(k).astype(np.float32) * 2 - 100)
    np.testing.assert_allclose(img.spacing, (0.5, 0.8, _GAP))
    np.testing.assert_allclose(img.origin, _ORIGIN)
    np.testing.assert_allclose(img.direction, np.column_stack([_COL, _ROW, _NORMAL]), atol=1e-9)
    assert img.meta["rescale_applied"] is True
    assert (img.meta["rescale_slope"], img.meta["rescale_intercept"]) == (2.0, -100.0)
    assert img.meta["frame"] == "LPS" and img.meta["num_files"] == 5


def test_series_voxel_to_world_matches_dicom_definition(tmp_path, write_dicom_slice) -> None:
    _write_series(tmp_path, write_dicom_slice)
    img = read_dicom_series(tmp_path)
    r, c, k = 3, 4, 2  # row index, column index, slice index
    expected = _ORIGIN + k * _GAP * _NORMAL + _ROW * c * 0.8 + _COL * r * 0.5
    np.testing.assert_allclose((img.affine @ [r, c, k, 1])[:3], expected, atol=1e-9)
    assert img.array.dtype == np.uint16 and img.meta["rescale_applied"] is False


def test_instance_number_fallback_warns(tmp_path, write_dicom_slice, caplog) -> None:
    for file_index, k in enumerate([2, 0, 1]):
        write_dicom_slice(tmp_path / f"s{file_index}.dcm", _plane(k), position=None,
                          orientation=None, instance=k + 1)
    with caplog.at_level(logging.WARNING, logger="medinfer.io"):
        img = read_dicom_series(tmp_path)
    assert "InstanceNumber" in caplog.text
    for k in range(3):
        np.testing.assert_array_equal(img.array[0, :, :, k], _plane(k))


def test_list_of_files_and_single_file(tmp_path, write_dicom_slice) -> None:
    order = _write_series(tmp_path, write_dicom_slice)
    # three contiguous slices (positions 3, 4, 2) in shuffled order: missing slices are refused
    files = [sorted(tmp_path.glob("*.dcm"))[i] for i in (0, 2, 4)]
    img = read_dicom_series(files)
    assert img.array.shape == (1, 4, 5, 3)
    chosen = sorted(order[i] for i in (0, 2, 4))
    np.testing.assert_array_equal(img.array[0, :, :, 0], _plane(chosen[0]))
    single = read_image(files[0])
    assert single.array.shape == (1, 4, 5) and single.spacing == (0.5, 0.8)
    np.testing.assert_allclose(single.meta["image_position"], _ORIGIN + order[0] * _GAP * _NORMAL)


def test_non_dicom_file_in_folder_is_skipped(tmp_path, write_dicom_slice, caplog) -> None:
    _write_series(tmp_path, write_dicom_slice, n=3)
    (tmp_path / "notes.txt").write_text("scanner notes, not an image\n")
    with caplog.at_level(logging.WARNING, logger="medinfer.io"):
        img = read_dicom_series(tmp_path)
    assert img.spatial_shape == (4, 5, 3)
    assert "notes.txt" in caplog.text


def test_file_without_meta_header_reads(tmp_path, write_dicom_slice) -> None:
    path = write_dicom_slice(tmp_path / "nometa.dcm", _plane(0), with_meta=False)
    assert path.read_bytes()[128:132] != b"DICM"
    img = read_image(path)
    np.testing.assert_array_equal(img.array[0], _plane(0))


def test_several_series_are_listed(tmp_path, write_dicom_slice) -> None:
    write_dicom_slice(tmp_path / "a.dcm", _plane(0), series_uid="1.2.3.4")
    write_dicom_slice(tmp_path / "b.dcm", _plane(1), position=(0, 0, 5), series_uid="1.2.3.5")
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path)
    assert "1.2.3.4" in str(err.value) and "1.2.3.5" in str(err.value)
    assert tmp_path.name in str(err.value)


def test_mixed_sizes_name_file_and_sizes(tmp_path, write_dicom_slice) -> None:
    write_dicom_slice(tmp_path / "a.dcm", _plane(0))
    write_dicom_slice(tmp_path / "b.dcm", np.zeros((6, 5), np.uint16), position=(0, 0, 5))
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path)
    msg = str(err.value)
    assert "b.dcm" in msg and "6x5" in msg and "4x5" in msg


def test_duplicate_positions_raise(tmp_path, write_dicom_slice) -> None:
    write_dicom_slice(tmp_path / "a.dcm", _plane(0), position=(0, 0, 5))
    write_dicom_slice(tmp_path / "b.dcm", _plane(1), position=(0, 0, 5), instance=2)
    with pytest.raises(InputError, match="duplicate slice position") as err:
        read_dicom_series(tmp_path)
    assert "a.dcm" in str(err.value) and "b.dcm" in str(err.value)


def test_real_series_sorted_along_normal(shared_path) -> None:
    folder = shared_path(REAL_SERIES)
    img = read_image(folder)
    assert img.array.shape == (1, 320, 260, 24)
    assert all(s > 0 for s in img.spacing)
    np.testing.assert_allclose(img.spacing[2], 6.5, atol=1e-3)
    normal = img.direction[:, 2]
    by_position = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        by_position[float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float)))] = ds
    positions = sorted(by_position)
    assert len(positions) == 24 and np.all(np.diff(positions) > 0)
    # slice k of the volume is the file at the k-th position along the normal
    for k in (0, 11, 23):
        np.testing.assert_array_equal(img.array[0, :, :, k], by_position[positions[k]].pixel_array)
    np.testing.assert_allclose(img.origin, by_position[positions[0]].ImagePositionPatient)


def test_real_series_matches_staged_nifti(shared_path) -> None:
    """The staged NIfTI was built independently from the same series ((cols, rows, slices), RAS)."""
    dicom = read_image(shared_path(REAL_SERIES))
    nifti = read_image(shared_path(REAL_NIFTI))
    np.testing.assert_array_equal(
        dicom.array[0].transpose(1, 0, 2).astype(np.int64), nifti.array[0].astype(np.int64)
    )
    swapped = ras_affine(dicom)[:, [1, 0, 2, 3]]
    np.testing.assert_allclose(swapped, nifti.affine, atol=1e-3)


def test_multiframe_files(shared_path) -> None:
    dose = read_image(shared_path("dicom-testfiles/pydicom-3.0.2/rtdose.dcm"))
    assert dose.array.shape == (1, 10, 10, 15)
    assert dose.spacing[2] > 0
    rgb = read_image(shared_path("dicom-testfiles/pydicom-3.0.2/SC_rgb_rle_2frame.dcm"))
    assert rgb.array.shape == (3, 100, 100, 2) and rgb.array.dtype == np.uint8


def test_real_ct_folder_with_rescale(shared_path) -> None:
    folder = shared_path("dicom-testfiles/pydicom-3.0.2/dicomdirtests/98892001/CT5N")
    img = read_dicom_series(folder)
    assert img.array.shape == (1, 16, 16, 5)
    assert img.meta["modality"] == "CT" and img.meta["rescale_applied"] is True
    assert img.array.dtype == np.float32
