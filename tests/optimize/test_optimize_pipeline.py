"""`medinfer optimize` end to end on a tiny artifact, the accuracy gate, and measure_variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medinfer.tasks import Classification, GateLimits, Segmentation2D
from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact, VariantRecord
from medinfer.data.pairs import load_calibration_images
from medinfer.data.spec import Preprocessing
from medinfer.data.synthetic import write_kvasir_pairs
from medinfer.models import create_model
from medinfer.optimize.inspect import onnx_float_ops
from medinfer.optimize.pipeline import OptimizeConfig, apply_gate, optimize
from medinfer.variants import get_kind, kinds

VARIANTS = [k.name for k in kinds(optimized=True)]
from medinfer.runtime import EngineOptions, open_engine, resolve_variant
from medinfer.runtime.measure import MeasureSettings, measure_variant

SIZE = (32, 32)
N_VAL = 6


def _make_kvasir(root: Path, n: int, seed: int) -> Path:
    """Tiny Kvasir-layout folder: RGB noise with a bright box, mask = the box (0/255)."""
    names = [f"s{i}" for i in range(n)]
    return write_kvasir_pairs(root, names, SIZE, seed=seed, colour=(230, 90, 80))


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory):
    """A fresh test_resunet artifact run once through the whole optimizer."""
    root = tmp_path_factory.mktemp("optimize")
    calib = _make_kvasir(root / "calib", 4, seed=1)
    val = _make_kvasir(root / "val", N_VAL, seed=2)
    spec = ArtifactSpec(architecture="test_resunet", in_channels=3, out_channels=1,
                        input=InputSpec(channels=3, spatial=SIZE), preprocessing=Preprocessing(size=SIZE))
    art = ModelArtifact(root / "art", spec)
    torch.manual_seed(0)
    art.save_weights(create_model("test_resunet", in_channels=3, out_channels=1))
    art.save()
    tune = _make_kvasir(root / "tune", 4, seed=3)
    cfg = OptimizeConfig(calib=calib, val=val, tune=tune, latency_runs=1)
    steps: list[str] = []
    records = optimize(art, cfg, step=steps.append)
    return art, records, cfg, steps


@pytest.mark.slow  # needs the whole optimizer run (export, quantization, NNCF)
def test_all_variants_built_and_scored(optimized) -> None:
    art, records, _, steps = optimized
    assert [r.name for r in records] == list(VARIANTS)
    assert len(records) == 7  # six post-training variants + accuracy-controlled INT8 (--tune given)
    assert any("accuracy control" in s for s in steps)
    assert any("export ONNX" in s for s in steps)
    for r in records:
        backend, precision = get_kind(r.name).backend, get_kind(r.name).label
        assert (r.backend, r.precision) == (backend, precision)
        assert set(r.metrics) >= {"dice", "iou", "n"}
        assert 0.0 <= r.metrics["dice"] <= 1.0 and 0.0 <= r.metrics["iou"] <= r.metrics["dice"] + 1e-12
        assert r.metrics["n"] == N_VAL
        assert r.latency_ms is not None and r.latency_ms > 0
        assert r.passed is not None
        files = art.variant_files(r)
        assert files and all(f.is_file() for f in files), r.name
        assert r.size_mb and r.size_mb > 0
        if r.name != "torch-fp32":
            assert r.ops, f"{r.name}: no operator census"


@pytest.mark.slow
def test_accuracy_controlled_variant_records_its_fp32_layers(optimized) -> None:
    import openvino as ov

    from medinfer.optimize.quantize import float_layers

    art, records, _, _ = optimized
    ac = next(r for r in records if r.name == "openvino-int8-ac")
    assert ac.precision == "int8-ac" and ac.path.endswith("model_int8_ac.xml")
    model = ov.Core().read_model(str(art.root / ac.path))
    assert ac.float_layers == float_layers(model)  # what is recorded is what the IR holds
    plain = ov.Core().read_model(str(art.root / "variants" / "model_int8.xml"))
    # it restores layers to FP32, never quantizes more than plain INT8 (which keeps the
    # transposed convolutions in float on this model)
    assert set(float_layers(plain)) <= set(ac.float_layers)
    assert ac.ops["int8"], "accuracy control should keep most layers in INT8"


@pytest.mark.slow
def test_fp32_variants_match_torch(optimized) -> None:
    _, records, _, _ = optimized
    by = {r.name: r for r in records}
    ref = by["torch-fp32"].metrics
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        assert abs(by[name].metrics["dice"] - ref["dice"]) <= 1e-6, name
        assert abs(by[name].metrics["iou"] - ref["iou"]) <= 1e-6, name
        assert by[name].passed


@pytest.mark.slow
def test_chosen_is_fastest_passing_variant(optimized) -> None:
    art, records, cfg, _ = optimized
    passing = [r for r in records if r.passed]
    assert art.spec.chosen in {r.name for r in passing}
    assert art.spec.chosen == min(passing, key=lambda r: r.latency_ms).name
    ref = next(r for r in records if r.name == "torch-fp32").metrics["dice"]
    for r in records:  # verdicts agree with the gate's rule
        assert r.passed == (ref - r.metrics["dice"] <= cfg.max_drop)
        assert (r.reason == "") == r.passed


@pytest.mark.slow
def test_results_persisted_in_artifact(optimized) -> None:
    art, records, cfg, _ = optimized
    loaded = ModelArtifact.load(art.root)
    assert loaded.spec.chosen == art.spec.chosen
    assert {v.name for v in loaded.spec.variants} == set(VARIANTS)
    assert loaded.variant("openvino-int8").metrics == next(r for r in records if r.name == "openvino-int8").metrics
    assert loaded.spec.training.optimize["n_val"] == N_VAL
    assert loaded.spec.training.optimize["n_calib"] == 4
    # with no backend asked for, the runtime serves the chosen variant
    assert resolve_variant(loaded, None, None).name == art.spec.chosen


@pytest.mark.parametrize("name", ["onnxruntime-int8", "openvino-int8", "onnxruntime-int8-dynamic"])
@pytest.mark.slow
def test_int8_variants_run_and_stay_close(optimized, name: str) -> None:
    art, _, cfg, _ = optimized
    x = load_calibration_images(cfg.val, art.spec.preprocessing, limit=2)  # in-distribution inputs
    ref_engine = open_engine(art, resolve_variant(art, "onnxruntime", "fp32"), EngineOptions())
    engine = open_engine(art, art.variant(name), EngineOptions())
    try:
        ref, got = ref_engine.infer(x), engine.infer(x)
    finally:
        engine.close()
        ref_engine.close()
    assert got.shape == ref.shape == (2, 1, *SIZE)
    assert np.isfinite(got).all()
    # quantization error is small relative to the logits' spread (observed ~1%)
    assert np.abs(got - ref).mean() < 0.1 * ref.std()
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


@pytest.mark.slow
def test_static_qdq_reports_convtranspose_as_float(optimized) -> None:
    art, _, _, _ = optimized
    qdq = onnx_float_ops(art.root / art.variant("onnxruntime-int8").path)
    assert qdq["float"].get("ConvTranspose", 0) >= 1
    assert qdq["int8"].get("Conv", 0) >= 1
    assert "ConvTranspose" not in qdq["int8"]
    fp32 = onnx_float_ops(art.root / art.variant("onnxruntime-fp32").path)
    assert fp32["int8"] == {}
    assert fp32["float"]["Conv"] == qdq["int8"]["Conv"] + qdq["float"].get("Conv", 0)
    dyn = onnx_float_ops(art.root / art.variant("onnxruntime-int8-dynamic").path)
    assert dyn["int8"].get("ConvInteger", 0) >= 1


@pytest.mark.slow
def test_measure_variant_ort(optimized) -> None:
    art, _, _, _ = optimized
    s = MeasureSettings(batch=2, warmup=1, runs_batch=2, runs_single=2, requests=4)
    t = measure_variant(art, "onnxruntime-fp32", s)
    assert (t.name, t.backend, t.precision, t.batch) == ("onnxruntime-fp32", "onnxruntime", "fp32", 2)
    assert t.batch_ms_median > 0 and t.single_ms_median > 0
    assert t.batch_ms_p95 >= t.batch_ms_median and t.single_ms_p95 >= t.single_ms_median
    assert t.throughput_ips > 0 and t.sequential_ips > 0
    assert len(t.samples_batch_ms) == 2 and len(t.samples_single_ms) == 2
    assert t.baseline_rss_mb > 0 and t.peak_rss_mb >= t.baseline_rss_mb
    assert t.load_s >= 0


def _rec(name: str, dice: float, latency: float | None) -> VariantRecord:
    backend, _, precision = name.partition("-")
    return VariantRecord(name=name, backend=backend, precision=precision, path="",
                         metrics={"dice": dice}, latency_ms=latency)


def _task(cls=Segmentation2D, **spec: object):
    base = dict(architecture="test_resunet", in_channels=3, out_channels=1,
                input=InputSpec(channels=3, spatial=SIZE), preprocessing=Preprocessing(size=SIZE))
    return cls(ModelArtifact(Path("unused"), ArtifactSpec(**{**base, **spec})))


def test_apply_gate_rejects_big_drop_and_picks_fastest_passing() -> None:
    records = [
        _rec("torch-fp32", 0.900, 10.0),
        _rec("onnxruntime-fp32", 0.900, 6.0),
        _rec("openvino-int8", 0.880, 1.0),  # fastest, but drops 0.02 > 0.005
        _rec("onnxruntime-int8", 0.897, 3.0),  # drops 0.003: passes
        _rec("onnxruntime-int8-dynamic", 0.905, None),  # better than the reference; not timed
    ]
    chosen = apply_gate(records, _task(), GateLimits(max_drop=0.005))
    assert chosen == "onnxruntime-int8"
    verdict = {r.name: r.passed for r in records}
    assert verdict == {"torch-fp32": True, "onnxruntime-fp32": True, "openvino-int8": False,
                       "onnxruntime-int8": True, "onnxruntime-int8-dynamic": True}
    bad = records[2]
    assert "dice drop" in bad.reason and "0.0200" in bad.reason
    assert all(r.reason == "" for r in records if r.passed)


def test_apply_gate_stricter_threshold_falls_back() -> None:
    records = [_rec("torch-fp32", 0.9, 10.0), _rec("onnxruntime-int8", 0.897, 3.0)]
    assert apply_gate(records, _task(), GateLimits(max_drop=0.001)) == "torch-fp32"
    assert records[1].passed is False
    assert apply_gate(records, _task(), GateLimits(max_drop=0.01)) == "onnxruntime-int8"  # re-gating resets the verdict
    assert records[1].passed is True and records[1].reason == ""


def _auc_rec(name: str, mean: float, per_class: dict[str, float], latency: float) -> VariantRecord:
    backend, _, precision = name.partition("-")
    metrics = {"mean_auc": mean, **{f"auc/{k}": v for k, v in per_class.items()}}
    return VariantRecord(name=name, backend=backend, precision=precision, path="", metrics=metrics,
                         latency_ms=latency)


def test_classification_gate_fails_a_variant_on_one_class_even_if_the_mean_holds() -> None:
    task = _task(Classification, task="classification", architecture="test_densenet", out_channels=2,
                 classes=["Effusion", "Mass"])
    records = [
        _auc_rec("torch-fp32", 0.80, {"Effusion": 0.80, "Mass": 0.80}, 10.0),
        _auc_rec("openvino-int8", 0.799, {"Effusion": 0.828, "Mass": 0.770}, 1.0),  # Mass -0.03
        _auc_rec("openvino-int8-ac", 0.798, {"Effusion": 0.80, "Mass": 0.796}, 2.0),
        _auc_rec("onnxruntime-int8", 0.790, {"Effusion": 0.79, "Mass": 0.79}, 0.5),  # mean -0.01
    ]
    assert apply_gate(records, task, GateLimits(max_drop=0.005, max_class_drop=0.02)) == "openvino-int8-ac"
    assert "Mass AUC drop 0.0300" in records[1].reason
    assert "mean_auc drop 0.0100" in records[3].reason
    # a looser per-class limit lets the plain INT8 variant through
    assert apply_gate(records, task, GateLimits(max_drop=0.005, max_class_drop=0.05)) == "openvino-int8"
