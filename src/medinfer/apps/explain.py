"""Explanations of a classifier's predictions (S11): heat-maps per finding and nearest training images.

``medinfer explain --model ART INPUT... --out DIR`` writes, per input ``<stem>``:

* ``<stem>_<finding>.png``: image, Grad-CAM and LRP side by side, for the ``top`` most
  probable findings and every finding at or above its threshold;
* ``<stem>.json``: probabilities, thresholds, the findings explained (with the LRP
  convergence delta) and the ``k`` nearest training images per distance (Euclidean,
  cosine, Mahalanobis) in the network's penultimate feature space.

An input whose JSON already exists is kept, not recomputed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medinfer.apps.attribution import Explainer, HeatMaps
from medinfer.apps.neighbours import FeatureIndex, Neighbour, build_index, penultimate_features
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.io import Image

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
        """Explain one raw 2D image (any size): see :meth:`explain_input`."""
        from medinfer.data.preprocess import prepare_batch

        if image.ndim_spatial != 2:
            raise InputError(image.source or "<image>",
                             f"not a 2D image; {self.artifact.root.name} takes 2D images")
        x = prepare_batch([image.array], self.artifact.spec.preprocessing)
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
            probs = torch.sigmoid(self.net(t))[0].numpy().astype(np.float64)
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


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_explanation(e: ImageExplanation, image: np.ndarray, out_dir: Path, stem: str,
                      source: str = "") -> Path:
    """Write ``<stem>_<finding>.png`` per explained finding (at the image's own size) and ``<stem>.json``."""
    from medinfer.report.heatmaps import display_rgb, heatmap_panel, resize_map

    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = display_rgb(image)
    overlays = {}
    for f in e.findings:
        png = heatmap_panel(rgb, resize_map(f.maps.gradcam, rgb.shape[:2]),
                            resize_map(f.maps.lrp, rgb.shape[:2]),
                            f"{e.name}: {f.finding}  p={f.probability:.3f} (threshold {f.threshold:.3f})",
                            lrp_label="LRP-epsilon")
        overlays[f.finding] = f"{stem}_{_safe(f.finding)}.png"
        (out_dir / overlays[f.finding]).write_bytes(png)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(e.summary(overlays, source), indent=2) + "\n")
    return path


@dataclass
class ExplainRun:
    """What :func:`explain_files` did: JSON files written, inputs kept from before, errors."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)


def explain_files(art: ModelArtifact, inputs: Sequence[str | Path], out_dir: str | Path, top: int = 3,
                  k: int = 5, train_data: str | Path | None = None,
                  gradcam_layer: str = "features") -> ExplainRun:
    """Explain image files into ``out_dir`` (see the module docstring).

    An unreadable or non-2D input is logged and skipped; the others are still explained.

    Raises:
        InputError: naming the file, when no input could be explained (the first error).
    """
    from medinfer.io import read_image
    from medinfer.train.loop import _progress

    out_dir = Path(out_dir)
    run = ExplainRun()
    todo = []
    for path in map(Path, inputs):
        stem = path.name.split(".")[0]
        if (out_dir / f"{stem}.json").is_file():
            run.kept.append(out_dir / f"{stem}.json")
            continue
        try:
            image = read_image(path)
            if image.ndim_spatial != 2:
                raise InputError(path, f"not a 2D image; {art.root.name} takes 2D images")
        except InputError as exc:
            log.error("skipped %s", exc)
            run.errors.append(exc)
            continue
        todo.append((path, stem, image))
    if todo:
        ex = ClassifierExplainer.open(art, train_data, out_dir / INDEX_CACHE, gradcam_layer=gradcam_layer)
        source = ex.index.source if ex.index else ""
        with _progress() as bar:
            task = bar.add_task("explaining", total=len(todo), status="")
            for path, stem, image in todo:
                e = ex.explain(image, top, k)
                run.written.append(write_explanation(e, image.array, out_dir, stem, source))
                bar.update(task, advance=1, status=path.name)
                log.info("%s: explained %s", path.name, ", ".join(f.finding for f in e.findings))
    if run.errors and not run.written and not run.kept:
        raise run.errors[0]
    return run


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
    from medinfer.apps.neighbours import recorded_data
    from medinfer.data.labels import load_labeled, read_labels
    from medinfer.train.classify import predict_probs
    from medinfer.train.loop import _progress

    classes = art.spec.classes
    split = art.spec.training.get("split_patients")
    split = split if isinstance(split, dict) else {}
    records = read_labels(data_dir, classes)
    trained_on = recorded_data(art)
    if trained_on is not None and trained_on.resolve() == Path(data_dir).resolve() and split.get("test"):
        test = {str(p) for p in split["test"]}
        records = [r for r in records if r.patient in test]
    else:
        train = {str(p) for p in split.get("train", [])}
        records = [r for r in records if r.patient not in train]
    if not records:
        raise InputError(data_dir, "no evaluation images (all belong to the artifact's training patients)")
    net = net if net is not None else art.load_network()
    with _progress() as bar:
        task = bar.add_task("false positives: reading", total=len(records), status="")
        data = load_labeled(records, art.spec.preprocessing, classes, lambda k: bar.advance(task, k))
    probs = predict_probs(net, data.images)
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
