"""A task registered from the test suite runs through every command without edits to them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from brightness_task import TASK, Brightness, make_bright_artifact, make_bright_data
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.tasks import list_tasks, register_task, task_for, unregister_task

runner = CliRunner()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    register_task(Brightness)
    root = tmp_path_factory.mktemp("bright")
    art = make_bright_artifact(root / "art")
    yield art, make_bright_data(root / "val")
    unregister_task(Brightness)


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def test_registered_task_is_chosen_for_its_artifact(plugin) -> None:
    art, _ = plugin
    assert TASK in list_tasks()
    assert isinstance(task_for(art), Brightness)


def test_evaluate_reports_the_plugin_metrics(plugin, tmp_path: Path) -> None:
    art, val = plugin
    _ok(["evaluate", "--model", str(art.root), "--data", str(val), "--json", str(tmp_path / "e.json")])
    payload = json.loads((tmp_path / "e.json").read_text())
    assert payload["task"] == TASK and payload["variant"] == "torch-fp32" and payload["n"] == 12
    assert payload["accuracy"] >= 0.9  # the fitted network tells dark from bright


def test_evaluate_refuses_another_layout_naming_the_folder(plugin, tmp_path: Path) -> None:
    art, _ = plugin
    (tmp_path / "images").mkdir()
    res = runner.invoke(app, ["evaluate", "--model", str(art.root), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "bright.csv" in res.output


def test_predict_writes_the_plugin_files(plugin, tmp_path: Path) -> None:
    art, val = plugin
    _ok(["predict", str(val / "images" / "1.png"), str(val / "images" / "0.png"), "--model",
         str(art.root), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "1_bright.json").read_text()) == {"bright": True}
    assert json.loads((tmp_path / "0_bright.json").read_text()) == {"bright": False}
    summary = json.loads((tmp_path / "1.json").read_text())
    assert summary["task"] == TASK and summary["bright"] is True and "infer" in summary["seconds"]


def test_bench_end_to_end_and_report_handle_the_plugin(plugin, tmp_path: Path) -> None:
    art, val = plugin
    _ok(["bench", "--model", str(art.root), "--end-to-end", str(val / "images" / "1.png"),
         "--json", str(tmp_path / "e2e.json")])
    rows = json.loads((tmp_path / "e2e.json").read_text())["variants"]
    assert rows[0]["variant"] == "torch-fp32" and rows[0]["median_ms"]["write"] > 0
    _ok(["bench", "--model", str(art.root), "--variants", "torch-fp32", "--runs-batch", "1",
         "--runs-single", "2", "--requests", "2", "--json", str(tmp_path / "b.json")])
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["metric_columns"] == [["accuracy", "accuracy"], ["margin", "margin"]]
    _ok(["report", "--model", str(art.root), "--bench", str(tmp_path / "b.json"), "--val", str(val),
         "--out", str(tmp_path / "r.html")])
    assert "<th>accuracy</th>" in (tmp_path / "r.html").read_text()


@pytest.mark.slow  # exports and quantizes
def test_optimize_gates_the_plugin_on_its_own_metric(plugin, tmp_path: Path) -> None:
    import shutil

    from medinfer.artifact import ModelArtifact

    art, val = plugin
    copy = ModelArtifact.load(shutil.copytree(art.root, tmp_path / "art"))
    out = _ok(["optimize", "--model", str(copy.root), "--calib", str(val), "--val", str(val),
               "--max-drop", "0.5"])
    assert "accuracy gate" in out
    loaded = ModelArtifact.load(copy.root)
    assert loaded.spec.chosen and all("accuracy" in v.metrics for v in loaded.spec.variants)


def test_the_service_serves_the_plugin(plugin, tmp_path: Path) -> None:
    """An uploaded picture routed to the plugin's artifact: a worker writes the task's files."""
    from medinfer.serve.config import ServeConfig
    from medinfer.serve.ingest import Receiver
    from medinfer.serve.models import Job, Result
    from medinfer.serve.store import Store
    from medinfer.serve.worker import Worker

    art, val = plugin
    cfg = ServeConfig.model_validate({
        "storage": tmp_path / "storage", "log_format": "text",
        "routes": [{"name": "bright", "artifact": str(art.root), "match": {"formats": ["png"]}}]})
    store = Store(cfg.db_url)
    receiver = Receiver(cfg, store)
    study = receiver.accept_image_bytes((val / "images" / "3.png").read_bytes(), "png", "test", "3.png")
    [job_id] = receiver.close_study(study)
    assert Worker(cfg, store, "w").run_once()
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "done", job.error
        kinds = {r.kind: r.path for r in s.query(Result).filter_by(job_id=job_id)}
    assert set(kinds) == {"bright", "json"}
    assert json.loads(Path(kinds["bright"]).read_text()) == {"bright": True}
    store.close()
