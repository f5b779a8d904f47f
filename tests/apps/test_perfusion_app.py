"""`medinfer perfusion` and `medinfer evaluate` on a CT perfusion artifact, in-process.

One small digital phantom (96 x 96 x 4, 30 frames) is built and written once per module;
every command runs on it (or on a copy with time points removed), and the results are
checked against the phantom's truth and against each other.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.perfusion.phantom import Phantom, PhantomConfig, make_phantom, write_phantom

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "ct-perfusion"
# 64 x 64 is too small: its sub-pixel arteries lose the AIF to the sagittal sinus.
SMALL = PhantomConfig(size=96, slices=4, frames=30)
MAPS = ("cbf", "cbv", "mtt", "tmax", "ttp")
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
CONTRACT = {"core_ml", "penumbra_ml", "mismatch_ml", "mismatch_ratio", "defuse3_eligible", "aif", "method"}

runner = CliRunner()


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(SMALL)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("perfusion")


@pytest.fixture(scope="module")
def cases(phantom: Phantom, root: Path) -> Path:
    """An evaluation folder holding one case: ``case0/series/`` and ``case0/truth.npz``."""
    write_phantom(phantom, root / "cases" / "case0")
    return root / "cases"


@pytest.fixture(scope="module")
def series(cases: Path) -> Path:
    return cases / "case0" / "series"


def _run(args: list[str]) -> Any:
    return runner.invoke(app, ["perfusion", *[str(a) for a in args]])


def _flat(output: str) -> str:
    """The output with the console's line wrapping undone (paths may be folded)."""
    return output.replace("\n", "")


@pytest.fixture(scope="module")
def dicom_run(series: Path, root: Path) -> tuple[Any, Path, dict[str, Any]]:
    """The default analysis (torch backend) of the DICOM series: (result, out dir, JSON)."""
    out, json_path = root / "out_dicom", root / "dicom.json"
    res = _run([series, "--out", out, "--json", json_path])
    assert res.exit_code == 0, res.output
    return res, out, json.loads(json_path.read_text())


def _times(series: Path) -> dict[str, list[Path]]:
    """The series' files grouped by AcquisitionTime (DICOM TM text, sortable)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(series.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        groups.setdefault(str(ds.AcquisitionTime), []).append(path)
    return dict(sorted(groups.items()))


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in files:
        shutil.copy(path, folder / path.name)
    return folder


# -- DICOM input: the contract, files and values ------------------------------------------


def test_dicom_run_writes_every_result_and_the_contract_json(dicom_run) -> None:
    res, out, payload = dicom_run
    expected = ({f"{m}.nii.gz" for m in (*MAPS, "core", "penumbra")}
                | {"summary.png", "maps.png", "curves.png", "report.html", "result.json"}
                | {f"pm_{m}.dcm" for m in MAPS} | {"seg.dcm", "sr.dcm", "sc.dcm"})
    assert expected <= {p.name for p in out.iterdir()}
    assert set(payload["files"]) >= expected
    assert json.loads(res.stdout) == payload  # printed and written alike
    assert CONTRACT <= set(payload)
    written = json.loads((out / "result.json").read_text())
    assert CONTRACT <= set(written) and written["core_ml"] == payload["core_ml"]
    aif = payload["aif"]
    assert aif["source"] == "auto" and len(aif["voxels"]) > 0
    assert all(len(v) == 3 and all(isinstance(i, int) for i in v) for v in aif["voxels"])
    # the phantom's arteries are in the front rows (v = -0.74), its sinus at the back
    assert all(v[0] < SMALL.size // 4 for v in aif["voxels"])
    assert 5.0 < aif["peak_time_s"] < 15.0  # the phantom's bolus peaks at 9.5 s
    method = payload["method"]
    assert method["svd_threshold"]["tried"] and method["backend"] == "torch"
    tried, used = method["svd_threshold"]["tried"], method["svd_threshold_used"]
    assert used["min"] <= used["median"] <= used["max"]
    # oSVD picks per voxel among the tried thresholds (recorded at float32 precision)
    assert any(used["min"] == pytest.approx(t, rel=1e-6) for t in tried)
    assert any(used["max"] == pytest.approx(t, rel=1e-6) for t in tried)


def test_dicom_run_volumes_match_the_truth(dicom_run, phantom: Phantom) -> None:
    _, _, payload = dicom_run
    truth = phantom.truth.lesions
    assert payload["core_ml"] == pytest.approx(truth.core_ml, rel=0.2)
    assert payload["penumbra_ml"] == pytest.approx(truth.penumbra_ml, rel=0.2)
    assert payload["mismatch_ml"] == pytest.approx(payload["penumbra_ml"] - payload["core_ml"], abs=0.011)
    assert payload["mismatch_ratio"] == pytest.approx(payload["penumbra_ml"] / payload["core_ml"], rel=0.01)
    assert payload["defuse3_eligible"] is truth.defuse3_eligible is True


def _frame_slices(ds: Any, spacing_z: float) -> list[int]:
    """The input slice index of each frame of a multi-frame result (by its z position)."""
    return [int(round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) / spacing_z))
            for f in ds.PerFrameFunctionalGroupsSequence]


def test_parametric_map_references_the_series_and_holds_the_map(dicom_run, series: Path) -> None:
    _, out, _ = dicom_run
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    pm = pydicom.dcmread(out / "pm_cbf.dcm")
    assert pm.SOPClassUID == PARAMETRIC_MAP
    assert pm.StudyInstanceUID == source.StudyInstanceUID
    assert "FloatPixelData" in pm or "DoubleFloatPixelData" in pm
    frames = pm.pixel_array
    assert frames.dtype.kind == "f" and frames.shape == (SMALL.slices, SMALL.size, SMALL.size)
    cbf = np.asarray(nib.load(out / "cbf.nii.gz").dataobj)  # (rows, cols, slices)
    slices = _frame_slices(pm, SMALL.slice_mm)
    assert sorted(slices) == list(range(SMALL.slices))
    for frame, k in zip(frames, slices):
        np.testing.assert_allclose(frame, cbf[:, :, k], rtol=1e-5, atol=1e-4)
    assert cbf.max() > 0


def test_seg_sr_and_secondary_capture(dicom_run, series: Path) -> None:
    _, out, payload = dicom_run
    study = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).StudyInstanceUID
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.SOPClassUID == SEG_STORAGE and seg.StudyInstanceUID == study
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert len(labels) == 2 and "core" in labels[0] and "outside the core" in labels[1]
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.StudyInstanceUID == study
    volumes = {name: value for name, value, unit in _numbers(sr.ContentSequence) if unit == "ml"}
    assert volumes["ischemic core"] == pytest.approx(payload["core_ml"], abs=0.006)
    assert any(name.startswith("hypoperfusion") and v == pytest.approx(payload["penumbra_ml"], abs=0.006)
               for name, v in volumes.items())
    sc = pydicom.dcmread(out / "sc.dcm")
    assert sc.StudyInstanceUID == study
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[-1] == 3


def _numbers(items: Any, group: str = "") -> list[tuple[str, float, str]]:
    """(measurement group's tracking identifier, value, unit code) of every NUM item."""
    out = []
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "TEXT" and name == "Tracking Identifier":
            group = str(item.TextValue)
        if item.ValueType == "NUM":
            value = item.MeasuredValueSequence[0]
            out.append((group, float(value.NumericValue),
                        str(value.MeasurementUnitsCodeSequence[0].CodeValue)))
        if "ContentSequence" in item:
            out += _numbers(item.ContentSequence, group)
    return out


def test_nifti_masks_add_up_to_the_reported_volumes(dicom_run) -> None:
    _, out, payload = dicom_run
    for name in ("core", "penumbra"):
        img = nib.load(out / f"{name}.nii.gz")
        mask = np.asarray(img.dataobj)
        assert mask.shape == (SMALL.size, SMALL.size, SMALL.slices)
        assert set(np.unique(mask)) <= {0, 1}
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        assert mask.sum() * voxel_ml == pytest.approx(payload[f"{name}_ml"], abs=0.006)


# -- NIfTI input --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nifti(phantom: Phantom, dicom_run, root: Path) -> Path:
    """The phantom as one 4D NIfTI ``(rows, cols, slices, T)`` in the series' geometry."""
    affine = nib.load(dicom_run[1] / "cbf.nii.gz").affine
    path = root / "nifti" / "series.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.moveaxis(phantom.image.array, 0, -1), affine), path)
    return path


def test_nifti_input_with_a_frame_interval(nifti: Path, dicom_run, phantom: Phantom, root: Path) -> None:
    out = root / "out_nifti"
    res = _run([nifti, "--out", out, "--frame-interval", "1.5"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    names = {p.name for p in out.iterdir()}
    assert {f"{m}.nii.gz" for m in (*MAPS, "core", "penumbra")} <= names
    assert not [n for n in names if n.endswith(".dcm")]
    assert payload["frames"] == SMALL.frames and payload["frame_interval_s"] == pytest.approx(1.5)
    assert payload["core_ml"] == pytest.approx(phantom.truth.lesions.core_ml, rel=0.2)
    assert payload["penumbra_ml"] == pytest.approx(phantom.truth.lesions.penumbra_ml, rel=0.2)
    # the same voxels in the same array order: the same arteries
    assert sorted(payload["aif"]["voxels"]) == sorted(dicom_run[2]["aif"]["voxels"])
    np.testing.assert_allclose(nib.load(out / "cbf.nii.gz").affine, nib.load(nifti).affine, atol=1e-4)


def test_nifti_input_without_times_is_refused(nifti: Path, root: Path) -> None:
    res = _run([nifti, "--out", root / "out_nifti_no_times"])
    assert res.exit_code == 2
    assert "error:" in res.output and str(nifti) in _flat(res.output)
    assert "without times" in _flat(res.output)


# -- a given AIF --------------------------------------------------------------------------


def test_aif_mask_replaces_the_automatic_choice(series: Path, dicom_run, root: Path) -> None:
    voxels = dicom_run[2]["aif"]["voxels"]
    mask = np.zeros((SMALL.size, SMALL.size, SMALL.slices), bool)
    mask[tuple(np.array(voxels).T)] = True
    path = root / "aif.npy"
    np.save(path, mask)
    res = _run([series, "--out", root / "out_mask",
                "--aif-mask", path, "--no-report"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["aif"]["source"] == "mask"
    assert sorted(payload["aif"]["voxels"]) == sorted(voxels)
    assert payload["core_ml"] == pytest.approx(dicom_run[2]["core_ml"], rel=0.05)
    assert not (root / "out_mask" / "report.html").exists()


def test_aif_mask_of_another_shape_names_the_mask(series: Path, root: Path) -> None:
    path = root / "wrong_aif.npy"
    np.save(path, np.ones((5, 5, 5), bool))
    res = _run([series, "--out", root / "out_bad_mask", "--aif-mask", path])
    assert res.exit_code == 2
    assert str(path) in _flat(res.output) and "shape" in res.output


# -- bad series ---------------------------------------------------------------------------


def test_one_time_point_is_too_few_frames(series: Path, root: Path) -> None:
    first = next(iter(_times(series).values()))
    assert len(first) == SMALL.slices
    folder = _copy(first, root / "one_time_point")
    res = _run([folder, "--out", root / "out_one"])
    assert res.exit_code == 2
    assert "too few frames" in res.output and str(folder) in _flat(res.output)


@pytest.fixture(scope="module")
def uneven(series: Path, root: Path) -> Path:
    """The series without its middle time point (a 3 s gap among 1.5 s intervals)."""
    groups = list(_times(series).values())
    assert len(groups) == SMALL.frames
    del groups[SMALL.frames // 2]
    return _copy([p for g in groups for p in g], root / "uneven")


def test_uneven_sampling_is_refused(uneven: Path, root: Path) -> None:
    res = _run([uneven, "--out", root / "out_uneven"])
    assert res.exit_code == 2
    assert "uneven sampling" in res.output and str(uneven) in _flat(res.output)


def test_uneven_sampling_is_resampled_on_request(uneven: Path, root: Path, phantom: Phantom) -> None:
    res = _run([uneven, "--out", root / "out_resampled", "--resample", "--no-report"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["frames"] == SMALL.frames  # back on the 1.5 s grid, 0 .. 43.5 s
    assert payload["frame_interval_s"] == pytest.approx(SMALL.dt)
    assert payload["core_ml"] == pytest.approx(phantom.truth.lesions.core_ml, rel=0.2)


# -- backends -----------------------------------------------------------------------------


def test_numpy_and_torch_backends_find_the_same_lesions(series: Path, dicom_run, root: Path) -> None:
    out = root / "out_numpy"
    res = _run([series, "--out", out, "--backend", "numpy", "--no-report"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["method"]["backend"] == "numpy" and dicom_run[2]["method"]["backend"] == "torch"
    for name in ("core", "penumbra"):
        a = np.asarray(nib.load(out / f"{name}.nii.gz").dataobj)
        b = np.asarray(nib.load(dicom_run[1] / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
    assert payload["core_ml"] == dicom_run[2]["core_ml"]


def test_unknown_backend_is_refused(series: Path, root: Path) -> None:
    res = _run([series, "--out", root / "out_tf", "--backend", "tensorflow"])
    assert res.exit_code == 2 and "torch or numpy" in _flat(res.output)


# -- evaluate -----------------------------------------------------------------------------


def test_evaluate_scores_the_phantom_case(cases: Path, root: Path) -> None:
    json_path = root / "eval.json"
    res = runner.invoke(app, ["evaluate", "--model", str(MODEL), "--data", str(cases),
                              "--json", str(json_path)])
    assert res.exit_code == 0, res.output
    payload = json.loads(json_path.read_text())
    assert {"core_dice", "penumbra_dice", "core_volume_error", "cbf_error", "tmax_error"} <= set(payload)
    assert payload["n"] == 1 and payload["task"] == "perfusion" and payload["variant"] == "torch-fp64"
    assert payload["core_dice"] > 0.8 and payload["penumbra_dice"] > 0.8
    assert abs(payload["core_volume_error"]) < 0.2
    assert abs(payload["cbf_error"]) < 0.2 and abs(payload["tmax_error"]) < 1.0
