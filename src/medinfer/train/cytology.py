"""Recipes of whole-slide cytology (see :class:`~medinfer.train.config.CytologyConfig`).

:class:`CytologyRecipe` trains stage 1 (the tile classifier) through the one training loop,
validated on whole validation slides; its :meth:`~CytologyRecipe.finish` fits the slide
fusion and the stage-1 operating point, trains stage 2 (:class:`CellRecipe`, the
cell-centre detector) through the same loop into the sub-folder the artifact names, and
sets the flag and two-stage thresholds on the validation slides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from medinfer.artifact import ArtifactSpec, DataSplit, InputSpec, ModelArtifact
from medinfer.data.mosaic import ABNORMAL
from medinfer.data.augment import augment_pictures, turn_points
from medinfer.data.slide_sets import SlideCase, TileReader, read_slide_folder, sample_regions, sample_tiles
from medinfer.errors import InputError
from medinfer.metrics.classification import roc_auc
from medinfer.metrics.slides import LogisticAggregator, threshold_at_sensitivity, topk_mean
from medinfer.models.cells import CentreLoss, centre_targets
from medinfer.progress import progress_bar
from medinfer.tasks.cells import CellRegions, load_regions
from medinfer.tasks.cytology import Cytology, SlideResult, SlideSet
from medinfer.train.classify import pos_weight
from medinfer.train.config import CytologyConfig, FitConfig
from medinfer.train.recipes import Batch, Progress, Recipe, Sampler, Shard, Split, index_batches

log = logging.getLogger(__name__)


def slide_split(data: Path) -> Split:
    """``data/train`` trains, ``data/val`` validates (``data/test`` is never read here)."""
    data = Path(data)
    parts = {}
    for part in ("train", "val"):
        folder = data / part
        if not folder.is_dir():
            raise InputError(data, f"needs train/ and val/ slide folders; {part}/ is missing")
        parts[part] = read_slide_folder(folder)
    return Split(parts["train"], parts["val"], [], DataSplit(
        unit="slide", train=[f"train/{c.name}" for c in parts["train"]],
        val=[f"val/{c.name}" for c in parts["val"]]))


def _is_training(cfg: FitConfig, items: list[SlideCase]) -> bool:
    return bool(items) and items[0].path.parent.resolve() == (Path(cfg.data) / "train").resolve()


@dataclass(frozen=True)
class TileSet:
    """Training tiles: (N, t, t, 3) uint8 pixels and 0/1 labels (1: an abnormal cell's centre)."""

    tiles: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.tiles)


class CytologyRecipe(Recipe[CytologyConfig]):
    """Stage 1 on tiles of the training slides; validation on the whole validation slides."""

    task = "cytology"
    unit = "tiles"

    def split(self, cfg: CytologyConfig) -> Split:
        return slide_split(cfg.data)

    def load(self, cfg: CytologyConfig, items: list[Any], progress: Progress = None) -> TileSet | SlideSet:
        """Training slides -> their sampled tiles; validation slides -> the slides themselves."""
        if not _is_training(cfg, items):
            if progress:
                progress(len(items))
            return SlideSet(list(items))
        reader = TileReader(int(cfg.preprocessing.size[0]), cfg.cytology.downsample)
        rng = np.random.default_rng(cfg.seed)
        tiles, labels = [], []
        for case in items:
            t, y = sample_tiles(case, reader, rng, negatives=cfg.negatives_per_slide, per_cell=cfg.per_cell,
                                min_tissue=cfg.cytology.min_tissue)
            tiles.append(t)
            labels.append(y)
            if progress:
                progress(1)
        return TileSet(np.concatenate(tiles), np.concatenate(labels))

    def loss(self, cfg: CytologyConfig, train: TileSet) -> torch.nn.Module:
        return torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight(train.labels[:, None].astype(np.float32), 10.0))

    def sampler(self, cfg: CytologyConfig, train: TileSet, shard: Shard = Shard()) -> Sampler:
        def draw(shared: np.random.Generator) -> Iterator[Batch]:
            rng = shard.generator(shared)
            for idx in index_batches(len(train), cfg.batch_size, shared, shard):
                idx = np.sort(idx)
                x, _, _ = augment_pictures(train.tiles[idx], rng, cfg.preprocessing)
                yield x, torch.from_numpy(train.labels[idx, None].astype(np.float32))

        return draw

    def spec_fields(self, cfg: CytologyConfig) -> dict[str, Any]:
        return {"task": "cytology", "classes": ["abnormal"],
                "cytology": cfg.cytology.model_copy(update={"stage2": ""})}

    def finish(self, cfg: CytologyConfig, art: ModelArtifact) -> None:
        """Fusion, stage-1 threshold, stage 2 and the two-stage thresholds (class docstring)."""
        from medinfer.train.fit import fit  # the loop imports the recipes: a cycle at import time

        split = slide_split(cfg.data)
        settings = cfg.cytology.model_copy(update={"stage2": ""})
        art.spec.cytology = settings
        task = Cytology(art)
        infer = network_call(art)
        train_results = _run(task, split.train, infer, "stage 1 on training slides")
        val_results = _run(task, split.val, infer, "stage 1 on validation slides")
        val_labels = SlideSet(split.val).labels
        aggregator = LogisticAggregator.fit([r.probs for r in train_results],
                                            SlideSet(split.train).labels, k=settings.topk)
        topk_scores = np.array([topk_mean(r.probs, settings.topk) for r in val_results])
        learned_scores = np.array([aggregator(r.probs) for r in val_results])
        aucs = {"topk": roc_auc(topk_scores, val_labels), "learned": roc_auc(learned_scores, val_labels)}
        fusion = cfg.fusion if cfg.fusion != "auto" else max(("topk", "learned"), key=lambda f: (aucs[f], f == "topk"))
        s1 = topk_scores if fusion == "topk" else learned_scores
        log.info("slide fusion on validation slides: AUC top-k %.3f, learned %.3f -> %s",
                 aucs["topk"], aucs["learned"], fusion)
        settings = settings.model_copy(update={
            "fusion": fusion, "aggregator": aggregator.to_dict(),
            "threshold": threshold_at_sensitivity(s1, val_labels, settings.target_sensitivity),
            "flag_threshold": float(s1[val_labels == 1].min()) * cfg.flag_margin})
        art.spec.cytology = settings
        art.spec.metrics.update({"val_slide_auc_topk": aucs["topk"], "val_slide_auc_learned": aucs["learned"]})
        art.save()
        if not cfg.stage2_epochs or not cfg.cytology.stage2:
            return
        side = cfg.stage2_side
        ccfg = CellConfig(
            data=cfg.data, out=art.root / cfg.cytology.stage2, architecture=cfg.stage2_architecture,
            arch_kwargs=cfg.stage2_arch_kwargs,
            epochs=cfg.stage2_epochs, lr=cfg.lr, seed=cfg.seed, threads=cfg.threads, precision=cfg.precision,
            max_minutes=cfg.max_minutes,
            prefetch=cfg.prefetch, negatives=cfg.stage2_negatives, classes=tuple(settings.classes),
            preprocessing=cfg.preprocessing.model_copy(update={"size": (side, side)}))
        fit(CellRecipe(), ccfg, art.spec.training.command)
        art.spec.cytology = settings.model_copy(update={"stage2": cfg.cytology.stage2})
        set_two_stage_threshold(art, split.val)


def set_two_stage_threshold(art: ModelArtifact, val: list[SlideCase]) -> float:
    """Run both stages (FP32 weights) on the validation slides and store the two-stage
    threshold giving the artifact's target sensitivity there, and the two-stage validation
    metrics at it; returns the threshold."""
    task = Cytology(art)
    second = task.stage2
    if second is None:
        raise InputError(art.root, "no second stage to set a threshold for")
    both = _run(task, val, network_call(art), "both stages on validation slides", network_call(second))
    settings = task.settings
    threshold = threshold_at_sensitivity(np.array([r.score for r in both]), SlideSet(val).labels,
                                         settings.target_sensitivity)
    art.spec.cytology = settings.model_copy(update={"two_stage_threshold": threshold})
    scored = Cytology(art).metrics(both, SlideSet(val))
    art.spec.metrics.update({k: v for k, v in scored.items() if k.endswith("_2stage") or k == "flagged"})
    art.save()
    return threshold


def network_call(art: ModelArtifact) -> Callable[[np.ndarray], np.ndarray]:
    """The artifact's FP32 network (PyTorch, no gradients) as a batch -> outputs call."""
    net = art.load_network()

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    return infer


def _run(task: Cytology, cases: list[SlideCase], infer: Any, label: str, infer2: Any = None) -> list[SlideResult]:
    out = []
    with progress_bar(label, len(cases), True) as advance:
        for case in cases:
            out.append(task.run_slide(case.path, infer, infer2))
            advance()
    return out


class CellConfig(FitConfig):
    """Stage 2 of a cytology run: the cell-centre detector on level-0 regions (set by
    :meth:`CytologyRecipe.finish`).

    Attributes:
        negatives: random tissue regions per training slide (besides one around each
            abnormal cell).
        classes: the cell classes, in output order (after the centre channel).
        sigma: width of a centre's Gaussian in the target (pixels).
    """

    task: Literal["cell-centres"] = "cell-centres"
    architecture: str = "cell-centres"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=2)
    optimizer: Literal["adam", "adamw"] = "adamw"
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    negatives: int = Field(8, ge=0)
    classes: tuple[str, ...] = ABNORMAL
    sigma: float = Field(8.0, gt=0)


@dataclass(frozen=True)
class RegionSet:
    """Training regions: (N, s, s, 3) uint8 pixels with each region's cells (local x, y) and classes."""

    pixels: np.ndarray
    centres: list[np.ndarray]
    classes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.pixels)


class CellRecipe(Recipe[CellConfig]):
    """Stage 2: regions around the training slides' abnormal cells and at random tissue
    positions, turned and mirrored with their cells; validated on the validation slides'
    regions (:class:`~medinfer.tasks.cells.CellCentres`)."""

    task = "cell-centres"
    unit = "regions"

    def split(self, cfg: CellConfig) -> Split:
        return slide_split(cfg.data)

    def load(self, cfg: CellConfig, items: list[Any], progress: Progress = None) -> RegionSet | CellRegions:
        side = int(cfg.preprocessing.size[0])
        if not _is_training(cfg, items):
            art = ModelArtifact(cfg.out, _stage2_spec(cfg))
            regions = load_regions(Path(cfg.data) / "val", art, seed=cfg.seed + 1)
            if progress:
                progress(len(items))
            return regions
        rng = np.random.default_rng(cfg.seed)
        pixels, centres, classes = [], [], []
        for case in items:
            p, c, k = sample_regions(case, side, rng, negatives=cfg.negatives, classes=cfg.classes)
            pixels.append(p)
            centres += c
            classes += k
            if progress:
                progress(1)
        return RegionSet(np.concatenate(pixels), centres, classes)

    def loss(self, cfg: CellConfig, train: RegionSet) -> torch.nn.Module:
        return CentreLoss()

    def sampler(self, cfg: CellConfig, train: RegionSet, shard: Shard = Shard()) -> Sampler:
        side = int(cfg.preprocessing.size[0])

        def draw(shared: np.random.Generator) -> Iterator[Batch]:
            rng = shard.generator(shared)
            for idx in index_batches(len(train), cfg.batch_size, shared, shard):
                x, turns, flips = augment_pictures(train.pixels[idx], rng, cfg.preprocessing)
                y = np.stack([centre_targets(turn_points(train.centres[j], side, t, f), train.classes[j],
                                             (side, side), len(cfg.classes), cfg.sigma)
                              for j, t, f in zip(idx, turns, flips)])
                yield x, torch.from_numpy(y)

        return draw

    def out_channels(self, cfg: CellConfig) -> int:
        return 1 + len(cfg.classes)

    def spec_fields(self, cfg: CellConfig) -> dict[str, Any]:
        return {"task": "cell-centres", "classes": list(cfg.classes)}


def _stage2_spec(cfg: CellConfig) -> ArtifactSpec:
    """The artifact description stage 2 will have (to prepare its validation regions)."""
    pre = cfg.preprocessing
    return ArtifactSpec(architecture=cfg.architecture, in_channels=pre.channels, out_channels=1 + len(cfg.classes),
                        input=InputSpec(channels=pre.channels, spatial=pre.size), preprocessing=pre,
                        task="cell-centres", classes=list(cfg.classes))
