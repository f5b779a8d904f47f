"""DICOM outputs of a CT perfusion analysis: one Parametric Map per quantity (CBF, CBV, MTT,
Tmax, TTP) and a Comprehensive SR of the core/penumbra volumes."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ParametricMapStorage, generate_uid

from medinfer.data.synthetic import dicom_slice
from medinfer.io.codes import PRIVATE_SCHEME
from medinfer.io.derived import (
    SrGroup,
    SrMeasurement,
    write_measurements_sr,
    write_parametric_map,
)

ROWS, COLS = 8, 6


def _ct_series(n: int = 3, *, pixels: bool = False) -> list[Dataset]:
    """``n`` CT slices of one series, 2.5 mm apart, head first: the array goes *down*
    (z = 10, 7.5, ...), so an order that follows z is not the array order. Without
    ``pixels`` the pixel data is dropped, as the series reader does."""
    study, series = generate_uid(), generate_uid()
    out = []
    for k in range(n):
        ds = dicom_slice(np.full((ROWS, COLS), 40, np.uint16), position=(-3.0, 5.0, 10 - 2.5 * k),
                         spacing=(0.5, 0.75), instance=k + 1, series_uid=series,
                         study_uid=study, modality="CT", sop_class=CTImageStorage,
                         thickness=2.5, description="CTP")
        if not pixels:
            del ds.PixelData
        out.append(ds)
    return out


def _values(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 80.0, (ROWS, COLS, n)).astype(np.float32)
    values[0, 0, 1] = np.nan  # outside the brain
    values[2, 3, -1] = np.inf  # a failed fit
    return values


def _frames_by_slice(ds: Dataset, sources: list[Dataset]) -> dict[int, int]:
    """Slice k -> frame index, from each frame's Derivation Image reference."""
    uids = [s.SOPInstanceUID for s in sources]
    out = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        out[uids.index(ref.ReferencedSOPInstanceUID)] = i
    return out


QUANTITIES = [  # quantity, concept, UCUM unit, series offset index
    ("cbf", codes.DCM.AbsoluteRegionalBloodFlow, "ml/(100.g)/min", 0),
    ("cbv", codes.DCM.AbsoluteRegionalBloodVolume, "ml/(100.g)", 1),
    ("mtt", codes.DCM.MeanTransitTime, "s", 2),
    ("Tmax", codes.DCM.Tmax, "s", 3),
    ("ttp", codes.DCM.TimeToPeak, "s", 4),
]


@pytest.mark.parametrize(("quantity", "concept", "unit", "index"), QUANTITIES)
def test_parametric_map_round_trips_values_units_quantity_and_references(
        tmp_path: Path, quantity: str, concept, unit: str, index: int) -> None:
    sources, values = _ct_series(3), _values(3)
    path, uid = write_parametric_map(sources, values, tmp_path / f"{quantity}.dcm",
                                     quantity=quantity, algorithm="ctp", version="v1")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ParametricMapStorage and ds.SOPInstanceUID == uid
    assert "FloatPixelData" in ds and ds.NumberOfFrames == 3
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert ds.SeriesNumber == 1 + 9300 + index
    pixels, padding = ds.pixel_array, float(ds.FloatPixelPaddingValue)
    assert pixels.dtype == np.float32 and padding < 0
    frames = _frames_by_slice(ds, sources)
    assert sorted(frames) == [0, 1, 2]
    for k, i in frames.items():
        position = ds.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == \
            [float(v) for v in sources[k].ImagePositionPatient]
        finite = np.isfinite(values[..., k])
        np.testing.assert_allclose(pixels[i][finite], values[..., k][finite], rtol=1e-6)
        assert (pixels[i][~finite] == padding).all()
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    units = mapping.MeasurementUnitsCodeSequence[0]
    assert (units.CodeValue, units.CodingSchemeDesignator) == (unit, "UCUM")
    defined = mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0]
    assert (defined.CodeValue, defined.CodingSchemeDesignator) == (concept.value, "DCM")
    assert mapping.LUTLabel.upper() == quantity.upper()
    finite = values[np.isfinite(values)]
    assert mapping.DoubleFloatRealWorldValueFirstValueMapped == pytest.approx(finite.min())
    assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(finite.max())
    assert padding < mapping.DoubleFloatRealWorldValueFirstValueMapped  # padding maps to nothing


def test_parametric_map_is_read_by_highdicom_with_the_sources_geometry(tmp_path: Path) -> None:
    sources, values = _ct_series(4, pixels=True), _values(4, seed=1)
    values[np.isnan(values) | np.isinf(values)] = 1.0
    path, _ = write_parametric_map(sources, values, tmp_path / "cbf.dcm", quantity="cbf",
                                   unit="ml/100g/min", algorithm="ctp", version="v1")
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
    assert "FloatPixelPaddingValue" not in pm  # every value was finite
    shared = pm.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.5, 0.75]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    unit = shared.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert unit.CodeValue == "ml/(100.g)/min"  # the spelling given, written in UCUM
    frames = _frames_by_slice(pm, sources)
    for k, i in frames.items():
        np.testing.assert_array_equal(pm.pixel_array[i], values[..., k])


def test_each_quantity_is_a_series_of_its_own(tmp_path: Path) -> None:
    sources, values = _ct_series(2), _values(2)
    written = [pydicom.dcmread(write_parametric_map(
        sources, values, tmp_path / f"{q}.dcm", quantity=q, algorithm="ctp", version="v1")[0])
        for q, *_ in QUANTITIES]
    assert len({ds.SeriesNumber for ds in written}) == len(QUANTITIES)
    assert len({ds.SeriesInstanceUID for ds in written}) == len(QUANTITIES)
    given = write_parametric_map(sources, values, tmp_path / "x.dcm", quantity="mtt",
                                 algorithm="ctp", version="v1", series_number=42)[0]
    assert pydicom.dcmread(given).SeriesNumber == 42


def test_one_slice_map_and_the_callers_sources_are_unchanged(tmp_path: Path) -> None:
    sources = _ct_series(1)
    before = [ds.to_json_dict() for ds in sources]
    values = np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) / 10
    path, _ = write_parametric_map(sources, values, tmp_path / "ttp.dcm", quantity="ttp",
                                   unit="s", algorithm="ctp", version="v1")
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 1
    np.testing.assert_allclose(ds.pixel_array, values, rtol=1e-6)
    assert [ds.to_json_dict() for ds in sources] == before


def test_padding_stays_below_negative_values(tmp_path: Path) -> None:
    sources = _ct_series(2)
    values = np.full((ROWS, COLS, 2), 2.0, np.float32)
    values[1, 1, 0], values[3, 3, 1] = -3.5, np.nan  # deconvolution undershoot
    ds = pydicom.dcmread(write_parametric_map(sources, values, tmp_path / "cbv.dcm",
                                              quantity="cbv", algorithm="a", version="v")[0])
    padding = float(ds.FloatPixelPaddingValue)
    assert padding == -5.0
    assert np.count_nonzero(ds.pixel_array == padding) == 1
    assert np.count_nonzero(ds.pixel_array == -3.5) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"quantity": "rcbf"}, "unknown perfusion quantity"),
    ({"quantity": "tmax", "unit": "ms"}, "not 'ms'"),
    ({"quantity": "cbf", "unit": "ml/100ml/min"}, "not"),
    ({"quantity": "cbf", "values": np.zeros((ROWS, COLS, 2), np.float32)}, "2 slices"),
    ({"quantity": "cbf", "values": np.zeros((COLS, ROWS, 3), np.float32)}, "source slices"),
    ({"quantity": "cbf", "values": np.zeros((ROWS, COLS), np.float32)}, "one source"),
    ({"quantity": "cbf", "values": np.full((ROWS, COLS, 3), np.nan, np.float32)}, "no finite"),
])
def test_parametric_map_refuses(tmp_path: Path, kwargs: dict, message: str) -> None:
    values = kwargs.pop("values", np.ones((ROWS, COLS, 3), np.float32))
    with pytest.raises(ValueError, match=message):
        write_parametric_map(_ct_series(3), values, tmp_path / "x.dcm", algorithm="a",
                             version="v", **kwargs)
    assert not (tmp_path / "x.dcm").exists()


def test_parametric_map_needs_patient_geometry(tmp_path: Path) -> None:
    sources = _ct_series(2)
    del sources[1].ImagePositionPatient
    with pytest.raises(ValueError, match=r"instances \[1\]"):
        write_parametric_map(sources, np.ones((ROWS, COLS, 2), np.float32), tmp_path / "x.dcm",
                             quantity="cbf", algorithm="a", version="v")


ML = ("ml", "milliliter")


def _perfusion_groups(eligible: bool) -> list[SrGroup]:
    return [
        SrGroup("ischemic core", (SrMeasurement("volume", 23.4, *ML),)),
        SrGroup("hypoperfusion (Tmax > 6 s)", (SrMeasurement("volume", 81.9, *ML),)),
        SrGroup("mismatch", (SrMeasurement("volume", 58.5, *ML),
                             SrMeasurement("volume ratio", 3.5, "{ratio}", "ratio"))),
        SrGroup("DEFUSE-3 eligibility", evaluations=(("eligible", eligible),)),
    ]


@pytest.mark.parametrize("eligible", [True, False])
def test_measurements_sr_round_trips_volumes_ratio_and_eligibility(
        tmp_path: Path, eligible: bool) -> None:
    sources = _ct_series(3)
    path, uid = write_measurements_sr(sources, _perfusion_groups(eligible), tmp_path / "sr.dcm",
                                      "ctp", "v1")
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == uid and ds.SeriesNumber == 1 + 9200
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    sr = hd.sr.ComprehensiveSR.from_dataset(ds)
    groups = {str(g.tracking_identifier): g for g in sr.content.get_image_measurement_groups()}
    assert list(groups) == ["ischemic core", "hypoperfusion (Tmax > 6 s)", "mismatch",
                            "DEFUSE-3 eligibility"]
    read = {name: [(m.name.value, m.name.scheme_designator, m.value, m.unit.value)
                   for m in g.get_measurements()] for name, g in groups.items()}
    volume = (codes.SCT.Volume.value, "SCT")
    assert read["ischemic core"] == [(*volume, pytest.approx(23.4), "ml")]
    assert read["hypoperfusion (Tmax > 6 s)"] == [(*volume, pytest.approx(81.9), "ml")]
    assert read["mismatch"] == [(*volume, pytest.approx(58.5), "ml"),
                                (codes.DCM.VolumeRatio.value, "DCM", pytest.approx(3.5), "{ratio}")]
    assert read["DEFUSE-3 eligibility"] == []
    (evaluation,) = groups["DEFUSE-3 eligibility"].get_qualitative_evaluations()
    assert evaluation.name.meaning == "eligible"
    assert evaluation.value == (codes.SCT.Yes if eligible else codes.SCT.No)
    finding = groups["ischemic core"].finding_type  # the segment's type: SNOMED CT Infarct
    assert (finding.scheme_designator, finding.value, finding.meaning) == ("SCT", "55641003", "Infarct")
    mismatch = groups["mismatch"].finding_type  # no standard concept: private
    assert (mismatch.scheme_designator, mismatch.meaning) == (PRIVATE_SCHEME, "mismatch")


def test_measurements_sr_codes_override_and_title(tmp_path: Path) -> None:
    sources = _ct_series(2)
    groups = [SrGroup("core", (SrMeasurement("volume", 1.0, *ML),))]
    path, _ = write_measurements_sr(sources, groups, tmp_path / "sr.dcm", "ctp", "v1",
                                    series_number=77, title=codes.cid7021.ImagingMeasurementReport,
                                    codes={"core": codes.SCT.Necrosis})
    sr = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    assert sr.SeriesNumber == 77
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == codes.SCT.Necrosis
    with pytest.raises(ValueError, match="at least one group"):
        write_measurements_sr(sources, [], tmp_path / "empty.dcm", "ctp", "v1")


@pytest.mark.parametrize(("value", "unit"),
                         [(float("nan"), "ml"), (float("inf"), "ml"), (1.0, " ")])
def test_measurement_refuses_what_an_sr_cannot_hold(value: float, unit: str) -> None:
    with pytest.raises(ValueError):
        SrMeasurement("volume", value, unit, "milliliter")
