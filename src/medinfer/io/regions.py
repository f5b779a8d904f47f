"""DICOM results of a 2D detector: one Comprehensive SR of boxes on the source slices.

A detection is a box on one source instance with a score. It is written as a planar ROI
measurement group (TID 1410) of a TID 1500 Measurement Report, built by
:func:`medinfer.io.derived.write_report` like every medinfer SR:

* the region: a closed ``POLYLINE`` rectangle (5 points, the first repeated last) in the
  instance's pixel coordinates (SCOORD: ``(column, row)`` pairs, ``(0, 0)`` the top-left
  corner of the top-left pixel), referencing that instance's SOP Class and Instance UIDs;
* the finding type: :func:`medinfer.io.codes.finding_code` of the finding's label (SCT
  *Lesion* 52988006 for ``"lesion"``, SCT *Mass* 4147007 for ``"mass"``, ...);
* the tracking identifier ``"<label> <n>"`` (``n`` from 1, in the order given) and a UID;
* the measurements: the score as DCM *Probability* (122157, unit ``{probability}``) and,
  where the instance has PixelSpacing, the box's longer and shorter side in mm as SCT
  *Long axis* (103339001) and *Short axis* (103340004);
* a qualitative evaluation *<finding type>* = SCT *Present*.

A report without detections holds one image-level group (TID 1501) on the first source:
finding type and evaluation name *Lesion*, value SCT *Absent*; so "nothing found" is
stated, not left to a missing file.

Example:
    >>> write_detection_sr(image.instances, [RegionFinding(0, (10, 12, 30, 40), 0.91)],
    ...                    out / "detections.dcm", "lung-det", "torch-fp32")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.sr.coding import Code

from medinfer.io.codes import finding_code, measurement_code
from medinfer.io.derived import PROBABILITY_UNIT, Box, CodedGroup, write_report

__all__ = ["ABSENT_LABEL", "RegionFinding", "box_lengths_mm", "write_detection_sr"]

ABSENT_LABEL = "lesion"  # what an empty report says is absent
_MM = dicom_codes.UCUM.Millimeter


@dataclass(frozen=True)
class RegionFinding:
    """One detection: a box on one source slice.

    Attributes:
        index: slice index into the sources (``Image.instances[index]``).
        box: ``(x0, y0, x1, y1)`` in pixels, x along the columns, in DICOM's continuous
            pixel coordinates (``(0, 0)`` the top-left corner of the top-left pixel, so a
            box on whole pixels ``c0..c1`` spans ``x0 = c0, x1 = c1 + 1``).
        score: detection score in [0, 1].
        label: finding name (:func:`medinfer.io.codes.finding_code`), e.g. ``"lesion"``.
    """

    index: int
    box: Box
    score: float
    label: str = "lesion"

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"slice index must be >= 0, got {self.index}")
        if len(self.box) != 4 or not all(math.isfinite(v) for v in self.box):
            raise ValueError(f"box must be 4 finite numbers (x0, y0, x1, y1), got {self.box}")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"box must have x1 > x0 and y1 > y0, got {self.box}")
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        if not self.label.strip():
            raise ValueError("a finding needs a label")


def box_lengths_mm(source: Dataset, box: Box) -> tuple[float, float] | None:
    """(long, short) side of ``box`` in mm on ``source``; ``None`` without PixelSpacing.

    PixelSpacing is (row spacing, column spacing): the width ``x1 - x0`` is scaled by the
    column spacing, the height ``y1 - y0`` by the row spacing.
    """
    spacing = source.get("PixelSpacing")
    if spacing is None or len(spacing) != 2:
        return None
    x0, y0, x1, y1 = box
    sides = ((x1 - x0) * float(spacing[1]), (y1 - y0) * float(spacing[0]))
    return max(sides), min(sides)


def _region(source: Dataset, box: Box) -> Any:
    """The closed rectangle of ``box`` on ``source`` (a ``highdicom.sr.ImageRegion``)."""
    import highdicom as hd

    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    frames, origin = None, None
    if "NumberOfFrames" in source:  # a multi-frame class (e.g. video endoscopy): frame 1
        if int(source.NumberOfFrames) != 1:
            raise ValueError(f"instance {source.SOPInstanceUID} has {source.NumberOfFrames} "
                             "frames: a detection names no frame")
        frames, origin = [1], hd.sr.PixelOriginInterpretationValues.FRAME
    reference = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID, referenced_frame_numbers=frames)
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                             graphic_data=corners, source_image=reference,
                             pixel_origin_interpretation=origin)


def _group(n: int, finding: RegionFinding, source: Dataset,
           codes: Mapping[str, Code] | None) -> CodedGroup:
    """The planar ROI group of the ``n``-th detection."""
    kind = finding_code(finding.label, codes)
    measurements = [(measurement_code("probability", codes), float(finding.score),
                     PROBABILITY_UNIT)]
    lengths = box_lengths_mm(source, finding.box)
    if lengths is not None:
        measurements += [(measurement_code("long axis", codes), lengths[0], _MM),
                         (measurement_code("short axis", codes), lengths[1], _MM)]
    return CodedGroup(f"{finding.label.strip()} {n}", kind, tuple(measurements),
                      ((kind, dicom_codes.SCT.Present),), region=_region(source, finding.box))


def write_detection_sr(sources: Sequence[Dataset], findings: Sequence[RegionFinding], out: Path,
                       algorithm: str, variant: str = "", *, series_number: int | None = None,
                       codes: Mapping[str, Code] | None = None) -> tuple[Path, str]:
    """Write a Comprehensive SR (TID 1500 measurement report) of detected boxes.

    One planar ROI group per finding (see the module docstring); without findings, one
    group stating SCT *Absent* for *Lesion*.

    Args:
        sources: the series' instances in array order (``Image.instances``); all are the
            report's evidence.
        findings: the detections, in the order their tracking numbers follow.
        out: file to write.
        algorithm: algorithm name (observer device and each group's algorithm).
        variant: algorithm version (the model variant); ``""`` is written ``"unspecified"``.
        series_number: default :func:`medinfer.io.derived.derived_series_number` (``sr``).
        codes: name -> concept that wins over the tables (finding labels, ``"probability"``,
            ``"long axis"``, ``"short axis"``).

    Returns:
        (path, SOP Instance UID).

    Raises:
        ValueError: no sources, or a finding whose slice index is not one of them.
    """
    if not sources:
        raise ValueError("a detection report needs the source instances")
    groups = []
    for n, finding in enumerate(findings, start=1):
        if finding.index >= len(sources):
            raise ValueError(f"finding {n} lies on slice {finding.index}, but there are "
                             f"{len(sources)} source instances")
        groups.append(_group(n, finding, sources[finding.index], codes))
    if not groups:
        absent = finding_code(ABSENT_LABEL, codes)
        groups.append(CodedGroup(f"no {ABSENT_LABEL}", absent, (),
                                 ((absent, dicom_codes.SCT.Absent),)))
    return write_report(sources, groups, out, algorithm=algorithm,
                        version=variant.strip() or "unspecified", series_number=series_number,
                        title=None, description=f"medinfer detections {algorithm}")
