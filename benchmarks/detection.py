"""Benchmark: the S6 two-stage lesion detector's ladder, per slice and per 64-slice series.
Not a test.

Every variant of the artifact (both stages in that variant: PyTorch eager FP32, ONNX Runtime
and OpenVINO FP32 and INT8, OpenVINO INT8 with two requests in flight) runs the whole
pipeline the service runs (``Detection.predict``: 2.5D preparation, stage 1, anchors /
decoding / NMS outside the graph, candidate crops, stage 2) side by side, in interleaved
rounds, on

* a 64-slice 512x512 CT "series": the 46 real Lung-PET-CT-Dx slices stacked and repeated
  to 64 (one array; the DICOM reading is timed apart, per file, on the real series);
* one slice (a 1-slice series).

Accuracy on the held-out patient (leave-one-patient-out; ONE patient, 18 annotated slices):
AP@0.1 and FROC sensitivities per variant, and how many slices give PyTorch's boxes one to
one (IoU >= 0.99, score within 1e-3).

Usage (repository root):

    .venv/bin/python benchmarks/detection.py --model models/lung-detector --rounds 5 \\
        --out benchmarks/results/detection_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.data.detection import load_detection_folder
from medinfer.io import Image, read_dicom_series
from medinfer.metrics import SliceDetections, boxes_agree
from medinfer.progress import progress_bar
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import Detection, task_for
from medinfer.tasks.detection import SCORE
from medinfer.variants import get_kind

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "lung-ct-detection"
LADDER = ("torch-fp32", "onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8", "openvino-int8")


def series_volume(data: Path, slices: int) -> Image:
    """The real slices of every series stacked (and repeated) to ``slices`` slices."""
    planes = [s.image.array[0][..., k] for s in load_detection_folder(data) for k in range(s.image.array.shape[-1])]
    stack = np.stack([planes[i % len(planes)] for i in range(slices)], axis=-1)
    return Image(stack[None].astype(np.float32), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0), np.eye(3))


def engines(task: Detection, names: list[str], in_flight: int) -> dict[str, object]:
    """Each ladder step's engine: every built variant, plus the INT8 one with requests in flight."""
    out = {n: task.open_variant(_record(task.art, n), EngineOptions(threads=2)) for n in names}
    int8 = next((n for n in ("openvino-int8", "onnxruntime-int8") if n in names), None)
    if int8:
        out[f"{int8} x{in_flight} in flight"] = task.open_variant(
            _record(task.art, int8), EngineOptions(threads=2, in_flight=in_flight))
    return out


def _record(art: ModelArtifact, name: str) -> VariantRecord:
    return next((v for v in art.spec.variants if v.name == name), VariantRecord.of(get_kind(name)))


def speed(task: Detection, steps: dict[str, object], series: Image, rounds: int) -> dict[str, object]:
    """Median seconds per series and per slice of each step, rounds interleaved."""
    one = Image(series.array[..., 32:33], series.spacing, series.origin, series.direction)
    per_series: dict[str, list[dict[str, float]]] = {n: [] for n in steps}
    per_slice: dict[str, list[float]] = {n: [] for n in steps}
    for engine in steps.values():  # first calls (compilation, allocations) are not timed
        task.predict(engine, series)
    with progress_bar("detection ladder", rounds * len(steps), True) as advance:
        for _ in range(rounds):
            for name, engine in steps.items():
                t0 = time.perf_counter()
                pred = task.predict(engine, series, name)
                per_series[name].append({**pred.seconds, "total": time.perf_counter() - t0,
                                         "detections": float(pred.extra["n_detections"])})
                for _ in range(5):
                    t0 = time.perf_counter()
                    task.predict(engine, one, name)
                    per_slice[name].append(time.perf_counter() - t0)
                advance()
    med = {n: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for n, rows in per_series.items()}
    ref = med["torch-fp32"]["total"]
    return {"series_s": med, "slice_ms": {n: 1000 * statistics.median(v) for n, v in per_slice.items()},
            "speedup_vs_eager": {n: ref / m["total"] for n, m in med.items()}, "rounds": per_series}


def stages(task: Detection, steps: dict[str, object], series: Image, rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds per 64-slice series of each step's parts: preparation, the stage-1
    network alone (what the seed's speed-up is about), decoding + NMS, crops, the stage-2 network."""
    x = task.prepare(series)
    times: dict[str, dict[str, list[float]]] = {n: {} for n in steps}
    for _ in range(rounds):
        for name, engine in steps.items():
            t = [time.perf_counter()]
            task.prepare(series)
            t.append(time.perf_counter())
            outs = engine.infer_many([x[i:i + task.batch] for i in range(0, len(x), task.batch)])
            t.append(time.perf_counter())
            rows = task.detect(engine.infer, None, x, lambda _: outs)
            t.append(time.perf_counter())
            crops = task.crops(x, rows)
            t.append(time.perf_counter())
            [engine.classifier.infer(crops[i:i + 64]) for i in range(0, len(crops), 64)]
            t.append(time.perf_counter())
            for key, a, b in zip(("prepare", "stage1_network", "decode_nms", "crops", "stage2_network"), t, t[1:]):
                times[name].setdefault(key, []).append(b - a)
    out = {n: {k: statistics.median(v) for k, v in parts.items()} for n, parts in times.items()}
    ref = out["torch-fp32"]["stage1_network"]
    for parts in out.values():
        parts["stage1_speedup_vs_eager"] = ref / parts["stage1_network"]
    return out


def reading(data: Path, repeats: int) -> dict[str, float]:
    """Seconds to read the largest real series (files sorted, decoded, rescaled)."""
    folder = max((s.image.source for s in load_detection_folder(data)), key=lambda p: len(list(p.iterdir())))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        image = read_dicom_series(folder)
        times.append(time.perf_counter() - t0)
    n = image.array.shape[-1]
    return {"series": folder.name, "files": n, "read_s": statistics.median(times),
            "read_ms_per_file": 1000 * statistics.median(times) / n}


def accuracy(task: Detection, steps: dict[str, object], data: Path) -> dict[str, object]:
    """Metrics on the held-out patient and agreement with PyTorch's boxes, slice by slice."""
    val = task.load_eval(data)
    out: dict[str, object] = {}
    ref = task.engine_outputs(steps["torch-fp32"], val)
    for name, engine in steps.items():
        rows = task.engine_outputs(engine, val)
        metrics = task.metrics(rows, val, n_boot=1000)
        same = [boxes_agree(SliceDetections(a[:, 1:5], a[:, SCORE]), SliceDetections(b[:, 1:5], b[:, SCORE]))
                for a, b in zip(ref, rows)]
        out[name] = {**metrics, "slices_same_boxes": sum(r == "" for r in same), "slices": len(same),
                     "first_difference": next((r for r in same if r), "")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "lung-detector")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--test", default="A0002", help="held-out patient folder under --data")
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    art = ModelArtifact.load(args.model)
    task = task_for(art)
    assert isinstance(task, Detection)
    built = {v.name for v in art.spec.variants} | {"torch-fp32"}
    steps = engines(task, [n for n in LADDER if n in built], args.in_flight)
    series = series_volume(args.data, args.slices)
    result = {
        "benchmark": "detection", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "versions": versions(), "model": str(args.model), "chosen": art.spec.chosen,
        "series": {"slices": args.slices, "shape": list(series.array.shape[1:]),
                   "note": "46 real slices stacked and repeated to the series length"},
        "speed": speed(task, steps, series, args.rounds), "stages": stages(task, steps, series, args.rounds),
        "reading": reading(args.data, 3),
        "accuracy": {"patient": args.test, "note": "ONE held-out patient (leave-one-patient-out of 2)",
                     "variants": accuracy(task, steps, args.data / args.test)},
    }
    for engine in steps.values():
        engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"| step | series ({args.slices} slices) s | x eager | ms / slice | AP@0.1 | sens@2FP | same boxes |")
    print("|---|---|---|---|---|---|---|")
    for name in steps:
        s, a = result["speed"], result["accuracy"]["variants"][name]
        print(f"| {name} | {s['series_s'][name]['total']:.3f} | {s['speedup_vs_eager'][name]:.2f} | "
              f"{s['slice_ms'][name]:.1f} | {a['ap@0.1']:.3f} | {a['sensitivity@2fp']:.3f} | "
              f"{a['slices_same_boxes']}/{a['slices']} |")
    print(f"reading: {result['reading']}")
    for name, parts in result["stages"].items():
        print(name, {k: round(v, 4) for k, v in parts.items()})


if __name__ == "__main__":
    main()
