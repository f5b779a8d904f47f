"""Assemble the HTML report from a benchmark result, the artifact and validation data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medinfer.apps.segmentation import predict_arrays
from medinfer.artifact import ModelArtifact
from medinfer.data.pairs import find_pairs, load_pairs
from medinfer.data.spec import Preprocessing
from medinfer.report.html import overlay_sets, render_report
from medinfer.runtime import EngineOptions, open_engine
from medinfer.runtime.loader import variant_by_name
from medinfer.runtime.bench import BenchmarkResult


def denormalize(images: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Invert :func:`medinfer.data.preprocess.normalize`: (N, C, H, W) float -> uint8 for display."""
    c = images.shape[1]
    mean = np.asarray(spec.mean[:c], np.float32).reshape(1, c, 1, 1)
    std = np.asarray(spec.std[:c], np.float32).reshape(1, c, 1, 1)
    return np.clip((images * std + mean) / spec.scale, 0, 255).astype(np.uint8)


def pick_int8(art: ModelArtifact) -> str:
    """The INT8 variant to show: the chosen one if it is INT8, else the best-scoring passing INT8."""
    if art.spec.chosen and "int8" in art.spec.chosen:
        return art.spec.chosen
    int8 = [v for v in art.spec.variants if "int8" in v.precision]
    if not int8:
        return "torch-fp32"
    return max(int8, key=lambda v: (bool(v.passed), v.metrics.get("dice", 0.0))).name


def build_report(art: ModelArtifact, bench: BenchmarkResult, val_dir: str | Path, out: str | Path,
                 n_overlays: int = 4, threads: int = 2) -> Path:
    """Render the report: overlays of the first ``n_overlays`` validation images (segmentation),
    or explanations of a few false positives (classification: heat-maps and neighbours)."""
    if art.spec.task == "classification":
        from medinfer.report.explain import false_positive_section

        section = false_positive_section(art, val_dir, n=n_overlays)
        return render_report(bench, art, [], Path(out), "torch-fp32", pick_int8(art), extra_html=section)
    if len(art.spec.input.spatial) == 3:  # volumes: the tables and plots (slice overlays not drawn yet)
        return render_report(bench, art, [], Path(out), "torch-fp32", pick_int8(art))
    data = load_pairs(find_pairs(val_dir)[:n_overlays], art.spec.preprocessing)
    masks = {}
    int8_name = pick_int8(art)
    for name in ("torch-fp32", int8_name):
        engine = open_engine(art, variant_by_name(art, name), EngineOptions(threads=threads))
        masks[name] = predict_arrays(engine, data.images)
        engine.close()
    raw = list(denormalize(data.images, art.spec.preprocessing))
    sets = overlay_sets(raw, data.names, data.masks, masks["torch-fp32"], masks[int8_name])
    return render_report(bench, art, sets, Path(out), "torch-fp32", int8_name)
