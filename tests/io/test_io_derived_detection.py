"""DICOM results of a 2D detector on CT slices: the detection SR (boxes as planar ROIs on
their own source instance, score and mm lengths), the box overlay and its Secondary Capture."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, generate_uid

from medinfer.data.synthetic import dicom_slice, endoscopy_frame, write_dicom
from medinfer.io import read_dicom_series
from medinfer.io.derived import BOX_COLOR, TRUTH_COLOR, detection_overlay, write_sc
from medinfer.io.regions import RegionFinding, write_detection_sr

ROWS, COLS = 32, 24
SPACING = (0.7, 0.5)  # (row, column) mm: unequal, so a swapped axis shows
TISSUE_HU = 40.0
# (slice, box x0 y0 x1 y1, score, long mm, short mm); width scales by 0.5, height by 0.7
FINDINGS = [
    (0, (4.0, 6.0, 14.0, 10.0), 0.91, 10 * 0.5, 4 * 0.7),
    (2, (2.0, 3.0, 6.0, 15.0), 0.42, 12 * 0.7, 4 * 0.5),
]


def _ct_folder(root: Path, n: int = 3) -> Path:
    """``n`` CT slices of one series (2 mm apart): air with a soft-tissue square, stored
    as HU + 1024 (RescaleIntercept -1024), written with :func:`write_dicom`."""
    study, series = generate_uid(), generate_uid()
    hu = np.full((ROWS, COLS), -1000.0)
    hu[8:24, 6:18] = TISSUE_HU
    for i in range(n):
        ds = dicom_slice((hu + 1024).astype(np.uint16), position=(0.0, 0.0, 2.0 * i),
                         instance=i + 1, series_uid=series, study_uid=study, modality="CT",
                         sop_class=CTImageStorage, spacing=SPACING, thickness=2.0,
                         slope=1.0, intercept=-1024.0, description="chest CT")
        write_dicom(ds, root / f"CT{i + 1:04d}.dcm")
    return root


@pytest.fixture
def ct_sources(tmp_path: Path) -> list[Dataset]:
    """The series' instances in array order, as the reader hands them to a task."""
    return list(read_dicom_series(_ct_folder(tmp_path / "ct")).instances)


def _findings() -> list[RegionFinding]:
    return [RegionFinding(k, box, score) for k, box, score, _, _ in FINDINGS]


def _corners(box: tuple[float, float, float, float]) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _texts(ds: Dataset, concept: Code) -> list[str]:
    """Text values of every content item named ``concept`` in the SR tree."""
    found = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0]
        if (name.CodeValue, name.CodingSchemeDesignator) == (concept.value,
                                                             concept.scheme_designator):
            found.append(str(item.get("TextValue")))
        found += _texts(item, concept)
    return found


def _read(path: Path) -> hd.sr.ComprehensiveSR:
    return hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))


def test_detection_sr_boxes_reference_their_slice_with_score_and_lengths(
        tmp_path: Path, ct_sources: list[Dataset]) -> None:
    path, uid = write_detection_sr(ct_sources, _findings(), tmp_path / "det.dcm", "lung-det",
                                   "torch-fp32")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and ds.SOPInstanceUID == uid
    assert ds.StudyInstanceUID == ct_sources[0].StudyInstanceUID
    assert ds.SeriesNumber == 1 + 9200
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == \
        {s.SOPInstanceUID for s in ct_sources}
    groups = _read(path).content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["lesion 1", "lesion 2"]
    for group, (k, box, score, long_mm, short_mm) in zip(groups, FINDINGS, strict=True):
        roi = group.roi
        assert roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert roi.value.tolist() == _corners(box)  # (column, row) pairs, closed
        (ref,) = roi.ContentSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == ct_sources[k].SOPInstanceUID
        assert ref.ReferencedSOPClassUID == CTImageStorage
        assert group.finding_type == codes.SCT.Lesion
        read = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert read == {codes.DCM.Probability.value: (pytest.approx(score), "{probability}"),
                        codes.SCT.LongAxis.value: (pytest.approx(long_mm), "mm"),
                        codes.SCT.ShortAxis.value: (pytest.approx(short_mm), "mm")}
        (evaluation,) = group.get_qualitative_evaluations()
        assert (evaluation.name, evaluation.value) == (codes.SCT.Lesion, codes.SCT.Present)
    assert set(_texts(ds, codes.DCM.AlgorithmName)) == {"lung-det"}  # in each group
    assert _texts(ds, codes.DCM.AlgorithmVersion) == ["torch-fp32"] * 2


def test_empty_detection_sr_says_no_lesion(tmp_path: Path, ct_sources: list[Dataset]) -> None:
    path, _ = write_detection_sr(ct_sources, [], tmp_path / "none.dcm", "lung-det")
    sr = _read(path)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.StudyInstanceUID == ct_sources[0].StudyInstanceUID
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert str(group.tracking_identifier) == "no lesion" and group.get_measurements() == []
    (evaluation,) = group.get_qualitative_evaluations()
    assert (evaluation.name, evaluation.value) == (codes.SCT.Lesion, codes.SCT.Absent)
    assert _texts(sr, codes.DCM.AlgorithmVersion) == ["unspecified"]  # variant ""


def test_detection_sr_labels_and_code_overrides(tmp_path: Path, ct_sources: list[Dataset]) -> None:
    findings = [RegionFinding(1, (1, 1, 5, 5), 0.8, "mass"), RegionFinding(1, (9, 9, 12, 12), 0.6,
                                                                        "nodule")]
    path, _ = write_detection_sr(ct_sources, findings, tmp_path / "det.dcm", "d", "v",
                                 series_number=42, codes={"nodule": codes.SCT.Neoplasm})
    sr = _read(path)
    assert sr.SeriesNumber == 42
    groups = sr.content.get_planar_roi_measurement_groups()
    assert [str(g.tracking_identifier) for g in groups] == ["mass 1", "nodule 2"]
    assert [g.finding_type for g in groups] == [codes.SCT.Mass, codes.SCT.Neoplasm]


@pytest.mark.parametrize("video", [False, True])
def test_detection_without_pixel_spacing_stores_the_score_only(tmp_path: Path,
                                                               video: bool) -> None:
    """Endoscopy frames have no PixelSpacing: no mm lengths; a one-frame video instance is
    referenced by its frame."""
    from medinfer.data.synthetic import VIDEO_ENDOSCOPIC, VL_ENDOSCOPIC

    frame = endoscopy_frame(np.zeros((16, 16, 3), np.uint8),
                            sop_class=VIDEO_ENDOSCOPIC if video else VL_ENDOSCOPIC)
    path, _ = write_detection_sr([frame], [RegionFinding(0, (2, 2, 8, 6), 0.7, "polyp")],
                                 tmp_path / "det.dcm", "polyp-det", "v1")
    (group,) = _read(path).content.get_planar_roi_measurement_groups()
    assert [m.name for m in group.get_measurements()] == [codes.DCM.Probability]
    assert group.finding_type == codes.SCT.PolypOfColon
    (ref,) = group.roi.ContentSequence[0].ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == frame.SOPInstanceUID
    assert ref.get("ReferencedFrameNumber") == (1 if video else None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"index": -1}, "index"),
    ({"box": (5.0, 1.0, 5.0, 4.0)}, "x1 > x0"),
    ({"box": (1.0, 1.0, float("nan"), 4.0)}, "finite"),
    ({"score": 1.5}, "score"),
    ({"score": float("nan")}, "score"),
    ({"label": " "}, "label"),
])
def test_region_finding_refuses(kwargs: dict, message: str) -> None:
    args = {"index": 0, "box": (1.0, 1.0, 4.0, 4.0), "score": 0.5} | kwargs
    with pytest.raises(ValueError, match=message):
        RegionFinding(**args)


def test_detection_sr_refuses_a_slice_outside_the_sources(tmp_path: Path,
                                                          ct_sources: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="slice 3"):
        write_detection_sr(ct_sources, [RegionFinding(3, (1, 1, 4, 4), 0.5)],
                           tmp_path / "det.dcm", "d")
    with pytest.raises(ValueError, match="source instances"):
        write_detection_sr([], [], tmp_path / "det.dcm", "d")


def _hu_slice(rows: int = 64, cols: int = 48) -> np.ndarray:
    """Air with a soft-tissue square at rows 16..47, columns 12..35 (HU)."""
    hu = np.full((rows, cols), -1000.0, np.float32)
    hu[16:48, 12:36] = TISSUE_HU
    return hu


def test_overlay_draws_box_outlines_and_keeps_the_inside_grey() -> None:
    box, truth = (12.0, 30.0, 36.0, 44.0), (4.0, 4.0, 44.0, 60.0)
    pic = detection_overlay(_hu_slice(), [box], [0.87], [truth])
    assert pic.shape == (64, 48, 3) and pic.dtype == np.uint8
    # the 2-px outline inside the edges: rows 30-31 and 42-43, columns 12-13 and 34-35
    for edge in (pic[30:32, 12:36], pic[42:44, 12:36], pic[30:44, 12:14], pic[30:44, 34:36]):
        assert (edge == BOX_COLOR).all()
    for edge in (pic[4:6, 4:44], pic[58:60, 4:44], pic[4:60, 4:6], pic[4:60, 42:44]):
        assert (edge == TRUTH_COLOR).all()
    tissue = round((TISSUE_HU + 1000) / 1400 * 255)  # -1000..400 HU window
    assert (pic[32:42, 14:34] == tissue).all()  # inside: grey (R = G = B), the windowed tissue
    assert (pic[8:12, 8:40] == 0).all()  # air between the boxes: black
    # the score is written in the box colour above the box
    above = (pic[:30] == BOX_COLOR).all(axis=-1)
    assert above[18:30, 12:40].any() and not above[:18].any()


def test_overlay_shows_8_bit_data_as_it_is_stretches_without_window_and_checks_inputs() -> None:
    img = np.full((16, 16), 77, np.uint8)
    pic = detection_overlay(img, [], [])
    assert (pic == 77).all()
    assert (detection_overlay(img.astype(np.float32)[None], [], []) == 77).all()
    normalised = np.linspace(-1.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
    stretched = detection_overlay(normalised, [], [], window=None)[..., 0]
    assert stretched[0, 0] == 0 and stretched[-1, -1] == 255  # percentiles, not HU
    with pytest.raises(ValueError, match="scores"):
        detection_overlay(img, [(1, 1, 5, 5)], [])
    with pytest.raises(ValueError, match="2D"):
        detection_overlay(np.zeros((2, 16, 16)), [], [])
    with pytest.raises(ValueError, match="window"):
        detection_overlay(img.astype(np.float32), [], [], window=(5.0, 5.0))


def test_box_partly_outside_the_picture_is_clipped() -> None:
    pic = detection_overlay(_hu_slice(), [(-5.0, -5.0, 4.0, 4.0)], [0.5])  # score below it
    assert (pic[0:4, 2:4] == BOX_COLOR).all() and (pic[2:4, 0:4] == BOX_COLOR).all()


def test_overlay_secondary_capture_is_rgb_and_references_its_slice(tmp_path: Path) -> None:
    image = read_dicom_series(_ct_folder(tmp_path / "ct"))
    k, box, score, _, _ = FINDINGS[1]
    picture = detection_overlay(image.array[0, :, :, k], [box], [score])
    source = image.instances[k]
    path, uid = write_sc(source, picture, tmp_path / "sc.dcm", "lung-det")
    sc = pydicom.dcmread(path)
    assert sc.SOPInstanceUID == uid and sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
    assert np.array_equal(sc.pixel_array, picture)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesNumber == 1 + 9100
