"""A tiny two-stage detector trained on synthetic CT slices, for tests of the detection task
through every command and the service (about 3 s to train on 2 cores)."""

from __future__ import annotations

from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.data.detection import write_synthetic_detection
from medinfer.train import DetectConfig, fit
from medinfer.train.detect import DetectionRecipe

PATIENTS = ("P1", "P2", "P3")
"""Synthetic patients: P1 and P2 train (P2 chooses the epoch), P3 is held out."""


def synthetic_data(root: Path, slices: int = 8, size: int = 64) -> Path:
    """Layout-A detection data: one CT series per patient, VOC boxes on the lesion slices."""
    return write_synthetic_detection(root, patients=PATIENTS, slices=slices, size=size)


def train_tiny_detector(data: Path, out: Path, epochs: int = 4, stage2_epochs: int = 2) -> ModelArtifact:
    """Both stages trained on ``data`` at a 64-pixel input (P3 held out)."""
    cfg = DetectConfig(data=data, out=out, test_patients=("P3",), val_series=(), epochs=epochs,
                       samples_per_epoch=16, batch_size=4, stage2_epochs=stage2_epochs, val_every=2,
                       preprocessing={"size": (64, 64)},
                       detection={"stage2": "stage2", "report_score": 0.05},  # weak model: report all
                       arch_kwargs={"anchors": [[8, 8], [12, 12]], "returned_layers": [2, 3]})
    fit(DetectionRecipe(), cfg, "tests")
    return ModelArtifact.load(out)
