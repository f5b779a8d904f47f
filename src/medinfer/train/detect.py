"""Recipes of the two-stage lesion detector (see :class:`~medinfer.train.config.DetectConfig`).

:class:`DetectionRecipe` trains stage 1 (RetinaNet) through the one training loop; its
:meth:`~DetectionRecipe.finish` then trains stage 2 (:class:`CandidateRecipe`, the
classification recipe on candidate crops) through the same loop, into the sub-folder the
artifact's detection settings name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.data.box_utils import box_iou

from medinfer.artifact import DataSplit, ModelArtifact
from medinfer.data.detection import DetectionSeries, load_detection_folder
from medinfer.data.labels import LabeledArrays
from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.models.detection import AnchorSpec, DetectionLoss, DetectorGeometry
from medinfer.tasks.detection import COLUMNS, Detection, DetectionSet, input_boxes, load_series
from medinfer.train.config import ClassifyConfig, DetectConfig
from medinfer.train.recipes import Batch, ClassificationRecipe, Progress, Recipe, Sampler, Shard, Split

LESION = ("lesion",)
"""The one class of the shipped detector."""


def series_split(cfg: DetectConfig) -> Split:
    """Series of ``cfg.test_patients`` held out; ``cfg.val_series`` (default: the last
    remaining series) validate; the rest train."""
    series = load_detection_folder(cfg.data)
    test = [s for s in series if s.patient in cfg.test_patients]
    rest = [s for s in series if s.patient not in cfg.test_patients]
    names = set(cfg.val_series) or ({rest[-1].name} if rest else set())
    val = [s for s in rest if s.name in names]
    train = [s for s in rest if s.name not in names]
    if not train or not val:
        raise InputError(cfg.data, f"detection split leaves {len(train)} training and {len(val)} validation "
                                   f"series (test patients {list(cfg.test_patients)}, val_series "
                                   f"{sorted(names)}, series {[s.name for s in series]})")
    return Split(train, val, test, DataSplit(unit="case", train=[s.name for s in train],
                                             val=[s.name for s in val], test=[s.name for s in test]))


LUNG_LEVEL = 0.3
"""Normalized intensity (``(HU + 1000) / 1400``) below which a pixel counts as lung (-580 HU)."""


def paste_lesions(images: np.ndarray, boxes: list[np.ndarray], donors: DetectionSet,
                  donor_boxes: list[np.ndarray], rng: np.random.Generator, prob: float = 0.5) -> list[np.ndarray]:
    """Copy-paste augmentation: with probability ``prob`` per image, a truth lesion of a
    random training slice (all its channels, edges feathered) is pasted where the image
    shows lung, away from its own boxes. ``images`` is changed in place; returns the boxes."""
    out = []
    _, _, h, w = images.shape
    with_box = [i for i, b in enumerate(donor_boxes) if len(b)]
    for x, b in zip(images, boxes):
        if not with_box or rng.random() >= prob:
            out.append(b)
            continue
        d = with_box[rng.integers(len(with_box))]
        a0, b0, a1, b1 = np.round(donor_boxes[d][rng.integers(len(donor_boxes[d]))]).astype(int)
        patch = donors.images[d][:, max(a0, 0):a1, max(b0, 0):b1]
        ph, pw = patch.shape[1:]
        for _ in range(10):  # a few tries to land in lung, clear of the existing boxes
            top, left = int(rng.integers(0, max(h - ph, 1))), int(rng.integers(0, max(w - pw, 1)))
            new = np.array([[top, left, top + ph, left + pw]], np.float32)
            centre = x[x.shape[0] // 2, top + ph // 2, left + pw // 2]
            if centre < LUNG_LEVEL and (not len(b) or float(np.asarray(box_iou(new, b)).max()) == 0.0):
                ramp_a = np.minimum(np.arange(ph) + 1, ph - np.arange(ph)) / max(ph * 0.15, 1)
                ramp_b = np.minimum(np.arange(pw) + 1, pw - np.arange(pw)) / max(pw * 0.15, 1)
                alpha = np.clip(np.minimum.outer(ramp_a, ramp_b), 0, 1)[None]
                region = x[:, top:top + ph, left:left + pw]
                region[...] = alpha * patch + (1 - alpha) * region
                b = np.concatenate([b.reshape(-1, 4), new])
                break
        out.append(b)
    return out


def augment(images: np.ndarray, boxes: list[np.ndarray], rng: np.random.Generator) -> Batch:
    """Random flips of both axes, zoom 0.7-1.4, shift up to 10 %, intensity gain/offset and
    noise; boxes (MONAI order, input pixels) follow. Returns the batch and the ``(B, M, 5)``
    target (boxes + label 0, rows of -1 as padding); a box mostly pushed out is dropped."""
    n, _, h, w = images.shape
    size = np.array([h, w, h, w], np.float32)
    zoom = rng.uniform(0.7, 1.4, n)
    shift = rng.uniform(-0.1, 0.1, (n, 2))
    flip = rng.random((n, 2)) < 0.5
    theta = torch.zeros(n, 2, 3)
    # output -> input sampling in normalized coordinates (x = column, y = row)
    theta[:, 0, 0] = torch.from_numpy(np.where(flip[:, 1], -1.0, 1.0) / zoom)
    theta[:, 1, 1] = torch.from_numpy(np.where(flip[:, 0], -1.0, 1.0) / zoom)
    theta[:, 0, 2] = torch.from_numpy(-shift[:, 1] * 2 * theta[:, 0, 0].numpy())
    theta[:, 1, 2] = torch.from_numpy(-shift[:, 0] * 2 * theta[:, 1, 1].numpy())
    x = torch.from_numpy(images)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, align_corners=False, padding_mode="border")
    x = x * torch.from_numpy(rng.uniform(0.9, 1.1, (n, 1, 1, 1))).float() \
        + torch.from_numpy(rng.normal(0, 0.03, (n, 1, 1, 1))).float() + 0.01 * torch.randn_like(x)
    out = []
    for i, b in enumerate(boxes):
        b = b.copy()
        if flip[i, 0]:
            b[:, [0, 2]] = h - b[:, [2, 0]]
        if flip[i, 1]:
            b[:, [1, 3]] = w - b[:, [3, 1]]
        centre = size / 2
        moved = (b - centre) * zoom[i] + centre + np.array([shift[i, 0] * h, shift[i, 1] * w] * 2, np.float32)
        clipped = np.clip(moved, 0, size)
        area = lambda c: np.prod(np.maximum(c[:, 2:] - c[:, :2], 0), axis=1)  # noqa: E731
        keep = area(clipped) >= 0.5 * np.maximum(area(moved), 1e-6)
        out.append(clipped[keep])
    m = max([len(b) for b in out] + [1])
    target = np.full((n, m, 5), -1.0, np.float32)
    for i, b in enumerate(out):
        target[i, :len(b), :4], target[i, :len(b), 4] = b, 0
    return x.float(), torch.from_numpy(target)


class DetectionRecipe(Recipe[DetectConfig]):
    """Stage 1 on augmented annotated slices; stage 2 after it (:meth:`finish`)."""

    task = "detection"
    unit = "slices"

    def split(self, cfg: DetectConfig) -> Split:
        return series_split(cfg)

    def load(self, cfg: DetectConfig, items: list[Any], progress: Progress = None) -> DetectionSet:
        data = load_series(items, cfg.preprocessing)
        if progress:
            progress(len(items))
        return data

    def loss(self, cfg: DetectConfig, train: DetectionSet) -> torch.nn.Module:
        return DetectionLoss(DetectorGeometry(AnchorSpec.of(cfg.arch_kwargs), cfg.preprocessing.size))

    def epoch_samples(self, cfg: DetectConfig, train: DetectionSet) -> int:
        return cfg.samples_per_epoch

    def sampler(self, cfg: DetectConfig, train: DetectionSet, shard: Shard = Shard()) -> Sampler:
        boxes = input_boxes(train)
        samples = shard.count(cfg.samples_per_epoch)

        def draw(shared: np.random.Generator) -> Iterator[Batch]:
            rng = shard.generator(shared)
            for _ in range(0, samples, cfg.batch_size):
                idx = rng.integers(0, len(train), cfg.batch_size)
                images = train.images[idx]  # fancy indexing: a copy, pasted into freely
                picked = paste_lesions(images, [boxes[i] for i in idx], train, boxes, rng, cfg.paste_prob)
                yield augment(images, picked, rng)

        return draw

    def spec_fields(self, cfg: DetectConfig) -> dict[str, Any]:
        return {"task": "detection", "classes": list(LESION),
                "detection": cfg.detection.model_copy(update={"stage2": ""})}

    def finish(self, cfg: DetectConfig, art: ModelArtifact) -> None:
        """Train the candidate classifier on this stage 1's candidates and link it."""
        if not cfg.stage2_epochs or not cfg.detection.stage2:
            return
        from medinfer.train.fit import fit  # the loop imports the recipes: a cycle at import time

        split = series_split(cfg)
        side = cfg.detection.crop_size
        ccfg = ClassifyConfig(
            data=cfg.data, out=art.root / cfg.detection.stage2, architecture=cfg.stage2_architecture,
            classes=LESION, epochs=cfg.stage2_epochs, batch_size=32, lr=cfg.lr, seed=cfg.seed,
            threads=cfg.threads, val_every=1, precision=cfg.precision, prefetch=cfg.prefetch,
            preprocessing=Preprocessing(size=(side, side), scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3,
                                        channels=cfg.preprocessing.channels))
        fit(CandidateRecipe(art, cfg, split), ccfg, art.spec.training.command)
        art.spec.detection = cfg.detection
        art.save()


class CandidateRecipe(ClassificationRecipe):
    """Stage 2: the classification recipe on crops of stage-1 candidates (positives: candidates
    overlapping a truth box by IoU >= 0.3, jittered truth boxes and, with ``paste_prob``, the
    truth lesions pasted into other lung surroundings; negatives: candidates with IoU < 0.1
    and random boxes)."""

    task = "candidates"

    def __init__(self, stage1: ModelArtifact, cfg: DetectConfig, split: Split) -> None:
        self.stage1, self.detect_cfg, self.series = stage1, cfg, split

    @staticmethod
    def classes(cfg: ClassifyConfig) -> tuple[str, ...]:
        return LESION

    def split(self, cfg: ClassifyConfig) -> Split:
        return self.series

    def load(self, cfg: ClassifyConfig, items: list[DetectionSeries], progress: Progress = None) -> LabeledArrays:
        task = Detection(self.stage1)
        data = load_series(items, self.stage1.spec.preprocessing)
        rows = task.candidates(data.images)
        rng = np.random.default_rng(cfg.seed + len(items))
        truths = input_boxes(data)
        picked, labels = mine(rows, truths, data.images.shape[-2:], self.detect_cfg, rng)
        crops = task.crops(data.images, picked)
        if self.detect_cfg.paste_prob > 0:  # the lesions again, pasted into other surroundings
            pasted = data.images.copy()
            moved = paste_lesions(pasted, [np.zeros((0, 4), np.float32)] * len(pasted), data, truths, rng, 1.0)
            extra = np.array([[k, *b[-1], 0.0, 0.0, 0.0] for k, b in enumerate(moved) if len(b)], np.float32)
            if len(extra):
                crops = np.concatenate([crops, task.crops(pasted, extra)])
                picked = np.concatenate([picked, extra])
                labels = np.concatenate([labels, np.ones(len(extra), np.int64)])
        if progress:
            progress(len(items))
        return LabeledArrays(crops, labels[:, None].astype(np.float32), labels.astype(int),
                             [f"{data.names[int(k)]}@{i}" for i, k in enumerate(picked[:, 0])], LESION)


def mine(rows: np.ndarray, truths: list[np.ndarray], size: tuple[int, int], cfg: DetectConfig,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stage-2 training boxes as detection rows (:data:`COLUMNS`) and their 0/1 labels."""
    h, w = size
    out, labels = [], []

    def add(k: int, boxes: np.ndarray, label: int) -> None:
        for b in boxes:
            out.append([k, *b, 0.0, 0.0, 0.0])
            labels.append(label)

    for k, truth in enumerate(truths):
        cand = rows[rows[:, 0] == k, 1:5]
        if len(cand):
            iou = np.asarray(box_iou(cand, truth)).max(axis=1) if len(truth) else np.zeros(len(cand))
            add(k, cand[iou >= 0.3], 1)
            add(k, cand[iou < 0.1], 0)
        for t in truth:
            extent = t[2:] - t[:2]
            for _ in range(cfg.jitter):
                centre = (t[:2] + t[2:]) / 2 + rng.uniform(-0.1, 0.1, 2) * extent
                half = extent * rng.uniform(0.85, 1.15, 2) / 2
                add(k, np.concatenate([centre - half, centre + half])[None], 1)
        for _ in range(cfg.negatives_per_slice):
            side = rng.uniform(8, 64, 2)
            corner = rng.uniform(0, 1, 2) * (np.array([h, w]) - side)
            box = np.concatenate([corner, corner + side])[None].astype(np.float32)
            if not len(truth) or float(np.asarray(box_iou(box, truth)).max()) < 0.05:
                add(k, box, 0)
    picked = np.array(out, np.float32).reshape(-1, len(COLUMNS))
    return picked, np.array(labels, np.int64)
