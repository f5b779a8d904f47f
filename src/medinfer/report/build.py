"""Assemble the HTML report from a benchmark result, the artifact and validation data."""

from __future__ import annotations

from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.report.html import render_report
from medinfer.runtime import EngineOptions, variant_by_name
from medinfer.runtime.bench import BenchmarkResult
from medinfer.tasks import Task, task_for
from medinfer.variants import REFERENCE


def pick_int8(art: ModelArtifact, primary: str) -> str:
    """The INT8 variant to show: the chosen one if it is INT8, else the best-scoring passing
    INT8 (by the task's ``primary`` metric); the reference when none was built."""
    chosen = art.variant(art.spec.chosen) if art.spec.chosen else None
    if chosen is not None and chosen.kind is not None and chosen.kind.is_int8:
        return chosen.name
    int8 = [v for v in art.spec.variants if v.kind is not None and v.kind.is_int8]
    if not int8:
        return REFERENCE
    return max(int8, key=lambda v: (bool(v.passed), v.metrics.get(primary, 0.0))).name


def build_report(art: ModelArtifact, bench: BenchmarkResult, val_dir: str | Path, out: str | Path,
                 n_overlays: int = 4, threads: int = 2) -> Path:
    """Render the report: the task's example cases from the first ``n_overlays`` validation
    cases (reference and INT8 side by side) and, for classifiers, explanations of a few false
    positives (heat-maps and neighbours)."""
    task = task_for(art)
    task.check_layout(Path(val_dir))
    shown = list(dict.fromkeys([REFERENCE, pick_int8(art, task.primary)]))
    examples = task.examples(*_outputs(task, Path(val_dir), shown, n_overlays, threads), n_overlays)
    extra = ""
    if task.name == "classification":
        from medinfer.report.explain import false_positive_section  # captum: only for classifiers

        extra = false_positive_section(art, val_dir, n=n_overlays)
    return render_report(bench, art, examples, Path(out), task.columns[0][1], extra_html=extra)


def _outputs(task: Task, val_dir: Path, variants: list[str], n: int, threads: int):
    """The first ``n`` validation cases and each variant's outputs on them."""
    data = task.load_eval(val_dir, n)
    outputs = {}
    for name in variants:
        engine = task.open_variant(variant_by_name(task.art, name), EngineOptions(threads=threads))
        try:
            outputs[name] = task.engine_outputs(engine, data)
        finally:
            engine.close()
    return data, outputs
