"""Nearest training images in a classifier's feature space (the seed's false-positive analysis).

The feature space is the network's global-pooled penultimate layer: the input of its last
``nn.Linear`` (1024-d for DenseNet-121). :class:`FeatureIndex` holds the training images'
features with a Ledoit-Wolf covariance and answers Euclidean, cosine and Mahalanobis
nearest-neighbour queries.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medinfer.artifact import ModelArtifact, label_groups
from medinfer.data.labels import LabeledImage, load_labeled, read_labels
from medinfer.errors import InputError
from medinfer.metrics.distance import (
    DISTANCES,
    cosine,
    euclidean,
    ledoit_wolf,
    mahalanobis,
    nearest,
    precision_matrix,
)
from medinfer.progress import status_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Neighbour:
    """One training image close to a query: its file name, findings and distance."""

    name: str
    findings: list[str]
    distance: float

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "findings": self.findings, "distance": self.distance}


def _head(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear head")
    return linears[-1]


def penultimate_features(net: nn.Module, images: np.ndarray, batch_size: int = 32,
                         progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, D) inputs of the network's last linear layer for (N, C, H, W) inputs (eval mode)."""
    feats: list[torch.Tensor] = []
    handle = _head(net).register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach()))
    net.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                net(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])))
                if progress:
                    progress(min(batch_size, len(images) - i))
    finally:
        handle.remove()
    if not feats:
        return np.zeros((0, _head(net).in_features), np.float32)
    return torch.cat(feats).reshape(len(images), -1).numpy().astype(np.float32)


@dataclass
class FeatureIndex:
    """Training images' features, ready for nearest-neighbour queries.

    Attributes:
        features: (N, D) float32 penultimate features.
        names: N file names; findings: N lists of finding names.
        precision: (D, D) inverse of the Ledoit-Wolf covariance of ``features``.
        shrinkage: the Ledoit-Wolf shrinkage used.
        source: where the images came from (folder and how they were selected).
    """

    features: np.ndarray
    names: list[str]
    findings: list[list[str]]
    precision: np.ndarray
    shrinkage: float
    source: str

    @classmethod
    def build(cls, features: np.ndarray, names: Sequence[str], findings: Sequence[Sequence[str]],
              source: str = "") -> FeatureIndex:
        cov, shrink = ledoit_wolf(features)
        return cls(np.asarray(features, np.float32), list(names), [sorted(f) for f in findings],
                   precision_matrix(cov), shrink, source)

    def distances(self, query: np.ndarray, kind: str) -> np.ndarray:
        """(N,) distances of one (D,) feature vector to every training image."""
        q, ref = np.asarray(query, np.float64), self.features.astype(np.float64)
        if kind == "euclidean":
            return euclidean(q, ref)
        if kind == "cosine":
            return cosine(q, ref)
        if kind == "mahalanobis":
            return mahalanobis(q, ref, self.precision)
        raise ValueError(f"unknown distance {kind!r}; choose from {', '.join(DISTANCES)}")

    def query(self, query: np.ndarray, k: int = 5) -> dict[str, list[Neighbour]]:
        """The ``k`` nearest training images per distance, nearest first."""
        out = {}
        for kind in DISTANCES:
            d = self.distances(query, kind)
            out[kind] = [Neighbour(self.names[i], self.findings[i], float(d[i])) for i in nearest(d, k)]
        return out

    def save(self, path: Path, key: str) -> None:
        np.savez(path, features=self.features, names=np.array(self.names),
                 findings=np.array(["|".join(f) for f in self.findings]), precision=self.precision,
                 shrinkage=self.shrinkage, source=self.source, key=key)

    @classmethod
    def load(cls, path: Path, key: str) -> FeatureIndex | None:
        """The index cached at ``path`` if it was built for ``key``, else None."""
        if not path.is_file():
            return None
        with np.load(path) as z:
            if str(z["key"]) != key:
                return None
            return cls(z["features"], [str(n) for n in z["names"]],
                       [str(f).split("|") if str(f) else [] for f in z["findings"]],
                       z["precision"], float(z["shrinkage"]), str(z["source"]))


def recorded_data(art: ModelArtifact) -> Path | None:
    """The folder the artifact was trained on, if recorded and readable from here."""
    recorded = art.spec.training.data
    if not recorded:
        return None
    path = Path(str(recorded))
    # Recorded relative to where training ran: usually the repository holding models/<name>.
    for cand in (path, art.root.resolve().parent.parent / path):
        if cand.is_dir():
            return cand
    return None


def training_records(art: ModelArtifact, train_data: str | Path | None = None) -> tuple[list[LabeledImage], str]:
    """The artifact's training images and a description of where they came from.

    With ``train_data``, every image of that labeled folder; otherwise the training
    patients recorded in the artifact, read from the folder it was trained on.

    Raises:
        InputError: naming the folder (or the artifact) when no training set can be found.
    """
    classes = art.spec.classes
    if train_data is not None:
        return read_labels(train_data, classes, label_groups(art.spec)), f"{train_data} (all images)"
    data = recorded_data(art)
    split = art.spec.training.split
    if data is None or split is None or split.unit != "patient":
        raise InputError(art.root, "the artifact records no readable training data folder and "
                                   "patient split; pass the training images with --train-data DIR")
    train = set(split.train)
    records = [r for r in read_labels(data, classes, label_groups(art.spec)) if r.patient in train]
    if not records:
        raise InputError(data, "none of the artifact's training patients are in this folder")
    return records, f"{data} (the {len(train)} training patients of the artifact's split)"


def _key(art: ModelArtifact, source: str) -> str:
    h = hashlib.sha256(art.weights_path.read_bytes())
    h.update(source.encode())
    return h.hexdigest()[:16]


def build_index(art: ModelArtifact, net: nn.Module, train_data: str | Path | None = None,
                cache: Path | None = None) -> FeatureIndex:
    """Feature index of the artifact's training images (cached in ``cache`` when given)."""

    records, source = training_records(art, train_data)
    key = _key(art, source)
    if cache is not None and (hit := FeatureIndex.load(cache, key)) is not None:
        log.info("training features: %d images from cache %s", len(hit.names), cache)
        return hit
    spec = art.spec.preprocessing
    with status_progress() as bar:
        task = bar.add_task("training features", total=2 * len(records), status="")
        data = load_labeled(records, spec, art.spec.classes, lambda k: bar.advance(task, k))
        feats = penultimate_features(net, data.images, progress=lambda k: bar.advance(task, k))
    index = FeatureIndex.build(feats, data.names, [sorted(r.findings) for r in records], source)
    log.info("training features: %d images x %d from %s (Ledoit-Wolf shrinkage %.3f)",
             *feats.shape, source, index.shrinkage)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        index.save(cache, key)
    return index
