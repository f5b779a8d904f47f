"""One model, ready to answer: ``Predictor.open(artifact).predict(image) -> Prediction``.

This is the boundary the service and the CLI call. The predictor keeps its engine open
across calls (load once, predict many) and returns results in the input image's own
geometry, whatever the network's input size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.io import Image
from medinfer.runtime import Engine, EngineOptions, open_engine, resolve_variant


@dataclass(frozen=True, eq=False)
class Prediction:
    """A model's answer for one image.

    Attributes:
        task: ``"segmentation"`` or ``"classification"``.
        mask: segmentation label map, uint8, shape ``image.array.shape[1:]`` (the input's own
            grid and geometry), 0 = background; None for classification.
        segments: label value -> segment name, e.g. ``{1: "polyp"}``.
        scores: classification probability per class (empty for segmentation).
        thresholds: classification decision threshold per class.
        artifact: the artifact folder's name; variant: the variant that ran.
        seconds: wall time per stage (``preprocess``, ``infer``, ``postprocess``).
    """

    task: str
    mask: np.ndarray | None = None
    segments: dict[int, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    artifact: str = ""
    variant: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def positive(self) -> list[str]:
        """Classification: classes whose probability reaches their threshold."""
        return [c for c, p in self.scores.items() if p >= self.thresholds.get(c, 0.5)]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): task, variant, scores/positives or segment volumes."""
        out: dict[str, Any] = {"task": self.task, "artifact": self.artifact, "variant": self.variant,
                               "seconds": self.seconds}
        if self.task == "classification":
            out.update(scores=self.scores, thresholds=self.thresholds, positive=self.positive)
        elif self.mask is not None:
            out["segments"] = {name: int((self.mask == k).sum()) for k, name in self.segments.items()}
        return out


class Predictor:
    """An artifact's variant opened once, predicting image after image.

    Example::

        predictor = Predictor.open("models/polyp-resunet")   # the chosen variant
        pred = predictor.predict(read_image("frame.jpg"))
        pred.mask.shape == image.array.shape[1:]
    """

    def __init__(self, art: ModelArtifact, engine: Engine, variant: str) -> None:
        self.artifact, self.engine, self.variant = art, engine, variant
        self._run = _runner(art)

    @classmethod
    def open(cls, artifact: str | Path | ModelArtifact, backend: str | None = None,
             precision: str | None = None, options: EngineOptions = EngineOptions()) -> Predictor:
        """Load ``artifact`` (a folder or a loaded artifact) with its chosen variant by default."""
        art = artifact if isinstance(artifact, ModelArtifact) else ModelArtifact.load(artifact)
        variant = resolve_variant(art, backend, precision)
        return cls(art, open_engine(art, variant, options), variant.name)

    def predict(self, image: Image) -> Prediction:
        """Run the model on one image (2D picture or volume, channel-first, any size).

        Raises:
            InputError: naming ``image.source`` when the image does not suit the model
                (wrong number of spatial axes).
        """
        want = len(self.artifact.spec.input.spatial)
        if image.ndim_spatial != want:
            raise InputError(image.source or "<image>",
                             f"{image.ndim_spatial}D image, but model {self.artifact.root.name} takes {want}D")
        return self._run(self, image)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _segment_2d(p: Predictor, image: Image) -> Prediction:
    from medinfer.data.preprocess import logits_to_mask, prepare_batch, resize_mask

    spec = p.artifact.spec
    t0 = time.perf_counter()
    x = prepare_batch([image.array], spec.preprocessing)
    t1 = time.perf_counter()
    logits = p.engine.infer(x)
    t2 = time.perf_counter()
    mask = resize_mask(logits_to_mask(logits)[0], image.spatial_shape).astype(np.uint8)
    t3 = time.perf_counter()
    return Prediction("segmentation", mask=mask, segments=_segments(p.artifact),
                      artifact=p.artifact.root.name, variant=p.variant,
                      seconds={"preprocess": t1 - t0, "infer": t2 - t1, "postprocess": t3 - t2})


def _classify(p: Predictor, image: Image) -> Prediction:
    from medinfer.data.preprocess import prepare_batch

    spec = p.artifact.spec
    t0 = time.perf_counter()
    x = prepare_batch([image.array], spec.preprocessing)
    t1 = time.perf_counter()
    logits = np.asarray(p.engine.infer(x), np.float64)[0]
    t2 = time.perf_counter()
    probs = 1.0 / (1.0 + np.exp(-logits))
    classes = spec.classes or [f"class_{k}" for k in range(len(probs))]
    scores = {c: float(v) for c, v in zip(classes, probs)}
    t3 = time.perf_counter()
    return Prediction("classification", scores=scores, thresholds=dict(spec.thresholds),
                      artifact=p.artifact.root.name, variant=p.variant,
                      seconds={"preprocess": t1 - t0, "infer": t2 - t1, "postprocess": t3 - t2})


def _segments(art: ModelArtifact) -> dict[int, str]:
    return dict(art.spec.segments) or {1: "foreground"}


def _runner(art: ModelArtifact):
    task, dims = art.spec.task, len(art.spec.input.spatial)
    if task == "classification":
        return _classify
    if task == "segmentation" and dims == 2:
        return _segment_2d
    if task == "segmentation" and dims == 3:
        from medinfer.apps.volume import segment_volume_prediction

        return segment_volume_prediction
    raise MedinferError(f"{art.root}: no predictor for task {task!r} with {dims} spatial axes")
