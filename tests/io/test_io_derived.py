"""Derived DICOM objects (SEG, SR, SC): tolerant of malformed patient/study values, with
series numbers of their own and a Secondary Capture that references its source."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medinfer.data.synthetic import mr_series
from medinfer.io.derived import write_sc, write_seg, write_sr


def _mask(n: int) -> np.ndarray:
    mask = np.zeros((16, 16, n), np.uint8)
    mask[4:8, 4:8, 1] = 1
    return mask


@pytest.mark.parametrize(("keyword", "value"), [
    ("PatientBirthDate", "1970-01-31"),
    ("StudyTime", "25:61:00"),
    ("PatientName", "X" * 70),
])
def test_malformed_patient_attribute_is_blanked_in_every_derived_object(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, keyword: str, value: str) -> None:
    sources = mr_series(3, 16)
    for ds in sources:
        setattr(ds, keyword, value)
    before = [ds.to_json_dict() for ds in sources]
    picture = np.zeros((16, 16, 3), np.uint8)
    with caplog.at_level(logging.WARNING, logger="medinfer.io.derived"):
        seg, _ = write_seg(sources, _mask(3), {1: "lesion"}, tmp_path / "seg.dcm", "algo", "v1")
        sr, _ = write_sr(sources, {"mass": 0.7}, {"mass": 0.5}, tmp_path / "sr.dcm", "algo", "v1")
        sc, _ = write_sc(sources[1], picture, tmp_path / "sc.dcm", "algo")
    for path in (seg, sr, sc):
        ds = pydicom.dcmread(path)
        assert ds.get(keyword) in ("", None)
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert [ds.to_json_dict() for ds in sources] == before  # the caller's datasets unchanged
    ours = " ".join(r.getMessage() for r in caplog.records if r.name == "medinfer.io.derived")
    assert keyword in ours and value not in ours


def test_derived_series_numbers_follow_the_source_and_sc_references_it(tmp_path: Path) -> None:
    sources = mr_series(3, 16)
    for ds in sources:
        ds.SeriesNumber = 7
    seg = pydicom.dcmread(write_seg(sources, _mask(3), {1: "x"}, tmp_path / "seg.dcm", "a", "v")[0])
    sr = pydicom.dcmread(write_sr(sources, {"m": 0.2}, {}, tmp_path / "sr.dcm", "a", "v")[0])
    sc = pydicom.dcmread(write_sc(sources[2], np.zeros((16, 16, 3), np.uint8),
                                  tmp_path / "sc.dcm", "a")[0])
    assert (seg.SeriesNumber, sc.SeriesNumber, sr.SeriesNumber) == (9007, 9107, 9207)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sources[2].SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == sources[2].SOPClassUID
    series = sc.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == sources[2].SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == sources[2].SOPInstanceUID


def test_series_number_is_clipped_to_the_is_range(tmp_path: Path) -> None:
    source = mr_series(1, 16)[0]
    source.SeriesNumber = 2**31 - 5
    sc = pydicom.dcmread(write_sc(source, np.zeros((16, 16, 3), np.uint8), tmp_path / "sc.dcm",
                                  "a")[0])
    assert sc.SeriesNumber == 2**31 - 1
