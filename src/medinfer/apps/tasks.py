"""Task adapters: what "load the data", "score a variant" and "is it still good enough"
mean for each kind of model, so one optimizer, evaluator and benchmark serve them all.

* ``segmentation`` (2D): Kvasir-layout pairs; Dice / IoU; gate on the Dice drop.
* ``segmentation`` (3D): NIfTI volume pairs through the sliding window; Dice / IoU.
* ``classification``: a labeled folder; per-class ROC-AUC, mean AUC and abnormal AUC; gate
  on the mean-AUC drop *and* on every single class's AUC drop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.runtime import Engine

Infer = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class GateLimits:
    """How much a variant may lose against PyTorch FP32 (absolute)."""

    max_drop: float = 0.005
    max_class_drop: float = 0.02


class Task(ABC):
    """One kind of model. ``primary`` names the metric the gate and reports lead with."""

    name: str
    primary: str

    def __init__(self, art: ModelArtifact) -> None:
        self.art = art
        self.spec = art.spec.preprocessing

    @abstractmethod
    def load_eval(self, folder: Path, limit: int | None = None) -> Any:
        """Labeled evaluation data, prepared for the network."""

    @abstractmethod
    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Calibration network inputs (N, C, *size); labels are not needed."""

    @abstractmethod
    def outputs(self, infer: Infer, data: Any) -> list[np.ndarray]:
        """Raw network outputs per case (what the metric is computed from)."""

    @abstractmethod
    def metrics(self, outputs: list[np.ndarray], data: Any, n_boot: int = 0) -> dict[str, Any]:
        """Task metrics from :meth:`outputs` (flat floats, plus intervals when ``n_boot``)."""

    @abstractmethod
    def latency_batch(self, data: Any) -> np.ndarray:
        """A representative network batch for quick latency checks."""

    def subset(self, data: Any, index: list[int]) -> Any:
        """The cases ``index`` of ``data`` (accuracy-control ranks layers on subsets)."""
        return data.subset(index)

    def count(self, data: Any) -> int:
        return len(data)

    def network_input(self, data: Any, i: int) -> np.ndarray:
        """One network input (1, C, *size) standing for case ``i``."""
        return data.images[i:i + 1]

    def score(self, engine: Engine, data: Any, n_boot: int = 0) -> dict[str, Any]:
        return self.metrics(self.outputs(engine.infer, data), data, n_boot)

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        """Why ``cand`` fails against ``ref`` ("" when it passes)."""
        drop = ref[self.primary] - cand[self.primary]
        if drop > limits.max_drop:
            return f"{self.primary} drop {drop:.4f} > max {limits.max_drop:.4f}"
        return ""


def _batched(infer: Infer, images: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    return [np.asarray(infer(images[i:i + batch])) for i in range(0, len(images), batch)]


class Segmentation2D(Task):
    name, primary = "segmentation", "dice"

    def load_eval(self, folder: Path, limit: int | None = None):
        from medinfer.data.pairs import find_pairs, load_pairs

        pairs = find_pairs(folder)
        return load_pairs(pairs[:limit] if limit else pairs, self.spec)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        from medinfer.data.pairs import load_calibration_images

        return load_calibration_images(folder, self.spec, limit)

    def outputs(self, infer: Infer, data) -> list[np.ndarray]:
        return list(np.concatenate(_batched(infer, data.images))) if len(data) else []

    def metrics(self, outputs, data, n_boot: int = 0) -> dict[str, Any]:
        from medinfer.data.preprocess import logits_to_mask
        from medinfer.metrics import dice_iou_per_image, summarize

        s = summarize(*dice_iou_per_image(logits_to_mask(np.stack(outputs)), data.masks))
        return {"dice": s.dice, "iou": s.iou, "n": float(s.n)}

    def latency_batch(self, data) -> np.ndarray:
        return data.images[np.arange(16) % len(data)]


class Segmentation3D(Task):
    name, primary = "segmentation3d", "dice"

    def load_eval(self, folder: Path, limit: int | None = None):
        from medinfer.data.volumes import find_volume_pairs, load_volumes

        pairs = find_volume_pairs(folder)
        return load_volumes(pairs[:limit] if limit else pairs, self.spec)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        from medinfer.train.volume import sample_windows

        data = self.load_eval(folder)
        n = limit or 32 * len(data)
        return sample_windows(data, self.spec.size, n, 0.5, np.random.default_rng(0))[0]

    def outputs(self, infer: Infer, data) -> list[np.ndarray]:
        from medinfer.apps.volume import window_logits

        return [window_logits(_CallableEngine(infer), v, self.spec) for v in data.images]

    def metrics(self, outputs, data, n_boot: int = 0) -> dict[str, Any]:
        from medinfer.metrics import dice_iou_per_image, summarize

        dice, iou = zip(*(dice_iou_per_image((o[0] > 0)[None], m[None]) for o, m in zip(outputs, data.masks)))
        s = summarize(np.concatenate(dice), np.concatenate(iou))
        return {"dice": s.dice, "iou": s.iou, "n": float(s.n)}

    def latency_batch(self, data) -> np.ndarray:
        from medinfer.train.volume import sample_windows

        return sample_windows(data, self.spec.size, 4, 0.5, np.random.default_rng(1))[0]

    def network_input(self, data, i: int) -> np.ndarray:
        """The window centred on case ``i``'s foreground (its middle when it has none)."""
        from medinfer.train.volume import _pad_to

        image, mask = data.images[i], data.masks[i]
        shape, size = np.array(mask.shape), np.array(self.spec.size)
        centre = np.argwhere(mask).mean(axis=0).astype(int) if mask.any() else shape // 2
        lo = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
        sl = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(lo, size))
        return _pad_to(image[(slice(None), *sl)], tuple(size))[None]

    def subset(self, data, index: list[int]):
        from medinfer.data.volumes import VolumeSet

        return VolumeSet([data.names[i] for i in index], [data.images[i] for i in index],
                         [data.masks[i] for i in index])


class Classification(Task):
    name, primary = "classification", "mean_auc"

    def load_eval(self, folder: Path, limit: int | None = None):
        from medinfer.data.labels import load_labeled, read_labels

        records = read_labels(folder, self.art.spec.classes)
        return load_labeled(records[:limit] if limit else records, self.spec, self.art.spec.classes)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        from medinfer.data.pairs import load_calibration_images

        return load_calibration_images(folder, self.spec, limit)

    def outputs(self, infer: Infer, data) -> list[np.ndarray]:
        return list(np.concatenate(_batched(infer, data.images))) if len(data) else []

    def metrics(self, outputs, data, n_boot: int = 0) -> dict[str, Any]:
        from medinfer.metrics import classification_scores

        probs = 1.0 / (1.0 + np.exp(-np.stack(outputs).astype(np.float64)))
        s = classification_scores(probs, data.labels, data.classes, data.abnormal, n_boot=n_boot)
        out: dict[str, Any] = s.flat()
        if n_boot:
            out["intervals"] = {"mean_auc": [s.mean_auc.low, s.mean_auc.high],
                                **({"abnormal_auc": [s.abnormal_auc.low, s.abnormal_auc.high]}
                                   if s.abnormal_auc else {}),
                                **{f"auc/{c}": [v.low, v.high] for c, v in s.per_class.items()}}
            out["positives"] = {c: v.positives for c, v in s.per_class.items()}
        return out

    def latency_batch(self, data) -> np.ndarray:
        return data.images[np.arange(16) % len(data)]

    def subset(self, data, index: list[int]):
        from medinfer.data.labels import LabeledArrays

        return LabeledArrays(data.images[index], data.labels[index], data.abnormal[index],
                             [data.names[i] for i in index], data.classes)

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


class _CallableEngine:
    """Adapts a bare ``infer`` function to what :func:`window_logits` calls."""

    def __init__(self, infer: Infer) -> None:
        self.infer = infer


def task_for(art: ModelArtifact) -> Task:
    """The adapter for ``art``'s task and dimensionality."""
    dims = len(art.spec.input.spatial)
    if art.spec.task == "classification":
        return Classification(art)
    if art.spec.task == "segmentation":
        return Segmentation2D(art) if dims == 2 else Segmentation3D(art)
    raise MedinferError(f"{art.root}: unknown task {art.spec.task!r}")


def check_layout(task: Task, folder: Path) -> None:
    """Fail early, naming the folder, when data does not match the model's task."""
    from medinfer.data.labels import is_labeled_folder
    from medinfer.data.volumes import is_volume_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "data folder does not exist")
    want = {"classification": is_labeled_folder, "segmentation3d": is_volume_folder}.get(task.name)
    if want is not None and not want(folder):
        layout = "labels.csv + images/" if task.name == "classification" else "images/*.nii.gz + masks/"
        raise InputError(folder, f"model {task.art.root.name} ({task.name}) needs {layout}")
