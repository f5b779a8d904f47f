"""4D CT perfusion: classic and enhanced multi-frame DICOM and 4D NIfTI, sorted by time,
with every refusal naming the offending file; plus the real UniToBrain slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA, require

from medinfer.errors import InputError
from medinfer.io.perfusion import (
    frame_time,
    read_perfusion,
    write_perfusion_multiframe,
    write_perfusion_series,
)
from medinfer.io.series import read_dicom_file

T, ROWS, COLS, SLICES = 8, 16, 16, 3
TIMES = [0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 10.5]
SAMPLES = SHARED_DATA / "perfusion-reference" / "unitobrain-samples"


def _phantom(frames: int = T, seed: int = 0) -> np.ndarray:
    """(T, rows, cols, slices) HU with fractions, a contrast bolus rising over time."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-100.0, 100.0, (1, ROWS, COLS, SLICES))
    return base + 40.0 * np.arange(frames)[:, None, None, None] + rng.uniform(-0.4, 0.4, base.shape)


def _series(folder: Path, times=TIMES, **kwargs) -> tuple[np.ndarray, list[Path]]:
    hu = _phantom(len(times))
    return hu, write_perfusion_series(hu, times, folder, spacing=(0.5, 0.7, 5.0), **kwargs)


def _dataset(path: Path):
    import pydicom

    return pydicom.dcmread(path)


def _edit(path: Path, **attributes) -> None:
    ds = _dataset(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def _at(paths: list[Path], t: int, k: int) -> Path:
    """The file of time point ``t``, slice ``k`` (the writer's order is time-major)."""
    return paths[t * SLICES + k]


def _assert_round_trip(image, hu: np.ndarray, times) -> None:
    assert image.array.shape == hu.shape and image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, np.rint(hu), atol=0.5)
    np.testing.assert_allclose(image.meta["frame_times"], np.asarray(times) - times[0], atol=1e-3)
    assert image.meta["num_frames"] == len(times) and image.meta["resampled"] is False


@pytest.mark.parametrize("attribute", ["AcquisitionTime", "ContentTime", "TriggerTime",
                                       "TemporalPositionIdentifier"])
def test_series_round_trip_for_each_time_attribute(tmp_path: Path, attribute: str) -> None:
    hu, paths = _series(tmp_path, time_attribute=attribute)
    image = read_perfusion(tmp_path)
    _assert_round_trip(image, hu, TIMES)
    assert image.meta["time_source"] == attribute
    assert image.spacing == (0.5, 0.7, 5.0) and image.meta["num_files"] == T * SLICES
    assert [float(ds.ImagePositionPatient[2]) for ds in image.instances] == [0.0, 5.0, 10.0]
    assert [ds.SOPInstanceUID for ds in image.instances] == \
        [_dataset(_at(paths, 0, k)).SOPInstanceUID for k in range(SLICES)]
    assert all("PixelData" not in ds for ds in image.instances)


def test_written_files_are_valid_ct_of_one_series(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    datasets = [_dataset(p) for p in paths]
    assert sorted(p.name for p in paths) != [p.name for p in paths]  # names not in time order
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(paths)
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID)
                for ds in datasets}) == 1
    ds = datasets[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"] and ds.BodyPartExamined == "HEAD"
    assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)


def test_sorted_by_time_not_by_name_or_instance_number(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path / "src")
    folder = tmp_path / "shuffled"
    folder.mkdir()
    for i, path in enumerate(paths):  # names and InstanceNumbers run against time
        ds = _dataset(path)
        ds.InstanceNumber = len(paths) - i
        ds.save_as(folder / f"IM{len(paths) - i:04d}.dcm")
    _assert_round_trip(read_perfusion(folder), hu, TIMES)
    _assert_round_trip(read_perfusion(sorted(folder.iterdir())), hu, TIMES)  # a list of files


def test_clock_passing_midnight(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path, start_time="235955.000000")
    _assert_round_trip(read_perfusion(tmp_path), hu, TIMES)
    for path in paths:  # without AcquisitionDate the wrap is inferred
        ds = _dataset(path)
        del ds.AcquisitionDate
        ds.save_as(path)
    _assert_round_trip(read_perfusion(tmp_path), hu, TIMES)


def test_frame_times_override_and_temporal_index(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path, time_attribute="TemporalPositionIdentifier")
    given = [10.0 + 2.0 * i for i in range(T)]
    image = read_perfusion(tmp_path, frame_times=given)
    assert image.meta["time_source"] == "given"
    np.testing.assert_allclose(image.meta["frame_times"], 2.0 * np.arange(T))
    for path in paths:
        ds = _dataset(path)
        del ds.TemporalResolution
        ds.save_as(path)
    with pytest.raises(InputError, match="TemporalResolution"):
        read_perfusion(tmp_path)
    _assert_round_trip(read_perfusion(tmp_path, frame_times=TIMES), hu, TIMES)
    with pytest.raises(InputError, match="frame_times has 3 values"):
        read_perfusion(tmp_path, frame_times=[0.0, 1.0, 2.0])


def test_axial_shuttle_offsets_average_per_frame(tmp_path: Path) -> None:
    hu, paths = _series(tmp_path, time_attribute="TriggerTime")
    for t, seconds in enumerate(TIMES):  # slice k acquired 0.2 k s later
        for k in range(SLICES):
            _edit(_at(paths, t, k), TriggerTime=f"{(seconds + 0.2 * k) * 1000:.3f}")
    _assert_round_trip(read_perfusion(tmp_path), hu, TIMES)
    _edit(_at(paths, 4, 2), TriggerTime=f"{(TIMES[4] + 1.0) * 1000:.3f}")  # > half of 1.5 s
    with pytest.raises(InputError, match="spread") as err:
        read_perfusion(tmp_path)
    assert err.value.path == _at(paths, 4, 2)


def test_multiframe_round_trip(tmp_path: Path) -> None:
    hu = _phantom()
    path = write_perfusion_multiframe(hu, TIMES, tmp_path / "ctp.dcm", spacing=(0.5, 0.7, 5.0))
    ds = _dataset(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and ds.NumberOfFrames == T * SLICES
    assert ds.pixel_array.shape == (T * SLICES, ROWS, COLS)
    item = ds.PerFrameFunctionalGroupsSequence[SLICES + 1].FrameContentSequence[0]
    assert (item.TemporalPositionIndex, list(item.DimensionIndexValues)) == (2, [2, 1, 2])
    image = read_perfusion(path)
    _assert_round_trip(image, hu, TIMES)
    assert image.meta["time_source"] == "FrameAcquisitionDateTime" and len(image.instances) == 1
    assert image.spacing == (0.5, 0.7, 5.0)
    folder_image = read_perfusion(tmp_path)
    np.testing.assert_array_equal(folder_image.array, image.array)


def _nifti(path: Path, frames: int = T) -> np.ndarray:
    import nibabel as nib

    data = _phantom(frames).astype(np.float32)  # (T, X, Y, Z) -> stored (X, Y, Z, T)
    nib.Nifti1Image(np.moveaxis(data, 0, -1), np.diag([0.5, 0.7, 5.0, 1.0])).to_filename(path)
    return data


def test_nifti_4d_with_frame_times_or_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "ctp.nii.gz"
    data = _nifti(path)
    with pytest.raises(InputError, match="frame_times") as err:
        read_perfusion(path)
    assert err.value.path == path
    image = read_perfusion(path, frame_times=TIMES)
    np.testing.assert_allclose(image.array, data)
    assert image.meta["frame"] == "RAS" and image.meta["time_source"] == "given"
    np.testing.assert_allclose(image.meta["frame_times"], TIMES)
    (tmp_path / "ctp.json").write_text(json.dumps({"FrameTimes": TIMES}))
    assert read_perfusion(path).meta["time_source"] == "FrameTimes"
    (tmp_path / "ctp.json").write_text(json.dumps({"RepetitionTime": 1.5}))
    image = read_perfusion(path)
    assert image.meta["time_source"] == "RepetitionTime"
    np.testing.assert_allclose(image.meta["frame_times"], TIMES)
    (tmp_path / "ctp.json").write_text(json.dumps({"EchoTime": 0.03}))
    with pytest.raises(InputError) as err:
        read_perfusion(path)
    assert err.value.path == tmp_path / "ctp.json"


def test_nifti_uneven_and_too_few(tmp_path: Path) -> None:
    _nifti(tmp_path / "a.nii", frames=4)
    with pytest.raises(InputError, match="too few frames"):
        read_perfusion(tmp_path / "a.nii", frame_times=[0, 1, 2, 3])
    _nifti(tmp_path / "b.nii")
    uneven = [0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 9.0, 10.0]
    with pytest.raises(InputError, match="uneven sampling"):
        read_perfusion(tmp_path / "b.nii", frame_times=uneven)
    assert read_perfusion(tmp_path / "b.nii", frame_times=uneven, resample=True).num_channels == 11


def test_missing_time_point_names_a_file_at_that_position(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    _at(paths, 3, 1).unlink()
    with pytest.raises(InputError, match="missing time points") as err:
        read_perfusion(tmp_path)
    assert "(0, 0, 5) mm has 7 time point(s), the other positions 8" in str(err.value)
    assert float(_dataset(err.value.path).ImagePositionPatient[2]) == 5.0


def test_extra_time_point_at_one_position(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    ds = _dataset(_at(paths, 2, 1))
    ds.SOPInstanceUID, ds.AcquisitionTime = "1.2.3.4", "120003.700000"
    ds.save_as(tmp_path / "extra.dcm")
    with pytest.raises(InputError, match="has 9 time point") as err:
        read_perfusion(tmp_path)
    assert float(_dataset(err.value.path).ImagePositionPatient[2]) == 5.0


def test_duplicate_time_at_one_position(tmp_path: Path) -> None:
    _, paths = _series(tmp_path)
    _edit(_at(paths, 5, 2), AcquisitionTime=_dataset(_at(paths, 4, 2)).AcquisitionTime)
    with pytest.raises(InputError, match="duplicate time") as err:
        read_perfusion(tmp_path)
    assert err.value.path in (_at(paths, 4, 2), _at(paths, 5, 2))


@pytest.mark.parametrize(("attribute", "value", "match"), [
    ("PixelSpacing", [0.9, 0.9], "mixed geometry"),
    ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 0.0, -1.0], "mixed geometry"),
    ("Columns", COLS + 2, "mixed geometry"),
    ("ImagePositionPatient", None, "missing time points"),  # one time point moved 2 mm
])
def test_mixed_geometry_names_a_file_of_the_odd_time_point(tmp_path: Path, attribute: str,
                                                           value, match: str) -> None:
    _, paths = _series(tmp_path)
    odd = [_at(paths, 5, k) for k in range(SLICES)]
    for k, path in enumerate(odd):
        _edit(path, **{attribute: value if value is not None else [0.0, 0.0, 5.0 * k + 2.0]})
    with pytest.raises(InputError, match=match) as err:
        read_perfusion(tmp_path)
    assert err.value.path in odd


def test_too_few_frames(tmp_path: Path) -> None:
    _series(tmp_path, times=TIMES[:4])
    with pytest.raises(InputError, match="too few frames: 4"):
        read_perfusion(tmp_path)
    assert read_perfusion(tmp_path, min_frames=4).array.shape == (4, ROWS, COLS, SLICES)


def test_uneven_sampling_refused_or_resampled(tmp_path: Path) -> None:
    times = [0.0, 2.0, 4.0, 6.0, 8.0, 14.0, 16.0, 18.0]
    hu, paths = _series(tmp_path, times=times)
    with pytest.raises(InputError, match="uneven sampling") as err:
        read_perfusion(tmp_path)
    assert err.value.path in [_at(paths, 5, k) for k in range(SLICES)]
    image = read_perfusion(tmp_path, resample=True)
    assert image.meta["resampled"] is True and image.meta["source_frame_times"] == times
    np.testing.assert_allclose(image.meta["frame_times"], 2.0 * np.arange(10))
    stored = np.rint(hu)
    np.testing.assert_allclose(image.array[5], stored[4] + (stored[5] - stored[4]) / 3, atol=1e-3)
    np.testing.assert_allclose(image.array[[0, 7, 9]], stored[[0, 5, 7]], atol=1e-3)


def test_several_series_names_the_odd_file(tmp_path: Path) -> None:
    _series(tmp_path)
    other = write_perfusion_series(_phantom(1), [0.0], tmp_path / "other")[0]
    moved = other.rename(tmp_path / other.name)
    with pytest.raises(InputError, match="series") as err:
        read_perfusion(tmp_path)
    assert err.value.path == moved


def test_single_slice_file_is_too_few_frames(tmp_path: Path) -> None:
    path = write_perfusion_series(_phantom(1), [0.0], tmp_path)[0]
    with pytest.raises(InputError, match="too few frames: 1") as err:
        read_perfusion(path)
    assert err.value.path == path


def test_frame_time_of_each_attribute(tmp_path: Path) -> None:
    for attribute, expected in [("AcquisitionTime", 43201.5), ("ContentTime", 43201.5),
                                ("TriggerTime", 1.5), ("TemporalPositionIdentifier", 1.5)]:
        paths = write_perfusion_series(_phantom(2), [0.0, 1.5], tmp_path / attribute,
                                       time_attribute=attribute)
        ds = _dataset(_at(paths, 1, 0))
        for other in ("AcquisitionTime", "ContentTime"):
            if other != attribute and other in ds:
                delattr(ds, other)
        assert frame_time(ds) == (pytest.approx(expected), attribute)


@pytest.mark.parametrize(("name", "low", "high", "z"), [
    ("IM-0001-0001-0001.dcm", -3024.0, 2528.0, 155.75),  # JPEG Lossless, Process 14 SV1
    ("Registered00001.dcm", -1000.0, 2528.0, 155.75),
    ("NLR_CBV00003.dcm", 0.0, 62.84, 38.5),
])
def test_real_unitobrain_slices_read(name: str, low: float, high: float, z: float) -> None:
    path = require(SAMPLES / name, "UniToBrain samples")
    image = read_dicom_file(path)
    assert image.array.shape == (1, 512, 512)
    assert float(image.array.min()) == pytest.approx(low)
    assert float(image.array.max()) == pytest.approx(high, abs=1e-3)
    assert image.spacing == pytest.approx((0.488, 0.488), abs=5e-4)
    assert image.meta["image_position"][2] == pytest.approx(z)


def test_real_unitobrain_frame_time_and_single_file() -> None:
    path = require(SAMPLES / "IM-0001-0001-0001.dcm", "UniToBrain samples")
    seconds, source = frame_time(_dataset(path))
    assert source == "AcquisitionTime" and seconds == pytest.approx(28234.818, abs=1e-3)
    with pytest.raises(InputError, match="too few frames") as err:
        read_perfusion(path)
    assert err.value.path == path
