"""Cell-centre detection on level-0 slide regions: the second stage of whole-slide cytology.

The network (:mod:`medinfer.models.cells`) outputs a centre heat-map and class logits for a
region; peaks are cells. Validation and the optimizer's gate score it as a detector: a
predicted centre matches a truth cell when their boxes of one cell's side (``CELL_BOX``)
overlap by IoU >= 0.1, scored by AP and FROC sensitivities (:mod:`medinfer.metrics.detection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.mosaic import ABNORMAL
from medinfer.data.preprocess import prepare_tiles
from medinfer.data.slide_sets import is_slide_folder, read_slide_folder, sample_regions
from medinfer.io import Image
from medinfer.metrics.detection import SliceDetections, SliceTruth, detection_scores
from medinfer.models.cells import decode_centres
from medinfer.tasks.base import GateLimits, Infer, PictureTask, Prediction, batched, gate_keys

CELL_BOX = 64.0
"""Side (level-0 pixels) of the box a centre stands for when matching (about a nucleus and
its cytoplasm: a 100-pixel CRIC crop shows a 25-um field)."""


@dataclass(frozen=True)
class CellRegions:
    """Level-0 regions prepared for the network, with each region's truth cells.

    Attributes:
        images: (N, 3, side, side) network inputs.
        centres: per region, (m, 2) region-local ``(x, y)`` of its cells.
        classes: per region, (m,) class indices.
        names: ``<slide>@<index>`` per region.
    """

    images: np.ndarray
    centres: list[np.ndarray]
    classes: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: list[int]) -> CellRegions:
        return CellRegions(self.images[index], [self.centres[i] for i in index],
                           [self.classes[i] for i in index], [self.names[i] for i in index])


def load_regions(folder: Path, art: ModelArtifact, seed: int = 0, negatives: int = 8,
                 per_cell: int = 1, limit: int | None = None) -> CellRegions:
    """Regions of a slide folder's slides around their abnormal cells and at random tissue
    positions (:func:`medinfer.data.slide_sets.sample_regions`), prepared for ``art``."""
    rng = np.random.default_rng(seed)
    side = int(art.spec.preprocessing.size[0])
    images, centres, classes, names = [], [], [], []
    cases = [c for c in read_slide_folder(folder) if c.truth is not None]
    for case in cases[:limit] if limit else cases:
        pixels, cs, ks = sample_regions(case, side, rng, negatives=negatives, per_cell=per_cell,
                                        classes=art.spec.classes or ABNORMAL)
        images.append(prepare_tiles(pixels, art.spec.preprocessing))
        centres += cs
        classes += ks
        names += [f"{case.name}@{i}" for i in range(len(pixels))]
    empty = np.zeros((0, 3, side, side), np.float32)
    return CellRegions(np.concatenate(images) if images else empty, centres, classes, names)


class CellCentres(PictureTask):
    """Cell-centre detection on level-0 regions of slides (a slide folder with cells' JSON)."""

    name: ClassVar[str] = "cell-centres"
    primary: ClassVar[str] = "ap@0.1"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ap@0.1", "cell AP"), ("sensitivity@1fp", "sens@1FP/region"), ("sensitivity@2fp", "sens@2FP/region"))
    layout: ClassVar[str] = "a slide folder (labels.csv with columns slide,label, the slides and <slide>.json cells)"

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "cell-centres"

    def is_layout(self, folder: Path) -> bool:
        return is_slide_folder(folder)

    def load_eval(self, folder: Path, limit: int | None = None) -> CellRegions:
        return load_regions(Path(folder), self.art, seed=1, limit=limit)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        images = load_regions(Path(folder), self.art, seed=2).images
        return images[:limit] if limit else images

    def outputs(self, infer: Infer, data: CellRegions) -> list[np.ndarray]:
        return batched(infer, data.images, batch=8)

    def cells(self, logits: np.ndarray) -> np.ndarray:
        """(n, 4) cells of one region's output: x, y, score, class index."""
        return decode_centres(logits, threshold=0.05)

    def metrics(self, outputs: list[np.ndarray], data: CellRegions, n_boot: int = 0) -> dict[str, Any]:
        """AP and FROC sensitivities of the centres, each cell standing for a ``CELL_BOX`` box;
        ``class_accuracy``: the share of matched cells given their truth class."""
        half = CELL_BOX / 2
        preds, truths = [], []
        hits = total = 0
        for out, centres, classes in zip(outputs, data.centres, data.classes):
            found = self.cells(out)
            preds.append(SliceDetections(np.concatenate([found[:, :2] - half, found[:, :2] + half], 1)
                                         .astype(np.float32), found[:, 2].astype(np.float32)))
            truths.append(SliceTruth(np.concatenate([centres - half, centres + half], 1).astype(np.float32)))
            for (x, y), k in zip(centres, classes):
                if len(found):
                    d = np.hypot(found[:, 0] - x, found[:, 1] - y)
                    j = int(np.argmin(d))
                    if d[j] <= half:
                        total += 1
                        hits += int(found[j, 3] == k)
        out = detection_scores(preds, truths, iou=0.1, n_boot=n_boot)
        out["class_accuracy"] = hits / total if total else float("nan")
        return {k: float(v) if isinstance(v, int) else v for k, v in out.items()}

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        return gate_keys(ref, cand, limits, (self.primary, "sensitivity@2fp"))

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        """The cells of one region (coordinates in the network input's pixels)."""
        found = self.cells(outputs)
        classes = self.art.spec.classes or list(ABNORMAL)
        return Prediction(self.name, extra={"cells": [
            {"class": classes[int(k)], "score": round(float(s), 5), "x": round(float(x), 1), "y": round(float(y), 1)}
            for x, y, s, k in found]})
