"""Bad input must raise InputError naming the file, never a bare library exception."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medinfer.errors import InputError
from medinfer.io import read_dicom_series, read_image, read_mask

REAL_SERIES = "dicom-mr-brain-tumor-progression/PGBM-001/11-T1post-80644"
TESTFILES = "dicom-testfiles/pydicom-3.0.2"


def _raises_naming(path: Path, func=read_image, *args) -> InputError:
    with pytest.raises(InputError) as err:
        func(path, *args)
    assert path.name in str(err.value)
    assert err.value.reason  # a plain reason is attached
    return err.value


def _real_dicom(shared_path) -> Path:
    return shared_path(REAL_SERIES) / "000001.dcm"


def test_truncated_dicom_pixel_data(tmp_path: Path, shared_path) -> None:
    data = _real_dicom(shared_path).read_bytes()
    half = tmp_path / "half.dcm"
    half.write_bytes(data[: len(data) // 2])
    err = _raises_naming(half)
    assert "pixel data" in err.reason


def test_truncated_dicom_header(tmp_path: Path, shared_path) -> None:
    stub = tmp_path / "stub.dcm"
    stub.write_bytes(_real_dicom(shared_path).read_bytes()[:1000])
    err = _raises_naming(stub)
    assert "truncated" in err.reason


def test_truncated_slice_in_series_folder_is_not_skipped(tmp_path: Path, shared_path) -> None:
    src = shared_path(REAL_SERIES)
    for name in ("000001.dcm", "000002.dcm"):
        shutil.copy(src / name, tmp_path / name)
    data = (src / "000003.dcm").read_bytes()
    (tmp_path / "000003.dcm").write_bytes(data[: len(data) // 2])
    _raises_naming(tmp_path / "000003.dcm", lambda _p: read_dicom_series(tmp_path))


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_text("this is a text file, not DICOM\n" * 20)
    err = _raises_naming(path)
    assert "not a DICOM file" in err.reason


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_text("not a png")
    _raises_naming(path)
    _raises_naming(path, read_mask)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good.read_bytes()[:400])
    _raises_naming(bad)


def test_bad_nifti_files(tmp_path: Path) -> None:
    text = tmp_path / "t.nii.gz"
    text.write_text("not nifti")
    _raises_naming(text)
    fake_gz = tmp_path / "g.nii.gz"
    fake_gz.write_bytes(gzip.compress(b"\x00" * 100))
    _raises_naming(fake_gz)


def test_empty_folder_and_missing_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _raises_naming(empty)
    assert "empty" in err.reason
    _raises_naming(empty, read_dicom_series)
    missing = tmp_path / "missing.png"
    for func in (read_image, read_mask, read_dicom_series):
        _raises_naming(missing, func)


def test_folder_without_any_dicom(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    err = _raises_naming(tmp_path, read_dicom_series)
    assert "no readable DICOM" in err.reason


def test_explicit_file_list_rejects_non_dicom(tmp_path: Path, write_dicom_slice) -> None:
    good = write_dicom_slice(tmp_path / "a.dcm", np.zeros((4, 5), np.uint16))
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    _raises_naming(bad, lambda _p: read_dicom_series([good, bad]))


# -- odd files shipped with pydicom ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason_part"),
    [
        ("MR_truncated.dcm", "pixel data"),  # Pixel Data shorter than Rows x Columns
        ("JPEG2000-embedded-sequence-delimiter.dcm", "decode"),  # corrupt codestream
        ("rtplan.dcm", "no pixel data"),  # valid DICOM without an image
        ("test-SR.dcm", "no pixel data"),
        ("ExplVR_BigEndNoMeta.dcm", "no pixel data"),  # no meta; RT plan, no image
        ("no_meta.dcm", "not a DICOM"),  # stray leading byte: pydicom sees no elements
        ("zipMR.gz", "unrecognised"),  # gzipped DICOM is not supported
        ("badVR.dcm", "decode"),  # element whose value is not valid for its VR
    ],
)
def test_pydicom_bad_files(shared_path, name: str, reason_part: str) -> None:
    err = _raises_naming(shared_path(f"{TESTFILES}/{name}"))
    assert reason_part in err.reason


def test_12_bit_jpeg_decodes_with_libjpeg_and_is_named_without(shared_path) -> None:
    """12-bit JPEG Extended: Pillow cannot and GDCM refuses; libjpeg (the jpeg-extended extra) can."""
    path = shared_path(f"{TESTFILES}/JPGExtended.dcm")
    try:
        import libjpeg  # noqa: F401
    except ImportError:
        assert "decode" in _raises_naming(path).reason
    else:
        assert read_image(path).array.ndim == 3


@pytest.mark.parametrize(
    ("name", "uid_attr"),
    [
        ("JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless"),
        ("SC_rgb_jpeg_gdcm.dcm", "JPEGLosslessSV1"),
    ],
)
def test_compressed_without_decoder(shared_path, name: str, uid_attr: str) -> None:
    import pydicom.uid
    from pydicom.pixels import get_decoder

    path = shared_path(f"{TESTFILES}/{name}")
    if get_decoder(getattr(pydicom.uid, uid_attr)).is_available:
        assert read_image(path).array.ndim == 3  # a decoder got installed: must read
    else:
        err = _raises_naming(path)
        assert "no decoder installed" in err.reason


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
        "MR_small_padded.dcm",
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless, decoded by Pillow's OpenJPEG
    ],
)
def test_pydicom_variants_equal_reference(shared_path, name: str) -> None:
    ref = read_image(shared_path(f"{TESTFILES}/MR_small.dcm"))
    img = read_image(shared_path(f"{TESTFILES}/{name}"))
    assert img.array.shape == (1, 64, 64) and img.array.dtype.isnative
    np.testing.assert_array_equal(img.array, ref.array)


def test_pydicom_colour_files(shared_path) -> None:
    palette = read_image(shared_path(f"{TESTFILES}/examples_palette.dcm"))
    assert palette.num_channels == 3 and palette.meta["photometric"] == "PALETTE COLOR"
    deflated = read_image(shared_path(f"{TESTFILES}/image_dfl.dcm"))
    assert deflated.array.shape == (1, 512, 512)
    ybr = read_image(shared_path(f"{TESTFILES}/SC_rgb_dcmtk_+eb+cy+n1.dcm"))
    rgb = read_image(shared_path(f"{TESTFILES}/SC_rgb_dcmtk_+eb+cr.dcm"))
    assert ybr.array.shape == rgb.array.shape == (3, 100, 100)
    # JPEG YBR vs RGB encodings of the same picture agree after conversion to RGB
    assert np.abs(ybr.array.astype(int) - rgb.array.astype(int)).mean() < 5
