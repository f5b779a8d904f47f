"""Derived DICOM objects for PACS and viewers: DICOM SEG, Parametric Map, Comprehensive SR,
Secondary Capture (with highdicom, imported on first use), plus the PNG and JSON beside them.

All DICOM results are built from the source instances, so they carry the source's
patient/study module and reference the source series. A mask has the series' array
layout ``(rows, cols, slices)``; the source instances come from the reader in the same
order (:attr:`medinfer.io.Image.instances`), so frame ``k`` of a SEG lies on slice ``k``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from medinfer.io.codes import (
    PERFUSION_QUANTITIES,
    SegmentCodes,
    finding_code,
    measurement_code,
    normalize,
    quantity_codes,
    segment_codes,
)
from medinfer.io.writers import overlay

__all__ = [
    "BOX_COLOR",
    "CT_WINDOW",
    "PROBABILITY_UNIT",
    "SERIES_OFFSETS",
    "TRUTH_COLOR",
    "Box",
    "CodedGroup",
    "SrGroup",
    "SrMeasurement",
    "derived_series_number",
    "detection_overlay",
    "fill_type2",
    "overlay_slice",
    "tolerant_copies",
    "write_json",
    "write_measurements_sr",
    "write_parametric_map",
    "write_png",
    "write_report",
    "write_sc",
    "write_seg",
    "write_sr",
]

logger = logging.getLogger(__name__)

MANUFACTURER = "medinfer"
# Series number of a derived series = the source's SeriesNumber + this offset, so that the
# SEG, SC, SR and parametric maps (one series per quantity: + its index in
# PERFUSION_QUANTITIES) of every series in a study get numbers of their own.
SERIES_OFFSETS = {"seg": 9000, "sc": 9100, "sr": 9200, "pm": 9300}
_IS_MAX = 2**31 - 1  # the largest value of an IS (Integer String) attribute
# UCUM unit of a model's probability or score in 0..1 (a UCUM annotation: unity)
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")
_COLORS = ((255, 0, 0), (0, 200, 0), (0, 120, 255), (255, 200, 0), (200, 0, 255), (0, 220, 220))


def _software() -> str:
    from importlib.metadata import version

    return f"medinfer {version('medinfer')}"


# Type 2 attributes of the patient/study modules that highdicom copies from the source
# into every derived object; senders (and de-identification) often leave them out.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "AccessionNumber", "StudyID")


def fill_type2(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Add missing Type 2 patient/study attributes (empty, in place): derived objects
    must carry them. Returns the datasets, in the order given."""
    for ds in datasets:
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return list(datasets)


def derived_series_number(source: Dataset, kind: str, index: int = 0) -> int:
    """Series number of the ``kind`` (``seg``, ``sc``, ``sr``, ``pm``) object derived from
    ``source``: its SeriesNumber (0 when missing or malformed) + :data:`SERIES_OFFSETS` +
    ``index`` (which of several series of one kind, e.g. the quantity of a parametric
    map), clipped to the IS range (0 .. 2**31 - 1)."""
    try:
        base = int(source.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        base = 0
    return max(0, min(base + SERIES_OFFSETS[kind] + index, _IS_MAX))


# Patient/study attributes that highdicom copies (Type 2 are blanked when malformed, the
# others dropped): a value that does not conform to its VR (a DA "1970-01-31", a TM
# "25:00", a PN with too many components) makes highdicom refuse the whole object.
_TYPE3 = ("PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "IssuerOfPatientID",
          "OtherPatientIDs", "EthnicGroup", "PatientComments", "StudyDescription",
          "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription")
_CONVERT = {"DA": "DA", "TM": "TM", "DT": "DT", "PN": "PersonName", "DS": "DSfloat", "IS": "IS"}


def _conforms(elem: DataElement) -> bool:
    """Whether ``elem``'s value is valid for its VR and converts the way highdicom does."""
    from pydicom import config, valuerep

    values = elem.value if elem.VM > 1 else [elem.value]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for v in values:
                if v is None or v == "":
                    continue
                if isinstance(v, valuerep.PersonName):
                    v = str(v)
                valuerep.validate_value(elem.VR, v, config.RAISE)
                if elem.VR in _CONVERT and isinstance(v, str):
                    getattr(valuerep, _CONVERT[elem.VR])(v)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def tolerant_copies(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Shallow copies of ``datasets`` (the caller's are unchanged) whose malformed patient/
    study attributes are blanked (Type 2) or dropped (others), with the Type 2 ones that
    are missing added empty (:func:`fill_type2`). Only the keyword is logged, never the
    value (it may identify the patient)."""
    out, fixed = [], set()
    for src in datasets:
        copy = Dataset({elem.tag: elem for elem in src})  # own element dict: ``src`` unchanged
        if getattr(src, "file_meta", None) is not None:
            copy.file_meta = src.file_meta
        for keyword in _TYPE2 + _TYPE3:
            elem = copy.data_element(keyword) if keyword in copy else None
            if elem is None or _conforms(elem):
                continue
            fixed.add(keyword)
            if keyword in _TYPE2:
                copy[elem.tag] = DataElement(elem.tag, elem.VR, "")
            else:
                del copy[elem.tag]
        out.append(copy)
    for keyword in sorted(fixed):  # once per attribute, not per slice
        logger.warning("malformed %s in the source; %s in the derived object", keyword,
                       "left empty" if keyword in _TYPE2 else "left out")
    return fill_type2(out)


def _seg_sources(sources: Sequence[Dataset]) -> tuple[list[Dataset], bool]:
    """The source instances as highdicom's SEG constructor can take them.

    highdicom reads the geometry of a source whose IOD is multi-frame (Video Endoscopic,
    Video Photographic, Multi-frame Secondary Capture, ...) from the enhanced functional
    groups, which these classic multi-frame instances do not have: it fails with an
    AttributeError (NumberOfFrames, SharedFunctionalGroupsSequence). A single frame
    without patient geometry (an endoscopy frame) is given to it as one frame with
    shared groups holding its PixelSpacing, in a shallow copy (the caller's dataset is
    unchanged); highdicom then aligns the SEG to it pixel for pixel, as it does for a
    single-frame VL Endoscopic image. Other sources are passed as they are.

    Returns:
        (the sources to pass, whether the SEG's Pixel Measures are a placeholder to
        remove: the frame has no PixelSpacing, and a SEG without a frame of reference
        needs none).
    """
    from pydicom.sequence import Sequence as DicomSequence

    if len(sources) != 1:
        return list(sources), False
    src = sources[0]
    classic_frame = ("SharedFunctionalGroupsSequence" not in src
                     and "ImagePositionPatient" not in src
                     and int(src.get("NumberOfFrames", 1) or 1) == 1)
    if not classic_frame:
        return [src], False
    proxy = Dataset({elem.tag: elem for elem in src})  # own element dict: ``src`` unchanged
    if getattr(src, "file_meta", None) is not None:
        proxy.file_meta = src.file_meta
    proxy.NumberOfFrames = 1
    measures = Dataset()
    spacing = src.get("PixelSpacing")
    measures.PixelSpacing = list(spacing) if spacing is not None else [1.0, 1.0]
    if "SliceThickness" in src:
        measures.SliceThickness = src.SliceThickness
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    proxy.SharedFunctionalGroupsSequence = DicomSequence([shared])
    return [proxy], spacing is None


def _frames(mask: np.ndarray, n_sources: int) -> np.ndarray:
    """Prediction mask -> highdicom's ``(frames, rows, cols)`` layout."""
    if mask.ndim == 2:
        return mask[None]
    if mask.shape[-1] != n_sources:
        raise ValueError(f"mask has {mask.shape[-1]} slices but the series {n_sources} instances")
    return np.moveaxis(mask, -1, 0)


def _segment_description(number: int, label: str, coded: SegmentCodes,
                         algo: Any) -> Any:
    """highdicom ``SegmentDescription`` of one segment, with its type modifier (which
    highdicom's constructor does not take) nested in the type's item, as PS3.3 C.8.20.2
    places it."""
    import highdicom as hd
    from pydicom.sequence import Sequence as DicomSequence

    desc = hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64],
        segmented_property_category=coded.category, segmented_property_type=coded.type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
        anatomic_regions=[coded.region] if coded.region is not None else None)
    if coded.modifier is not None:
        m = coded.modifier
        desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = \
            DicomSequence([hd.sr.CodedConcept(m.value, m.scheme_designator, m.meaning)])
    return desc


def write_seg(sources: Sequence[Dataset], mask: np.ndarray, segments: dict[int, str],
              out: Path, algorithm: str, version: str, series_number: int | None = None,
              labelmap: bool = False,
              codes: Mapping[str, SegmentCodes] | None = None) -> tuple[Path, str]:
    """Write a DICOM SEG with one segment per label value.

    Args:
        sources: the source instances in array order (:attr:`medinfer.io.Image.instances`).
        mask: ``(rows, cols)`` or ``(rows, cols, slices)`` uint8 label map (0 = background).
        segments: label value -> segment label, e.g. ``{1: "tumour"}``.
        out: file to write.
        algorithm: algorithm name recorded in the SEG (the artifact).
        version: algorithm version (the variant).
        series_number: the SEG's series number (default: :func:`derived_series_number`).
        labelmap: write a LABELMAP SEG (one frame per slice holding every segment; DICOM
            2024, fewer viewers read it) instead of a BINARY one (one frame per segment
            and slice, read everywhere).
        codes: segment label -> codes that win over :func:`medinfer.io.codes.segment_codes`'s
            table (e.g. :data:`medinfer.io.codes.HIPPOCAMPUS_DECATHLON`).

    Returns:
        (path, SOP Instance UID).

    Raises:
        ValueError: no segment, a segment named background, or a mask that does not fit.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dicom_codes

    labels = sorted(v for v in segments if v > 0)
    if not labels:
        raise ValueError("a SEG needs at least one segment")
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=dicom_codes.cid7162.ArtificialIntelligence)
    descriptions = [_segment_description(i, segments[v], segment_codes(segments[v], codes), algo)
                    for i, v in enumerate(labels, start=1)]
    # Label values -> consecutive segment numbers: highdicom takes a label map whose
    # values are segment numbers.
    lut = np.zeros(256, np.uint8)
    lut[labels] = np.arange(1, len(labels) + 1, dtype=np.uint8)
    pixels = lut[_frames(np.asarray(mask, np.uint8), len(sources))]
    uid = hd.UID()
    images, placeholder = _seg_sources(tolerant_copies(sources))
    if series_number is None:
        series_number = derived_series_number(sources[0], "seg")
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=pixels,
        segmentation_type=(hd.seg.SegmentationTypeValues.LABELMAP if labelmap
                           else hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=uid, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=algorithm[:64],
        software_versions=_software(), device_serial_number="0",
        series_description=f"medinfer SEG {algorithm}"[:64])
    if placeholder:
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out, str(uid)


def _padded(frames: np.ndarray) -> tuple[np.ndarray, float | None, tuple[float, float]]:
    """float32 ``frames`` with their non-finite values (NaN, +-inf) set to a padding value.

    The padding is -1.0 (perfusion quantities are not negative), or 1 below the floor of
    the smallest value when the values go that low, so it never equals a value.

    Returns:
        (frames, padding value or ``None`` when every value is finite, (smallest, largest)
        finite value).

    Raises:
        ValueError: no value is finite.
    """
    finite = np.isfinite(frames)
    if not finite.any():
        raise ValueError("the map has no finite value")
    lo, hi = float(frames[finite].min()), float(frames[finite].max())
    if finite.all():
        return frames, None, (lo, hi)
    padding = min(-1.0, float(np.floor(lo)) - 1.0)
    return np.where(finite, frames, np.float32(padding)).astype(np.float32), padding, (lo, hi)


def _map_frames(values: np.ndarray, sources: Sequence[Dataset]) -> np.ndarray:
    """``(rows, cols[, slices])`` values -> float32 ``(frames, rows, cols)``, checked
    against the sources (which must have patient geometry: a map is of a volume)."""
    flat = [k for k, ds in enumerate(sources)
            if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if not sources or flat:
        raise ValueError(f"a parametric map needs source slices with a position and an "
                         f"orientation in the patient; instances {flat} have none")
    values = np.asarray(values, np.float32)
    if values.ndim not in (2, 3):
        raise ValueError(f"values must be (rows, cols) or (rows, cols, slices), not {values.shape}")
    if values.ndim == 2 and len(sources) != 1:
        raise ValueError(f"a 2D map needs one source instance, not {len(sources)}")
    size = (int(sources[0].Rows), int(sources[0].Columns))
    if values.shape[:2] != size:
        raise ValueError(f"values are {values.shape[:2]} but the source slices {size}")
    return np.ascontiguousarray(_frames(values, len(sources)))


def write_parametric_map(sources: Sequence[Dataset], values: np.ndarray, out: Path, *,
                         quantity: str, unit: str | None = None, algorithm: str, version: str,
                         series_number: int | None = None) -> tuple[Path, str]:
    """Write a DICOM Parametric Map (float pixels) of one perfusion quantity.

    The map is a series of its own, on the sources' geometry: every frame references its
    source instance (Derivation Image Sequence) and carries its plane position. highdicom
    sorts the frames by position, which need not be the array order: match frames to
    slices by those references. Non-finite values (outside the brain, no fit)
    are written as a padding value, recorded as Float Pixel Padding Value and outside
    the Real World Value Mapping's range (see :func:`_padded`).

    Args:
        sources: the source instances in array order (:attr:`medinfer.io.Image.instances`;
            pixel data may be absent).
        values: ``(rows, cols)`` (one source) or ``(rows, cols, slices)`` float map in the
            series' array layout, in ``unit``; slice ``k`` lies on ``sources[k]``.
        out: file to write.
        quantity: ``cbf`` (ml/100 g/min), ``cbv`` (ml/100 g), ``mtt``, ``tmax``, ``ttp``
            (s); see :data:`medinfer.io.codes.PERFUSION_QUANTITIES`.
        unit: the values' unit, checked against the quantity's (``None``: the quantity's).
        algorithm: algorithm name recorded in the map (the artifact).
        version: algorithm version (the variant).
        series_number: default :func:`derived_series_number` (``pm``, + the quantity's index).

    Returns:
        (path, SOP Instance UID).

    Raises:
        ValueError: an unknown quantity, a wrong unit, values that do not fit the sources
            (or sources without patient geometry), or no finite value.
    """
    import highdicom as hd

    coded = quantity_codes(quantity, unit)
    frames, padding, (lo, hi) = _padded(_map_frames(values, sources))
    if series_number is None:
        index = list(PERFUSION_QUANTITIES).index(normalize(quantity))
        series_number = derived_series_number(sources[0], "pm", index)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=coded.label, lut_explanation=coded.explanation, unit=coded.unit,
        value_range=(lo, hi), quantity_definition=coded.concept)
    window = hd.VOILUTTransformation(window_center=(lo + hi) / 2, window_width=max(hi - lo, 1e-3))
    uid = hd.UID()
    pm = hd.pm.ParametricMap(
        source_images=tolerant_copies(sources), pixel_array=frames,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=uid,
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=algorithm[:64],
        software_versions=_software(), device_serial_number="0",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[window], content_label=coded.label.upper(),
        content_description=f"{coded.label} by {algorithm} {version}"[:64],
        series_description=f"medinfer {coded.label} {algorithm}"[:64])
    if padding is not None:
        pm.FloatPixelPaddingValue = padding
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.save_as(out)
    return out, str(uid)


def overlay_slice(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """RGB overlay of the slice with the most foreground (the middle one when empty).

    Args:
        image: ``(C, rows, cols)`` or ``(C, rows, cols, slices)``.
        mask: ``(rows, cols)`` or ``(rows, cols, slices)`` label map.

    Returns:
        (``(rows, cols, 3)`` uint8 picture, slice index (0 for 2D)).
    """
    k = 0
    if mask.ndim == 3:
        area = (mask > 0).sum(axis=(0, 1))
        k = int(np.argmax(area)) if area.any() else mask.shape[-1] // 2
        image, mask = image[..., k], mask[..., k]
    if image.dtype == np.uint8:  # 8-bit pictures (endoscopy, X-ray PNG) are shown as they are
        pic = np.asarray(image)
    else:  # CT/MR intensities: window the slice to its 1st..99.5th percentile
        img = np.asarray(image, np.float32)
        lo, hi = np.percentile(img, (1, 99.5))
        pic = ((img - lo) / max(hi - lo, 1e-6) * 255).clip(0, 255).astype(np.uint8)
    labels = [int(v) for v in np.unique(mask) if v > 0]
    if not labels:
        return overlay(pic, np.zeros(mask.shape, bool), alpha=0.0, contour=False), k
    for i, v in enumerate(labels):
        pic = np.moveaxis(overlay(pic, mask == v, color=_COLORS[i % len(_COLORS)]), -1, 0)
    return np.moveaxis(pic, 0, -1), k


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels (x = column)
BOX_COLOR = (255, 220, 0)  # predicted boxes: yellow
TRUTH_COLOR = (0, 200, 0)  # reference boxes: green
CT_WINDOW = (-1000.0, 400.0)  # HU: lung parenchyma to mediastinum on one picture


def detection_overlay(image: np.ndarray, boxes: Sequence[Box], scores: Sequence[float],
                      truth: Sequence[Box] = (), *,
                      window: tuple[float, float] | None = CT_WINDOW) -> np.ndarray:
    """RGB picture of one slice with detected boxes (yellow, score written by each) and
    reference boxes (green).

    Each box is a 2-pixel outline drawn on the pixels just inside its edges: the pixel
    columns ``floor(x0) .. ceil(x1) - 1`` and rows ``floor(y0) .. ceil(y1) - 1``. Boxes are
    in DICOM's continuous pixel coordinates ((0, 0) is the top-left corner of the top-left
    pixel), as :class:`medinfer.io.regions.RegionFinding`. Scores are written with
    Pillow's default font above a box (below it at the top of the image).

    Args:
        image: ``(H, W)`` or ``(1, H, W)`` slice; values already in 0..255 (uint8 or
            8-bit data) are shown as they are, others (CT HU) through ``window``.
        boxes: predicted boxes ``(x0, y0, x1, y1)``, pixels.
        scores: one score per box, written with two decimals.
        truth: reference boxes, drawn under the predicted ones.
        window: (low, high) intensity shown black .. white; default -1000..400 HU.
            ``None``: the slice's 1st..99.5th percentiles, for data in other units (a
            normalised network input, MR), 8-bit data included.

    Returns:
        ``(H, W, 3)`` uint8 picture.

    Raises:
        ValueError: not one 2D slice, a score count unlike the box count, or an empty window.
    """
    pic = _grey(image, window)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    rgb = np.repeat(pic[..., None], 3, axis=-1)
    for box in truth:
        _outline(rgb, box, TRUTH_COLOR)
    for box in boxes:
        _outline(rgb, box, BOX_COLOR)
    if len(boxes):  # boxes may be an array
        rgb = _label_boxes(rgb, boxes, scores)
    return rgb


def _grey(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """``(H, W)`` uint8 of a 2D slice: as it is when in 0..255 (and a window is given),
    else windowed (``None``: to its 1st..99.5th percentiles)."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise ValueError(f"a detection overlay shows one 2D slice, got shape {img.shape}")
    finite = img[np.isfinite(img)]
    if window is None:
        lo, hi = np.percentile(finite, (1, 99.5)).tolist() if finite.size else (0.0, 1.0)
        hi = max(hi, lo + 1e-6)
    else:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ValueError(f"empty intensity window {window}")
        if img.dtype == np.uint8:
            return img
        if finite.size and finite.min() >= 0 and finite.max() <= 255:  # 8-bit data as floats
            return np.nan_to_num(img).round().clip(0, 255).astype(np.uint8)
    scaled = (np.nan_to_num(img.astype(np.float32), nan=lo) - lo) / (hi - lo) * 255
    return scaled.round().clip(0, 255).astype(np.uint8)


def _pixel_span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """First and last pixel index covered by the interval [lo, hi), clipped to the image."""
    first = max(int(np.floor(lo)), 0)
    last = min(int(np.ceil(hi)) - 1, size - 1)
    return first, max(last, first)


def _outline(rgb: np.ndarray, box: Box, color: tuple[int, int, int], width: int = 2) -> None:
    """Draw the ``width``-pixel outline of ``box`` inside its edges (in place)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    rows, cols = rgb.shape[:2]
    if x1 <= 0 or y1 <= 0 or x0 >= cols or y0 >= rows:
        return  # wholly outside the picture
    c0, c1 = _pixel_span(x0, x1, cols)
    r0, r1 = _pixel_span(y0, y1, rows)
    rgb[r0:min(r0 + width, r1 + 1), c0:c1 + 1] = color
    rgb[max(r1 - width + 1, r0):r1 + 1, c0:c1 + 1] = color
    rgb[r0:r1 + 1, c0:min(c0 + width, c1 + 1)] = color
    rgb[r0:r1 + 1, max(c1 - width + 1, c0):c1 + 1] = color


def _label_boxes(rgb: np.ndarray, boxes: Sequence[Box], scores: Sequence[float]) -> np.ndarray:
    """Write each score (two decimals) above its box, or below it when there is no room."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    canvas = PILImage.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # no anti-aliasing: the text is in the box colour exactly
    font = ImageFont.load_default()
    rows = rgb.shape[0]
    for (x0, y0, _, y1), score in zip(boxes, scores, strict=True):
        text = f"{float(score):.2f}"
        _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
        height = bottom - top
        c0 = max(int(np.floor(x0)), 0)
        r0, r1 = _pixel_span(float(y0), float(y1), rows)
        y = r0 - height - 2 - top if r0 - height - 2 >= 0 else r1 + 2 - top
        draw.text((c0, y), text, fill=BOX_COLOR, font=font)
    return np.asarray(canvas).copy()


def write_sc(source: Dataset, picture: np.ndarray, out: Path, algorithm: str,
             series_number: int | None = None) -> tuple[Path, str]:
    """Write an RGB Secondary Capture of ``picture`` (``(rows, cols, 3)`` uint8) for ``source``.

    The SC references ``source`` (Source Image Sequence and Referenced Series Sequence)
    and keeps its BurnedInAnnotation; its series number defaults to
    :func:`derived_series_number`.
    """
    import highdicom as hd

    uid = hd.UID()
    spacing = source.get("PixelSpacing")
    if series_number is None:
        series_number = derived_series_number(source, "sc")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=tolerant_copies([source])[0], pixel_array=np.ascontiguousarray(picture),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=uid, instance_number=1,
        manufacturer=MANUFACTURER,
        pixel_spacing=tuple(float(s) for s in spacing) if spacing is not None else None,
        patient_orientation=_orientation(source),
        series_description=f"medinfer overlay {algorithm}"[:64])
    _reference_source(sc, source)
    if source.get("BurnedInAnnotation") in ("YES", "NO"):
        # the overlay shows the source's pixels, and so any text burned into them
        sc.BurnedInAnnotation = source.BurnedInAnnotation
    out.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(out)
    return out, str(uid)


def _reference_source(derived: Dataset, source: Dataset) -> None:
    """Add Source Image Sequence and Referenced Series Sequence (source SOP Class/Instance
    UIDs) to ``derived``, when the source has them; highdicom's SC takes no reference."""
    from pydicom.sequence import Sequence as DicomSequence

    if "SOPClassUID" not in source or "SOPInstanceUID" not in source:
        return
    image = Dataset()
    image.ReferencedSOPClassUID = source.SOPClassUID
    image.ReferencedSOPInstanceUID = source.SOPInstanceUID
    derived.SourceImageSequence = DicomSequence([image])
    if "SeriesInstanceUID" in source:
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = source.SeriesInstanceUID
        series.ReferencedInstanceSequence = DicomSequence([instance])
        derived.ReferencedSeriesSequence = DicomSequence([series])


def _orientation(ds: Dataset) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from ImageOrientationPatient, else ("", "")."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        po = ds.get("PatientOrientation")
        return (str(po[0]), str(po[1])) if po is not None and len(po) == 2 else ("L", "F")

    def letters(v: Sequence[float]) -> str:
        axes = (("L", "R"), ("P", "A"), ("H", "F"))
        order = np.argsort(-np.abs(np.asarray(v, float)))
        return "".join(axes[i][0] if v[i] > 0 else axes[i][1] for i in order if abs(v[i]) > 0.3)

    return letters(iop[:3]) or "L", letters(iop[3:]) or "P"


@dataclass(frozen=True)
class SrMeasurement:
    """One numeric measurement of an SR measurement group (TID 300).

    Attributes:
        name: what is measured, e.g. ``"volume"`` (:func:`medinfer.io.codes.measurement_code`).
        value: the number, in ``unit``; finite.
        unit: UCUM code, e.g. ``"ml"``, ``"{ratio}"``.
        unit_meaning: the unit in words, e.g. ``"milliliter"``.
    """

    name: str
    value: float
    unit: str
    unit_meaning: str

    def __post_init__(self) -> None:
        if not np.isfinite(self.value):
            raise ValueError(f"measurement {self.name!r} is not finite: {self.value}")
        if not self.unit.strip():
            raise ValueError(f"measurement {self.name!r} has no unit")


@dataclass(frozen=True)
class SrGroup:
    """One finding of a measurement report (a TID 1501 measurement group).

    Attributes:
        finding: finding name (:func:`medinfer.io.codes.finding_code`), also its tracking
            identifier, e.g. ``"ischemic core"``.
        measurements: its numeric measurements.
        evaluations: (name, yes?) qualitative evaluations, written SCT *Yes* / *No*, e.g.
            ``(("eligible", True),)``; the name is coded by
            :func:`medinfer.io.codes.measurement_code`.
    """

    finding: str
    measurements: tuple[SrMeasurement, ...] = ()
    evaluations: tuple[tuple[str, bool], ...] = ()


@dataclass(frozen=True)
class CodedGroup:
    """One measurement group in codes, as :func:`write_report` writes it.

    Attributes:
        tracking: tracking identifier (text; a new UID is added), e.g. ``"lesion 1"``.
        finding: finding type.
        measurements: (name, value, UCUM unit) of each numeric measurement.
        evaluations: (name, value) of each qualitative evaluation.
        region: a ``highdicom.sr.ImageRegion`` (which references its own source image):
            the group is then a planar ROI group (TID 1410); ``None``: an image-level
            group (TID 1501) on the report's first source.
    """

    tracking: str
    finding: Code
    measurements: tuple[tuple[Code, float, Code], ...]  # (name, value, unit)
    evaluations: tuple[tuple[Code, Code], ...]  # (name, value)
    region: Any = None


def _measurement_groups(groups: Sequence[CodedGroup], algo: Any, refs: list[Any]) -> list[Any]:
    """highdicom measurement groups, one per group, with the algorithm: a planar ROI group
    (TID 1410) where the group has a region, else an image-level one (TID 1501) on ``refs``."""
    import highdicom as hd

    out = []
    for g in groups:
        common: dict[str, Any] = {
            "tracking_identifier": hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=g.tracking),
            "finding_type": g.finding, "algorithm_id": algo,
            "measurements": [hd.sr.Measurement(name=n, value=v, unit=u)
                             for n, v, u in g.measurements],
            "qualitative_evaluations": [hd.sr.QualitativeEvaluation(name=n, value=v)
                                        for n, v in g.evaluations]}
        if g.region is not None:
            out.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=g.region, **common))
        else:
            out.append(hd.sr.MeasurementsAndQualitativeEvaluations(source_images=refs, **common))
    return out


def write_report(sources: Sequence[Dataset], groups: Sequence[CodedGroup], out: Path, *,
                 algorithm: str, version: str, series_number: int | None,
                 title: Code | None, description: str) -> tuple[Path, str]:
    """Write a Comprehensive SR (TID 1500 measurement report) of ``groups``.

    The builder of every medinfer SR: the algorithm as device observer and in each group,
    the sources as evidence (the first as the source image of each group without a
    region), the series number (default :func:`derived_series_number` ``sr``).

    Args:
        sources: the source instances; their study is the report's.
        groups: at least one (highdicom's TID 1500 needs one).
        out: file to write.
        algorithm: algorithm name.
        version: algorithm version (not empty: it is an SR TEXT item).
        series_number: ``None`` for the default.
        title: document title from CID 7021 (``None``: *Imaging Measurement Report*).
        description: SeriesDescription (cut to 64 characters).

    Returns:
        (path, SOP Instance UID).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dicom_codes

    algo = hd.sr.AlgorithmIdentification(name=algorithm, version=version)
    device = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm[:64]))
    evidence = tolerant_copies(sources)
    if series_number is None:
        series_number = derived_series_number(sources[0], "sr")
    refs = [hd.sr.SourceImageForMeasurementGroup.from_source_image(evidence[0])]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=dicom_codes.SCT.ImagingProcedure,
        imaging_measurements=_measurement_groups(groups, algo, refs), title=title)
    uid = hd.UID()
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=report, series_instance_uid=hd.UID(),
        series_number=series_number, sop_instance_uid=uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description=description[:64])
    out.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out)
    return out, str(uid)


def write_sr(sources: Sequence[Dataset], scores: dict[str, float], thresholds: dict[str, float],
             out: Path, algorithm: str, version: str, series_number: int | None = None,
             codes: Mapping[str, Code] | None = None) -> tuple[Path, str]:
    """Write a Comprehensive SR (TID 1500 measurement report) of classification findings.

    Each finding is one measurement group named by its concept
    (:func:`medinfer.io.codes.finding_code`: SNOMED CT / DCM where known, else private):
    the probability as a measurement (DCM *Probability*, unit ``{probability}``) and a
    qualitative evaluation Present/Absent at its threshold (0.5 when not given). The
    series number defaults to :func:`derived_series_number`; ``codes`` maps finding
    names to concepts that win over the table.
    """
    from pydicom.sr.codedict import codes as dicom_codes

    unit = PROBABILITY_UNIT
    groups = []
    for finding, p in sorted(scores.items()):
        name = finding_code(finding, codes)
        present = dicom_codes.SCT.Present if p >= thresholds.get(finding, 0.5) \
            else dicom_codes.SCT.Absent
        groups.append(CodedGroup(finding, name, ((dicom_codes.DCM.Probability, float(p), unit),),
                                  ((name, present),)))
    return write_report(sources, groups, out, algorithm=algorithm, version=version,
                         series_number=series_number, title=None,
                         description=f"medinfer findings {algorithm}")


def write_measurements_sr(sources: Sequence[Dataset], groups: Sequence[SrGroup], out: Path,
                          algorithm: str, version: str, series_number: int | None = None,
                          title: Code | None = None,
                          codes: Mapping[str, Code] | None = None) -> tuple[Path, str]:
    """Write a Comprehensive SR (TID 1500 measurement report) of measured findings.

    Example (the volumes of a CT perfusion analysis)::

        write_measurements_sr(image.instances, [
            SrGroup("ischemic core", (SrMeasurement("volume", 23.4, "ml", "milliliter"),)),
            SrGroup("mismatch", (SrMeasurement("volume ratio", 3.1, "{ratio}", "ratio"),)),
            SrGroup("DEFUSE-3 eligibility", evaluations=(("eligible", True),)),
        ], out / "volumes.dcm", "ctp", "v1")

    Args:
        sources: the source instances (the evidence; the first is each group's source image).
        groups: one measurement group per finding, in this order.
        out: file to write.
        algorithm: algorithm name (observer device and each group's algorithm).
        version: algorithm version.
        series_number: default :func:`derived_series_number` (``sr``).
        title: document title from CID 7021 (default *Imaging Measurement Report*).
        codes: name -> concept that wins over the tables, for finding, measurement and
            evaluation names alike.

    Returns:
        (path, SOP Instance UID).

    Raises:
        ValueError: no group (a report needs one).
    """
    from pydicom.sr.codedict import codes as dicom_codes

    if not groups:
        raise ValueError("a measurement report needs at least one group")
    yes, no = dicom_codes.SCT.Yes, dicom_codes.SCT.No
    coded = [CodedGroup(
        g.finding, finding_code(g.finding, codes),
        tuple((measurement_code(m.name, codes), float(m.value),
               Code(m.unit, "UCUM", m.unit_meaning)) for m in g.measurements),
        tuple((measurement_code(name, codes), yes if flag else no) for name, flag in g.evaluations))
        for g in groups]
    return write_report(sources, coded, out, algorithm=algorithm, version=version,
                         series_number=series_number, title=title,
                         description=f"medinfer measurements {algorithm}")


def write_png(picture: np.ndarray, out: Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 picture as PNG."""
    from PIL import Image as PILImage

    out.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.ascontiguousarray(picture)).save(out)
    return out


def write_json(payload: dict[str, Any], out: Path) -> Path:
    """Write the machine-readable result summary."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out
