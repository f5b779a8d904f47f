"""Image classification: one picture resized to the network's input, per-class ROC-AUC,
DICOM SR results.

Multi-label (CheXNet chest X-ray findings, S1): a sigmoid probability per finding. Mutually
exclusive classes (the artifact's ``classification.exclusive``, e.g. the six Bethesda classes
of a cell): a softmax over the classes, and top-1 ``accuracy`` and ``balanced_accuracy``
beside the AUCs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ClassificationSpec, ModelArtifact
from medinfer.data.labels import check_exclusive, is_labeled_folder, load_labeled, read_labels
from medinfer.io import Image
from medinfer.io.derived import overlay_slice, write_png, write_sc, write_sr
from medinfer.metrics import classification_scores
from medinfer.metrics.exclusive import exclusive_scores
from medinfer.tasks.base import GateLimits, PictureTask, Prediction, WriteOptions, WrittenFile, gate_keys


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Probabilities over ``axis`` (the classes) of ``logits``, computed stably in float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Classification(PictureTask):
    """Classification of pictures (``labels.csv`` + ``images/``, or ``images/<class>/``).

    The gate checks the mean AUC *and* every single class's AUC; for exclusive classes
    also the top-1 accuracy (within the same ``max_drop`` as the mean AUC).
    """

    name: ClassVar[str] = "classification"
    primary: ClassVar[str] = "mean_auc"
    layout: ClassVar[str] = "labels.csv + images/, or images/<class>/"

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        """Mean and abnormal AUC; exclusive classes: mean AUC, accuracy, balanced accuracy
        (and the abnormal AUC when a normal class is named)."""
        if not self.class_spec.exclusive:
            return (("mean_auc", "mean AUC"), ("abnormal_auc", "abnormal AUC"))
        cols = (("mean_auc", "mean AUC"), ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"))
        return cols + ((("abnormal_auc", "abnormal AUC"),) if self.class_spec.normal else ())

    @property
    def class_spec(self) -> ClassificationSpec:
        """The artifact's class settings (default: independent findings)."""
        return self.art.spec.classification or ClassificationSpec()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Per-class probabilities of logits (..., K): softmax over exclusive classes, else a sigmoid each."""
        return softmax(logits) if self.class_spec.exclusive else sigmoid(logits)

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "classification"

    @property
    def classes(self) -> list[str]:
        return list(self.art.spec.classes) or [f"class_{k}" for k in range(self.art.spec.out_channels)]

    def is_layout(self, folder: Path) -> bool:
        return is_labeled_folder(folder)

    def load_eval(self, folder: Path, limit: int | None = None):
        records = read_labels(folder, self.art.spec.classes, self.class_spec.groups or None)
        records = records[:limit] if limit else records
        if self.class_spec.exclusive:
            check_exclusive(records)
        return load_labeled(records, self.spec, self.art.spec.classes)

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        probs = self.probabilities(outputs)
        scores = {c: float(p) for c, p in zip(self.classes, probs)}
        extra = {"predicted": max(scores, key=scores.__getitem__)} if self.class_spec.exclusive else {}
        return Prediction(self.name, scores=scores, thresholds=dict(self.art.spec.thresholds), extra=extra)

    def metrics(self, outputs, data, n_boot: int = 0) -> dict[str, Any]:
        """Per-class ROC-AUC, mean AUC over classes present, abnormal AUC; with ``n_boot``,
        bootstrap 95% intervals under ``intervals`` and positives per class.

        Exclusive classes add ``accuracy`` and ``balanced_accuracy`` (with ``n_boot``: their
        Wilson and bootstrap intervals under ``intervals``, the per-class ``recall`` and the
        ``confusion`` matrix, rows true, columns predicted); their abnormal AUC scores one
        minus the normal class's probability against "not the normal class" (none without one)."""
        probs = self.probabilities(np.stack(outputs)) if outputs else np.zeros((0, len(data.classes)))
        spec = self.class_spec
        if spec.exclusive:
            s = classification_scores(probs, data.labels, data.classes, n_boot=n_boot)
            if spec.normal in data.classes:  # abnormal: any class but the normal one
                k = list(data.classes).index(spec.normal)
                a = classification_scores(1.0 - probs[:, [k]], 1.0 - data.labels[:, [k]], ["abnormal"],
                                          n_boot=n_boot)
                s = replace(s, abnormal_auc=a.per_class["abnormal"])
        else:
            s = classification_scores(probs, data.labels, data.classes, data.abnormal, n_boot=n_boot)
        out: dict[str, Any] = s.flat()
        if n_boot:
            out["intervals"] = {"mean_auc": [s.mean_auc.low, s.mean_auc.high],
                                **({"abnormal_auc": [s.abnormal_auc.low, s.abnormal_auc.high]}
                                   if s.abnormal_auc else {}),
                                **{f"auc/{c}": [v.low, v.high] for c, v in s.per_class.items()}}
            out["positives"] = {c: v.positives for c, v in s.per_class.items()}
        if spec.exclusive:
            e = exclusive_scores(probs, data.labels, data.classes, n_boot=n_boot)
            out.update(accuracy=e.accuracy, balanced_accuracy=e.balanced_accuracy)
            if n_boot:
                out["intervals"].update(accuracy=list(e.accuracy_ci), balanced_accuracy=list(e.balanced_ci))
                out.update(recall=e.recall, confusion=e.confusion.tolist())
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
        return gate_keys(ref, cand, limits, ("accuracy",)) if self.class_spec.exclusive else ""

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
