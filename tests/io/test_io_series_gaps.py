"""Slice gaps: a series with missing slices (a gap much wider than its spacing) is
refused, naming the file after the gap; small non-uniformity only warns."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medinfer.data.synthetic import dicom_slice, write_dicom
from medinfer.errors import InputError
from medinfer.io import read_dicom_series


def _write(folder: Path, positions: list[float]) -> list[Path]:
    from pydicom.uid import generate_uid

    series, study = generate_uid(), generate_uid()
    paths = []
    for i, z in enumerate(positions):
        px = np.full((8, 8), 10 + i, np.uint16)
        ds = dicom_slice(px, position=(0.0, 0.0, z), instance=i + 1, series_uid=series,
                         study_uid=study, thickness=2.5)
        paths.append(write_dicom(ds, folder / f"IM{i + 1:04d}.dcm"))
    return paths


@pytest.mark.parametrize(("positions", "after", "gap"), [
    ([0.0, 2.5, 5.0, 7.5, 47.5, 50.0, 52.5], 4, "40.000"),  # a 40 mm gap, median 2.5 mm
    ([0.0, 2.5, 5.0, 10.0, 12.5, 15.0], 3, "5.000"),        # one missing slice
    ([0.0, 2.5, 42.5], 2, "40.000"),                         # three slices
])
def test_gap_wider_than_the_spacing_is_refused(tmp_path: Path, positions: list[float],
                                               after: int, gap: str) -> None:
    paths = _write(tmp_path, positions)
    with pytest.raises(InputError, match="slice gap") as err:
        read_dicom_series(tmp_path)
    assert paths[after].name in str(err.value) and gap in str(err.value)


def test_small_non_uniformity_only_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path, [0.0, 2.5, 5.0, 7.6, 10.0, 12.5])
    with caplog.at_level(logging.WARNING, logger="medinfer.io"):
        img = read_dicom_series(tmp_path)
    assert img.spatial_shape[-1] == 6 and img.spacing[-1] == pytest.approx(2.5)
    assert "non-uniform slice spacing" in caplog.text
