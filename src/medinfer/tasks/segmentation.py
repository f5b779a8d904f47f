"""Segmentation tasks: what 2D and 3D segmentation share (label maps, Dice / IoU, mask and
DICOM SEG writing, report overlays) and the 2D task (Kvasir-SEG polyps, S2): a picture
resized to the network's input, the label map resized back to the picture's own size."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.pairs import find_pairs, load_pairs
from medinfer.data.preprocess import resize_mask
from medinfer.io import Image, overlay, write_mask_nifti, write_mask_png
from medinfer.io.derived import overlay_slice, write_png, write_sc, write_seg
from medinfer.metrics import dice_iou_per_image, mean_interval
from medinfer.tasks.base import Example, PictureTask, Prediction, Task, WriteOptions, WrittenFile


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """``(K, *S)`` logits -> ``(*S)`` uint8 labels: sigmoid > 0.5 for one channel, else argmax."""
    logits = np.asarray(logits)
    if logits.shape[0] == 1:
        return (logits[0] > 0).astype(np.uint8)
    return logits.argmax(0).astype(np.uint8)


def display(image: np.ndarray) -> np.ndarray:
    """A (C, *S) network input (any normalization) as uint8 for pictures: each case
    windowed to its 1st..99.5th percentile."""
    lo, hi = np.percentile(image, (1, 99.5))
    return ((image - lo) / max(float(hi - lo), 1e-6) * 255).clip(0, 255).astype(np.uint8)


class SegmentationTask(Task):
    """Shared by 2D and 3D segmentation: Dice / IoU per case, label maps, SEG results."""

    primary: ClassVar[str] = "dice"

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        """Dice and IoU (means over labels), then each label's Dice when there are several."""
        base = (("dice", "Dice"), ("iou", "IoU"))
        if len(self.segments) == 1:
            return base
        return base + tuple((f"dice/{n}", f"Dice {n}") for _, n in sorted(self.segments.items()))

    @property
    def segments(self) -> dict[int, str]:
        """Label value -> segment name (``{1: "foreground"}`` when the artifact names none)."""
        return dict(self.art.spec.segments) or {1: "foreground"}

    def masks(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Foreground masks (bool) from per-case outputs (K, *S)."""
        return [labels_from_logits(o) > 0 for o in outputs]

    def metrics(self, outputs: list[np.ndarray], data: Any, n_boot: int = 0) -> dict[str, Any]:
        """Mean Dice / IoU over cases (each image or volume one case; MONAI metrics).

        With several segments, ``dice/<name>`` and ``iou/<name>`` are each label's mean over
        cases (label == value in prediction and truth) and ``dice`` / ``iou`` the mean over
        labels; with one, the foreground's. With ``n_boot``, bootstrap 95 % intervals over
        the cases under ``intervals`` (NaN for one case: one volume has no interval)."""
        if not outputs:
            return {"dice": float("nan"), "iou": float("nan"), "n": 0.0}
        if len(self.segments) == 1:
            per_case = {"": self._per_case(self.masks(outputs), [np.asarray(t) > 0 for t in data.masks])}
        else:
            labels = [labels_from_logits(o) for o in outputs]
            per_case = {f"/{name}": self._per_case([p == value for p in labels],
                                                   [np.asarray(t) == value for t in data.masks])
                        for value, name in sorted(self.segments.items())}
        cases = {"dice": np.mean([d for d, _ in per_case.values()], axis=0),
                 "iou": np.mean([i for _, i in per_case.values()], axis=0)}
        out: dict[str, Any] = {"dice": float(cases["dice"].mean()), "iou": float(cases["iou"].mean()),
                               "n": float(len(outputs))}
        if len(per_case) > 1:
            for suffix, (d, i) in per_case.items():
                out[f"dice{suffix}"], out[f"iou{suffix}"] = float(d.mean()), float(i.mean())
        if n_boot:
            values = {**cases, **{f"{m}{suffix}": v for suffix, pair in per_case.items() if suffix
                                  for m, v in zip(("dice", "iou"), pair)}}
            out["intervals"] = {k: list(mean_interval(v, n_boot)) for k, v in values.items()}
        return out

    @staticmethod
    def _per_case(preds: list[np.ndarray], truths: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-case Dice and IoU arrays."""
        dice, iou = zip(*(dice_iou_per_image(p[None], t[None]) for p, t in zip(preds, truths)))
        return np.concatenate(dice), np.concatenate(iou)

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: Any) -> str:
        """The mean Dice gate, and the same limit on every label's Dice (a variant must not
        trade one structure for another)."""
        why = super().gate(ref, cand, limits)
        for key in sorted(k for k in ref if k.startswith("dice/")):
            drop = ref[key] - cand.get(key, float("nan"))
            if not why and not drop <= limits.max_drop:
                why = f"{key} drop {drop:.4f} > max {limits.max_drop:.4f}"
        return why

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        labels = labels_from_logits(outputs)
        if labels.shape != image.spatial_shape:
            labels = resize_mask(labels, image.spatial_shape)
        return Prediction(self.name, mask=labels, segments=self.segments)

    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """``mask.png`` (2D, 0/255) or ``mask.nii.gz`` (labels, the input's geometry), and an
        overlay of the slice with the most foreground; for DICOM input the SEG carries the
        mask instead."""
        assert pred.mask is not None
        if options.dicom and image.instances:
            files = []
        elif pred.mask.ndim == 2:
            files = [WrittenFile("mask", write_mask_png(pred.mask > 0, out_dir / options.name("mask.png")),
                                 "image/png")]
        else:
            path = write_mask_nifti(pred.mask, out_dir / options.name("mask.nii.gz"), reference=image)
            files = [WrittenFile("mask", path, "application/gzip")]
        if options.overlay:
            picture, _ = overlay_slice(image.array, pred.mask)
            files.append(WrittenFile("overlay", write_png(picture, out_dir / options.name("overlay.png")),
                                     "image/png"))
        return files

    def write_dicom(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """DICOM SEG on the source instances (frame k on slice k) and a Secondary Capture."""
        assert pred.mask is not None
        files = []
        name = self.art.root.name
        if pred.segments and pred.mask.any():
            path, uid = write_seg(image.instances, pred.mask, pred.segments, out_dir / options.name("seg.dcm"), name,
                                  pred.variant, labelmap=options.labelmap)
            files.append(WrittenFile("seg", path, "application/dicom", uid))
        picture, k = overlay_slice(image.array, pred.mask)
        ref = image.instances[k] if len(image.instances) > k else image.instances[0]
        path, uid = write_sc(ref, picture, out_dir / options.name("sc.dcm"), name)
        files.append(WrittenFile("sc", path, "application/dicom", uid))
        return files

    def examples(self, data: Any, outputs: dict[str, list[np.ndarray]], n: int) -> list[Example]:
        """The first ``n`` cases: image, truth and each variant's mask (the slice with the most
        true foreground for volumes), with each variant's Dice on that case."""
        colours = ((30, 120, 255), (255, 230, 0), (200, 0, 255), (0, 220, 220))
        out = []
        masks = {v: self.masks(o[:n]) for v, o in outputs.items()}
        for i in range(min(n, self.count(data))):
            image, truth = display(data.images[i]), np.asarray(data.masks[i], bool)
            k = None
            if truth.ndim == 3:
                area = truth.sum(axis=(0, 1))
                k = int(np.argmax(area)) if area.any() else truth.shape[-1] // 2
            cut = (lambda a: a[..., k]) if k is not None else (lambda a: a)
            base = cut(image)
            pictures = {"image": overlay(base, np.zeros(base.shape[1:], bool), alpha=0.0, contour=False),
                        "ground truth": overlay(base, cut(truth), color=(0, 200, 0))}
            scores = {}
            for (variant, ms), colour in zip(masks.items(), colours):
                pictures[variant] = overlay(base, cut(ms[i]), color=colour)
                scores[variant] = float(dice_iou_per_image(ms[i][None], truth[None])[0][0])
            out.append(Example(data.names[i], pictures, scores))
        return out


class Segmentation2D(PictureTask, SegmentationTask):
    """2D segmentation of pictures (Kvasir layout: ``images/`` + ``masks/``)."""

    name: ClassVar[str] = "segmentation"
    layout: ClassVar[str] = "images/ + masks/ (pictures)"

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "segmentation" and len(art.spec.input.spatial) == 2

    def is_layout(self, folder: Path) -> bool:
        return (Path(folder) / "images").is_dir() and (Path(folder) / "masks").is_dir()

    def check_layout(self, folder: Path) -> None:
        """The pair finder's own reasons (no ``masks/`` folder, an image without a mask, ...)."""
        if not Path(folder).is_dir():
            super().check_layout(folder)
        find_pairs(folder)

    def load_eval(self, folder: Path, limit: int | None = None):
        pairs = find_pairs(folder)
        return load_pairs(pairs[:limit] if limit else pairs, self.spec)
