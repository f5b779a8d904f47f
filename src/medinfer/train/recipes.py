"""Training recipes: the per-task pieces :func:`medinfer.train.fit.fit` plugs into its one loop.

A recipe says how to split a data folder and load each part, how to draw one epoch of
training batches, which loss to minimize, what the artifact records about the task, and
what else to keep when an epoch is the best so far. Validation is not a recipe's job:
the loop scores every task through :mod:`medinfer.tasks`, exactly as ``medinfer
evaluate`` does.

* :class:`SegmentationRecipe` (2D, DQ-ResUNet): pairs split by name, paper augmentation
  (rotation + horizontal flip), Dice or Dice + CE loss.
* :class:`ClassificationRecipe` (CheXNet): patient-level train / validation / test split,
  small random affine, BCE with capped positive weights, Youden thresholds at the best epoch.
* :class:`VolumeRecipe` (3D): held-out volumes by name prefix, random foreground-biased
  windows, Dice + CE loss (sigmoid for one label, softmax over several).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss

from medinfer.artifact import DataSplit, ModelArtifact
from medinfer.data.augment import augment_batch, paper_augmentation, strong_augmentation
from medinfer.data.labels import NIH_FINDINGS, check_exclusive, load_labeled, read_labels, split_by_patient
from medinfer.data.pairs import find_pairs, load_pairs, split_pairs
from medinfer.data.volumes import VolumePair, find_volume_pairs, load_volumes, sample_windows, slab_split
from medinfer.errors import InputError
from medinfer.runtime import Engine
from medinfer.train.classify import (
    affine_augmentation,
    augment_images,
    int_or_str,
    pos_weight,
    youden_thresholds,
)
from medinfer.train.config import ClassifyConfig, FitConfig, TrainConfig, VolumeTrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]
"""One training batch: network input (B, C, *spatial) and target, float32 tensors."""
Sampler = Callable[[np.random.Generator], Iterator[Batch]]
"""Draws one epoch of training batches from the run's generator (shuffling and augmentation
come from it, so a run resumed with the generator's state draws what it would have drawn)."""
Progress = Callable[[int], None] | None

C = TypeVar("C", bound=FitConfig)


@dataclass(frozen=True)
class Shard:
    """This process's part of a data-parallel run: rank ``rank`` of ``world`` (one process: 0 of 1).

    Every rank draws the same shuffled order from the run's generator (all ranks seed it
    alike) and keeps its own slice of each global batch of ``world`` x ``batch_size``
    samples; random augmentation takes a per-rank generator (:meth:`generator`), so
    ranks do not repeat each other's draws.
    """

    rank: int = 0
    world: int = 1

    def generator(self, rng: np.random.Generator) -> np.random.Generator:
        """``rng`` itself in one process; else a generator of this rank seeded from one draw
        of ``rng`` (every rank draws once, so the shared generator stays in step)."""
        if self.world == 1:
            return rng
        return np.random.default_rng([int(rng.integers(2**62)), self.rank])

    def count(self, n: int) -> int:
        """This rank's share of ``n`` samples drawn at random (``ceil(n / world)``)."""
        return -(-n // self.world)


def augmentation_seed(rng: np.random.Generator, shard: Shard) -> int:
    """A seed for a stateful augmentation (MONAI's ``set_random_state``), drawn from the
    run's generator once per epoch and offset per rank."""
    return int(rng.integers(2**31 - 1)) + shard.rank


@dataclass(frozen=True)
class Split:
    """A data folder cut into parts: ``train``/``val``/``test`` items (pairs, records or
    volume pairs, whatever the recipe's :meth:`Recipe.load` reads) and what the artifact records."""

    train: list[Any]
    val: list[Any]
    test: list[Any]
    record: DataSplit


def site_share(split: Split, site: int | None, sites: int) -> Split:
    """Hospital ``site`` of ``sites``: a contiguous block of the training and the validation
    items, in the split's order (``split`` itself when ``site`` is None). The record's lists
    are cut alike when they name the items one by one (``case``); a patient-level record is
    kept whole."""
    if site is None:
        return split

    def cut(items: list[Any]) -> list[Any]:
        return items[len(items) * site // sites: len(items) * (site + 1) // sites]

    rec = split.record
    if len(rec.train) == len(split.train) and len(rec.val) == len(split.val):
        rec = rec.model_copy(update={"train": cut(rec.train), "val": cut(rec.val)})
    return Split(cut(split.train), cut(split.val), split.test, rec)


class Recipe(ABC, Generic[C]):
    """The per-task pieces of a training run (stateless: settings come in ``cfg``)."""

    task: str
    """Name of the config ``task`` this recipe runs."""
    unit: str = "images"
    """What the per-epoch progress bar counts."""

    @abstractmethod
    def split(self, cfg: C) -> Split:
        """Find the data in ``cfg.data`` and split it (deterministic for ``cfg.seed``)."""

    @abstractmethod
    def load(self, cfg: C, items: list[Any], progress: Progress = None) -> Any:
        """Read and prepare ``items`` as the data layer does (what :mod:`medinfer.tasks` scores)."""

    @abstractmethod
    def loss(self, cfg: C, train: Any) -> torch.nn.Module:
        """The training loss ``loss(logits, target) -> scalar``."""

    @abstractmethod
    def sampler(self, cfg: C, train: Any, shard: Shard = Shard()) -> Sampler:
        """The epoch batch generator: ``shard``'s part of each epoch, ``cfg.batch_size`` samples
        per batch, augmentation drawn from the generator it is given."""

    def epoch_samples(self, cfg: C, train: Any) -> int:
        """Samples one epoch draws (the progress bar's total)."""
        return len(train)

    def out_channels(self, cfg: C) -> int:
        """Network outputs (1: one binary mask's logit)."""
        return 1

    def spec_fields(self, cfg: C) -> dict[str, Any]:
        """Task fields of the :class:`~medinfer.artifact.ArtifactSpec` (task, classes, segments)."""
        return {"task": "segmentation"}

    def on_best(self, cfg: C, art: ModelArtifact, engine: Engine, val: Any) -> None:
        """Keep what else belongs to a new best epoch (the loop has saved the weights)."""

    def finish(self, cfg: C, art: ModelArtifact) -> None:
        """After the last epoch: what else the artifact needs (a second network trained on
        the first one's outputs); nothing by default."""


def index_batches(n: int, batch_size: int, rng: np.random.Generator,
                  shard: Shard = Shard()) -> Iterator[np.ndarray]:
    """Index batches of one shuffled pass: this rank's slice of each global batch of
    ``shard.world`` x ``batch_size`` indices (a short last one is cut in equal parts). A global
    batch whose slices would hold fewer than two is skipped on every rank alike (batch norm
    needs two; ranks must take the same number of steps)."""
    order = rng.permutation(n)
    step = batch_size * shard.world
    for i in range(0, len(order), step):
        parts = np.array_split(order[i:i + step], shard.world)
        if min(len(p) for p in parts) >= 2:
            yield parts[shard.rank]


class SegmentationRecipe(Recipe[TrainConfig]):
    """2D binary segmentation on a Kvasir-layout folder (``images/``, ``masks/``)."""

    task = "segmentation"

    def split(self, cfg: TrainConfig) -> Split:
        pairs = find_pairs(cfg.data)
        if cfg.limit:
            pairs = sorted(pairs, key=lambda p: p.name)[: cfg.limit]
        train, val = split_pairs(pairs, cfg.val_fraction, cfg.seed)
        return Split(train, val, [], DataSplit(unit="case", train=[p.name for p in train],
                                               val=[p.name for p in val]))

    def load(self, cfg: TrainConfig, items: list[Any], progress: Progress = None) -> Any:
        return load_pairs(items, cfg.preprocessing, progress)

    def loss(self, cfg: TrainConfig, train: Any) -> torch.nn.Module:
        return DiceLoss(sigmoid=True) if cfg.loss == "dice" else DiceCELoss(sigmoid=True)

    def sampler(self, cfg: TrainConfig, train: Any, shard: Shard = Shard()) -> Sampler:
        if cfg.augment == "strong":
            size = (cfg.preprocessing.size[0], cfg.preprocessing.size[1])
            aug = strong_augmentation(size, cfg.augment_prob, seed=cfg.seed)
        else:
            aug = paper_augmentation(cfg.augment_prob, seed=cfg.seed)

        def draw(rng: np.random.Generator) -> Iterator[Batch]:
            aug.set_random_state(seed=augmentation_seed(rng, shard))
            for idx in index_batches(len(train), cfg.batch_size, rng, shard):
                yield augment_batch(aug, train.images[idx], train.masks[idx])

        return draw


class ClassificationRecipe(Recipe[ClassifyConfig]):
    """Multi-label classification on a labeled folder (``labels.csv``, ``images/``)."""

    task = "classification"

    @staticmethod
    def classes(cfg: ClassifyConfig) -> tuple[str, ...]:
        """The configured classes, or the 14 NIH findings."""
        return tuple(cfg.classes or NIH_FINDINGS)

    def split(self, cfg: ClassifyConfig) -> Split:
        records = read_labels(cfg.data, self.classes(cfg), cfg.groups or None)
        if cfg.exclusive:
            check_exclusive(records)
        if cfg.limit:
            records = sorted(records, key=lambda r: r.name)[: cfg.limit]
        train, val, test = split_by_patient(records, cfg.split, cfg.seed)
        patients = [sorted({r.patient for r in part}, key=int_or_str) for part in (train, val, test)]
        return Split(train, val, test, DataSplit(unit="patient", train=patients[0], val=patients[1],
                                                 test=patients[2]))

    def load(self, cfg: ClassifyConfig, items: list[Any], progress: Progress = None) -> Any:
        return load_labeled(items, cfg.preprocessing, self.classes(cfg), progress)

    def loss(self, cfg: ClassifyConfig, train: Any) -> torch.nn.Module:
        if cfg.exclusive:  # softmax cross-entropy on the one-hot rows; rarer classes weigh more
            counts = train.labels.sum(axis=0)
            weight = np.clip(counts.max() / np.maximum(counts, 1.0), 1.0, cfg.pos_weight_max)
            return torch.nn.CrossEntropyLoss(weight=torch.as_tensor(weight, dtype=torch.float32))
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(train.labels, cfg.pos_weight_max))

    def sampler(self, cfg: ClassifyConfig, train: Any, shard: Shard = Shard()) -> Sampler:
        aug = affine_augmentation(cfg.augment_prob, cfg.preprocessing.size[0], cfg.seed)

        def draw(rng: np.random.Generator) -> Iterator[Batch]:
            aug.set_random_state(seed=augmentation_seed(rng, shard))
            for idx in index_batches(len(train), cfg.batch_size, rng, shard):
                yield augment_images(aug, train.images[idx]), torch.from_numpy(train.labels[idx])

        return draw

    def out_channels(self, cfg: ClassifyConfig) -> int:
        return len(self.classes(cfg))

    def spec_fields(self, cfg: ClassifyConfig) -> dict[str, Any]:
        fields: dict[str, Any] = {"task": "classification", "classes": list(self.classes(cfg))}
        if cfg.exclusive or cfg.groups or cfg.normal:  # else none: the artifact reads as before
            fields["classification"] = {"exclusive": cfg.exclusive, "normal": cfg.normal,
                                        "groups": {k: list(v) for k, v in cfg.groups.items()}}
        return fields

    def on_best(self, cfg: ClassifyConfig, art: ModelArtifact, engine: Engine, val: Any) -> None:
        """Per class, the validation threshold maximizing Youden's J (stored in the artifact),
        on the probabilities the task reports (softmax over exclusive classes: one class
        against the rest)."""
        if cfg.exclusive:
            logits = np.concatenate([engine.infer(val.images[i:i + 64]) for i in range(0, len(val.images), 64)])
            probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        else:
            probs = _probabilities(engine, val.images)
        art.spec.thresholds = youden_thresholds(probs, val.labels, self.classes(cfg))


def _probabilities(engine: Engine, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, K) sigmoid probabilities of ``engine``'s logits on (N, C, H, W) ``images``."""
    out = [torch.sigmoid(torch.from_numpy(engine.infer(images[i:i + batch_size]))).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class VolumeRecipe(Recipe[VolumeTrainConfig]):
    """3D segmentation on a NIfTI volume folder; validation slides over whole held-out volumes."""

    task = "segmentation3d"
    unit = "windows"

    def split(self, cfg: VolumeTrainConfig) -> Split:
        pairs = find_volume_pairs(cfg.data)
        if cfg.val_slab is not None:
            return self._slab_split(cfg, pairs)
        val = [p for p in pairs if p.name.startswith(cfg.val_prefixes)]
        train = [p for p in pairs if p not in val]
        for part, what in ((val, "validation"), (train, "training")):
            if not part:
                raise InputError(cfg.data, f"no {what} volumes: val_prefixes {list(cfg.val_prefixes)} "
                                           f"match {len(val)} of {len(pairs)} volumes")
        return Split(train, val, [], DataSplit(unit="case", train=[p.name for p in train],
                                               val=[p.name for p in val]))

    @staticmethod
    def _slab_split(cfg: VolumeTrainConfig, pairs: list[VolumePair]) -> Split:
        """Every volume's ``val_slab`` held out; the slices before and after it are trained on
        as separate pieces (no seam where the slab was cut out)."""
        train, val = slab_split(pairs, *cfg.val_slab)  # type: ignore[misc]
        return Split(train, val, [], DataSplit(unit="slab", train=[p.label for p in train],
                                               val=[p.label for p in val]))

    def load(self, cfg: VolumeTrainConfig, items: list[Any], progress: Progress = None) -> Any:
        return load_volumes(items, cfg.preprocessing, progress)

    @staticmethod
    def labels(cfg: VolumeTrainConfig) -> dict[int, str]:
        """Label value -> segment name (``{1: cfg.segment}`` for a binary model)."""
        return dict(cfg.segments) or {1: cfg.segment}

    def loss(self, cfg: VolumeTrainConfig, train: Any) -> torch.nn.Module:
        if len(self.labels(cfg)) > 1:  # softmax over background + labels, one-hot targets
            return DiceCELoss(softmax=True, to_onehot_y=True)
        return DiceCELoss(sigmoid=True)

    def out_channels(self, cfg: VolumeTrainConfig) -> int:
        n = len(self.labels(cfg))
        return n + 1 if n > 1 else 1

    def epoch_samples(self, cfg: VolumeTrainConfig, train: Any) -> int:
        return cfg.windows_per_volume * len(train)

    def sampler(self, cfg: VolumeTrainConfig, train: Any, shard: Shard = Shard()) -> Sampler:
        n_windows = shard.count(self.epoch_samples(cfg, train))
        size = tuple(cfg.preprocessing.size)

        binary = len(self.labels(cfg)) == 1

        def draw(rng: np.random.Generator) -> Iterator[Batch]:
            mine = shard.generator(rng)
            for _ in range(0, n_windows, cfg.batch_size):
                x, y = sample_windows(train, size, cfg.batch_size, cfg.foreground_prob, mine)
                yield torch.from_numpy(x), torch.from_numpy((y > 0).astype(np.float32) if binary else y)

        return draw

    def spec_fields(self, cfg: VolumeTrainConfig) -> dict[str, Any]:
        return {"task": "segmentation", "segments": self.labels(cfg)}


RECIPES: dict[str, Recipe[Any]] = {r.task: r for r in (SegmentationRecipe(), ClassificationRecipe(),
                                                       VolumeRecipe())}
"""Recipe per config ``task`` (:mod:`medinfer.train.detect` adds ``detection``)."""


def recipe_for(cfg: FitConfig) -> Recipe[Any]:
    """The recipe that runs ``cfg`` (by its ``task``)."""
    try:
        return RECIPES[cfg.task]
    except KeyError:
        raise ValueError(f"no training recipe for task {cfg.task!r}; known: {', '.join(RECIPES)}") from None

