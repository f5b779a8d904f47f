"""The `medinfer` command, in-process: the evaluate/predict contract, errors, and the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.data.pairs import find_pairs, materialize_pairs
from medinfer.data.spec import Preprocessing
from medinfer.train import TrainConfig, run_training

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shared_path) -> Path:
    """20 real Kvasir-SEG pairs laid out as a Kvasir folder."""
    pairs = sorted(find_pairs(shared_path("kvasir-seg")), key=lambda p: p.name)[:20]
    return materialize_pairs(pairs, tmp_path_factory.mktemp("kvasir"))


@pytest.fixture(scope="module")
def tiny_artifact(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("art") / "tiny"
    cfg = TrainConfig(data=tiny_data, out=out, architecture="test_resunet", epochs=2, batch_size=4,
                      preprocessing=Preprocessing(size=(32, 32)))
    run_training(cfg, command="test")
    return out


def test_evaluate_prints_contract_json(tiny_artifact, tiny_data, tmp_path):
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate", "--model", str(tiny_artifact), "--data", str(tiny_data),
                              "--backend", "torch", "--precision", "fp32", "--json", str(out)])
    assert res.exit_code == 0, res.output
    payload = json.loads(out.read_text())
    assert set(payload) >= {"dice", "iou", "n", "backend", "precision"}  # the contract (extended)
    assert payload["task"] == "segmentation" and payload["variant"] == "torch-fp32"
    assert payload["n"] == 20 and payload["backend"] == "torch" and payload["precision"] == "fp32"
    assert 0.0 <= payload["iou"] <= payload["dice"] <= 1.0


def test_predict_writes_mask_and_overlay_at_input_size(tiny_artifact, tiny_data, tmp_path):
    image = sorted((tiny_data / "images").iterdir())[0]
    res = runner.invoke(app, ["predict", str(image), "--model", str(tiny_artifact), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    mask = np.asarray(PILImage.open(tmp_path / f"{image.stem}_mask.png"))
    assert mask.shape == PILImage.open(image).size[::-1]
    assert set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / f"{image.stem}_overlay.png").is_file()


def test_predict_keeps_good_outputs_when_one_input_is_bad(tiny_artifact, tiny_data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    good = sorted((tiny_data / "images").iterdir())[0]
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", str(bad), str(good), "--model", str(tiny_artifact), "--out", str(out)])
    assert res.exit_code == 1
    assert "broken.png" in res.output
    assert (out / f"{good.stem}_mask.png").is_file()


@pytest.mark.parametrize("args, needle", [
    (["evaluate", "--model", "{missing}", "--data", "{data}"], "artifact.json is missing"),
    (["evaluate", "--model", "{art}", "--data", "{empty}"], "missing folder"),
    (["evaluate", "--model", "{art}", "--data", "{data}", "--backend", "openvino", "--precision", "int8"],
     "medinfer optimize"),
    (["evaluate", "--model", "{art}", "--data", "{data}", "--backend", "tensorflow"], "unknown backend"),
])
def test_bad_input_gives_one_clear_error(args, needle, tiny_artifact, tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    subs = {"missing": str(tmp_path / "nope"), "data": str(tiny_data), "art": str(tiny_artifact),
            "empty": str(tmp_path / "empty")}
    res = runner.invoke(app, [a.format(**subs) for a in args])
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow  # optimizes (quantizes) and benchmarks every variant
def test_demo_end_to_end_on_tiny_model(tiny_artifact, tiny_data, tmp_path):
    work = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--model", str(tiny_artifact), "--data", str(tiny_data),
                              "--work", str(work), "--calib", "8", "--val", "4"])
    assert res.exit_code == 0, res.output
    bench = json.loads((work / "bench.json").read_text())
    names = [v["name"] for v in bench["variants"]]
    assert names[0] == "torch-fp32" and "openvino-int8" in names and "onnxruntime-int8-dynamic" in names
    assert all(v["batch_ms_median"] > 0 and v["peak_rss_mb"] > 0 for v in bench["variants"])
    html = (work / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 1 + 4 * 4  # ladder chart + 4 overlays per case
    assert "report:" in res.output


@pytest.mark.slow  # `medinfer optimize`, then bench and report
def test_optimize_bench_report_commands(tiny_artifact, tiny_data, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact, art)
    res = runner.invoke(app, ["optimize", "--model", str(art), "--calib", str(tiny_data),
                              "--val", str(tiny_data), "--max-drop", "0.005", "--calib-limit", "4"])
    assert res.exit_code == 0, res.output
    spec = json.loads((art / "artifact.json").read_text())
    assert spec["chosen"] in {v["name"] for v in spec["variants"] if v["passed"]}

    bench_json, table = tmp_path / "bench.json", tmp_path / "ladder.md"
    res = runner.invoke(app, ["bench", "--model", str(art), "--variants", "torch-fp32,openvino-int8",
                              "--json", str(bench_json), "--markdown", str(table), "--runs-batch", "2",
                              "--runs-single", "2", "--requests", "4"])
    assert res.exit_code == 0, res.output
    rows = json.loads(bench_json.read_text())["variants"]
    assert [r["name"] for r in rows] == ["torch-fp32", "openvino-int8"]
    assert "Convolution" in str(rows[1]["ops"]["int8"])
    assert table.read_text().count("\n") == 4  # header, rule, two rows

    html = tmp_path / "r.html"
    res = runner.invoke(app, ["report", "--model", str(art), "--bench", str(bench_json),
                              "--val", str(tiny_data), "--out", str(html), "--overlays", "2"])
    assert res.exit_code == 0, res.output
    assert "openvino-int8" in html.read_text()

    # evaluate/predict now default to the chosen variant
    res = runner.invoke(app, ["evaluate", "--model", str(art), "--data", str(tiny_data)])
    chosen = next(v for v in spec["variants"] if v["name"] == spec["chosen"])
    assert json.loads(res.stdout)["backend"] == chosen["backend"]


def test_report_reads_benchmark_script_results_and_rejects_other_json(tmp_path):
    from medinfer.runtime.bench import BenchmarkResult

    base = {"artifact": "a", "date": "d", "command": "c", "machine": {}, "versions": {}, "settings": {}}
    parsed = BenchmarkResult.from_json(json.dumps({**base, "gate": [], "training": {}}))
    assert parsed.artifact == "a" and parsed.variants == []
    with pytest.raises(ValueError, match="missing"):
        BenchmarkResult.from_json(json.dumps({"dice": 0.8}))
    other = tmp_path / "x.json"
    other.write_text('{"dice": 0.8}')
    res = runner.invoke(app, ["report", "--model", str(tmp_path), "--bench", str(other), "--val", str(tmp_path)])
    assert res.exit_code == 2 and "x.json" in res.output
