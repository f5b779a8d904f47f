"""Benchmark: the S7 seed's measurement. Not a test.

Specificity at >= 96 % sensitivity, stage 1 alone and both stages, on held-apart evaluation
slides, with the operating points chosen on the validation slides. Both parts are mosaic
slides (real CRIC cells, synthetic layout) composed from crops no training slide uses.

For every slide of ``val/`` and ``test/`` the artifact's pipeline runs once in the asked
variant (stage 1 on every tissue tile, stage 2 on the flagged slides' top tiles); then,
per slide score (stage 1 with top-k fusion, stage 1 with the learned aggregator, both
stages), the threshold giving >= 96 % sensitivity on ``val/`` is applied to ``test/``.
Writes the JSON (operating points with Wilson intervals, AUCs with bootstrap intervals,
tile AUC, cells found), the ROC and confusion figures.

Usage (repository root):

    .venv/bin/python benchmarks/cytology_eval.py --model models/cervical-cytology \\
        --data runs/cyto-slides --out benchmarks/results/cytology_eval_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.mosaic import ABNORMAL
from medinfer.data.slide_sets import read_slide_folder
from medinfer.metrics.classification import percentile_interval, roc_auc
from medinfer.metrics.slides import LogisticAggregator, operating_point, threshold_at_sensitivity, topk_mean
from medinfer.progress import progress_bar
from medinfer.report.slides import confusion_figure, roc_figure
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import Cytology, StagedEngine
from medinfer.tasks.cytology import SlideResult, SlideSet


def run(task: Cytology, engine: StagedEngine, folder: Path, label: str) -> tuple[SlideSet, list[SlideResult]]:
    data = SlideSet(read_slide_folder(folder))
    out = []
    second = engine.classifier.infer if engine.classifier is not None else None
    with progress_bar(label, len(data), True) as advance:
        for case in data.cases:
            out.append(task.run_slide(case.path, engine.infer, second, engine.infer_many))
            advance()
    return data, out


def auc_interval(scores: np.ndarray, labels: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the AUC over slides."""
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        i = rng.integers(0, len(labels), len(labels))
        if labels[i].min() != labels[i].max():
            boot.append(roc_auc(scores[i], labels[i]))
    return list(percentile_interval(np.array(boot)))


def cells_found(task: Cytology, data: SlideSet, results: list[SlideResult], radius: float = 32.0) -> dict[str, float]:
    """Of the abnormal cells on flagged abnormal slides, how many a reported cell lies
    within ``radius`` level-0 pixels of; and how many reported cells lie near none."""
    hit = total = reported = near = 0
    for case, r in zip(data.cases, results):
        if not r.flagged or case.truth is None:
            continue
        truth = case.read_truth().centres(ABNORMAL)
        found = r.cells[:, :2]
        reported += len(found)
        for x, y in truth:
            total += 1
            hit += bool(len(found)) and float(np.hypot(found[:, 0] - x, found[:, 1] - y).min()) <= radius
        for x, y in found:
            near += bool(len(truth)) and float(np.hypot(truth[:, 0] - x, truth[:, 1] - y).min()) <= radius
    return {"abnormal_cells_on_flagged_slides": total, "found": hit,
            "reported_cells": reported, "reported_near_an_abnormal_cell": near}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with val/ and test/ slide folders")
    parser.add_argument("--backend")
    parser.add_argument("--precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    art = ModelArtifact.load(args.model)
    task = Cytology(art)
    s = task.settings
    engine, variant = task.open_engine(args.backend, args.precision, EngineOptions(threads=args.threads, in_flight=2))
    assert isinstance(engine, StagedEngine)
    try:
        val, val_r = run(task, engine, args.data / "val", "validation slides")
        test, test_r = run(task, engine, args.data / "test", "evaluation slides")
    finally:
        engine.close()
    aggregator = LogisticAggregator.from_dict(s.aggregator) if s.aggregator else None
    scores = {
        "stage 1 (top-k mean)": lambda r: topk_mean(r.probs, s.topk),
        **({"stage 1 (learned aggregator)": lambda r: aggregator(r.probs)} if aggregator else {}),
        "both stages": lambda r: r.score,
    }
    target = s.target_sensitivity
    rows, curves, points = {}, {}, {}
    for name, fn in scores.items():
        sv = np.array([fn(r) for r in val_r])
        st = np.array([fn(r) for r in test_r])
        threshold = threshold_at_sensitivity(sv, val.labels, target)
        op = operating_point(st, test.labels, threshold)
        rows[name] = {"threshold_from_val": threshold, "val": operating_point(sv, val.labels, threshold).to_dict(),
                      "test": op.to_dict(), "test_auc": roc_auc(st, test.labels),
                      "test_auc_ci": auc_interval(st, test.labels), "val_auc": roc_auc(sv, val.labels)}
        curves[name], points[name] = (st, test.labels), op
    stem = args.out.with_suffix("")
    roc_figure(curves, points, Path(f"{stem}_roc.png"),
               title=f"Evaluation slides ({len(test)}: {int(test.labels.sum())} abnormal), operating points from validation")
    confusion_figure(points, Path(f"{stem}_confusion.png"))
    tile_labels = [task.tile_labels(r, c) for r, c in zip(test_r, test.cases)]
    tile_auc = roc_auc(np.concatenate([r.probs for r in test_r]), np.concatenate(tile_labels))
    seconds = [sum(r.seconds.values()) for r in test_r]
    result = {
        "benchmark": "cytology_eval", "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "versions": versions(), "model": str(args.model), "variant": variant,
        "data": "mosaic slides: real CRIC cell crops on a synthetic layout; val/test composed from crops "
                "no training slide uses (and not each other's)",
        "slides": {"val": len(val), "val_abnormal": int(val.labels.sum()), "test": len(test),
                   "test_abnormal": int(test.labels.sum())},
        "target_sensitivity": target, "operating_points": rows, "test_tile_auc": tile_auc,
        "test_tiles": int(sum(len(r.probs) for r in test_r)),
        "flagged": {"val": int(sum(r.flagged for r in val_r)), "test": int(sum(r.flagged for r in test_r))},
        "cells": cells_found(task, test, test_r),
        "seconds_per_slide_median": float(np.median(seconds)),
        "figures": [f"{stem.name}_roc.png", f"{stem.name}_confusion.png"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    for name, row in rows.items():
        t = row["test"]
        print(f"{name:32s} test sens {t['sensitivity']:.3f} spec {t['specificity']:.3f} AUC {row['test_auc']:.3f}")


if __name__ == "__main__":
    main()
