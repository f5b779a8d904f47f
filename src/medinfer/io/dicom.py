"""Low-level DICOM access (pydicom): loading, decoding and geometry tags.

Every library failure is turned into :class:`~medinfer.errors.InputError`
naming the file. Volume assembly and the array/geometry conventions live in
:mod:`medinfer.io.series`. pydicom is imported lazily so that
``import medinfer.io`` stays cheap.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.errors import InputError

__all__ = [
    "DicomSlice",
    "NotDicomError",
    "decode_frames",
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


def load_dataset(path: str | Path) -> Any:
    """Read one DICOM file (header and pixel bytes, not decoded).

    Files without the 128-byte preamble / File Meta Information are read with
    ``force=True`` and accepted only if they hold image elements or a valid
    SOP Class UID.

    Args:
        path: the file.

    Returns:
        The ``pydicom.Dataset``.

    Raises:
        InputError: missing file, not DICOM, or a damaged DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        return _read_without_meta(path)
    except Exception as exc:
        raise InputError(path, f"damaged or truncated DICOM file ({reason(exc)})") from exc


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
