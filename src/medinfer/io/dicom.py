"""Low-level DICOM access (pydicom): loading, decoding and geometry tags.

Every library failure is turned into :class:`~medinfer.errors.InputError`
naming the file. Volume assembly and the array/geometry conventions live in
:mod:`medinfer.io.series`. pydicom is imported lazily so that
``import medinfer.io`` stays cheap.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medinfer.errors import InputError
from medinfer.io.limits import ReadLimits, check_inflated_size, inflated_prefix

__all__ = [
    "DicomSlice",
    "NotDicomError",
    "check_decoded_size",
    "check_deflated",
    "check_deflated_stream",
    "check_frames",
    "decode_frames",
    "file_meta_end",
    "has_pixels",
    "is_dicomdir",
    "load_dataset",
    "num_frames",
    "orientation",
    "pixel_spacing",
    "position",
    "reason",
    "rescale_params",
    "slice_gap",
]

logger = logging.getLogger(__name__)

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_POSITION_TOL_MM = 1e-3


class NotDicomError(InputError):
    """The file is not DICOM at all (as opposed to a damaged DICOM file)."""


@dataclass(frozen=True)
class DicomSlice:
    """One 2D plane: frame ``frame`` of the dataset ``ds`` read from ``path``."""

    path: Path
    ds: Any
    frame: int = 0

    @property
    def label(self) -> str:
        return self.path.name if self.frame == 0 else f"{self.path.name} frame {self.frame}"


def reason(exc: BaseException) -> str:
    """Short one-line description of a library exception (at most ~200 characters)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _DropTracebacks(logging.Filter):
    """Demote pydicom's per-plugin decoder tracebacks to one debug line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            logger.debug("pydicom decoder: %s", record.getMessage())
            return False
        return True


@contextmanager
def _quiet_decoder_errors() -> Iterator[None]:
    """While active, pydicom's decoder failures are not logged as ERROR tracebacks.

    The failure still surfaces as an InputError; the traceback would only
    clutter the CLI output.
    """
    target = logging.getLogger("pydicom.pixels.decoders.base")
    flt = _DropTracebacks()
    target.addFilter(flt)
    try:
        yield
    finally:
        target.removeFilter(flt)


def load_dataset(path: str | Path, limits: ReadLimits | None = None) -> Any:
    """Read one DICOM file (header and pixel bytes, not decoded).

    Files without the 128-byte preamble / File Meta Information are read with
    ``force=True`` and accepted only if they hold image elements or a valid
    SOP Class UID.

    Args:
        path: the file.
        limits: with limits, the header is read first (a Deflated file is inflated in
            chunks, keeping nothing) and a file whose pixels would decode larger than
            the limits is refused before its pixel bytes are read; None: no check.

    Returns:
        The ``pydicom.Dataset``.

    Raises:
        InputError: missing file, not DICOM, a damaged DICOM file, or over ``limits``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    if limits is not None:
        _check_file_header(path, limits)
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        return _read_without_meta(path)
    except Exception as exc:
        raise InputError(path, f"damaged or truncated DICOM file ({reason(exc)})") from exc


def _check_file_header(path: Path, limits: ReadLimits) -> None:
    """Refuse a file over ``limits`` from its header (its pixel bytes are not read).

    A header that cannot be parsed is left to the full read, which names the damage.
    """
    import pydicom

    try:
        with path.open("rb") as fh:
            ts, offset = file_meta_end(fh.read(64 * 1024))
            if ts == _DEFLATED:  # pydicom would inflate all of it, even for the header
                fh.seek(offset)
                check_deflated_stream(path, fh, limits)
                return
    except OSError as exc:
        raise InputError(path, f"cannot open file ({reason(exc)})") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # the full read that follows reports it, naming the damage
        logger.debug("%s: header not readable for the size check", path, exc_info=True)
        return
    check_decoded_size(path, header, limits)


def file_meta_end(head: bytes) -> tuple[str | None, int]:
    """(Transfer Syntax UID, offset of the first dataset byte) of a DICOM Part 10 file.

    Parses only the File Meta Information group (always explicit VR little endian), so a
    Deflated dataset can be checked before a library inflates all of it.

    Args:
        head: the file's first bytes (at least the preamble and the meta group).

    Returns:
        ``(None, 0)`` for data without the preamble and ``DICM`` prefix.
    """
    if head[128:132] != b"DICM":
        return None, 0
    pos, ts = 132, None
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        if element == 0x0010:
            ts = head[start:start + length].decode("ascii", "replace").strip("\0 ")
        pos = start + length
    return ts, pos


def check_deflated(path: str | Path, fh: BinaryIO, limits: ReadLimits | None) -> None:
    """Refuse a Deflated DICOM file that inflates past ``limits`` (a no-op for others).

    pydicom and pynetdicom inflate a Deflated dataset into memory in one piece, so a
    megabyte of zeros becomes a gigabyte there; this inflates it in chunks, keeping
    nothing, first.

    Args:
        path: the file (or label) to name in the error.
        fh: the DICOM Part 10 file, positioned at its start (restored on return).
        limits: the read limits (``max_bytes``); None: no check.

    Raises:
        InputError: the dataset inflates to more than :attr:`ReadLimits.max_inflated`.
    """
    if limits is None:
        return
    start = fh.tell()
    try:
        ts, offset = file_meta_end(fh.read(64 * 1024))
        if ts == _DEFLATED:
            fh.seek(start + offset)
            check_deflated_stream(path, fh, limits)
    finally:
        fh.seek(start)


def check_deflated_stream(path: str | Path, stream: BinaryIO, limits: ReadLimits | None) -> None:
    """Refuse a Deflated dataset (the raw deflate stream after the meta group, or a
    C-STORE's encoded dataset) over ``limits``, holding at most a few MiB of it inflated.

    First the header, inflated from the stream's first MiB, is checked as
    :func:`check_decoded_size` checks it; then the whole stream is inflated in chunks,
    keeping nothing, and refused past :attr:`ReadLimits.max_inflated`.

    Args:
        path: the file (or label) to name in the error.
        stream: positioned at the first deflated byte (restored on return).
        limits: the read limits; None: no check.

    Raises:
        InputError: over a limit, or not a deflate stream.
    """
    if limits is None:
        return
    from pydicom.filereader import read_dataset

    start = stream.tell()
    try:
        try:
            head = inflated_prefix(stream)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = read_dataset(io.BytesIO(head), False, True,
                                      stop_when=lambda tag, vr, length: tag >= 0x7FE00008)
        except Exception:  # a header over a MiB, or damage: left to the full read / cap
            logger.debug("%s: Deflated header not readable for the size check", path,
                         exc_info=True)
            header = None
        if header is not None:
            check_decoded_size(path, header, limits)
        if limits.max_inflated is not None:
            stream.seek(start)
            check_inflated_size(path, stream, limits.max_inflated)
    finally:
        stream.seek(start)


def check_decoded_size(path: str | Path, ds: Any, limits: ReadLimits | None,
                       frames: int | None = None) -> None:
    """Refuse a dataset whose pixels would decode larger than ``limits``, from its header.

    The decoded size is Rows x Columns x frames x SamplesPerPixel (3 for palette colour,
    which is expanded to RGB) x bytes per sample (BitsAllocated, or the palette's).

    Args:
        path: the file (or label) to name in the error.
        ds: the dataset (its pixel data need not have been read).
        limits: the read limits; None: no check.
        frames: frames or slices of the volume it is part of (default: its NumberOfFrames).

    Raises:
        InputError: over a limit, or malformed Rows/Columns/NumberOfFrames.
    """
    if limits is None or "Rows" not in ds or "Columns" not in ds:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
        count = int(ds.get("NumberOfFrames", 1) or 1) if frames is None else frames
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"malformed image size in the header ({reason(exc)})") from exc
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        samples, bits = 3, 16 if descriptor is not None and int(descriptor[2]) > 8 else 8
    limits.check(path, rows, cols, max(count, 1), samples, max(1, (bits + 7) // 8))


def check_frames(path: str | Path, ds: Any) -> None:
    """Decode a dataset's frames one at a time, keeping none: refuses undecodable pixels.

    Memory stays at one decoded frame, however many frames the dataset holds.

    Raises:
        InputError: no decoder for the transfer syntax, or truncated/corrupt pixel data.
    """
    from pydicom.pixels import iter_pixels

    if not has_pixels(ds):
        return
    try:
        _ensure_transfer_syntax(ds)
        _check_decoder(Path(path), ds.file_meta.TransferSyntaxUID)
        with _quiet_decoder_errors():
            for _ in iter_pixels(ds):
                pass
    except InputError:
        raise
    except Exception as exc:  # pydicom raises ValueError, AttributeError, NotImplementedError ...
        raise InputError(path, f"pixel data cannot be decoded (truncated or damaged): "
                               f"{reason(exc)}") from exc


def _read_without_meta(path: Path) -> Any:
    """Read a file lacking the DICOM preamble; accept it only if it looks like DICOM."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            looks_like_image = "Rows" in ds and "Columns" in ds and has_pixels(ds)
            looks_like_dicom = looks_like_image or _valid_uid(ds.get("SOPClassUID"))
    except Exception as exc:
        raise NotDicomError(path, "not a DICOM file") from exc
    if not looks_like_dicom:
        raise NotDicomError(path, "not a DICOM file (no DICOM header and no DICOM elements)")
    logger.info("%s: no DICOM File Meta Information; read with force=True", path)
    return ds


def _valid_uid(value: Any) -> bool:
    """True for a syntactically valid UID such as '1.2.840.10008.5.1.4.1.1.2'."""
    text = str(value or "")
    return 0 < len(text) <= 64 and all(part.isdigit() for part in text.split("."))


def has_pixels(ds: Any) -> bool:
    """True when the dataset carries (integer or float) pixel data."""
    return any(k in ds for k in _PIXEL_KEYWORDS)


def is_dicomdir(path: Path, ds: Any) -> bool:
    """True for a DICOMDIR (media directory) file."""
    meta = getattr(ds, "file_meta", None)
    sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return path.name.upper() == "DICOMDIR" or _DICOMDIR_SOP in (sop, str(ds.get("SOPClassUID", "")))


def _ensure_transfer_syntax(ds: Any) -> None:
    """Fill a missing Transfer Syntax UID from the encoding the file was read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = ds.original_encoding
    if implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _check_decoder(path: Path, ts: Any) -> None:
    """Raise InputError when no installed plugin can decode transfer syntax ``ts``."""
    from pydicom.pixels import get_decoder

    if not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise InputError(path, f"unsupported transfer syntax {ts.name} ({ts})") from exc
    if not decoder.is_available:
        raise InputError(
            path,
            f"no decoder installed for transfer syntax {ts.name} ({ts}); "
            "it needs e.g. pylibjpeg, pyjpegls or gdcm",
        )


def decode_frames(path: Path, ds: Any) -> np.ndarray:
    """Decode all frames of a dataset.

    Args:
        path: the file, for error messages.
        ds: the dataset.

    Returns:
        Native-endian array of shape ``(frames, rows, cols, samples)``;
        palette colour is expanded to RGB (samples = 3).

    Raises:
        InputError: no pixel data, no decoder, or corrupt pixel data.
    """
    from pydicom.pixels import apply_color_lut

    if not has_pixels(ds):
        sop = ds.get("SOPClassUID")
        kind = getattr(sop, "name", None) or str(sop or "unknown SOP class")
        raise InputError(path, f"DICOM file has no pixel data ({kind})")
    try:
        _ensure_transfer_syntax(ds)
        ts = ds.file_meta.TransferSyntaxUID
        _check_decoder(path, ts)
        with _quiet_decoder_errors():
            arr = ds.pixel_array
        if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"cannot decode pixel data ({reason(exc)})") from exc
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if num_frames(ds) == 1:
        arr = arr[None]
    return arr[..., None] if arr.ndim == 3 else arr


def num_frames(ds: Any) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _floats(value: Any, n: int | None) -> np.ndarray | None:
    """``value`` (scalar or multi-valued) as finite floats, or None when absent or malformed.

    Args:
        value: a pydicom element value.
        n: required number of values, or None for any number >= 1.
    """
    if value is None:
        return None
    is_multi = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    items = list(value) if is_multi else [value]
    try:
        out = np.asarray([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if out.size == 0 or (n is not None and out.shape != (n,)) or not np.all(np.isfinite(out)):
        return None
    return out


def _functional_item(ds: Any, sequence: str, frame: int) -> Any | None:
    """First item of ``sequence`` in the per-frame (frame ``frame``) or shared groups."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index and sequence in seq[index]:
            inner = seq[index][sequence]
            if len(inner.value) > 0:
                return inner.value[0]
    return None


def _attr(ds: Any, keyword: str, frame: int, sequence: str, n: int) -> np.ndarray | None:
    """Attribute ``keyword`` from the dataset itself or its functional groups."""
    value = _floats(ds.get(keyword), n)
    if value is None:
        item = _functional_item(ds, sequence, frame)
        value = _floats(item.get(keyword), n) if item is not None else None
    return value


def orientation(s: DicomSlice) -> np.ndarray | None:
    return _attr(s.ds, "ImageOrientationPatient", s.frame, "PlaneOrientationSequence", 6)


def position(s: DicomSlice) -> np.ndarray | None:
    item = _functional_item(s.ds, "PlanePositionSequence", s.frame)
    pos = _floats(item.get("ImagePositionPatient"), 3) if item is not None else None
    if pos is not None:
        return pos
    pos = _floats(s.ds.get("ImagePositionPatient"), 3)
    offsets = s.ds.get("GridFrameOffsetVector")
    iop = orientation(s)
    if pos is not None and offsets is not None and iop is not None and num_frames(s.ds) > 1:
        off = _floats(offsets, None)
        if off is None or len(off) <= s.frame:
            return None
        return pos + off[s.frame] * np.cross(iop[:3], iop[3:])
    return pos


def pixel_spacing(s: DicomSlice) -> np.ndarray | None:
    value = _attr(s.ds, "PixelSpacing", s.frame, "PixelMeasuresSequence", 2)
    if value is None:
        value = _floats(s.ds.get("ImagerPixelSpacing"), 2)
    return value if value is not None and np.all(value > 0) else None


def slice_gap(s: DicomSlice) -> float | None:
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _attr(s.ds, keyword, s.frame, "PixelMeasuresSequence", 1)
        if value is not None and value[0] > 0:
            return float(value[0])
    return None


def rescale_params(s: DicomSlice) -> tuple[float, float] | None:
    """(slope, intercept) of a slice, or None when identity or absent."""
    ds = s.ds
    src = ds if ("RescaleSlope" in ds or "RescaleIntercept" in ds) else _functional_item(
        ds, "PixelValueTransformationSequence", s.frame
    )
    if src is None:
        return None
    try:
        slope = float(src.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(src.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as exc:
        raise InputError(s.path, f"malformed RescaleSlope/RescaleIntercept ({exc})") from exc
    return None if (slope, intercept) == (1.0, 0.0) else (slope, intercept)
