"""Benchmark: the S6 detector in both leave-one-patient-out folds, and what the second stage
does to the held-out patient at each weight it may have in the final score. Not a test.

Lung-PET-CT-Dx here has TWO patients, so each fold's figures come from ONE held-out
patient (18 or 20 annotated slices, one tumour each); the intervals are bootstrap 95 %
over those slices. The shipped model is fold 1 (trained on A0001, tested on A0002); the
stage-2 weight it ships with was chosen on fold 2 (trained on A0002, tested on A0001).

Train the folds first (about 3 min each on 2 cores):

    .venv/bin/medinfer train --config config/train.lung-detector.yaml                # fold 1
    .venv/bin/medinfer train --config config/train.lung-detector.yaml \\
        --set out=runs/lung-detector-fold2 --set 'test_patients=[A0001]' \\
        --set 'val_series=["A0002/3.000000-ThoraxRoutine  8.0.0  B40f-10983"]'       # fold 2

then (repository root):

    .venv/bin/python benchmarks/detection_folds.py --fold1 runs/lung-detector \\
        --fold2 runs/lung-detector-fold2 --out benchmarks/results/detection_folds_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import Detection

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "lung-ct-detection"
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
KEYS = ("ap@0.1", "sensitivity@1fp", "sensitivity@2fp", "sensitivity@4fp", "froc", "n", "n_boxes")


def fold(model: Path, patient: str, data: Path) -> dict[str, object]:
    """PyTorch FP32 metrics on ``patient`` with stage 1 alone and at every stage-2 weight."""
    art = ModelArtifact.load(model)
    out: dict[str, object] = {"model": str(model), "test_patient": patient,
                              "trained_on": art.spec.training.split.train if art.spec.training.split else [],
                              "best_epoch": art.spec.training.best_epoch}
    stage2 = art.spec.detection.stage2 if art.spec.detection else ""
    for label, settings in [("stage 1 alone", {"stage2": ""})] + [
            (f"stage-2 weight {w}", {"stage2": stage2, "stage2_weight": w}) for w in WEIGHTS]:
        art.spec.detection = art.spec.detection.model_copy(update=settings)
        task = Detection(art)
        val = task.load_eval(data / patient)
        engine, _ = task.open_engine("torch", "fp32", EngineOptions())
        try:
            m = task.score(engine, val, n_boot=1000)
        finally:
            engine.close()
        out[label] = {**{k: m[k] for k in KEYS}, "intervals": m["intervals"]}
        print(f"{model.name} -> {patient} {label}: AP@0.1 {m['ap@0.1']:.3f}  sens@1/2/4FP "
              f"{m['sensitivity@1fp']:.3f} / {m['sensitivity@2fp']:.3f} / {m['sensitivity@4fp']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fold1", type=Path, default=REPO / "runs" / "lung-detector")
    ap.add_argument("--fold2", type=Path, default=REPO / "runs" / "lung-detector-fold2")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = {"benchmark": "detection_folds",
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "versions": versions(),
              "note": "two patients: every figure is from ONE held-out patient; PyTorch FP32",
              "fold1": fold(args.fold1, "A0002", args.data), "fold2": fold(args.fold2, "A0001", args.data)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
