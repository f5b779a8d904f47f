"""Read limits: a small file announcing a huge image is refused from its header, before any
pixel is decoded, with the size and the limit in the message; ``limits=None`` reads as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from peak_memory import Peak
from PIL import Image as PILImage

from medinfer.data.oversized import (
    png_header,
    rle_dicom,
    write_deflated_dicom,
    write_nifti_header,
)
from medinfer.data.synthetic import mr_series, write_dicom
from medinfer.errors import InputError
from medinfer.io.dicom import check_frames, file_meta_end, load_dataset
from medinfer.io.limits import ReadLimits
from medinfer.io.readers import read_dicom_series, read_image, verify_image

DEFAULTS = ReadLimits()


def refused(path: Path, limits: ReadLimits | None = DEFAULTS, read=read_image) -> str:
    with pytest.raises(InputError) as err:
        read(path, limits=limits)
    assert err.value.path == path
    return err.value.reason


def test_defaults_are_64_megapixels_512_cubed_voxels() -> None:
    assert DEFAULTS.max_pixels == 8192 * 8192 and DEFAULTS.max_voxels == 512 ** 3
    DEFAULTS.check("x", 8192, 8192)  # the largest picture that passes
    DEFAULTS.check("x", 512, 512, 512, itemsize=2)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"rows": 16384, "cols": 16384}, "max_pixels"),
    ({"rows": 512, "cols": 512, "frames": 4096}, "max_frames"),
    ({"rows": 1024, "cols": 1024, "frames": 1024}, "max_voxels"),
    ({"rows": 512, "cols": 512, "frames": 512, "samples": 3, "itemsize": 8}, "max_bytes"),
])
def test_check_names_the_size_and_the_limit(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        DEFAULTS.check("big.dcm", **kwargs)
    assert "too large to decode" in err.value.reason and field in err.value.reason
    assert str(getattr(DEFAULTS, field)) in err.value.reason or "MiB" in err.value.reason
    ReadLimits(None, None, None, None).check("big.dcm", **kwargs)  # no limit: no refusal


def test_rle_dicom_of_16384_squared_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_dicom(rle_dicom(16384, 16384), tmp_path / "rle.dcm")
    assert path.stat().st_size < 5_000_000  # 4 MB on disk, 256 MiB decoded
    with Peak() as peak:
        reason = refused(path)
    assert "16384 x 16384" in reason and "max_pixels 67108864" in reason
    assert peak.bytes < 64 * 1024 * 1024  # the header and the compressed bytes, no decoded frame


def test_rle_dicom_within_limits_and_without_limits_reads(tmp_path: Path) -> None:
    path = write_dicom(rle_dicom(300, 200), tmp_path / "rle.dcm")
    assert read_image(path, limits=DEFAULTS).array.shape == (1, 300, 200)
    assert read_image(path).array.shape == (1, 300, 200)
    assert "max_pixels 1000" in refused(path, ReadLimits(max_pixels=1000))


def test_multiframe_and_series_are_checked_as_volumes(tmp_path: Path) -> None:
    multi = write_dicom(rle_dicom(64, 64, frames=40), tmp_path / "multi.dcm")
    assert "40 frames" in refused(multi, ReadLimits(max_frames=32))
    assert "max_voxels 10000" in refused(multi, ReadLimits(max_voxels=10_000))
    assert read_image(multi, limits=DEFAULTS).array.shape == (1, 64, 64, 40)

    folder = tmp_path / "series"
    for i, ds in enumerate(mr_series(5, 16)):
        write_dicom(ds, folder / f"{i}.dcm")
    assert "16 x 16 x 5 voxels (1280) exceed max_voxels 1000" in refused(
        folder, ReadLimits(max_voxels=1000), read=read_dicom_series)
    assert "5 frames" in refused(folder, ReadLimits(max_frames=4), read=read_dicom_series)
    # 16-bit: 2560 bytes decoded
    assert "max_bytes" in refused(folder, ReadLimits(max_bytes=2000), read=read_dicom_series)
    assert read_dicom_series(folder, limits=DEFAULTS).array.shape == (1, 16, 16, 5)


def test_deflated_dicom_is_refused_without_inflating_it_whole(tmp_path: Path) -> None:
    path = write_deflated_dicom(tmp_path / "deflated.dcm", 16384, 16384)
    assert path.stat().st_size < 1_000_000  # 512 MiB of pixels inflated
    assert file_meta_end(path.read_bytes()[:4096])[0] == "1.2.840.10008.1.2.1.99"
    with Peak() as peak:
        reason = refused(path)
    assert "16384 x 16384" in reason and "max_pixels" in reason
    assert peak.bytes < 32 * 1024 * 1024


def test_deflated_dataset_that_inflates_past_max_bytes_is_refused(tmp_path: Path) -> None:
    """No big image announced, but 80 MiB of other data: the inflated size is capped
    (max_bytes + 64 MiB), counted in chunks."""
    path = write_deflated_dicom(tmp_path / "blob.dcm", 8, 8, pixels=False,
                                blob_bytes=80 * 1024 * 1024)
    with Peak() as peak, pytest.raises(InputError) as err:
        load_dataset(path, ReadLimits(max_bytes=1024 * 1024))
    assert "inflates to more than 65.0 MiB" in err.value.reason
    assert peak.bytes < 32 * 1024 * 1024
    assert load_dataset(write_deflated_dicom(tmp_path / "ok.dcm", 8, 8), DEFAULTS).Rows == 8


def test_png_header_announcing_13000_squared_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_header(13000, 13000))
    reason = refused(path)
    assert "13000 x 13000 pixels (169000000) exceed max_pixels 67108864" in reason


def test_pillow_bomb_guard_is_an_input_error_too(tmp_path: Path) -> None:
    """Over 2 x PIL.Image.MAX_IMAGE_PIXELS Pillow refuses at open, whatever our limits."""
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(20000, 20000))
    for limits in (None, ReadLimits(max_pixels=None, max_bytes=None)):
        reason = refused(path, limits)
        assert "too large to decode" in reason and "decompression bomb" in reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_pictures_are_checked_from_the_header(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    PILImage.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path, fmt)
    assert "40 x 50 pixels (2000) exceed max_pixels 1000" in refused(path, ReadLimits(max_pixels=1000))
    assert "max_bytes" in refused(path, ReadLimits(max_bytes=5000))  # 6000 bytes as RGB
    assert read_image(path, limits=DEFAULTS).array.shape == (3, 40, 50)
    verify_image(path, DEFAULTS)


def test_nifti_of_1000_cubed_is_refused_from_the_header(tmp_path: Path) -> None:
    path = write_nifti_header(tmp_path / "zeros.nii.gz", (1000, 1000, 1000))
    reason = refused(path)
    assert "1000 x 1000 x 1000 voxels (1000000000) exceed max_voxels 134217728" in reason
    assert "max_voxels" in refused(path, read=verify_image)
    four_d = write_nifti_header(tmp_path / "4d.nii.gz", (64, 64, 40, 300), "int16")
    assert "max_bytes" in refused(four_d, ReadLimits(max_bytes=64 * 1024 * 1024))


def test_verify_nifti_streams_the_data_and_finds_truncation(tmp_path: Path) -> None:
    shape = (40, 30, 20)
    good = write_nifti_header(tmp_path / "good.nii.gz", shape, data_bytes=40 * 30 * 20)
    verify_image(good, DEFAULTS)
    assert read_image(good, limits=DEFAULTS).array.shape == (1, *shape)
    short = write_nifti_header(tmp_path / "short.nii.gz", shape, data_bytes=1000)
    assert "truncated" in refused(short, read=verify_image)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:-30])  # gzip stream without its end
    assert "cannot read NIfTI" in refused(cut, read=verify_image)
    plain = tmp_path / "plain.nii"
    import gzip

    plain.write_bytes(gzip.decompress(good.read_bytes())[:-100])
    assert "truncated" in refused(plain, read=verify_image)


def test_check_frames_decodes_one_frame_at_a_time() -> None:
    ds = rle_dicom(512, 512, frames=32)
    with Peak() as peak:
        check_frames("multi.dcm", ds)
    assert peak.bytes < 8 * 512 * 512  # a frame is 256 KiB; all 32 would be 8 MiB
    data = bytearray(ds.PixelData)
    ds.PixelData = bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot be decoded"):
        check_frames("multi.dcm", ds)


def test_file_meta_end_of_a_plain_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    mr_series(1, 4)[0].save_as(buf, enforce_file_format=True)
    ts, offset = file_meta_end(buf.getvalue())
    assert ts == "1.2.840.10008.1.2.1" and buf.getvalue()[offset:offset + 2] == b"\x08\x00"
    assert file_meta_end(b"no preamble") == (None, 0)
