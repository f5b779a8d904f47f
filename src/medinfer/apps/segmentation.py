"""Binary 2D segmentation app (Kvasir-SEG polyps, S2): evaluate and predict on any engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.pairs import PairArrays, find_pairs, load_pairs
from medinfer.data.preprocess import logits_to_mask
from medinfer.errors import MedinferError
from medinfer.metrics import dice_iou_per_image, summarize
from medinfer.runtime import Engine, EngineOptions, open_engine, resolve_variant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """The ``medinfer evaluate`` contract: ``{"dice", "iou", "n", "backend", "precision"}``."""

    dice: float
    iou: float
    n: int
    backend: str
    precision: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def predict_arrays(engine: Engine, images: np.ndarray, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Masks (N, H, W) bool for normalized network inputs (N, C, H, W), in batches."""
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        out.append(logits_to_mask(engine.infer(chunk)))
        if progress:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[2:]), bool)


def score_engine(engine: Engine, data: PairArrays, batch_size: int = 16,
                 progress: Callable[[int], None] | None = None) -> tuple[EvalResult, np.ndarray]:
    """Dice/IoU (threshold 0.5) of ``engine`` on preloaded pairs; also returns the masks."""
    masks = predict_arrays(engine, data.images, batch_size, progress)
    s = summarize(*dice_iou_per_image(masks, data.masks))
    return EvalResult(s.dice, s.iou, s.n, engine.backend, engine.precision), masks


def evaluate(art: ModelArtifact, data_dir: str | Path, backend: str | None = None,
             precision: str | None = None, options: EngineOptions = EngineOptions(),
             limit: int | None = None) -> EvalResult:
    """Evaluate a variant of ``art`` on a Kvasir-layout folder (all pairs, or the first ``limit``).

    Masks are compared at the network's resolution (224x224 for the polyp model), as
    in the DQ-ResUNet paper.
    """
    if art.spec.task != "segmentation":
        raise MedinferError(f"{art.root}: task {art.spec.task!r} is not segmentation")
    pairs = find_pairs(data_dir)[:limit] if limit else find_pairs(data_dir)
    data = load_pairs(pairs, art.spec.preprocessing)
    engine = open_engine(art, resolve_variant(art, backend, precision), options)
    try:
        return score_engine(engine, data)[0]
    finally:
        engine.close()
