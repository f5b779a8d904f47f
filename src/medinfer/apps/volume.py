"""3D segmentation app (brain tumour MR, S3): whole volumes through MONAI's sliding window
on any engine, scored by Dice."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medinfer.data.spec import Preprocessing
from medinfer.data.volumes import VolumeSet, prepare_volume
from medinfer.metrics import dice_iou_per_image, summarize
from medinfer.runtime import Engine

if TYPE_CHECKING:
    from medinfer.apps.predictor import Prediction, Predictor


def window_logits(engine: Engine, volume: np.ndarray, spec: Preprocessing, sw_batch: int = 4) -> np.ndarray:
    """Logits (K, X, Y, Z) for one prepared volume (C, X, Y, Z): MONAI sliding window over
    windows of ``spec.size`` with ``spec.overlap`` and Gaussian blending, each batch of
    windows run by ``engine`` (any backend)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(engine.infer(x.numpy().astype(np.float32, copy=False))))

    with torch.inference_mode():
        out = sliding_window_inference(torch.from_numpy(volume[None]), roi_size=spec.size,
                                       sw_batch_size=sw_batch, predictor=run, overlap=spec.overlap,
                                       mode="gaussian", padding_mode="constant")
    return out[0].numpy()


def segment_volumes(engine: Engine, data: VolumeSet, spec: Preprocessing,
                    progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Binary masks (X, Y, Z) for every volume of ``data`` (sigmoid > 0.5)."""
    out = []
    for image in data.images:
        out.append(window_logits(engine, image, spec)[0] > 0.0)
        if progress:
            progress(1)
    return out


def score_volumes(engine: Engine, data: VolumeSet, spec: Preprocessing) -> dict[str, float]:
    """Mean Dice / IoU over volumes (each volume one case, MONAI metrics)."""
    dice, iou = [], []
    for pred, truth in zip(segment_volumes(engine, data, spec), data.masks):
        d, i = dice_iou_per_image(pred[None], truth[None])
        dice.append(float(d[0]))
        iou.append(float(i[0]))
    s = summarize(np.array(dice), np.array(iou))
    return {"dice": s.dice, "iou": s.iou, "n": float(s.n)}


def segment_volume_prediction(p: Predictor, image) -> Prediction:
    """Predictor hook: a whole volume (C, X, Y, Z) -> label map on the volume's own grid."""
    from medinfer.apps.predictor import Prediction, _segments

    spec = p.artifact.spec.preprocessing
    t0 = time.perf_counter()
    x = prepare_volume(image.array, spec)
    t1 = time.perf_counter()
    logits = window_logits(p.engine, x, spec)
    t2 = time.perf_counter()
    mask = (logits[0] > 0.0).astype(np.uint8)
    t3 = time.perf_counter()
    return Prediction("segmentation", mask=mask, segments=_segments(p.artifact),
                      artifact=p.artifact.root.name, variant=p.variant,
                      seconds={"preprocess": t1 - t0, "infer": t2 - t1, "postprocess": t3 - t2})
