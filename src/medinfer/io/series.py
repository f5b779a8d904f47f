"""Assemble DICOM files into :class:`~medinfer.io.image.Image` objects.

Array layout of every DICOM volume: ``(C, rows, cols, slices)``: channel
first (C = 1 greyscale, 3 RGB or palette colour), then the in-plane row index,
the in-plane column index and the slice index, slices sorted along the slice
normal. Geometry is in DICOM patient coordinates (``meta["frame"] == "LPS"``,
mm):

* ``spacing = (PixelSpacing[0], PixelSpacing[1], slice spacing)``:
  PixelSpacing[0] is the distance between rows; the slice spacing is the
  median gap between sorted slice positions (or SpacingBetweenSlices /
  SliceThickness when positions are unknown or there is one slice);
* ``direction`` columns are (column cosine, row cosine, normal) from
  ImageOrientationPatient: the world directions in which the row, column and
  slice indices grow; ``normal = row cosine x column cosine``, so the matrix
  has determinant -1;
* ``origin`` is the ImagePositionPatient of the first sorted slice.

Pixel values have RescaleSlope/RescaleIntercept applied (result float32) when
any slice carries a non-identity pair; otherwise the stored dtype is kept.
A single-frame file read with :func:`read_dicom_file` is a 2D image
``(C, rows, cols)`` whose 3D position is kept in ``meta``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.errors import InputError
from medinfer.io.dicom import (
    DicomSlice,
    NotDicomError,
    check_decoded_size,
    decode_frames,
    has_pixels,
    is_dicomdir,
    load_dataset,
    num_frames,
    orientation,
    pixel_spacing,
    position,
    rescale_params,
    slice_gap,
)
from medinfer.io.image import Image
from medinfer.io.limits import ReadLimits

__all__ = ["read_dicom_file", "read_dicom_series"]

logger = logging.getLogger(__name__)

_POSITION_TOL_MM = 1e-3
# A slice gap wider than this times the series' spacing is refused (missing slices).
_GAP_FACTOR = 1.5
_ORIENTATION_TOL = 1e-4


def read_dicom_file(path: str | Path, limits: ReadLimits | None = None) -> Image:
    """Read one DICOM file.

    Args:
        path: a DICOM file (with or without File Meta Information).
        limits: refuse a file whose pixels would decode larger than this, from its
            header, before any pixel is decoded (None: no limit).

    Returns:
        A 2D image ``(C, rows, cols)`` for a single-frame file (spacing from
        PixelSpacing/ImagerPixelSpacing, else 1 mm; identity in-plane geometry,
        the 3D position in ``meta``), or a volume ``(C, rows, cols, frames)``
        for a multi-frame file (see the module docstring).

    Raises:
        InputError: the file is missing, not DICOM, damaged, has no pixel data,
            uses a transfer syntax no installed plugin can decode, or is over ``limits``.
    """
    path = Path(path)
    ds = load_dataset(path, limits)
    check_decoded_size(path, ds, limits)
    if num_frames(ds) > 1:
        slices = [DicomSlice(path, ds, i) for i in range(num_frames(ds))]
        return _build_volume(slices, path, from_series=False)
    first = DicomSlice(path, ds)
    frames = decode_frames(path, ds)  # (1, rows, cols, S)
    array, rescale = _apply_rescale([first], {path: frames})
    plane = array[..., 0]  # (S, rows, cols)
    spacing = pixel_spacing(first)
    if spacing is None:
        logger.info("%s: no PixelSpacing; assuming 1 mm pixels", path)
    meta = _meta(first, 1, rescale)
    geometry = (("image_position", position(first)), ("image_orientation", orientation(first)))
    for key, value in geometry:
        if value is not None:
            meta[key] = tuple(float(v) for v in value)
    return _make_image(
        plane,
        tuple(spacing) if spacing is not None else (1.0, 1.0),
        (0.0, 0.0),
        np.eye(2),
        path,
        meta,
        [first],
    )


def read_dicom_series(source: str | Path | Sequence[str | Path],
                      limits: ReadLimits | None = None) -> Image:
    """Read a DICOM series (a folder, or a list of one series' files) as a volume.

    In a folder, files that are not DICOM (and DICOMDIR / pixel-less DICOM
    files) are skipped with a logged warning; sub-folders and hidden files
    are ignored. An explicit list of files must contain only DICOM images.

    Args:
        source: a folder holding one series, one DICOM file, or a sequence of
            DICOM files of one series.
        limits: refuse a file, or a series, whose pixels would decode larger than this
            (rows x columns x slices x samples), from the headers, before any pixel is
            decoded (None: no limit).

    Returns:
        An Image of shape ``(C, rows, cols, slices)`` in LPS geometry (see the
        module docstring for the exact conventions).

    Raises:
        InputError: missing/empty folder, no readable DICOM, several
            SeriesInstanceUIDs, mixed Rows/Columns, duplicate slice positions,
            an unreadable/undecodable file (named in the message), or over ``limits``.
    """
    files, label, from_folder = _collect_files(source)
    datasets = _read_datasets(files, label, from_folder, limits)
    _check_single_series(datasets, label)
    if len(datasets) == 1 and num_frames(datasets[0][1]) > 1:
        path, ds = datasets[0]
        slices = [DicomSlice(path, ds, i) for i in range(num_frames(ds))]
        return _build_volume(slices, label, from_series=False, limits=limits)
    if any(num_frames(ds) > 1 for _, ds in datasets):
        raise InputError(label, "series mixes multi-frame files with other files; pass one file")
    return _build_volume([DicomSlice(p, ds) for p, ds in datasets], label, from_series=True,
                         limits=limits)


def _collect_files(source: str | Path | Sequence[str | Path]) -> tuple[list[Path], Path, bool]:
    """Files of a folder, a single file, or a list; plus the path to name in errors."""
    if isinstance(source, (str, Path)):
        root = Path(source)
        if not root.exists():
            raise InputError(root, "no such file or folder")
        if not root.is_dir():
            return [root], root, False
        files = sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise InputError(root, "folder is empty (no DICOM files)")
        return files, root, True
    files = [Path(f) for f in source]
    if not files:
        raise InputError(Path("."), "no DICOM files given")
    return files, files[0].parent, False


def _read_datasets(files: list[Path], label: Path, from_folder: bool,
                   limits: ReadLimits | None = None) -> list[tuple[Path, Any]]:
    """Load every file; in folder mode skip non-DICOM and pixel-less files with a warning."""
    out: list[tuple[Path, Any]] = []
    for path in files:
        if not from_folder:
            out.append((path, load_dataset(path, limits)))
            continue
        try:
            ds = load_dataset(path, limits)
        except NotDicomError as err:
            logger.warning("skipping %s", err)
            continue
        if is_dicomdir(path, ds) or not has_pixels(ds):
            logger.warning("skipping %s: DICOM file without pixel data", path)
            continue
        out.append((path, ds))
    if not out:
        raise InputError(label, "no readable DICOM image files")
    return out


def _check_single_series(datasets: list[tuple[Path, Any]], label: Path) -> None:
    """Raise InputError listing the SeriesInstanceUIDs when there are several."""
    counts = Counter(str(ds.get("SeriesInstanceUID", "") or "<none>") for _, ds in datasets)
    if len(counts) > 1:
        listing = ", ".join(f"{uid} ({n} files)" for uid, n in sorted(counts.items()))
        raise InputError(
            label, f"contains {len(counts)} DICOM series; pass one series' files: {listing}"
        )


def _check_sizes(slices: list[DicomSlice]) -> None:
    """Raise InputError naming the first file whose Rows/Columns differ from the first's."""
    def size(s: DicomSlice) -> tuple[int, int]:
        try:
            return int(s.ds.Rows), int(s.ds.Columns)
        except (AttributeError, TypeError, ValueError) as exc:
            raise InputError(s.path, "missing or malformed Rows/Columns") from exc

    ref = size(slices[0])
    for s in slices[1:]:
        got = size(s)
        if got != ref:
            raise InputError(
                s.path,
                f"image size {got[0]}x{got[1]} (rows x cols) differs from "
                f"{ref[0]}x{ref[1]} in {slices[0].path.name}",
            )


def _build_volume(slices: list[DicomSlice], label: Path, from_series: bool,
                  limits: ReadLimits | None = None) -> Image:
    """Sort, decode and stack slices into a ``(C, rows, cols, slices)`` Image."""
    _check_sizes(slices)
    check_decoded_size(label, slices[0].ds, limits, frames=len(slices))
    ordered, direction, origin, gap = _order_slices(slices, label, from_series)
    first = ordered[0]
    in_plane = pixel_spacing(first)
    if in_plane is None:
        logger.warning("%s: no PixelSpacing; assuming 1 mm pixels", label)
        in_plane = np.ones(2)
    decoded = {s.path: decode_frames(s.path, s.ds) for s in slices if s.frame == 0}
    array, rescale = _apply_rescale(ordered, decoded)
    meta = _meta(first, len({s.path for s in slices}), rescale)
    meta["num_slices"] = len(ordered)
    spacing = (float(in_plane[0]), float(in_plane[1]), gap)
    return _make_image(array, spacing, tuple(origin), direction, label, meta, ordered)


def _order_slices(
    slices: list[DicomSlice], label: Path, from_series: bool
) -> tuple[list[DicomSlice], np.ndarray, np.ndarray, float]:
    """Sort slices along the slice normal.

    Returns:
        (sorted slices, 3x3 direction, origin (3,), slice spacing in mm).
    """
    iops = [orientation(s) for s in slices]
    ipps = [position(s) for s in slices]
    if any(v is None for v in iops) or any(v is None for v in ipps):
        return _order_without_geometry(slices, label, from_series)
    ref = iops[0]
    for s, iop in zip(slices, iops):
        if not np.allclose(iop, ref, atol=_ORIENTATION_TOL):
            raise InputError(s.path, f"slice orientation differs from {slices[0].label}")
    row, col = _unit(ref[:3]), _unit(ref[3:])
    normal = np.cross(row, col) if row is not None and col is not None else np.zeros(3)
    if np.linalg.norm(normal) < 0.5:  # zero or (nearly) parallel cosines
        raise InputError(slices[0].path, f"invalid ImageOrientationPatient {list(ref)}")
    normal = normal / np.linalg.norm(normal)
    dist = np.array([float(p @ normal) for p in ipps])
    order = np.argsort(dist, kind="stable")
    gaps = np.diff(dist[order])
    if gaps.size and gaps.min() < _POSITION_TOL_MM:
        i = int(np.argmin(gaps))
        a, b = slices[order[i]], slices[order[i + 1]]
        raise InputError(
            b.path, f"duplicate slice position ({dist[order[i]]:.3f} mm along the normal, "
            f"same as {a.label})",
        )
    if gaps.size:
        gap = float(np.median(gaps))
        _check_gaps(gaps, [slices[i] for i in order])
        if gaps.max() - gaps.min() > 0.01 * gap + _POSITION_TOL_MM:
            logger.warning(
                "%s: non-uniform slice spacing (%.3f..%.3f mm); using the median %.3f mm",
                label, gaps.min(), gaps.max(), gap,
            )
    else:
        gap = slice_gap(slices[0]) or 1.0
    direction = np.column_stack([col, row, normal])
    return [slices[i] for i in order], direction, ipps[order[0]], gap


def _check_gaps(gaps: np.ndarray, ordered: list[DicomSlice]) -> None:
    """Raise InputError naming the slice after the first gap wider than
    :data:`_GAP_FACTOR` x the typical spacing (missing slices, or two stacks in one
    series): inferring over it as if contiguous would misplace everything beyond it.

    The typical spacing is the median gap; with two gaps (three slices) the median is
    no reference, so the smaller one is.
    """
    ref = float(np.median(gaps)) if gaps.size >= 3 else float(gaps.min())
    wide = np.flatnonzero(gaps > _GAP_FACTOR * ref + _POSITION_TOL_MM)
    if wide.size:
        i = int(wide[0])
        raise InputError(
            ordered[i + 1].path, f"slice gap of {gaps[i]:.3f} mm before this slice (after "
            f"{ordered[i].label}), the series' spacing is {ref:.3f} mm: missing slices or "
            "a non-contiguous series",
        )


def _unit(vector: np.ndarray) -> np.ndarray | None:
    """``vector`` scaled to length 1, or None when it is (near) zero."""
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-6 else None


def _order_without_geometry(
    slices: list[DicomSlice], label: Path, from_series: bool
) -> tuple[list[DicomSlice], np.ndarray, np.ndarray, float]:
    """Fallback order: InstanceNumber for a series, stored order for multi-frame."""
    ordered = list(slices)
    if from_series and len(slices) > 1:
        numbers = [_instance_number(s) for s in slices]
        if any(n is None for n in numbers):
            logger.warning("%s: slice geometry and InstanceNumber missing; using file-name order",
                           label)
        else:
            logger.warning("%s: slice geometry missing; sorting by InstanceNumber", label)
            keys = [int(n) for n in numbers if n is not None]
            dup = [k for k, c in Counter(keys).items() if c > 1]
            if dup:
                offender = slices[keys.index(dup[0], keys.index(dup[0]) + 1)]
                raise InputError(offender.path, f"duplicate InstanceNumber {dup[0]}")
            ordered = [s for _, s in sorted(zip(keys, slices), key=lambda t: t[0])]
    elif len(slices) > 1:
        logger.warning("%s: no per-frame positions; keeping the stored frame order", label)
    iop = orientation(ordered[0])
    if iop is not None:
        direction = np.column_stack([iop[3:], iop[:3], np.cross(iop[:3], iop[3:])])
    else:
        direction = np.eye(3)
    origin = position(ordered[0])
    gap = slice_gap(ordered[0])
    if gap is None and len(slices) > 1:
        logger.warning("%s: no slice spacing known; assuming 1 mm", label)
    return ordered, direction, origin if origin is not None else np.zeros(3), gap or 1.0


def _instance_number(s: DicomSlice) -> int | None:
    """InstanceNumber as int, or None when absent or malformed."""
    try:
        value = s.ds.get("InstanceNumber")
        return None if value is None or str(value).strip() == "" else int(value)
    except (TypeError, ValueError):
        return None


def _apply_rescale(
    ordered: list[DicomSlice], decoded: dict[Path, np.ndarray]
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Stack decoded planes into ``(S, rows, cols, n)``; apply rescale if any slice has one.

    Returns:
        (array, (slope, intercept) of the first slice or None when no rescale applied).
    """
    params = [rescale_params(s) for s in ordered]
    planes = [decoded[s.path][s.frame] for s in ordered]  # each (rows, cols, S)
    shape = planes[0].shape
    for s, p in zip(ordered, planes):
        if p.shape != shape:
            raise InputError(s.path, f"decoded plane shape {p.shape} differs from {shape}")
    applied = any(p is not None for p in params)
    if applied:
        planes = [_rescaled(p, k or (1.0, 0.0)) for p, k in zip(planes, params)]
    array = np.moveaxis(np.stack(planes, axis=-1), 2, 0)  # (S, rows, cols, n)
    first = params[0] or (1.0, 0.0)
    return np.ascontiguousarray(array), (first if applied else None)


def _rescaled(plane: np.ndarray, params: tuple[float, float]) -> np.ndarray:
    """``plane * slope + intercept`` as float32 (computed in float64, then cast)."""
    slope, intercept = params
    return (plane.astype(np.float64) * slope + intercept).astype(np.float32)


def _meta(
    first: DicomSlice, num_files: int, rescale: tuple[float, float] | None
) -> dict[str, object]:
    """Non-identifying source metadata of a DICOM image."""
    ds = first.ds
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    meta: dict[str, object] = {
        "format": "dicom",
        "frame": "LPS",
        "modality": str(ds.get("Modality", "") or ""),
        "series_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "series_description": str(ds.get("SeriesDescription", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "") or ""),
        "transfer_syntax": str(ts) if ts is not None else "",
        "num_files": num_files,
        "rescale_applied": rescale is not None,
    }
    if rescale is not None:
        meta["rescale_slope"], meta["rescale_intercept"] = rescale
    return meta


def _make_image(
    array: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: np.ndarray,
    source: Path,
    meta: dict[str, object],
    slices: Sequence[DicomSlice] = (),
) -> Image:
    """Build the Image, turning inconsistent geometry into InputError.

    ``slices`` (in array order) become :attr:`Image.instances`: each dataset once, its
    pixel data dropped (already decoded into ``array``).
    """
    instances = list({id(s.ds): s.ds for s in slices}.values())
    for ds in instances:
        if "PixelData" in ds:
            del ds.PixelData
    try:
        return Image(array, spacing, origin, direction, source, meta, instances)
    except ValueError as exc:
        raise InputError(source, f"inconsistent DICOM geometry ({exc})") from exc
