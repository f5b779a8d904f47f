"""Detection data: DICOM series with Pascal VOC boxes per SOPInstanceUID (the shipped
../shared/data/lung-ct-detection and the synthetic generator), and the pictures layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from shared_data import SHARED_DATA, require

from medinfer.data.detection import (
    ANNOTATIONS,
    Box,
    DetectionSeries,
    is_detection_folder,
    load_detection_folder,
    read_voc,
    write_synthetic_detection,
    write_voc,
)
from medinfer.errors import InputError

LUNG = SHARED_DATA / "lung-ct-detection"
# A0001, kernel L: names 1-22.dcm (InstanceNumber 22, z -229 mm), array slice 2 (slices run foot
# to head, instances head to foot)
KNOWN_XML = "A0001/1.3.6.1.4.1.14519.5.2.1.6655.2359.155870813347987660555133803380.xml"


@pytest.fixture(scope="module")
def lung() -> list[DetectionSeries]:
    return load_detection_folder(require(LUNG, "lung-ct-detection"))


@pytest.fixture()
def synthetic(tmp_path: Path) -> Path:
    return write_synthetic_detection(tmp_path / "ct", slices=6, size=48, seed=3)


def _pictures(root: Path, table: dict[str, list]) -> Path:
    """A pictures folder: an RGB PNG 20 x 30 (rows x cols) ``a.png``, a grey one ``b.png``."""
    (root / "images").mkdir(parents=True)
    PILImage.fromarray(np.zeros((20, 30, 3), np.uint8), "RGB").save(root / "images" / "a.png")
    PILImage.fromarray(np.zeros((20, 30), np.uint8), "L").save(root / "images" / "b.png")
    (root / "boxes.json").write_text(json.dumps(table))
    return root


# -- the shipped lung CT ------------------------------------------------------------------

def test_lung_ct_has_the_readmes_series_and_boxes(lung: list[DetectionSeries]) -> None:
    assert [s.name for s in lung] == [
        "A0001/2.000000-5mm-40805", "A0001/3.000000-5mm-41315",
        "A0002/2.000000-ThoraxRoutine  8.0.0  B70f-62919",
        "A0002/3.000000-ThoraxRoutine  8.0.0  B40f-10983"]
    assert sum(len(s.annotated) for s in lung) == 38 and sum(s.n_boxes for s in lung) == 38
    per_patient = {p: sum(s.n_boxes for s in lung if s.patient == p) for p in ("A0001", "A0002")}
    assert per_patient == {"A0001": 20, "A0002": 18}
    for s in lung:  # each folder: the annotated run with one unannotated neighbour each side
        depth = s.image.spatial_shape[2]
        assert s.annotated == frozenset(range(1, depth - 1)) == frozenset(s.boxes)
        assert {s.image.instances[k].SOPInstanceUID for k in s.annotated} == \
            {p.stem for p in s.sources.values()}
        assert all(b.label == "A" for bs in s.boxes.values() for b in bs)


def test_a_known_box_matches_its_xml_and_covers_the_tumour(lung: list[DetectionSeries]) -> None:
    xml = LUNG / ANNOTATIONS / KNOWN_XML
    (series, k), = [(s, k) for s in lung for k, p in s.sources.items() if p == xml]
    assert series.name == "A0001/2.000000-5mm-40805"
    assert k == 2 and int(series.image.instances[k].InstanceNumber) == 22
    assert float(series.image.instances[k].ImagePositionPatient[2]) == -229.0
    assert series.boxes[k] == (Box(290.0, 305.0, 338.0, 378.0, "A"),) == read_voc(xml)
    hu = series.image.array[0, ..., k]
    # x = column, y = row: soft tissue inside the box; the transposed box lies in the lung
    assert np.median(hu[305:379, 290:339]) > -200 and np.median(hu[290:339, 305:379]) < -500


def test_boxes_mm_lie_in_the_slice_plane_at_pixel_spacing(lung: list[DetectionSeries]) -> None:
    for s in lung:
        for k, boxes in s.boxes.items():
            ds = s.image.instances[k]
            corners = s.boxes_mm(k)
            assert corners.shape == (len(boxes), 2, 3)
            assert np.allclose(corners[..., 2], float(ds.ImagePositionPatient[2]))
            row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
            b = boxes[0]
            assert corners[0, 1, 0] - corners[0, 0, 0] == pytest.approx((b.x1 - b.x0) * col_mm)
            assert corners[0, 1, 1] - corners[0, 0, 1] == pytest.approx((b.y1 - b.y0) * row_mm)
            x0_mm = float(ds.ImagePositionPatient[0]) + b.x0 * col_mm  # columns run along +x
            assert corners[0, 0, 0] == pytest.approx(x0_mm)
    assert lung[0].boxes_mm(0).shape == (0, 2, 3)  # an unannotated neighbour


def test_a_patient_folder_loads_only_that_patient() -> None:
    patient = require(LUNG, "lung-ct-detection") / "A0002"
    assert is_detection_folder(patient) and is_detection_folder(LUNG)
    series = load_detection_folder(patient)
    assert {s.patient for s in series} == {"A0002"} and len(series) == 2
    assert sum(s.n_boxes for s in series) == 18


# -- the synthetic generator ----------------------------------------------------------------

def test_synthetic_round_trip(synthetic: Path) -> None:
    series = load_detection_folder(synthetic)
    assert [s.name for s in series] == ["P1/1.000000-Chest  2.5mm", "P2/1.000000-Chest  2.5mm"]
    for s in series:
        assert s.image.array.shape == (1, 48, 48, 6) and s.image.meta["modality"] == "CT"
        assert s.annotated == frozenset(s.boxes) == frozenset(range(1, 5)) and s.n_boxes == 4
        assert [int(d.InstanceNumber) for d in s.image.instances] == [6, 5, 4, 3, 2, 1]
        assert str(s.image.instances[0].PatientID) == s.patient
        hu = s.image.array[0]
        for k, (b,) in s.boxes.items():
            r, c = int((b.y0 + b.y1) / 2), int((b.x0 + b.x1) / 2)
            assert hu[r, c, k] > -200 and hu[r, c, 0] < -500 and hu[r, c, 5] < -500
            # tight: the box's edge rows/columns hold tumour, the ring just outside does not
            inside = hu[int(b.y0):int(b.y1) + 1, int(b.x0):int(b.x1) + 1, k] > -400
            assert all(edge.any() for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]))
            assert (hu[int(b.y0) - 1, int(b.x0):int(b.x1) + 1, k] < -400).all()
        assert s.boxes_mm(3)[0, 0, 2] == pytest.approx(2.5 * 3)
    assert load_detection_folder(synthetic, patients=["P2"])[0].patient == "P2"


def test_synthetic_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def content(root: Path) -> tuple[list[str], np.ndarray]:
        series = load_detection_folder(root)
        names = sorted(p.name for p in (root / ANNOTATIONS).rglob("*.xml"))
        return names, np.stack([s.image.array for s in series])

    a, b, c = (write_synthetic_detection(tmp_path / name, seed=seed)
               for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    assert content(a)[0] == content(b)[0] and np.array_equal(content(a)[1], content(b)[1])
    assert not np.array_equal(content(a)[1], content(c)[1])


# -- errors ---------------------------------------------------------------------------------

def _first_xml(root: Path, patient: str = "P1") -> Path:
    return sorted((root / ANNOTATIONS / patient).glob("*.xml"))[0]


def test_a_box_outside_the_image_names_the_xml(synthetic: Path) -> None:
    xml = _first_xml(synthetic)
    write_voc(xml, [Box(10, 10, 49, 20)], (48, 48))  # x1 past the 48 columns
    with pytest.raises(InputError, match=f"{xml.name}.*outside the 48 x 48") as err:
        load_detection_folder(synthetic)
    assert err.value.path == xml


def test_an_xml_naming_a_missing_instance_names_the_xml(synthetic: Path) -> None:
    stray = _first_xml(synthetic).rename(synthetic / ANNOTATIONS / "P1" / "1.2.3.4.xml")
    with pytest.raises(InputError, match=r"1\.2\.3\.4\.xml: names SOPInstanceUID 1\.2\.3\.4 which "
                                         r"no DICOM file of patient P1 has"):
        load_detection_folder(synthetic)
    # the instance exists, but in the other patient: still refused
    other = _first_xml(synthetic, "P2")
    shutil.move(other, synthetic / ANNOTATIONS / "P1" / other.name)
    stray.unlink()
    with pytest.raises(InputError, match=other.name):
        load_detection_folder(synthetic)


def test_a_malformed_xml_names_the_xml(synthetic: Path) -> None:
    xml = _first_xml(synthetic)
    xml.write_text("<annotation><object><bndbox>")
    with pytest.raises(InputError, match=f"{xml.name}: not a readable Pascal VOC"):
        load_detection_folder(synthetic)


def test_a_patient_folder_without_annotations_is_refused(synthetic: Path) -> None:
    shutil.rmtree(synthetic / ANNOTATIONS / "P1")
    assert not is_detection_folder(synthetic / "P1")
    with pytest.raises(InputError, match="not a detection folder"):
        load_detection_folder(synthetic / "P1")
    with pytest.raises(InputError, match="no annotated patient P1"):
        load_detection_folder(synthetic, patients=["P1"])
    assert [s.patient for s in load_detection_folder(synthetic)] == ["P2"]


BODY = "<size><width>30</width><height>20</height></size><object><name>A</name>{}</object>"
BNDBOX = "<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>"


@pytest.mark.parametrize(("inner", "shape", "reason"), [
    (BNDBOX.format(1, 2, 10, 12), (20, 30), None),
    ("", (20, 30), "object 1 has no <bndbox>"),
    (BNDBOX.format(1, "two", 10, 12), (20, 30), "<ymin> is 'two', not a number"),
    (BNDBOX.format(10, 2, 10, 12), (20, 30), "empty box"),
    (BNDBOX.format(1, 2, "nan", 12), (20, 30), "non-finite corner"),
    (BNDBOX.format(-1, 2, 10, 12), None, "outside"),
    (BNDBOX.format(1, 2, 10, 21), (20, 30), "outside the 20 x 30"),
    (BNDBOX.format(1, 2, 10, 12), (30, 20), "<size> is 20 x 30"),
    ("<bndbox><xmin>1</xmin></bndbox>", (20, 30), "object 1 has no <ymin>"),
])
def test_read_voc(tmp_path: Path, inner: str, shape: tuple[int, int] | None,
                  reason: str | None) -> None:
    xml = tmp_path / "s.xml"
    xml.write_text(f"<annotation>{BODY.format(inner)}</annotation>")
    if reason is None:
        assert read_voc(xml, shape) == (Box(1.0, 2.0, 10.0, 12.0, "A"),)
        assert read_voc(xml, shape)[0].as_array().dtype == np.float32
    else:
        with pytest.raises(InputError, match=reason) as err:
            read_voc(xml, shape)
        assert err.value.path == xml


# -- the pictures layout ----------------------------------------------------------------------

def test_pictures_round_trip(tmp_path: Path) -> None:
    root = _pictures(tmp_path / "pics", {"a.png": [{"box": [3, 4, 12, 9], "label": "polyp"}],
                                         "b.png": []})
    assert is_detection_folder(root)
    a, b = load_detection_folder(root)
    assert (a.name, a.patient, b.name) == ("a", "a", "b")
    assert a.image.array.shape == (3, 20, 30, 1) and b.image.array.shape == (1, 20, 30, 1)
    assert a.boxes == {0: (Box(3.0, 4.0, 12.0, 9.0, "polyp"),)} and a.annotated == {0}
    assert b.boxes == {} and b.annotated == {0} and b.n_boxes == 0 and a.sources == {}
    # pixel frame, 1 mm pixels: (row, col, slice) of the corners
    assert np.allclose(a.boxes_mm(0), [[[4, 3, 0], [9, 12, 0]]])
    assert [s.name for s in load_detection_folder(root, patients=["b"])] == ["b"]


@pytest.mark.parametrize(("table", "path", "reason"), [
    ({"a.png": []}, "images/b.png", "not listed in boxes.json"),
    ({"a.png": [], "b.png": [], "c.png": []}, "boxes.json", "lists c.png, not a picture"),
    ({"a.png": [{"box": [3, 4, 31, 9]}], "b.png": []}, "boxes.json", "a.png box 1.*outside"),
    ({"a.png": [{"box": [3, 4]}], "b.png": []}, "boxes.json", "a.png box 1: expected"),
    ({"a.png": {"box": [3, 4, 5, 6]}, "b.png": []}, "boxes.json", "a.png: expected a list"),
])
def test_pictures_errors(tmp_path: Path, table: dict, path: str, reason: str) -> None:
    root = _pictures(tmp_path / "pics", table)
    with pytest.raises(InputError, match=reason) as err:
        load_detection_folder(root)
    assert err.value.path == root / path


def test_a_folder_of_another_layout_is_not_a_detection_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert not is_detection_folder(tmp_path)
    with pytest.raises(InputError, match="not a detection folder"):
        load_detection_folder(tmp_path)
