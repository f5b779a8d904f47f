"""The detection task (S6) through every command, in-process: predict on a CT series folder,
evaluate, optimize (both stages' variants, gated on the detection metric), bench (incl.
``--end-to-end``), report, and a corrupt slice refused with one clear error.

One tiny two-stage detector is trained on synthetic CT per module (P1 trains, P2 picks the
epoch, P3 is held out) and one copy of it is optimized.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from detection_helpers import synthetic_data, train_tiny_detector
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.data.detection import ANNOTATIONS
from medinfer.variants import REFERENCE, get_kind, kinds

runner = CliRunner()

STAGE2_FILES = ("model.onnx", "model_int8_qdq.onnx", "model_int8_dynamic.onnx", "model.xml",
                "model_int8.xml")
"""Every post-training variant file the optimizer builds, for stage 2 as for stage 1."""
METRICS = ("ap@0.1", "sensitivity@1fp", "sensitivity@2fp", "sensitivity@4fp")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artifact folder, synthetic detection root), trained once for the module."""
    root = tmp_path_factory.mktemp("detection")
    data = synthetic_data(root / "data")
    art = train_tiny_detector(data, root / "model", epochs=2, stage2_epochs=1)
    return art.root, data


@pytest.fixture(scope="module")
def series(detector: tuple[Path, Path]) -> Path:
    """P3's one CT series folder (8 slices; held out of training)."""
    [folder] = [p for p in (detector[1] / "P3").iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def optimized(detector: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the detector after `medinfer optimize` (calibrated on P1, gated on P3)."""
    art, data = detector
    copy = shutil.copytree(art, tmp_path_factory.mktemp("optimized") / "model")
    _ok(["optimize", "--model", str(copy), "--calib", str(data / "P1"), "--val", str(data / "P3"),
         "--max-drop", "0.01"])
    return copy


@pytest.fixture(scope="module")
def bench_json(optimized: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`medinfer bench` of the OpenVINO INT8 variant (its own process), fewest runs."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    _ok(["bench", "--model", str(optimized), "--variants", "openvino-int8",
         "--runs-batch", "1", "--runs-single", "2", "--requests", "2", "--json", str(out)])
    return out


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def _evaluate(model: Path, data: Path, out: Path, *flags: str) -> dict:
    _ok(["evaluate", "--model", str(model), "--data", str(data), "--json", str(out), *flags])
    return json.loads(out.read_text())


def _uid_by_array_slice(series: Path) -> list[str]:
    """SOPInstanceUIDs of the series' files ordered along the slice normal (+z for these
    axial slices), found from the headers alone: slice ``k`` of a prediction is the k-th.
    (The file names run the other way: instance numbers descend with z.)"""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.glob("*.dcm")]
    assert all(list(map(float, h.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0] for h in headers)
    headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    return [str(h.SOPInstanceUID) for h in headers]


@pytest.fixture(scope="module")
def predicted(detector: tuple[Path, Path], series: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of `medinfer predict --model M <P3 series folder> --out D --dicom`."""
    out = tmp_path_factory.mktemp("predict")
    _ok(["predict", str(series), "--model", str(detector[0]), "--out", str(out), "--dicom"])
    return out


def test_predict_on_a_series_folder_writes_overlay_and_json(predicted: Path, series: Path) -> None:
    out = predicted
    [summary] = out.glob("*.json")
    [overlay] = out.glob("*_overlay.png")
    assert overlay.stat().st_size > 0 and overlay.stem == f"{summary.stem}_overlay"
    payload = json.loads(summary.read_text())
    assert payload["task"] == "detection" and payload["input"] == str(series)
    found = payload["detections"]
    assert payload["n_detections"] == len(found)
    uids = _uid_by_array_slice(series)
    for d in found:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert 0.0 <= d["score"] <= 1.0 and 0.0 <= d["stage1"] <= 1.0
        assert d["sop_instance_uid"] == uids[d["slice"]]  # the instance the box lies on
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)


def test_predict_on_a_series_folder_writes_sr_and_sc(predicted: Path, series: Path) -> None:
    [summary] = predicted.glob("*.json")
    assert summary.stem == "_".join(series.name.split())  # the folder's whole name, dots kept
    sr = pydicom.dcmread(predicted / f"{summary.stem}_sr.dcm")
    sc = pydicom.dcmread(predicted / f"{summary.stem}_sc.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"


def test_evaluate_reports_froc_and_ap_over_the_annotated_slices(detector, tmp_path) -> None:
    art, data = detector
    payload = _evaluate(art, data / "P3", tmp_path / "e.json")
    assert payload["task"] == "detection" and payload["variant"] == REFERENCE
    assert payload["n"] == len(list((data / ANNOTATIONS / "P3").glob("*.xml"))) == 6
    for key in METRICS:
        assert 0.0 <= payload[key] <= 1.0, key
    assert payload["sensitivity@1fp"] <= payload["sensitivity@2fp"] <= payload["sensitivity@4fp"]


@pytest.mark.slow  # exports and quantizes both networks
def test_optimize_gates_every_variant_and_builds_both_stages(optimized: Path) -> None:
    spec = json.loads((optimized / "artifact.json").read_text())
    records = {v["name"]: v for v in spec["variants"]}
    assert set(records) == {k.name for k in kinds(optimized=True) if not k.needs_tuning_data}
    for name, rec in records.items():
        assert set(METRICS) <= set(rec["metrics"]), name
        assert isinstance(rec["passed"], bool), name
        assert (rec["reason"] == "") == rec["passed"], (name, rec["reason"])
        assert rec["latency_ms"] > 0
        if rec["path"]:
            assert (optimized / rec["path"]).is_file(), rec["path"]
    assert records[REFERENCE]["passed"]
    assert spec["chosen"] in {n for n, r in records.items() if r["passed"]}
    assert spec["training"]["optimize"]["primary"] == "ap@0.1"
    assert spec["training"]["optimize"]["n_val"] == 6  # P3's annotated slices
    stage2 = optimized / spec["detection"]["stage2"]
    assert stage2.name == "stage2"
    for name in STAGE2_FILES:
        assert (stage2 / "variants" / name).is_file(), name


@pytest.mark.slow
def test_openvino_fp32_evaluates_as_pytorch(optimized: Path, detector, tmp_path) -> None:
    _, data = detector
    flags = ("--bootstrap", "0")
    torch_fp32 = _evaluate(optimized, data / "P3", tmp_path / "t.json", "--backend", "torch",
                           "--precision", "fp32", *flags)
    ov_fp32 = _evaluate(optimized, data / "P3", tmp_path / "o.json", "--backend", "openvino",
                        "--precision", "fp32", *flags)
    assert ov_fp32["variant"] == "openvino-fp32" and torch_fp32["variant"] == REFERENCE
    assert ov_fp32["ap@0.1"] == pytest.approx(torch_fp32["ap@0.1"], abs=1e-6)
    spec = json.loads((optimized / "artifact.json").read_text())
    recorded = {v["name"]: v["metrics"] for v in spec["variants"]}
    assert recorded["openvino-fp32"]["ap@0.1"] == pytest.approx(ov_fp32["ap@0.1"], abs=1e-6)


@pytest.mark.slow
def test_bench_measures_the_variants(bench_json: Path, optimized: Path) -> None:
    bench = json.loads(bench_json.read_text())
    rows = {r["name"]: r for r in bench["variants"]}
    assert list(rows) == ["openvino-int8"]
    assert all(r["batch_ms_median"] > 0 and r["peak_rss_mb"] > 0 for r in rows.values())
    assert [c[0] for c in bench["metric_columns"]][0] == "ap@0.1"
    assert rows["openvino-int8"]["size_mb"] > 0 and rows["openvino-int8"]["passed"] is not None
    assert (optimized / get_kind("openvino-int8").path).is_file()


def test_bench_end_to_end_times_a_series(detector, series, tmp_path) -> None:
    art, _ = detector
    out = tmp_path / "e2e.json"
    _ok(["bench", "--model", str(art), "--end-to-end", str(series), "--variants", REFERENCE,
         "--json", str(out)])
    [row] = json.loads(out.read_text())["variants"]
    assert row["variant"] == REFERENCE and row["n"] == 1
    stages = ("read", "preprocess", "infer", "postprocess", "write")
    assert all(row["median_ms"][s] > 0 for s in stages)


@pytest.mark.slow
def test_report_shows_the_detection_metric(optimized: Path, bench_json: Path, detector,
                                           tmp_path) -> None:
    _, data = detector
    html = tmp_path / "r.html"
    _ok(["report", "--model", str(optimized), "--bench", str(bench_json), "--val", str(data / "P3"),
         "--out", str(html), "--overlays", "2"])
    text = html.read_text()
    assert "AP@0.1" in text and "openvino-int8" in text
    assert text.count("data:image/png;base64,") >= 2


@pytest.fixture(scope="module")
def corrupt_run(detector: tuple[Path, Path], series: Path,
                tmp_path_factory: pytest.TempPathFactory):
    """(CLI result, the corrupt file, output folder) of `medinfer predict` on the P3 series
    with one slice's pixel data cut short (its header still reads)."""
    root = tmp_path_factory.mktemp("corrupt")
    shutil.copytree(series, root / "series")
    bad = sorted((root / "series").glob("*.dcm"))[3]
    bad.write_bytes(bad.read_bytes()[:-3000])
    res = runner.invoke(app, ["predict", str(root / "series"), "--model", str(detector[0]),
                              "--out", str(root / "out")])
    return res, bad, root / "out"


def test_a_corrupt_slice_fails_predict_naming_the_file(corrupt_run) -> None:
    res, bad, out = corrupt_run
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.output.count("error:") == 1
    error = res.output[res.output.index("error:"):]
    # the file named in full (read across the console's line wrapping; one line: below)
    assert str(bad) in "".join(error.split())
    assert "cannot decode pixel data" in " ".join(error.split())
    assert not list(out.glob("*.json"))


def test_the_corrupt_slice_error_is_one_line(corrupt_run) -> None:
    res, _, _ = corrupt_run
    assert res.exit_code == 2
    tail = res.output[res.output.index("error:"):]
    assert tail.rstrip("\n").count("\n") == 0, tail
