"""`medinfer optimize`: build every variant, verify the task's medical metric, pick the fastest that passes.

The same loop serves every task (2D / 3D segmentation: Dice; multi-label classification:
mean AUC and each class's AUC; any registered task) through :mod:`medinfer.tasks`; the
variants are those of :mod:`medinfer.variants`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.optimize import export, inspect, quantize
from medinfer.runtime import EngineOptions
from medinfer.runtime.measure import timed_runs
from medinfer.tasks import GateLimits, Task, task_for
from medinfer.variants import REFERENCE, VARIANT_DIR, get_kind, kinds

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class OptimizeConfig:
    """Settings of one optimization run.

    Attributes:
        calib: folder of calibration data (the task's layout or plain images); never the gate's data.
        val: folder the gate evaluates on, in the task's layout.
        tune: labeled folder accuracy-controlled quantization tunes on (not ``val``); without
            it that variant is not built.
        max_drop: largest allowed drop of the task's primary metric below PyTorch FP32.
        max_class_drop: classification: largest allowed drop of any single class's AUC.
        calib_limit / val_limit / tune_limit: use only the first N cases (demo subsets).
        options: engine settings of the quick latency check that picks the winner.
        latency_runs: timed runs per variant for that check.
    """

    calib: Path
    val: Path
    tune: Path | None = None
    max_drop: float = 0.005
    max_class_drop: float = 0.02
    calib_limit: int | None = None
    val_limit: int | None = None
    tune_limit: int | None = None
    options: EngineOptions = EngineOptions()
    latency_runs: int = 5


def build_variants(art: ModelArtifact, calib: np.ndarray, step: Callable[[str], None]) -> None:
    """Export and quantize every post-training variant into ``art.root/variants``."""
    (art.root / VARIANT_DIR).mkdir(parents=True, exist_ok=True)
    path = {k.name: art.root / k.path for k in kinds() if k.path}
    onnx_fp32, xml_fp32 = path["onnxruntime-fp32"], path["openvino-fp32"]
    step("export ONNX")
    export.export_onnx(art.load_network(), art.example_input(2), onnx_fp32)
    step("convert OpenVINO IR")
    export.export_openvino(onnx_fp32, xml_fp32)
    step("ONNX Runtime static INT8 (QDQ)")
    quantize.ort_static_int8(onnx_fp32, path["onnxruntime-int8"], calib)
    step("ONNX Runtime dynamic INT8")
    quantize.ort_dynamic_int8(onnx_fp32, path["onnxruntime-int8-dynamic"])
    step("OpenVINO INT8 (NNCF)")
    quantize.openvino_int8(xml_fp32, path["openvino-int8"], calib)


def check_variant(art: ModelArtifact, name: str, task: Task, val: Any, cfg: OptimizeConfig) -> VariantRecord:
    """Evaluate one variant's task metrics and its quick latency on a representative batch."""
    rec = VariantRecord.of(get_kind(name))
    engine = task.open_variant(rec, cfg.options)
    try:
        rec.metrics = {k: v for k, v in task.score(engine, val).items() if isinstance(v, float)}
        rec.latency_ms = float(np.median(timed_runs(task.latency_call(engine), task.latency_batch(val), 1,
                                                    cfg.latency_runs)))
    finally:
        engine.close()
    rec.size_mb = art.variant_size_mb(rec)
    if rec.path.endswith(".onnx"):
        rec.ops = inspect.onnx_float_ops(art.root / rec.path)
    elif rec.path.endswith(".xml"):
        rec.ops = inspect.openvino_float_ops(art.root / rec.path)
    return rec


def apply_gate(records: list[VariantRecord], task: Task, limits: GateLimits) -> str | None:
    """Mark each record passed/rejected against the reference; return the fastest passing name."""
    ref = next(r for r in records if r.name == REFERENCE).metrics
    for r in records:
        r.reason = task.gate(ref, r.metrics, limits)
        r.passed = not r.reason
    passing = [r for r in records if r.passed and r.latency_ms is not None]
    return min(passing, key=lambda r: r.latency_ms or float("inf")).name if passing else None


def optimize(art: ModelArtifact, cfg: OptimizeConfig,
             step: Callable[[str], None] = lambda s: log.info(s)) -> list[VariantRecord]:
    """Build, verify and rank every variant; store them and the chosen one in ``art``.

    Returns:
        The variant records in registry order (:func:`medinfer.variants.kinds`; those that
        need tuning data only with ``cfg.tune``), each with metrics, gate verdict, latency,
        size and operator precision.
    """
    task = task_for(art)
    for folder in (cfg.val, cfg.tune):
        if folder is not None:
            task.check_layout(folder)
    step("load calibration data")
    calib = task.load_calib(cfg.calib, cfg.calib_limit)
    step("load validation data")
    val = task.load_eval(cfg.val, cfg.val_limit)
    build_variants(art, calib, step)
    for part, part_calib in task.parts(calib):
        step(f"variants of {part.root.name} ({len(part_calib)} calibration inputs)")
        build_variants(part, part_calib, step)
        for kind in kinds(optimized=True):  # its files, so keep_variants prunes them too
            if not kind.needs_tuning_data:
                record = VariantRecord.of(kind)
                record.size_mb = part.variant_size_mb(record)
                part.upsert_variant(record)
        part.save()
    names = [k.name for k in kinds(optimized=True) if cfg.tune is not None or not k.needs_tuning_data]
    float_layers: list[str] = []
    if cfg.tune is not None:
        step(f"OpenVINO INT8 with accuracy control ({task.primary}, NNCF)")
        tune = task.load_eval(cfg.tune, cfg.tune_limit)
        _, float_layers = quantize.openvino_int8_accuracy_control(
            art.root / get_kind("openvino-fp32").path, art.root / get_kind("openvino-int8-ac").path,
            calib, task, tune, cfg.max_drop)
    records = []
    for name in names:
        step(f"evaluate {name}")
        records.append(check_variant(art, name, task, val, cfg))
        if get_kind(name).needs_tuning_data:
            records[-1].float_layers = float_layers
    chosen = apply_gate(records, task, GateLimits(cfg.max_drop, cfg.max_class_drop))
    for r in records:
        art.upsert_variant(r)
    art.spec.chosen = chosen
    art.spec.training.optimize = {
        "calib": str(cfg.calib), "val": str(cfg.val), "tune": str(cfg.tune) if cfg.tune else None,
        "n_calib": len(calib), "n_val": task.count(val), "max_drop": cfg.max_drop,
        "max_class_drop": cfg.max_class_drop, "primary": task.primary}
    art.save()
    return records
