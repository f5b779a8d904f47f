"""The HTML report for a classification model: AUC tables, ladder, false positives explained."""

from __future__ import annotations

import shutil
from pathlib import Path

from medinfer.artifact import DataSplit, EpochRecord, ModelArtifact, TrainingRecord
from medinfer.report.build import build_report
from medinfer.report.tables import ladder_markdown, metric_keys
from medinfer.runtime.bench import BenchmarkResult


def _row(name: str, backend: str, precision: str, mean_auc: float, passed: bool | None, ms: float) -> dict:
    return {"name": name, "backend": backend, "precision": precision, "passed": passed,
            "metrics": {"mean_auc": mean_auc, "abnormal_auc": 0.6, "n": 12.0},
            "batch_ms_median": ms * 16, "batch_ms_p95": ms * 17, "single_ms_median": ms, "single_ms_p95": ms * 1.1,
            "throughput_ips": 1000 / ms, "peak_rss_mb": 300.0, "size_mb": 1.0,
            "ops": {"int8": {"Convolution": 3}, "float": {"MatMul": 1}} if "int8" in precision else {}}


def test_classification_report_has_auc_columns_and_false_positives(cls_artifact, cls_data: Path,
                                                                    tmp_path: Path) -> None:
    art = ModelArtifact.load(shutil.copytree(cls_artifact.root, tmp_path / "art"))
    art.spec.training = TrainingRecord(
        data=str(cls_data),
        split=DataSplit(unit="patient", train=[str(i) for i in range(8)], test=[str(i) for i in range(8, 12)]),
        history=[EpochRecord(epoch=1, train_loss=1.0, lr=1e-3, seconds=1.0,
                             metrics={"mean_auc": 0.55, "abnormal_auc": 0.5})], epochs_run=1, best_epoch=1)
    art.spec.thresholds = {c: 0.0 for c in art.spec.classes}  # everything is called: false positives exist
    art.save()
    bench = BenchmarkResult(artifact=str(art.root), date="2026-11-23", command="test", machine={"cpu": "x"},
                            versions={}, settings={"threads": 2, "batch": 16, "runs_batch": 1, "runs_single": 1,
                                                   "warmup": 0, "in_flight": 2, "requests": 4},
                            variants=[_row("torch-fp32", "torch", "fp32", 0.60, None, 10.0),
                                      _row("openvino-int8", "openvino", "int8", 0.598, True, 2.0)],
                            chosen="openvino-int8")
    assert metric_keys(bench)[0] == ("mean_auc", "mean AUC")
    assert "| mean AUC | abnormal AUC |" in ladder_markdown(bench)
    out = build_report(art, bench, cls_data, tmp_path / "r.html", n_overlays=2)
    html = out.read_text()
    assert "mean AUC" in html and "0.5980" in html and "-0.0020" in html
    assert "False positives" in html and "Grad-CAM" in html and "mahalanobis" in html.lower()
    # the training history above is drawn as a learning-curve PNG
    assert '<img class="plot" alt="learning curve" src="data:image/png;base64,' in html
