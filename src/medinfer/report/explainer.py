"""Explanations of a classifier's predictions (S11): Grad-CAM and LRP heat-maps per finding,
the nearest training images in feature space, and the most confident false positives.

Used by ``medinfer explain`` (:mod:`medinfer.apps.explain`) and by the report's
false-positive page (:mod:`medinfer.report.explain`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medinfer.artifact import ModelArtifact, label_groups
from medinfer.data.labels import load_labeled, read_labels
from medinfer.errors import InputError, MedinferError
from medinfer.io import Image
from medinfer.progress import status_progress
from medinfer.report.attribution import Explainer, HeatMaps
from medinfer.report.neighbours import (
    FeatureIndex,
    Neighbour,
    build_index,
    penultimate_features,
    recorded_data,
)
from medinfer.runtime import EngineOptions
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.tasks import Classification, task_for

log = logging.getLogger(__name__)
INDEX_CACHE = "train_features.npz"


@dataclass(frozen=True)
class FindingExplanation:
    """Heat-maps of one finding for one image (maps on the network input grid)."""

    finding: str
    probability: float
    threshold: float
    maps: HeatMaps

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


@dataclass
class ImageExplanation:
    """Everything explained about one image.

    Attributes:
        name: the image's file name.
        probabilities / thresholds: per class.
        findings: the explained findings, most probable first.
        neighbours: distance kind -> nearest training images, nearest first.
        methods: how the heat-maps were made (``gradcam``, ``lrp``).
    """

    name: str
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    findings: list[FindingExplanation]
    neighbours: dict[str, list[Neighbour]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)

    def summary(self, overlays: dict[str, str] | None = None, source: str = "") -> dict[str, object]:
        """JSON-ready dict (no arrays); ``overlays`` maps a finding to its PNG's file name."""
        overlays = overlays or {}
        return {
            "image": self.name,
            "probabilities": self.probabilities,
            "thresholds": self.thresholds,
            "positive": [c for c, p in self.probabilities.items() if p >= self.thresholds[c]],
            "methods": self.methods,
            "explained": [{"finding": f.finding, "probability": f.probability,
                           "threshold": f.threshold, "positive": f.positive,
                           "lrp_convergence_delta": f.maps.lrp_delta,
                           "overlay": overlays.get(f.finding)} for f in self.findings],
            "feature_space": "global-pooled penultimate features (input of the last linear layer)",
            "training_set": source,
            "neighbours": {k: [n.as_dict() for n in v] for k, v in self.neighbours.items()},
        }


def select_findings(probs: np.ndarray, thresholds: Sequence[float], top: int) -> list[int]:
    """Class indices to explain: the ``top`` most probable and all at or above threshold.

    Returned most probable first.
    """
    order = np.argsort(-np.asarray(probs), kind="stable")
    chosen = set(order[:top].tolist()) | {k for k, p in enumerate(probs) if p >= thresholds[k]}
    return [int(k) for k in order if k in chosen]


def _require_classifier(art: ModelArtifact) -> None:
    if art.spec.task != "classification":
        raise MedinferError(f"{art.root}: explanations need a classification model, not {art.spec.task!r}")


class ClassifierExplainer:
    """An artifact's network with its explainer and training feature index, for many images.

    Example::

        ex = ClassifierExplainer.open(ModelArtifact.load("models/cxr-densenet121"))
        e = ex.explain(read_image("x.png"), top=3)
        e.findings[0].maps.gradcam.shape == (128, 128)
    """

    def __init__(self, art: ModelArtifact, net: torch.nn.Module, index: FeatureIndex | None,
                 gradcam_layer: str = "features") -> None:
        _require_classifier(art)
        self.artifact, self.net, self.index = art, net.eval(), index
        self.explainer = Explainer(net, gradcam_layer)
        self.classes = art.spec.classes or [f"class_{k}" for k in range(art.spec.out_channels)]
        self.thresholds = [float(art.spec.thresholds.get(c, 0.5)) for c in self.classes]
        self.probabilities = task_for(art).probabilities  # softmax for exclusive classes, else sigmoid

    @classmethod
    def open(cls, art: ModelArtifact, train_data: str | Path | None = None, cache: Path | None = None,
             neighbours: bool = True, gradcam_layer: str = "features") -> ClassifierExplainer:
        """Load the network and, when ``neighbours``, the training features (see :func:`build_index`)."""
        _require_classifier(art)
        net = art.load_network()
        index = build_index(art, net, train_data, cache) if neighbours else None
        return cls(art, net, index, gradcam_layer)

    def explain(self, image: Image, top: int = 3, k: int = 5,
                findings: Sequence[str] | None = None) -> ImageExplanation:
        """Explain one raw 2D image (any size), prepared as the task prepares it: see
        :meth:`explain_input`."""
        task = Classification(self.artifact)
        task.check_image(image)
        x = task.prepare(image)
        return self.explain_input(x, Path(image.source).name if image.source else "<image>", top, k, findings)

    def explain_input(self, x: np.ndarray, name: str, top: int = 3, k: int = 5,
                      findings: Sequence[str] | None = None) -> ImageExplanation:
        """Explain one prepared input ``x`` (1, C, H, W) float32.

        Args:
            findings: explain these classes; default :func:`select_findings` with ``top``.
            k: neighbours per distance.
        """
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        with torch.inference_mode():
            probs = self.probabilities(self.net(t)[0].numpy())
        if findings is None:
            idx = select_findings(probs, self.thresholds, top)
        else:
            idx = [self.classes.index(f) for f in findings]
        maps = self.explainer.heatmaps(t, idx)
        explained = [FindingExplanation(self.classes[i], float(probs[i]), self.thresholds[i], m)
                     for i, m in zip(idx, maps, strict=True)]
        neighbours = {}
        if self.index is not None:
            neighbours = self.index.query(penultimate_features(self.net, x)[0], k)
        return ImageExplanation(name, {c: float(p) for c, p in zip(self.classes, probs)},
                                dict(zip(self.classes, self.thresholds)), explained, neighbours,
                                dict(self.explainer.methods))


@dataclass(frozen=True)
class FalsePositive:
    """An evaluation image called positive for a finding it does not have."""

    path: Path
    finding: str
    probability: float
    threshold: float
    truth: list[str]


def find_false_positives(art: ModelArtifact, data_dir: str | Path, n: int = 4,
                         net: torch.nn.Module | None = None) -> list[FalsePositive]:
    """The ``n`` most confident false positives in a labeled folder, one per image (its most probable).

    When ``data_dir`` is the folder the artifact was trained on, only its recorded test
    patients are searched; in any other folder, images of the artifact's training patients
    are left out (they would be their own nearest neighbours).
    """
    classes = art.spec.classes
    split = art.spec.training.split
    patients = split if split is not None and split.unit == "patient" else None
    test, train = (set(patients.test), set(patients.train)) if patients else (set(), set())
    records = read_labels(data_dir, classes, label_groups(art.spec))
    trained_on = recorded_data(art)
    if trained_on is not None and trained_on.resolve() == Path(data_dir).resolve() and test:
        records = [r for r in records if r.patient in test]
    else:
        records = [r for r in records if r.patient not in train]
    if not records:
        raise InputError(data_dir, "no evaluation images (all belong to the artifact's training patients)")
    net = net if net is not None else art.load_network()
    with status_progress() as bar:
        t = bar.add_task("false positives: reading", total=len(records), status="")
        data = load_labeled(records, art.spec.preprocessing, classes, lambda k: bar.advance(t, k))
    engine = TorchEngine(net, "fp32", EngineOptions(threads=torch.get_num_threads()))
    task = task_for(art)
    probs = task.probabilities(np.stack(task.outputs(engine.infer, data)))
    thr = np.array([art.spec.thresholds.get(c, 0.5) for c in classes])
    # Most confident = highest probability on an absent finding (not the margin over the
    # threshold, which would favour findings whose validation threshold is near 0).
    score = np.where((probs >= thr) & (data.labels < 0.5), probs, -np.inf)
    out = []
    for i in np.argsort(-score.max(axis=1), kind="stable")[:n]:
        kk = int(np.argmax(score[i]))
        if not np.isfinite(score[i, kk]):
            break
        out.append(FalsePositive(records[i].path, classes[kk], float(probs[i, kk]), float(thr[kk]),
                                 sorted(records[i].findings)))
    log.info("%d false positives shown (of %d images, %d positive calls on absent findings)",
             len(out), len(records), int(np.isfinite(score).sum()))
    return out
