"""`medinfer optimize`: build every variant, verify the medical metric, pick the fastest that passes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medinfer.apps.segmentation import score_engine
from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.data.pairs import PairArrays, find_pairs, load_calibration_images, load_pairs
from medinfer.optimize import export, inspect, quantize
from medinfer.runtime import EngineOptions, open_engine
from medinfer.runtime.measure import timed_runs

log = logging.getLogger(__name__)

VARIANT_DIR = "variants"
# name -> (backend, precision, file under variants/)
VARIANTS: dict[str, tuple[str, str, str]] = {
    "torch-fp32": ("torch", "fp32", ""),
    "onnxruntime-fp32": ("onnxruntime", "fp32", "model.onnx"),
    "onnxruntime-int8": ("onnxruntime", "int8", "model_int8_qdq.onnx"),
    "onnxruntime-int8-dynamic": ("onnxruntime", "int8-dynamic", "model_int8_dynamic.onnx"),
    "openvino-fp32": ("openvino", "fp32", "model.xml"),
    "openvino-int8": ("openvino", "int8", "model_int8.xml"),
}


@dataclass(frozen=True)
class OptimizeConfig:
    """Settings of one optimization run.

    Attributes:
        calib: folder of calibration images (Kvasir layout or plain images); never the validation data.
        val: Kvasir-layout folder the gate evaluates on.
        max_drop: largest allowed Dice drop below PyTorch FP32 (absolute, e.g. 0.005).
        calib_limit / val_limit: use only the first N files (demo subsets).
        options: engine settings used for the quick latency check that picks the winner.
        latency_runs: timed batch-16 runs per variant for that check.
    """

    calib: Path
    val: Path
    max_drop: float = 0.005
    calib_limit: int | None = None
    val_limit: int | None = None
    options: EngineOptions = EngineOptions()
    latency_runs: int = 5


def build_variants(art: ModelArtifact, calib: np.ndarray, step: Callable[[str], None]) -> None:
    """Export and quantize every variant into ``art.root/variants``."""
    vdir = art.root / VARIANT_DIR
    vdir.mkdir(parents=True, exist_ok=True)
    onnx_fp32, xml_fp32 = vdir / "model.onnx", vdir / "model.xml"
    step("export ONNX")
    export.export_onnx(art.load_network(), art.example_input(2), onnx_fp32)
    step("convert OpenVINO IR")
    export.export_openvino(onnx_fp32, xml_fp32)
    step("ONNX Runtime static INT8 (QDQ)")
    quantize.ort_static_int8(onnx_fp32, vdir / VARIANTS["onnxruntime-int8"][2], calib)
    step("ONNX Runtime dynamic INT8")
    quantize.ort_dynamic_int8(onnx_fp32, vdir / VARIANTS["onnxruntime-int8-dynamic"][2])
    step("OpenVINO INT8 (NNCF)")
    quantize.openvino_int8(xml_fp32, vdir / VARIANTS["openvino-int8"][2], calib)


def variant_files(art: ModelArtifact, rel: str) -> list[Path]:
    """Files making up a variant (IR: .xml + .bin; torch: the weights)."""
    if not rel:
        return [art.weights_path]
    path = art.root / rel
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def check_variant(art: ModelArtifact, name: str, val: PairArrays, cfg: OptimizeConfig) -> VariantRecord:
    """Evaluate one variant's Dice/IoU and its quick batch-16 latency."""
    backend, precision, fname = VARIANTS[name]
    rel = f"{VARIANT_DIR}/{fname}" if fname else ""
    rec = VariantRecord(name=name, backend=backend, precision=precision, path=rel)
    engine = open_engine(art, rec, cfg.options)
    try:
        result, _ = score_engine(engine, val)
        batch = val.images[np.arange(16) % len(val)]
        rec.latency_ms = float(np.median(timed_runs(engine.infer, batch, 1, cfg.latency_runs)))
    finally:
        engine.close()
    rec.metrics = {"dice": result.dice, "iou": result.iou, "n": float(result.n)}
    rec.size_mb = sum(f.stat().st_size for f in variant_files(art, rel)) / 2**20
    if fname.endswith(".onnx"):
        rec.ops = inspect.onnx_float_ops(art.root / rel)
    elif fname.endswith(".xml"):
        rec.ops = inspect.openvino_float_ops(art.root / rel)
    return rec


def apply_gate(records: list[VariantRecord], max_drop: float) -> str | None:
    """Mark each record passed/rejected against torch-fp32; return the fastest passing name."""
    ref = next(r for r in records if r.name == "torch-fp32").metrics["dice"]
    for r in records:
        drop = ref - r.metrics["dice"]
        r.passed = drop <= max_drop
        r.reason = "" if r.passed else f"Dice drop {drop:.4f} > max {max_drop:.4f}"
    passing = [r for r in records if r.passed and r.latency_ms is not None]
    return min(passing, key=lambda r: r.latency_ms if r.latency_ms is not None else float("inf")).name if passing else None


def optimize(art: ModelArtifact, cfg: OptimizeConfig,
             step: Callable[[str], None] = lambda s: log.info(s)) -> list[VariantRecord]:
    """Build, verify and rank every variant; store them and the chosen one in ``art``.

    Returns:
        The variant records in :data:`VARIANTS` order, each with metrics, gate verdict,
        latency, size and operator precision.
    """
    step("load calibration images")
    calib = load_calibration_images(cfg.calib, art.spec.preprocessing, cfg.calib_limit)
    step("load validation pairs")
    pairs = find_pairs(cfg.val)
    val = load_pairs(pairs[: cfg.val_limit] if cfg.val_limit else pairs, art.spec.preprocessing)
    build_variants(art, calib, step)
    records = []
    for name in VARIANTS:
        step(f"evaluate {name}")
        records.append(check_variant(art, name, val, cfg))
    chosen = apply_gate(records, cfg.max_drop)
    for r in records:
        art.upsert_variant(r)
    art.spec.chosen = chosen
    art.spec.training["optimize"] = {"calib": str(cfg.calib), "val": str(cfg.val), "n_calib": len(calib),
                                     "n_val": len(val), "max_drop": cfg.max_drop}
    art.save()
    return records
