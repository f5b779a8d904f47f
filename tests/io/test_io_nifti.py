"""NIfTI reading and writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medinfer.io import Image, read_image, read_mask, write_image_nifti, write_mask_nifti
from medinfer.io.writers import ras_affine

_ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
_SPACING = np.array([0.5, 1.25, 2.0])
_ORIGIN = np.array([-10.0, 20.5, 3.0])


def _affine() -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _ROT * _SPACING[None, :]
    aff[:3, 3] = _ORIGIN
    return aff


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), path)
    return path


def test_read_3d_geometry_and_array(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = read_image(_save(data, tmp_path / "v.nii.gz"))
    assert img.array.shape == (1, 4, 5, 6) and img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array[0], data)
    np.testing.assert_allclose(img.spacing, _SPACING)
    np.testing.assert_allclose(img.origin, _ORIGIN)
    np.testing.assert_allclose(img.direction, _ROT, atol=1e-6)
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)
    assert img.meta["format"] == "nifti" and img.meta["frame"] == "RAS"


def test_read_4d_moves_last_axis_to_channels(tmp_path: Path) -> None:
    data = np.random.default_rng(1).random((4, 5, 6, 3)).astype(np.float32)
    img = read_image(_save(data, tmp_path / "v4.nii"))
    assert img.array.shape == (3, 4, 5, 6) and img.num_channels == 3
    np.testing.assert_array_equal(img.array[2], data[..., 2])


def test_scaled_nifti_is_float32(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nii = nib.Nifti1Image(data, _affine())
    nii.header.set_slope_inter(2.0, -5.0)
    nib.save(nii, tmp_path / "s.nii.gz")
    img = read_image(tmp_path / "s.nii.gz")
    assert img.array.dtype == np.float32 and img.meta["rescale_applied"] is True
    np.testing.assert_allclose(img.array[0], data * 2.0 - 5.0)


def test_read_mask_nifti(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), dtype=np.uint8)
    data[1:3, 2:4, 3] = 2
    mask = read_mask(_save(data, tmp_path / "m.nii.gz"))
    assert mask.dtype == np.bool_ and mask.shape == (4, 5, 6)
    np.testing.assert_array_equal(mask, data > 0)


def test_write_image_nifti_roundtrip(tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((4, 5, 6)).astype(np.float32)
    src = read_image(_save(data, tmp_path / "in.nii.gz"))
    out = write_image_nifti(src, tmp_path / "deep" / "out.nii.gz")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, src.array)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)


def test_write_multichannel_2d_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(0, 255, (3, 7, 9), dtype=np.uint8)
    img = Image(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), meta={"frame": "pixel"})
    back = read_image(write_image_nifti(img, tmp_path / "rgb.nii.gz"))
    assert back.array.shape == (3, 7, 9, 1)
    np.testing.assert_array_equal(back.array[..., 0], arr)


def test_write_image_nifti_converts_lps_to_ras(tmp_path: Path) -> None:
    lps = Image(np.zeros((1, 2, 3, 4), np.int16), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0), np.eye(3),
                meta={"frame": "LPS"})
    out = write_image_nifti(lps, tmp_path / "lps.nii.gz")
    affine = nib.load(out).affine
    idx = np.array([1.0, 1.0, 1.0, 1.0])
    world_lps = lps.affine @ idx
    np.testing.assert_allclose(affine @ idx, world_lps * np.array([-1, -1, 1, 1]))


def test_write_mask_nifti_with_reference_and_affine(tmp_path: Path) -> None:
    ref = read_image(_save(np.zeros((4, 5, 6), np.int16), tmp_path / "ref.nii.gz"))
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1, 2, 3] = True
    out = write_mask_nifti(mask, tmp_path / "mask.nii.gz", ref)
    nii = nib.load(out)
    assert nii.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(nii.dataobj), mask.astype(np.uint8))
    np.testing.assert_allclose(nii.affine, ras_affine(ref), atol=1e-5)
    out2 = write_mask_nifti(mask.astype(np.uint8) * 7, tmp_path / "m2.nii", _affine())
    np.testing.assert_array_equal(read_mask(out2), mask)
    with pytest.raises(ValueError, match="does not match"):
        write_mask_nifti(np.zeros((4, 5, 7)), tmp_path / "bad.nii.gz", ref)


def test_real_brain_volume_and_mask(shared_path) -> None:
    path = shared_path("brain-tumor-progression-3d/images/PGBM-001_04-02-1992.nii.gz")
    img = read_image(path)
    assert img.ndim_spatial == 3 and img.num_channels == 1
    assert img.array.dtype == np.int16 and img.array.max() > 0
    assert all(s > 0 for s in img.spacing)
    np.testing.assert_allclose(img.direction.T @ img.direction, np.eye(3), atol=1e-5)
    mask = read_mask(shared_path("brain-tumor-progression-3d/masks/PGBM-001_04-02-1992.nii.gz"))
    assert mask.shape == img.spatial_shape and 0 < mask.sum() < mask.size
