"""Read and write 4D CT perfusion series: T time points of one volume.

A perfusion :class:`~medinfer.io.image.Image` holds the time points as channels: ``array``
is ``(T, rows, cols, slices)`` float32 HU for DICOM, in exactly the layout and LPS geometry
of :func:`~medinfer.io.series.read_dicom_series` of one time point, or ``(T, X, Y, Z)``
(RAS) for a 4D NIfTI file. ``meta["frame_times"]`` holds the T times in seconds from the
first frame.

Files are sorted by acquisition time at each slice position, never by InstanceNumber or
file name. pydicom (and nibabel) are imported lazily, as in the rest of :mod:`medinfer.io`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.errors import InputError
from medinfer.io.dicom import (
    DicomSlice,
    _functional_item,
    decode_frames,
    num_frames,
    orientation,
    pixel_spacing,
    position,
)
from medinfer.io.image import Image
from medinfer.io.limits import ReadLimits
from medinfer.io.readers import read_image
from medinfer.io.series import (
    _apply_rescale,
    _collect_files,
    _make_image,
    _meta,
    _order_slices,
    _read_datasets,
)

__all__ = ["frame_time", "read_perfusion", "write_perfusion_multiframe", "write_perfusion_series"]

logger = logging.getLogger(__name__)

TIME_ATTRIBUTES = ("AcquisitionTime", "ContentTime", "TriggerTime", "TemporalPositionIdentifier")
_FRAME_ATTRIBUTES = ("FrameAcquisitionDateTime", "TemporalPositionIndex")
_INDEX_ATTRIBUTES = ("TemporalPositionIdentifier", "TemporalPositionIndex")
_DATE_OF = {"AcquisitionTime": "AcquisitionDate", "ContentTime": "ContentDate"}
_UNEVEN = 0.25  # a frame interval off the median by more than this fraction is irregular
_SPREAD = 0.5  # frame k's times across positions may spread by this x the median interval
_HU_OFFSET = 1024
_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def read_perfusion(source: str | Path | Sequence[str | Path],
                   frame_times: Sequence[float] | None = None,
                   limits: ReadLimits | None = None, min_frames: int = 8,
                   resample: bool = False) -> Image:
    """Read a 4D CT perfusion series.

    Args:
        source: a folder (or list of files) of one classic series (one file per slice per
            time point), one enhanced multi-frame CT file, or a 4D NIfTI file (times from
            ``frame_times`` or a sidecar ``<name>.json`` with ``FrameTimes`` (s) or
            ``FrameInterval``/``RepetitionTime`` (s)).
        frame_times: T times in seconds; override the files' times (which still sort them).
        limits: refuse inputs that would decode larger than this (None: no limit).
        min_frames: fewest time points accepted.
        resample: put an unevenly sampled series onto a uniform grid at the median interval
            (linear in time, per voxel) instead of refusing it.

    Returns:
        Image ``(T, rows, cols, slices)`` float32 HU (DICOM, LPS) or ``(T, X, Y, Z)``
        (NIfTI, RAS). ``meta`` adds ``frame_times`` (s, first 0.0), ``time_source``,
        ``num_frames`` and ``resampled`` (plus ``source_frame_times`` when resampled);
        ``instances`` are the first time point's datasets in slice order.

    Raises:
        InputError: naming the file: several series, missing or duplicate time points,
            mixed geometry, no usable time, too few frames or uneven sampling.
    """
    if isinstance(source, (str, Path)) and Path(source).name.lower().endswith((".nii", ".nii.gz")):
        return _read_nifti(Path(source), frame_times, limits, min_frames, resample)
    files, label, from_folder = _collect_files(source)
    datasets = _read_datasets(files, label, from_folder, limits)
    _check_one_series(datasets)
    if len(datasets) == 1 and num_frames(datasets[0][1]) > 1:
        path, ds = datasets[0]
        slices = [DicomSlice(path, ds, i) for i in range(num_frames(ds))]
        keywords: Sequence[str] = _FRAME_ATTRIBUTES
    else:
        multi = next((p for p, ds in datasets if num_frames(ds) > 1), None)
        if multi is not None:
            raise InputError(multi, "multi-frame file among other files; pass it alone")
        slices, keywords = [DicomSlice(p, ds) for p, ds in datasets], TIME_ATTRIBUTES
    _check_geometry(slices)
    groups = _group_by_position(slices)
    if max(len(g) for g in groups) == 1 and min_frames > 1:
        raise InputError(slices[0].path, f"too few frames: 1 time point, need {min_frames}")
    keyword, times = _pick_time(groups, keywords)
    frames_by_pos = _sort_by_time(groups, times, keyword)
    seconds = _frame_seconds(frames_by_pos, times, keyword, frame_times, min_frames, label)
    image = _assemble(frames_by_pos, label, limits)
    return _finish(image, seconds, "given" if frame_times is not None else keyword,
                   [g[0].path for g in zip(*frames_by_pos)], resample)


def frame_time(ds: Any) -> tuple[float | None, str]:
    """The acquisition time of one dataset and the attribute it came from.

    Args:
        ds: a pydicom dataset.

    Returns:
        (seconds, keyword): AcquisitionTime or ContentTime as seconds of the day,
        TriggerTime in seconds, or TemporalPositionIdentifier as ``(index - 1) x
        TemporalResolution`` in seconds (None without TemporalResolution); ``(None, "")``
        when the dataset carries none of them.
    """
    for keyword in TIME_ATTRIBUTES:
        value = _raw_time(ds, keyword)
        if value is None:
            continue
        if keyword in _INDEX_ATTRIBUTES:
            res = _number(ds.get("TemporalResolution"))
            return ((value - 1.0) * res / 1000.0 if res else None), keyword
        return value, keyword
    return None, ""


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _tm_seconds(value: Any) -> float | None:
    """DICOM TM ``HHMMSS.FFFFFF`` (or ``HH:MM:SS``) as seconds of the day."""
    text = str(value or "").strip().replace(":", "")
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        return hours * 3600.0 + minutes * 60.0 + float(text[4:] or 0.0)
    except ValueError:
        return None


def _dt_seconds(value: Any) -> float | None:
    """DICOM DT ``YYYYMMDDHHMMSS.FFFFFF`` as seconds since 2000-01-01 (offset ignored)."""
    text = str(value or "").strip().split("+")[0].split("-")[0]
    try:
        day = dt.date(int(text[0:4]), int(text[4:6] or 1), int(text[6:8] or 1))
    except ValueError:
        return None
    tod = _tm_seconds(text[8:]) if len(text) > 8 else 0.0
    return None if tod is None else (day - dt.date(2000, 1, 1)).days * 86400.0 + tod


def _raw_time(ds: Any, keyword: str) -> float | None:
    """Seconds of the day (Acquisition/ContentTime), seconds (TriggerTime) or an index."""
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return None
    if keyword in _DATE_OF:
        return _tm_seconds(value)
    number = _number(value)
    return number / 1000.0 if number is not None and keyword == "TriggerTime" else number


def _slice_time(s: DicomSlice, keyword: str) -> float | None:
    """The time ``keyword`` of one slice (a frame's FrameContentSequence for multi-frame)."""
    if keyword not in _FRAME_ATTRIBUTES:
        return _raw_time(s.ds, keyword)
    item = _functional_item(s.ds, "FrameContentSequence", s.frame)
    value = item.get(keyword) if item is not None else None
    return _dt_seconds(value) if keyword == "FrameAcquisitionDateTime" else _number(value)


def _check_one_series(datasets: list[tuple[Path, Any]]) -> None:
    """Raise InputError naming the first file outside the most common SeriesInstanceUID."""
    uids = [str(ds.get("SeriesInstanceUID", "") or "<none>") for _, ds in datasets]
    counts = Counter(uids)
    if len(counts) > 1:
        main = counts.most_common(1)[0][0]
        path, uid = next((p, u) for (p, _), u in zip(datasets, uids) if u != main)
        raise InputError(path, f"belongs to series {uid}, not {main} ({counts[main]} files): "
                               f"{len(counts)} series given, pass one")


def _check_geometry(slices: list[DicomSlice]) -> None:
    """Raise InputError naming the first slice whose size, orientation or pixel spacing
    differs from the most common (so the odd time point is named, whichever file is first)."""
    def rounded(values: np.ndarray | None) -> tuple[float, ...] | None:
        return None if values is None else tuple(np.round(values, 4).tolist())

    def geometry(s: DicomSlice) -> tuple[tuple[str, Any], ...]:
        return (("Rows/Columns", (s.ds.get("Rows"), s.ds.get("Columns"))),
                ("ImageOrientationPatient", rounded(orientation(s))),
                ("PixelSpacing", rounded(pixel_spacing(s))))

    keys = [geometry(s) for s in slices]
    usual = Counter(keys).most_common(1)[0][0]
    if dict(usual)["ImageOrientationPatient"] is None:
        raise InputError(slices[0].path, "no ImageOrientationPatient: cannot order the slices")
    odd = next((i for i, key in enumerate(keys) if key != usual), None)
    if odd is not None:
        ref = slices[keys.index(usual)]
        what, value = next(item for item, other in zip(keys[odd], usual) if item != other)
        raise InputError(slices[odd].path, f"mixed geometry between time points: {what} "
                                           f"{value} differs from {dict(usual)[what]} in "
                                           f"{ref.label}")


def _group_by_position(slices: list[DicomSlice]) -> list[list[DicomSlice]]:
    """Slices grouped by ImagePositionPatient (to 0.01 mm), in order of first appearance."""
    groups: dict[tuple[int, ...], list[DicomSlice]] = {}
    for s in slices:
        pos = position(s)
        if pos is None:
            raise InputError(s.path, "no ImagePositionPatient: cannot group by slice position")
        groups.setdefault(tuple(np.round(pos * 100).astype(int).tolist()), []).append(s)
    return list(groups.values())


def _pick_time(groups: list[list[DicomSlice]], keywords: Sequence[str]
               ) -> tuple[str, dict[int, float]]:
    """The first attribute every slice carries that differs within a position.

    Returns:
        (keyword, time of each slice keyed by ``id(slice)``): seconds, or an index.
    """
    for keyword in keywords:
        values = [[_slice_time(s, keyword) for s in g] for g in groups]
        if any(v is None for row in values for v in row):
            continue
        if any(len(set(row)) > 1 for row in values) or all(len(row) == 1 for row in values):
            times = {id(s): float(v) for g, row in zip(groups, values) for s, v in zip(g, row)}
            return keyword, _add_dates(groups, keyword, times)
    raise InputError(groups[0][0].path, f"no time attribute ({', '.join(keywords)}) present "
                                        "in every file and varying at one slice position")


def _add_dates(groups: list[list[DicomSlice]], keyword: str, times: dict[int, float]
               ) -> dict[int, float]:
    """Add whole days from AcquisitionDate/ContentDate (or wrap past midnight without them)."""
    if keyword not in _DATE_OF:
        return times
    slices = [s for g in groups for s in g]
    days = [_dt_seconds(s.ds.get(_DATE_OF[keyword])) for s in slices]
    if all(d is not None for d in days):
        first = min(d for d in days if d is not None)
        return {id(s): times[id(s)] + d - first for s, d in zip(slices, days) if d is not None}
    if max(times.values()) - min(times.values()) > 43200:  # no dates and a midnight in between
        return {k: v + 86400.0 if v < 43200 else v for k, v in times.items()}
    return times


def _sort_by_time(groups: list[list[DicomSlice]], times: dict[int, float], keyword: str
                  ) -> list[list[DicomSlice]]:
    """Each position's slices by time; refuse duplicate times and unequal counts."""
    ordered = [sorted(g, key=lambda s: times[id(s)]) for g in groups]
    for g in ordered:
        for a, b in zip(g, g[1:]):
            if abs(times[id(b)] - times[id(a)]) < 1e-6:
                raise InputError(b.path, f"duplicate time: same {keyword} as {a.label} at "
                                         "this slice position")
    counts = Counter(len(g) for g in ordered)
    usual = max(counts, key=lambda n: (counts[n], n))
    odd = next((g for g in ordered if len(g) != usual), None)
    if odd is not None:
        where = ", ".join(f"{v:g}" for v in position(odd[0]))
        raise InputError(odd[0].path, f"missing time points: slice position ({where}) mm has "
                                      f"{len(odd)} time point(s), the other positions {usual} "
                                      "(or the time points differ in slice positions)")
    return ordered


def _frame_seconds(ordered: list[list[DicomSlice]], times: dict[int, float], keyword: str,
                   given: Sequence[float] | None, min_frames: int, label: Path) -> np.ndarray:
    """Frame k's time (s, mean over positions, first 0.0), or ``given``; shape (T,)."""
    count = len(ordered[0])
    if count < min_frames:
        raise InputError(label, f"too few frames: {count} time point(s), need {min_frames}")
    if given is not None:
        return _given_times(given, count, label)
    table = np.array([[times[id(s)] for s in g] for g in ordered])  # (positions, T)
    if keyword in _INDEX_ATTRIBUTES:
        res = _number(ordered[0][0].ds.get("TemporalResolution"))
        if not res or res <= 0:
            raise InputError(ordered[0][0].path, f"{keyword} is an index: pass frame_times or "
                                                 "give the series a TemporalResolution (ms)")
        table = (table - table.min()) * res / 1000.0
    mean = table.mean(axis=0)
    if count > 1:
        spread = table.max(axis=0) - table.min(axis=0)
        limit = _SPREAD * float(np.median(np.diff(mean)))
        k = int(np.argmax(spread))
        if spread[k] > limit:
            worst = ordered[int(np.argmax(np.abs(table[:, k] - mean[k])))][k]
            raise InputError(worst.path, f"frame {k}'s times spread by {spread[k]:.3f} s over "
                                         f"the slice positions, over {limit:.3f} s")
    return mean - mean[0]


def _given_times(given: Sequence[float], count: int, label: Path) -> np.ndarray:
    times = np.asarray(given, dtype=np.float64).ravel()
    if times.size != count:
        raise InputError(label, f"frame_times has {times.size} values; the series has "
                                f"{count} time points")
    if count > 1 and not np.all(np.diff(times) > 0):
        raise InputError(label, "frame_times must increase strictly")
    return times - times[0]


def _assemble(ordered: list[list[DicomSlice]], label: Path, limits: ReadLimits | None) -> Image:
    """Decode and stack the frames into a ``(T, rows, cols, slices)`` float32 Image."""
    first = [g[0] for g in ordered]
    count = len(ordered[0])
    if limits is not None:
        limits.check(label, int(first[0].ds.Rows), int(first[0].ds.Columns), len(first),
                     count, 4)
    sorted_first, direction, origin, gap = _order_slices(first, label, True)
    index = {id(s): p for p, s in enumerate(first)}
    order = [index[id(s)] for s in sorted_first]
    decoded: dict[Path, np.ndarray] = {}
    volumes, rescale = [], None
    for k in range(count):
        frame = [ordered[p][k] for p in order]
        for s in frame:
            if s.path not in decoded:
                decoded[s.path] = decode_frames(s.path, s.ds)
        array, params = _apply_rescale(frame, decoded)
        if array.shape[0] != 1:
            raise InputError(frame[0].path, "not a greyscale image: cannot read as CT perfusion")
        volumes.append(array.astype(np.float32))
        rescale = params if k == 0 else rescale
    meta = _meta(sorted_first[0], len(decoded), rescale)
    meta["num_slices"] = len(order)
    in_plane = pixel_spacing(sorted_first[0])
    if in_plane is None:
        logger.warning("%s: no PixelSpacing; assuming 1 mm pixels", label)
        in_plane = np.ones(2)
    spacing = (float(in_plane[0]), float(in_plane[1]), gap)
    return _make_image(np.concatenate(volumes), spacing, tuple(origin), direction, label,
                       meta, sorted_first)


def _finish(image: Image, seconds: np.ndarray, source: str, files: Sequence[Path],
            resample: bool) -> Image:
    """Check even sampling (or resample) and add the time keys to ``meta``."""
    meta = dict(image.meta, time_source=source, resampled=False)
    array = image.array
    if len(seconds) > 2:
        intervals = np.diff(seconds)
        median = float(np.median(intervals))
        bad = np.flatnonzero(np.abs(intervals - median) > _UNEVEN * median)
        if bad.size and not resample:
            k = int(bad[0])
            raise InputError(files[k + 1], f"uneven sampling: {intervals[k]:.3f} s between "
                                           f"frames {k} and {k + 1}, the median interval is "
                                           f"{median:.3f} s (pass resample=True)")
        if bad.size:
            grid = np.arange(0.0, seconds[-1] + 1e-6 * median, median)
            array, meta["resampled"] = _interpolate(array, seconds, grid), True
            meta["source_frame_times"] = [float(t) for t in seconds]
            seconds = grid
    meta.update(frame_times=[round(float(t), 6) for t in seconds], num_frames=len(seconds))
    return replace(image, array=array, meta=meta)


def _interpolate(array: np.ndarray, times: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per-voxel linear interpolation of ``(T, ...)`` from ``times`` onto ``grid`` (s)."""
    lower = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, len(times) - 2)
    weight = np.clip((grid - times[lower]) / (times[lower + 1] - times[lower]), 0.0, 1.0)
    shape = (-1,) + (1,) * (array.ndim - 1)
    out = array[lower] * (1.0 - weight).reshape(shape) + array[lower + 1] * weight.reshape(shape)
    return out.astype(np.float32)


def _read_nifti(path: Path, frame_times: Sequence[float] | None, limits: ReadLimits | None,
                min_frames: int, resample: bool) -> Image:
    """A 4D NIfTI file as ``(T, X, Y, Z)``, times from ``frame_times`` or its JSON sidecar."""
    image = read_image(path, limits)
    count = image.array.shape[0]
    if count < min_frames:
        raise InputError(path, f"too few frames: {count} time point(s), need {min_frames}")
    source = "given"
    if frame_times is None:
        frame_times, source = _sidecar_times(path, count)
    seconds = _given_times(frame_times, count, path)
    image = replace(image, array=image.array.astype(np.float32, copy=False))
    return _finish(image, seconds, source, [path] * count, resample)


def _sidecar_times(path: Path, count: int) -> tuple[list[float], str]:
    """Frame times (s) from ``<name>.json`` beside a NIfTI file, and the key they came from."""
    stem = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    sidecar = path.with_name(stem + ".json")
    if not sidecar.is_file():
        raise InputError(path, f"4D NIfTI without times: pass frame_times or add {sidecar.name} "
                               "with FrameTimes (s) or FrameInterval (s)")
    try:
        info = json.loads(sidecar.read_text())
        if "FrameTimes" in info:
            return [float(t) for t in info["FrameTimes"]], "FrameTimes"
        key = next((k for k in ("FrameInterval", "RepetitionTime") if k in info), None)
        if key is not None:
            return [i * float(info[key]) for i in range(count)], key
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(sidecar, f"unreadable JSON sidecar ({type(exc).__name__})") from exc
    raise InputError(sidecar, "JSON sidecar without FrameTimes, FrameInterval or RepetitionTime")


# ----------------------------------------------------------------------------- writers


def write_perfusion_series(hu: np.ndarray, frame_times: Sequence[float], out_dir: Path, *,
                           spacing: tuple[float, float, float] = (1.0, 1.0, 5.0),
                           origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
                           time_attribute: str = "AcquisitionTime",
                           patient_id: str = "PHANTOM", patient_name: str = "Perfusion^Phantom",
                           study_uid: str | None = None, series_description: str = "CT PERFUSION",
                           start_time: str = "120000.000000",
                           start_date: str = "20000101") -> list[Path]:
    """Write a classic CT perfusion series: one CT Image Storage file per slice per time point.

    Args:
        hu: ``(T, rows, cols, slices)`` HU, stored rounded as int16 with intercept -1024
            (clipped to the int16 range).
        frame_times: T strictly increasing times in seconds.
        out_dir: folder to write into (created); the files are named by SOPInstanceUID, so
            their names do not follow time order.
        spacing: (row spacing, column spacing, slice spacing) in mm.
        origin: ImagePositionPatient (mm) of slice 0; slice k lies ``k x spacing[2]`` up z.
        time_attribute: what carries the time: AcquisitionTime (with AcquisitionDate),
            ContentTime (with ContentDate), TriggerTime (ms) or TemporalPositionIdentifier
            (uniform times only; with NumberOfTemporalPositions and TemporalResolution, ms).
        patient_id, patient_name, study_uid, series_description: identification (a new
            StudyInstanceUID by default; new Series and FrameOfReference UIDs always).
        start_time, start_date: clock time (DICOM TM) and date (DA) of frame 0.

    Returns:
        The files written, time-major (the slices of frame 0 first).

    Raises:
        ValueError: ``hu`` not 4D, times not matching or not increasing, unknown
            ``time_attribute``, or TemporalPositionIdentifier with uneven times.
    """
    from pydicom.uid import CTImageStorage

    hu, times = _check_writer_input(hu, frame_times)
    if time_attribute not in TIME_ATTRIBUTES:
        raise ValueError(f"time_attribute must be one of {TIME_ATTRIBUTES}")
    steps = np.diff(times)
    if time_attribute == TIME_ATTRIBUTES[3] and steps.size and np.ptp(steps) > 1e-6:
        raise ValueError("TemporalPositionIdentifier needs uniform frame_times")
    common = _common(patient_id, patient_name, study_uid, series_description, start_date,
                     start_time)
    start, out_dir = _start(start_date, start_time), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for t, k in np.ndindex(hu.shape[0], hu.shape[3]):
        ds = _new_dataset(CTImageStorage, common, ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                          InstanceNumber=len(paths) + 1, **_plane(origin, spacing, k),
                          **_pixels(hu[t, :, :, k]), **_HU_RESCALE,
                          **_time(time_attribute, start, times, t))
        paths.append(out_dir / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def write_perfusion_multiframe(hu: np.ndarray, frame_times: Sequence[float], out_path: Path, *,
                               spacing: tuple[float, float, float] = (1.0, 1.0, 5.0),
                               origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
                               patient_id: str = "PHANTOM",
                               patient_name: str = "Perfusion^Phantom",
                               study_uid: str | None = None,
                               series_description: str = "CT PERFUSION",
                               start_time: str = "120000.000000",
                               start_date: str = "20000101") -> Path:
    """Write one Enhanced CT Image Storage file of all T x slices frames, time-major.

    Per frame: PlanePositionSequence and FrameContentSequence (FrameAcquisitionDateTime,
    TemporalPositionIndex, StackID, InStackPositionNumber, DimensionIndexValues); shared:
    orientation, pixel measures, HU rescale, CT frame type and a VOI window. Minimal: the
    CT acquisition, geometry, reconstruction and exposure functional groups are left out.

    Args:
        hu: ``(T, rows, cols, slices)`` HU, as :func:`write_perfusion_series`.
        frame_times: T strictly increasing times in seconds.
        out_path: the file to write (its folder is created).
        spacing, origin, patient_id, patient_name, study_uid, series_description, start_time,
            start_date: as :func:`write_perfusion_series`.

    Returns:
        ``out_path``.
    """
    hu, times = _check_writer_input(hu, frame_times)
    common = _common(patient_id, patient_name, study_uid, series_description, start_date,
                     start_time)
    del common["KVP"]  # an enhanced CT keeps it in the CT X-Ray Details functional group
    start, count = _start(start_date, start_time), hu.shape[3]
    organization = _uid()
    shared = _item(
        PlaneOrientationSequence=[_item(ImageOrientationPatient=_AXIAL)],
        PixelMeasuresSequence=[_item(PixelSpacing=[float(v) for v in spacing[:2]],
                                     SliceThickness=float(spacing[2]),
                                     SpacingBetweenSlices=float(spacing[2]))],
        PixelValueTransformationSequence=[_item(**_HU_RESCALE)],
        CTImageFrameTypeSequence=[_item(FrameType=_FRAME_TYPE, **_CT_FRAME)],
        FrameVOILUTSequence=[_item(WindowCenter=40, WindowWidth=80)])
    dimensions = [_item(DimensionOrganizationUID=organization, DimensionIndexPointer=tag,
                        FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel=label)
                  for label, tag in (("TemporalPositionIndex", 0x00209128),
                                     ("StackID", 0x00209056),
                                     ("InStackPositionNumber", 0x00209057))]
    ds = _new_dataset(
        _ENHANCED_CT, common, ImageType=_FRAME_TYPE, **_CT_FRAME, InstanceNumber=1,
        NumberOfFrames=hu.shape[0] * count, ContentQualification="PRODUCT",
        PresentationLUTShape="IDENTITY", AcquisitionDateTime=_dt_text(start),
        SharedFunctionalGroupsSequence=[shared],
        DimensionOrganizationSequence=[_item(DimensionOrganizationUID=organization)],
        DimensionIndexSequence=dimensions,
        PerFrameFunctionalGroupsSequence=[
            _frame_group(start + dt.timedelta(seconds=float(s)), t, k, origin, spacing)
            for t, s in enumerate(times) for k in range(count)],
        **_pixels(np.moveaxis(hu, 3, 1)))  # frames (T, slices, rows, cols)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return out_path


_AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
_FRAME_TYPE = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
_HU_RESCALE = {"RescaleIntercept": -_HU_OFFSET, "RescaleSlope": 1, "RescaleType": "HU"}
_CT_FRAME = {"PixelPresentation": "MONOCHROME", "VolumetricProperties": "VOLUME",
             "VolumeBasedCalculationTechnique": "NONE"}


def _check_writer_input(hu: np.ndarray, frame_times: Sequence[float]
                        ) -> tuple[np.ndarray, np.ndarray]:
    hu = np.asarray(hu, dtype=np.float64)
    times = np.asarray(frame_times, dtype=np.float64).ravel()
    if hu.ndim != 4 or times.size != hu.shape[0]:
        raise ValueError(f"hu must be (T, rows, cols, slices) with T = len(frame_times), got "
                         f"{hu.shape} and {times.size} times")
    if times.size > 1 and not np.all(np.diff(times) > 0):
        raise ValueError("frame_times must increase strictly")
    return hu, times


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _start(date: str, time: str) -> dt.datetime:
    return dt.datetime.strptime(date, "%Y%m%d") + dt.timedelta(seconds=_tm_seconds(time) or 0.0)


def _dt_text(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S.%f")


def _item(**attributes: Any) -> Any:
    """A pydicom Dataset holding ``attributes`` (keyword: value)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _new_dataset(sop_class: str, common: dict[str, Any], **attributes: Any) -> Any:
    """A dataset with file meta (Explicit VR Little Endian), a new SOPInstanceUID, ``common``
    and ``attributes``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = _item(SpecificCharacterSet="ISO_IR 100", SOPClassUID=sop_class, SOPInstanceUID=_uid(),
               **{**common, **attributes})
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _common(patient_id: str, patient_name: str, study_uid: str | None, description: str,
            date: str, time: str) -> dict[str, Any]:
    """Patient, study, series, frame of reference and equipment, the same in every file."""
    return {
        "PatientID": patient_id, "PatientName": patient_name, "PatientBirthDate": "",
        "PatientSex": "", "StudyInstanceUID": study_uid or _uid(), "StudyDate": date,
        "StudyTime": time, "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
        "SeriesInstanceUID": _uid(), "SeriesNumber": 1, "SeriesDescription": description,
        "Modality": "CT", "BodyPartExamined": "HEAD", "FrameOfReferenceUID": _uid(),
        "PositionReferenceIndicator": "", "Manufacturer": "medinfer", "KVP": 80,
        "AcquisitionNumber": 1, "ContentDate": date, "ContentTime": time,
        "BurnedInAnnotation": "NO", "LossyImageCompression": "00",
    }


def _plane(origin: Sequence[float], spacing: Sequence[float], k: int) -> dict[str, Any]:
    """Image plane attributes of axial slice ``k``."""
    z = float(origin[2]) + k * float(spacing[2])
    return {"ImagePositionPatient": [float(origin[0]), float(origin[1]), z],
            "ImageOrientationPatient": _AXIAL, "PixelSpacing": [float(v) for v in spacing[:2]],
            "SliceThickness": float(spacing[2]), "SliceLocation": z}


def _pixels(hu: np.ndarray) -> dict[str, Any]:
    """Image pixel attributes of ``(..., rows, cols)`` HU stored as int16 + 1024."""
    stored = np.rint(hu + _HU_OFFSET).clip(-32768, 32767).astype("<i2")
    return {"Rows": hu.shape[-2], "Columns": hu.shape[-1], "SamplesPerPixel": 1,
            "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16,
            "HighBit": 15, "PixelRepresentation": 1,
            "PixelData": np.ascontiguousarray(stored).tobytes()}


def _time(keyword: str, start: dt.datetime, times: np.ndarray, t: int) -> dict[str, Any]:
    """The time attribute ``keyword`` of frame ``t``, ``times[t]`` s after ``start``."""
    when = start + dt.timedelta(seconds=float(times[t]))
    if keyword in _DATE_OF:
        return {_DATE_OF[keyword]: when.strftime("%Y%m%d"), keyword: when.strftime("%H%M%S.%f")}
    if keyword == "TriggerTime":
        return {keyword: f"{times[t] * 1000.0:.3f}"}
    step = float(times[1] - times[0]) if len(times) > 1 else 1.0
    return {keyword: t + 1, "NumberOfTemporalPositions": len(times),
            "TemporalResolution": f"{step * 1000.0:.3f}"}


def _frame_group(when: dt.datetime, t: int, k: int, origin: Sequence[float],
                 spacing: Sequence[float]) -> Any:
    """Per-frame functional groups of slice ``k`` at time point ``t``, acquired at ``when``."""
    content = _item(FrameAcquisitionDateTime=_dt_text(when), FrameReferenceDateTime=_dt_text(when),
                    TemporalPositionIndex=t + 1, StackID="1", InStackPositionNumber=k + 1,
                    DimensionIndexValues=[t + 1, 1, k + 1])
    position_ = _plane(origin, spacing, k)["ImagePositionPatient"]
    return _item(FrameContentSequence=[content],
                 PlanePositionSequence=[_item(ImagePositionPatient=position_)])
