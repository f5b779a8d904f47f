"""Multi-label classification (CheXNet chest X-ray findings, S1): one picture resized to the
network's input, a sigmoid probability per class, per-class ROC-AUC, DICOM SR results."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.labels import is_labeled_folder, load_labeled, read_labels
from medinfer.io import Image
from medinfer.io.derived import overlay_slice, write_png, write_sc, write_sr
from medinfer.metrics import classification_scores
from medinfer.tasks.base import GateLimits, PictureTask, Prediction, WriteOptions, WrittenFile


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


class Classification(PictureTask):
    """Multi-label classification of pictures (``labels.csv`` + ``images/``).

    The gate checks the mean AUC *and* every single class's AUC.
    """

    name: ClassVar[str] = "classification"
    primary: ClassVar[str] = "mean_auc"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (("mean_auc", "mean AUC"),
                                                      ("abnormal_auc", "abnormal AUC"))
    layout: ClassVar[str] = "labels.csv + images/"

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "classification"

    @property
    def classes(self) -> list[str]:
        return list(self.art.spec.classes) or [f"class_{k}" for k in range(self.art.spec.out_channels)]

    def is_layout(self, folder: Path) -> bool:
        return is_labeled_folder(folder)

    def load_eval(self, folder: Path, limit: int | None = None):
        records = read_labels(folder, self.art.spec.classes)
        return load_labeled(records[:limit] if limit else records, self.spec, self.art.spec.classes)

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        probs = sigmoid(outputs)
        return Prediction(self.name, scores={c: float(p) for c, p in zip(self.classes, probs)},
                          thresholds=dict(self.art.spec.thresholds))

    def metrics(self, outputs, data, n_boot: int = 0) -> dict[str, Any]:
        """Per-class ROC-AUC, mean AUC over classes present, abnormal AUC; with ``n_boot``,
        bootstrap 95% intervals under ``intervals`` and positives per class."""
        probs = sigmoid(np.stack(outputs)) if outputs else np.zeros((0, len(data.classes)))
        s = classification_scores(probs, data.labels, data.classes, data.abnormal, n_boot=n_boot)
        out: dict[str, Any] = s.flat()
        if n_boot:
            out["intervals"] = {"mean_auc": [s.mean_auc.low, s.mean_auc.high],
                                **({"abnormal_auc": [s.abnormal_auc.low, s.abnormal_auc.high]}
                                   if s.abnormal_auc else {}),
                                **{f"auc/{c}": [v.low, v.high] for c, v in s.per_class.items()}}
            out["positives"] = {c: v.positives for c, v in s.per_class.items()}
        return out

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        reason = super().gate(ref, cand, limits)
        if reason:
            return reason
        worst = [(ref[k] - cand[k], k[4:]) for k in ref if k.startswith("auc/")
                 and np.isfinite(ref[k]) and np.isfinite(cand.get(k, np.nan))]
        if worst:
            drop, cls = max(worst)
            if drop > limits.max_class_drop:
                return f"{cls} AUC drop {drop:.4f} > max {limits.max_class_drop:.4f}"
        return ""

    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """The picture (for viewers and the Secondary Capture) when ``options.overlay``."""
        if not options.overlay:
            return []
        picture, _ = overlay_slice(image.array, np.zeros(image.spatial_shape, np.uint8))
        return [WrittenFile("overlay", write_png(picture, out_dir / options.name("overlay.png")), "image/png")]

    def write_dicom(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """Comprehensive SR of the findings and a Secondary Capture of the picture."""
        name = self.art.root.name
        path, uid = write_sr(image.instances, pred.scores, pred.thresholds, out_dir / options.name("sr.dcm"), name,
                             pred.variant)
        files = [WrittenFile("sr", path, "application/dicom", uid)]
        picture, _ = overlay_slice(image.array, np.zeros(image.spatial_shape, np.uint8))
        path, uid = write_sc(image.instances[0], picture, out_dir / options.name("sc.dcm"), name)
        return files + [WrittenFile("sc", path, "application/dicom", uid)]
