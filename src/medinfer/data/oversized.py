"""Small files that describe huge images (decompression bombs), for tests of read limits.

Each is built without holding the image it describes: a few kilobytes of RLE, Deflate,
PNG or gzip announce gigabytes of pixels, as the inputs that
:class:`medinfer.io.limits.ReadLimits` exists for do.

- :func:`rle_dicom`: an RLE Lossless DICOM slice of zeros (valid: it decodes);
- :func:`write_deflated_dicom`: a Deflated Explicit VR Little Endian file of zeros;
- :func:`png_header`: a PNG with an image header and no image data;
- :func:`write_nifti_header`: a ``.nii.gz`` with a header and no (or some) voxel data.

Only numpy (and :mod:`medinfer.data.synthetic`) is imported here; pydicom and nibabel by the
functions that need them.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medinfer.data.synthetic import dicom_slice

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["png_header", "rle_dicom", "rle_frame", "write_deflated_dicom", "write_nifti_header"]

_ZEROS = bytes(1 << 22)


def rle_frame(rows: int, cols: int) -> bytes:
    """One RLE Lossless frame of ``rows x cols`` 8-bit zeros: one segment, each row
    encoded separately in runs of up to 128 bytes (about ``2 * rows * cols / 128`` bytes)."""
    runs, rest = divmod(cols, 128)
    row = b"\x81\x00" * runs + (bytes([257 - rest, 0]) if rest > 1 else b"\x00\x00" * rest)
    header = np.zeros(16, "<u4")
    header[0], header[1] = 1, 64
    return header.tobytes() + row * rows


def rle_dicom(rows: int, cols: int, *, frames: int = 1, study_uid: str | None = None,
              series_uid: str | None = None) -> Dataset:
    """An RLE Lossless 8-bit MONOCHROME2 MR instance of zeros (``frames`` frames).

    16384 x 16384 pixels take about 4 MB here and 256 MiB decoded.
    """
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, generate_uid


    geometry = {} if frames == 1 else {"position": None, "orientation": None}  # no per-frame
    ds = dicom_slice(np.zeros((1, 1), np.uint16), study_uid=study_uid or generate_uid(),
                     series_uid=series_uid, **geometry)  # type: ignore[arg-type]
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([rle_frame(rows, cols)] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return ds


def write_deflated_dicom(path: str | Path, rows: int, cols: int, *, pixels: bool = True,
                         blob_bytes: int = 0, study_uid: str | None = None) -> Path:
    """Write a Deflated Explicit VR Little Endian MR instance of 16-bit zeros.

    Args:
        path: the file to write.
        rows: Rows (and, with ``pixels``, the pixel data's height).
        cols: Columns.
        pixels: write ``rows x cols`` 16-bit zeros as Pixel Data.
        blob_bytes: also write a private OB element of that many zeros after everything
            else (a dataset that inflates big while announcing no big image).
        study_uid: StudyInstanceUID (a new UID by default).

    Returns:
        ``path``; zeros deflate about 1000:1, so 16384 x 16384 pixels take about 0.5 MB.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid


    ds = dicom_slice(np.zeros((1, 1), np.uint16), study_uid=study_uid or generate_uid())
    del ds.PixelData
    ds.Rows, ds.Columns = rows, cols
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    def encoded(write: object, item: object) -> bytes:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write(buf, item)  # type: ignore[operator]
        return buf.getvalue()

    elements = [(0x7FE00010, rows * cols * 2)] if pixels else []
    if blob_bytes:
        elements.append((0x7FE10010, blob_bytes + blob_bytes % 2))  # private group 7FE1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + encoded(
            lambda b, m: write_file_meta_info(b, m, enforce_standard=True), ds.file_meta))
        fh.write(deflater.compress(encoded(write_dataset, ds)))
        for tag, length in elements:
            fh.write(deflater.compress(struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"OB", 0,
                                                   length)))
            for start in range(0, length, len(_ZEROS)):
                fh.write(deflater.compress(_ZEROS[:min(len(_ZEROS), length - start)]))
        fh.write(deflater.flush())
    return path


def png_header(width: int, height: int, mode: str = "L") -> bytes:
    """A PNG announcing ``width x height`` 8-bit pixels (``mode`` ``L`` or ``RGB``) with an
    empty image: what Pillow's lazy open reads, 57 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    colour = {"L": 0, "RGB": 2}[mode]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_nifti_header(path: str | Path, shape: Sequence[int], dtype: str = "uint8", *,
                       data_bytes: int = 0) -> Path:
    """Write a ``.nii.gz`` whose header announces ``shape`` voxels of ``dtype``, followed by
    ``data_bytes`` zero bytes of voxel data (0: none; the full size makes a valid file).

    Returns:
        ``path``.
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.dtype(dtype))
    header.set_data_shape(tuple(int(n) for n in shape))
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header.set_data_offset(352)  # single file: 348-byte header, 4 bytes of no extensions
    block = header.binaryblock
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(block + b"\0" * (352 - len(block)))
        for start in range(0, data_bytes, len(_ZEROS)):
            fh.write(_ZEROS[:min(len(_ZEROS), data_bytes - start)])
    return path
