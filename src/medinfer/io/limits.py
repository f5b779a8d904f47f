"""Bounds on what a reader decodes, checked from a file's header before any pixel is decoded.

A few kilobytes of compressed input can describe gigabytes of pixels (an RLE or Deflated
DICOM, a PNG of zeros, a ``.nii.gz`` of zeros). Readers that take a :class:`ReadLimits`
compare the size the header announces with the limits first and refuse a larger input with
an :class:`~medinfer.errors.InputError` naming the size and the limit; ``limits=None``
(the readers' default) decodes whatever the header says, as before.

Example:
    >>> from medinfer.io.readers import read_image
    >>> read_image("huge.png", limits=ReadLimits())  # doctest: +SKIP
    InputError: huge.png: too large to decode: 13000 x 13000 pixels (169000000) exceed
    max_pixels 67108864
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medinfer.errors import InputError

__all__ = ["ReadLimits", "check_inflated_size", "inflated_prefix"]

_MIB = 1024 * 1024
# What a Deflated DICOM dataset may inflate to beyond its decoded pixels (header elements,
# overlays, private data): generous, it only has to stop a bomb.
_HEADER_ALLOWANCE = 64 * _MIB


@dataclass(frozen=True)
class ReadLimits:
    """The largest image a reader decodes; ``None`` for a field means no limit on it.

    Attributes:
        max_pixels: pixels of one 2D image or frame (rows x columns); default 64 Mi
            (8192 x 8192).
        max_voxels: voxels of one volume (rows x columns x frames or slices; NIfTI: the
            first three axes); default 512^3.
        max_frames: frames of one multi-frame file, slices of one series, or the third
            axis of a NIfTI volume; default 2048.
        max_bytes: decoded size in bytes (voxels x samples or channels x bytes per
            sample); default 2 GiB. Also bounds what a Deflated DICOM dataset may
            inflate to (plus 64 MiB for its other elements).
    """

    max_pixels: int | None = 64 * _MIB
    max_voxels: int | None = 512 ** 3
    max_frames: int | None = 2048
    max_bytes: int | None = 2048 * _MIB

    def check(self, path: str | Path, rows: int, cols: int, frames: int = 1, samples: int = 1,
              itemsize: int = 1) -> None:
        """Refuse an image whose decoded size, as its header announces it, is over a limit.

        Args:
            path: the file (or label) to name in the error.
            rows: rows (PNG/JPEG: height; NIfTI: first axis).
            cols: columns (width; NIfTI: second axis).
            frames: frames or slices (NIfTI: third axis); 1 for a 2D image.
            samples: samples per pixel or channels (RGB: 3; NIfTI: the 4th and later axes).
            itemsize: bytes per sample after decoding.

        Raises:
            InputError: the image is larger than a limit (the message gives both).
        """
        pixels = rows * cols
        voxels = pixels * frames
        nbytes = voxels * samples * itemsize
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise InputError(path, f"too large to decode: {rows} x {cols} pixels ({pixels}) "
                                   f"exceed max_pixels {self.max_pixels}")
        if self.max_frames is not None and frames > self.max_frames:
            raise InputError(path, f"too large to decode: {frames} frames or slices exceed "
                                   f"max_frames {self.max_frames}")
        if self.max_voxels is not None and voxels > self.max_voxels:
            raise InputError(path, f"too large to decode: {rows} x {cols} x {frames} voxels "
                                   f"({voxels}) exceed max_voxels {self.max_voxels}")
        if self.max_bytes is not None and nbytes > self.max_bytes:
            raise InputError(path, f"too large to decode: {_mib(nbytes)} decoded "
                                   f"({rows} x {cols} x {frames} x {samples} samples x "
                                   f"{itemsize} bytes) exceed max_bytes {_mib(self.max_bytes)}")

    @property
    def max_inflated(self) -> int | None:
        """Bytes a Deflated DICOM dataset may inflate to, or None when unbounded."""
        return None if self.max_bytes is None else self.max_bytes + _HEADER_ALLOWANCE


def _mib(n: int) -> str:
    return f"{n / _MIB:.1f} MiB"


def inflated_prefix(stream: BinaryIO, size: int = _MIB) -> bytes:
    """The first ``size`` bytes a raw deflate stream inflates to (fewer if it ends first).

    Reads only as much of ``stream`` as that needs; its position is left after it.

    Raises:
        zlib.error: not a deflate stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while len(out) < size and not inflater.eof and (data := stream.read(64 * 1024)):
        while data and len(out) < size and not inflater.eof:
            out += inflater.decompress(data, size - len(out))
            data = inflater.unconsumed_tail
    return bytes(out)


def check_inflated_size(path: str | Path, stream: BinaryIO, limit: int,
                        chunk: int = 4 * _MIB) -> None:
    """Inflate a raw deflate stream in chunks, keeping nothing, and refuse it past ``limit``.

    Memory stays at about ``chunk`` bytes whatever the stream inflates to, so the check
    can run before a library inflates the whole stream into memory at once.

    Args:
        path: the file (or label) to name in the error.
        stream: positioned at the first deflated byte (after a DICOM file's meta group).
        limit: the most inflated bytes accepted.
        chunk: bytes read and inflated per step.

    Raises:
        InputError: it inflates to more than ``limit`` bytes, or is not a deflate stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof and (data := stream.read(chunk)):
            while data and not inflater.eof:  # bytes after the end: DICOM's even-length pad
                total += len(inflater.decompress(data, chunk))
                if total > limit:
                    raise InputError(path, f"too large to decode: the Deflated dataset "
                                           f"inflates to more than {_mib(limit)} (max_bytes "
                                           f"plus {_mib(_HEADER_ALLOWANCE)} for the header)")
                data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise InputError(path, f"damaged Deflated dataset ({exc})") from exc
