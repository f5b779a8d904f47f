"""Whole-slide cervical cytology (S7): a tile classifier slid over the slide, slide-level
fusion of the tile scores, and a cell-centre detector on the most suspicious tiles of the
slides stage 1 flags.

Stage 1 is the artifact's own network: one logit per tile (``CytologySpec.downsample``
level-0 pixels per tile pixel; tiles only where the tissue mask finds something on the
glass), run in batches with several requests in flight while a reader thread decodes the
next tiles. The tile probabilities become one slide score by a top-k mean or a fitted
logistic aggregator (:mod:`medinfer.metrics.slides`). Stage 2 is a second artifact in the
sub-folder ``CytologySpec.stage2``: a dense cell-centre detector
(:mod:`medinfer.models.cells`) on level-0 regions of the ``regions`` highest tiles of a
flagged slide. The two-stage slide score is ``s1 ** (1 - w) * c ** w`` with ``c`` the best
cell's score (0 on a slide stage 1 does not flag). Both networks are optimized together
(``Task.parts``); the gate checks tile AUC and slide AUC.

A slide enters as an :class:`~medinfer.io.Image` holding its thumbnail (what the heat-map
is drawn on) and its path (``source``); a plain picture is classified as one tile.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import CytologySpec, ModelArtifact, VariantRecord
from medinfer.data.mosaic import ABNORMAL
from medinfer.data.preprocess import prepare_tiles
from medinfer.data.prefetch import prefetched
from medinfer.data.slide_sets import SlideCase, TileReader, is_slide_folder, read_slide_folder, sample_regions
from medinfer.data.slide_tiles import tile_counts
from medinfer.errors import InputError
from medinfer.io import Image
from medinfer.io.derived import write_png
from medinfer.io.limits import ReadLimits
from medinfer.io.slide_results import heatmap_overlay, write_cells_geojson
from medinfer.io.slides import SLIDE_SUFFIXES, Slide
from medinfer.metrics.classification import roc_auc
from medinfer.metrics.slides import LogisticAggregator, operating_point, topk_mean
from medinfer.models.cells import decode_centres
from medinfer.progress import progress_bar
from medinfer.runtime import Engine, EngineOptions
from medinfer.tasks.base import Example, GateLimits, Infer, PictureTask, Prediction, WriteOptions, WrittenFile, gate_keys
from medinfer.tasks.classification import sigmoid
from medinfer.tasks.detection import StagedEngine, open_staged

THUMBNAIL = 2048
"""Longer side of the thumbnail a slide's heat-map is drawn on (pixels)."""
PEAK_FLOOR = 0.01
"""Stage-2 heat-map peaks at or above this are kept as candidate cells: the best one is the
slide's stage-2 evidence, those at ``CytologySpec.cell_threshold`` or above are reported."""


@dataclass(frozen=True)
class SlideSet:
    """Evaluation slides: files, labels and (when present) their cells' JSON."""

    cases: list[SlideCase]

    def __len__(self) -> int:
        return len(self.cases)

    def subset(self, index: list[int]) -> SlideSet:
        return SlideSet([self.cases[i] for i in index])

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.cases], np.int64)


@dataclass(frozen=True, eq=False)
class SlideResult:
    """One slide through the pipeline.

    Attributes:
        size: level-0 ``(width, height)``; span: level-0 pixels of one tile's side.
        positions: (n, 2) level-0 corners of the tiles classified; probs: (n,) their probabilities.
        score1: stage 1's slide score (fusion of ``probs``); flagged: whether stage 2 ran.
        cells: (m, 4) stage-2 candidate cells (heat-map peaks >= ``PEAK_FLOOR``): level-0 x,
            y, score, class index (empty: none or no stage 2).
        score2: the best cell's score (0: none found; NaN: stage 2 did not run).
        score: the slide score the decision thresholds (two-stage when there is a stage 2).
        seconds: wall time per step (``tissue``, ``stage1``, ``stage2``).
    """

    size: tuple[int, int]
    span: int
    positions: np.ndarray
    probs: np.ndarray
    score1: float
    flagged: bool
    cells: np.ndarray
    score2: float
    score: float
    seconds: dict[str, float] = field(default_factory=dict)

    def heat(self) -> np.ndarray:
        """(rows, cols) tile probabilities on the tile grid; NaN where no tile was read."""
        cols, rows = -(-self.size[0] // self.span), -(-self.size[1] // self.span)
        grid = np.full((rows, cols), np.nan, np.float32)
        if len(self.positions):
            ix = np.clip(self.positions[:, 0] // self.span, 0, cols - 1)
            iy = np.clip(self.positions[:, 1] // self.span, 0, rows - 1)
            grid[iy, ix] = self.probs
        return grid


@dataclass(frozen=True, eq=False)
class SlidePrediction(Prediction):
    """A slide's prediction with its tile grid (the heat-map) and the thumbnail it is drawn on."""

    heat: np.ndarray | None = None
    thumbnail: np.ndarray | None = None


class Cytology(PictureTask):
    """Whole-slide cytology: slides in, a slide score, a heat-map and abnormal cells out."""

    name: ClassVar[str] = "cytology"
    primary: ClassVar[str] = "tile_auc"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("tile_auc", "tile AUC"), ("slide_auc", "slide AUC (stage 1)"),
        ("specificity", "specificity (stage 1)"), ("slide_auc_2stage", "slide AUC (both)"),
        ("specificity_2stage", "specificity (both)"))
    layout: ClassVar[str] = ("a slide folder (labels.csv with columns slide,label, the slides, and "
                             "<slide>.json cells for tile metrics)")
    in_flight: ClassVar[int] = 2
    readers: ClassVar[int] = 2
    """Threads decoding blocks of the slide at once (OpenSlide releases the GIL)."""

    def __init__(self, art: ModelArtifact, thumbnail: int = THUMBNAIL, progress: bool = False) -> None:
        """``thumbnail``: the longer side of the picture the heat-map is drawn on (the level
        read is the smallest at least that big); ``progress``: a bar over a slide's tiles."""
        super().__init__(art)
        self.thumbnail, self.progress = thumbnail, progress
        self.settings = art.spec.cytology or CytologySpec()
        self.reader = TileReader(int(self.spec.size[0]), self.settings.downsample)
        self.calib_cases: list[SlideCase] = []
        self.aggregator = (LogisticAggregator.from_dict(self.settings.aggregator)
                           if self.settings.aggregator else None)

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "cytology"

    @functools.cached_property
    def stage2(self) -> ModelArtifact | None:
        """The cell-centre detector (None: one stage), read once."""
        if not self.settings.stage2 or not (self.art.root / self.settings.stage2).is_dir():
            return None
        return ModelArtifact.load(self.art.root / self.settings.stage2)

    # -- engines -----------------------------------------------------------------------
    def open_variant(self, record: VariantRecord, options: EngineOptions) -> Engine:
        """Stage 1 in ``record``'s variant and stage 2 in the variant of the same name."""
        return open_staged(self.art, self.stage2, record, options)

    def parts(self, calib: np.ndarray) -> list[tuple[ModelArtifact, np.ndarray]]:
        """Stage 2 with calibration regions of the calibration slides (around their abnormal
        cells and at random tissue positions: what flagged tiles show)."""
        stage2 = self.stage2
        if stage2 is None or not self.calib_cases:
            return []
        rng = np.random.default_rng(0)
        side = int(stage2.spec.preprocessing.size[0])
        regions = [sample_regions(c, side, rng, negatives=4, per_cell=1, limit=8)[0] for c in self.calib_cases
                   if c.truth is not None]
        pixels = np.concatenate(regions) if regions else np.zeros((0, side, side, 3), np.uint8)
        return [(stage2, prepare_tiles(pixels, stage2.spec.preprocessing))]

    # -- data --------------------------------------------------------------------------
    def is_layout(self, folder: Path) -> bool:
        return is_slide_folder(folder)

    def load_eval(self, folder: Path, limit: int | None = None) -> SlideSet:
        cases = read_slide_folder(Path(folder))
        return SlideSet(cases[:limit] if limit else cases)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Tissue tiles of the folder's slides, spread evenly over them (``limit`` in all,
        default 256), prepared like inputs; the slides are kept for stage 2's calibration."""
        folder = Path(folder)
        if not is_slide_folder(folder):
            return super().load_calib(folder, limit)
        self.calib_cases = read_slide_folder(folder)
        total = limit or 256
        per_slide = max(1, -(-total // len(self.calib_cases)))
        rng = np.random.default_rng(0)
        tiles = []
        for case in self.calib_cases:
            with Slide.open(case.path) as slide:
                grid = self.reader.grid(slide, self.settings.min_tissue)
                if grid:
                    picks = rng.choice(len(grid), min(per_slide, len(grid)), replace=False)
                    tiles += [self.reader.read(slide, *grid[i]) for i in sorted(picks)]
        return prepare_tiles(np.stack(tiles[:total]), self.spec)

    def count(self, data: SlideSet) -> int:
        return len(data)

    def first_tiles(self, case: SlideCase, n: int) -> np.ndarray:
        """The first ``n`` tissue tiles of a slide, prepared (repeated when it has fewer)."""
        with Slide.open(case.path) as slide:
            grid = self.reader.grid(slide, self.settings.min_tissue) or [(0, 0)]
            tiles = np.stack([self.reader.read(slide, *grid[i % len(grid)]) for i in range(n)])
        return prepare_tiles(tiles, self.spec)

    def network_input(self, data: SlideSet, i: int) -> np.ndarray:
        return self.first_tiles(data.cases[i], 1)

    def latency_batch(self, data: SlideSet) -> np.ndarray:
        return self.first_tiles(data.cases[0], self.settings.batch)

    # -- one slide ---------------------------------------------------------------------
    def read_input(self, paths: Sequence[Path], limits: ReadLimits | None = None) -> Image:
        """A slide file: an Image of its thumbnail with the slide as ``source`` (meta
        ``slide: True``); anything else as the base task reads it (one tile)."""
        if len(paths) == 1 and Path(paths[0]).suffix.lower() in SLIDE_SUFFIXES:
            path = Path(paths[0])
            with Slide.open(path) as slide:
                picture = slide.thumbnail(self.thumbnail)
                info = slide.info
            w, h = info.dimensions
            mpp = info.mpp or (1.0, 1.0)
            spacing = (mpp[1] * 1e-3 * h / picture.shape[0], mpp[0] * 1e-3 * w / picture.shape[1])
            return Image(np.moveaxis(picture, -1, 0), spacing, (0.0, 0.0), np.eye(2), path,
                         {"format": "slide", "slide": True, "backend": info.backend,
                          "dimensions": [w, h], "vendor": info.vendor})
        return super().read_input(paths, limits)

    def fuse(self, probs: np.ndarray) -> float:
        """Stage 1's slide score from its tile probabilities (``CytologySpec.fusion``)."""
        if self.settings.fusion == "learned":
            if self.aggregator is None:
                raise InputError(self.art.root, "fusion 'learned' but the artifact holds no aggregator")
            return float(self.aggregator(probs))
        return topk_mean(probs, self.settings.topk)

    def run_slide(self, path: Path, stage1: Infer, stage2: Infer | None = None,
                  many: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
                  progress: bool = False, max_tiles: int | None = None) -> SlideResult:
        """The pipeline on one slide file (see the module docstring); ``max_tiles``: only
        the first tiles of the grid (benchmarks comparing engines on the same tiles)."""
        s = self.settings
        t0 = time.perf_counter()
        with Slide.open(path) as slide:
            grid = self.reader.grid(slide, s.min_tissue)[:max_tiles]
            t1 = time.perf_counter()
            positions = np.asarray(grid, np.int64).reshape(-1, 2)
            probs = np.zeros(len(positions), np.float32)
            readers = self.readers if slide.info.backend == "openslide" else 1  # OpenSlide is thread-safe
            batches = prefetched(((prepare_tiles(px, self.spec), idx)
                                  for px, idx in self.reader.batches(slide, grid, s.batch, readers)),
                                 2 * self.in_flight)
            group: list[tuple[np.ndarray, np.ndarray]] = []
            n_batches = -(-len(positions) // s.batch)
            with progress_bar(f"tiles of {Path(path).name}", n_batches, progress) as advance:
                for item in batches:
                    group.append(item)
                    if len(group) == self.in_flight:
                        self._classify(group, probs, stage1, many, advance)
                        group = []
                if group:
                    self._classify(group, probs, stage1, many, advance)
            t2 = time.perf_counter()
            score1 = self.fuse(probs)
            flagged = stage2 is not None and score1 >= s.flag_threshold
            cells = self._find_cells(slide, positions, probs, stage2) if flagged else np.zeros((0, 4), np.float32)
            size = slide.info.dimensions
        t3 = time.perf_counter()
        score2 = float(cells[:, 2].max()) if len(cells) else (0.0 if flagged else float("nan"))
        if stage2 is None:
            score = score1
        else:
            score = score1 ** (1 - s.stage2_weight) * score2 ** s.stage2_weight if flagged else 0.0
        return SlideResult(size, self.reader.span, positions, probs, score1, flagged, cells, score2,
                           float(score), {"tissue": t1 - t0, "stage1": t2 - t1, "stage2": t3 - t2})

    @staticmethod
    def _classify(group: list[tuple[np.ndarray, np.ndarray]], probs: np.ndarray, stage1: Infer,
                  many: Callable[[list[np.ndarray]], list[np.ndarray]] | None,
                  advance: Callable[[], None]) -> None:
        inputs = [x for x, _ in group]
        outputs = many(inputs) if many is not None else [stage1(x) for x in inputs]
        for (_, idx), out in zip(group, outputs):
            probs[idx] = sigmoid(np.asarray(out).reshape(len(idx), -1)[:, 0])
            advance()

    def _find_cells(self, slide: Slide, positions: np.ndarray, probs: np.ndarray, stage2: Infer) -> np.ndarray:
        """Stage 2 on the ``regions`` highest tiles: cells (m, 4) in level-0 pixels."""
        s = self.settings
        second = self.stage2
        assert second is not None
        pre = second.spec.preprocessing
        side = int(pre.size[0])
        top = np.argsort(-probs, kind="stable")[:s.regions]
        region = TileReader(side, 1.0)
        found = []
        for i in range(0, len(top), 8):
            chunk = top[i:i + 8]
            # a region centred on each tile (a tile spans `span` level-0 pixels, a region `side`)
            corners = positions[chunk] + (self.reader.span - side) // 2
            pixels = np.stack([region.read(slide, int(x), int(y)) for x, y in corners])
            logits = np.asarray(stage2(prepare_tiles(pixels, pre)))
            for (x0, y0), out in zip(corners, logits):
                cells = decode_centres(out, threshold=PEAK_FLOOR)
                if len(cells):
                    cells[:, 0] += x0
                    cells[:, 1] += y0
                    found.append(cells)
        return np.concatenate(found).astype(np.float32) if found else np.zeros((0, 4), np.float32)

    def predict(self, engine: Engine, image: Image, variant: str = "") -> Prediction:
        """A slide (read by :meth:`read_input`) through both stages; a picture as one tile."""
        if not image.meta.get("slide"):
            return super().predict(engine, image, variant)
        if image.source is None:
            raise InputError("<slide>", "a slide image needs its source file")
        classifier = engine.classifier if isinstance(engine, StagedEngine) else None
        t0 = time.perf_counter()
        result = self.run_slide(image.source, engine.infer, classifier.infer if classifier else None,
                                engine.infer_many, self.progress)
        seconds = {**result.seconds, "total": time.perf_counter() - t0}
        return SlidePrediction(self.name, artifact=self.art.root.name, variant=variant, seconds=seconds,
                               extra=self.summary(result, image.source), heat=result.heat(),
                               thumbnail=np.moveaxis(image.array, 0, -1))

    def summary(self, result: SlideResult, path: Path) -> dict[str, Any]:
        """The JSON keys of a slide's result (``slide_score``, ``abnormal``, ``tiles``,
        ``cells`` with class, score, x, y in level-0 pixels, ...)."""
        s = self.settings
        two = self.stage2 is not None
        threshold = s.two_stage_threshold if two else s.threshold
        top = np.argsort(-result.probs, kind="stable")[:s.regions]
        classes = s.classes
        return {
            "slide": Path(path).name, "slide_score": round(result.score, 6),
            "abnormal": bool(result.score >= threshold), "threshold": threshold,
            "stage1_score": round(result.score1, 6), "stage1_abnormal": bool(result.score1 >= s.threshold),
            "flagged": result.flagged,
            "stage2_score": None if np.isnan(result.score2) else round(result.score2, 6),
            "fusion": s.fusion, "tiles": int(len(result.positions)), "tile_span": result.span,
            "size": list(result.size),
            "top_tiles": [{"x": int(result.positions[i, 0]), "y": int(result.positions[i, 1]),
                           "score": round(float(result.probs[i]), 6)} for i in top],
            "cells": [{"class": classes[int(k)] if int(k) < len(classes) else f"class_{int(k)}",
                       "score": round(float(sc), 6), "x": round(float(x), 1), "y": round(float(y), 1)}
                      for x, y, sc, k in result.cells if sc >= s.cell_threshold],
        }

    # -- many slides: metrics and gate -------------------------------------------------
    def outputs(self, infer: Infer, data: SlideSet) -> list[SlideResult]:  # type: ignore[override]
        """Stage 1 on every slide (a network call alone knows no second stage)."""
        return [self.run_slide(c.path, infer) for c in data.cases]

    def engine_outputs(self, engine: Engine, data: SlideSet) -> list[SlideResult]:  # type: ignore[override]
        classifier = engine.classifier if isinstance(engine, StagedEngine) else None
        return [self.run_slide(c.path, engine.infer, classifier.infer if classifier else None, engine.infer_many)
                for c in data.cases]

    def tile_labels(self, result: SlideResult, case: SlideCase) -> np.ndarray | None:
        """1 where a tile holds an abnormal cell's centre (None without the cells' JSON)."""
        truth = case.read_truth()
        if truth is None:
            return None
        return (tile_counts(truth.centres(ABNORMAL), [tuple(p) for p in result.positions],
                            self.reader.tile, self.settings.downsample) > 0).astype(np.int64)

    def metrics(self, outputs: list[SlideResult], data: SlideSet, n_boot: int = 0) -> dict[str, Any]:  # type: ignore[override]
        """Tile AUC (tiles labelled by the cells' JSON), slide AUC and sensitivity /
        specificity at the artifact's thresholds for stage 1, and for both stages when
        there is a second one."""
        s = self.settings
        labels = data.labels
        probs, tiles = [], []
        for r, case in zip(outputs, data.cases):
            t = self.tile_labels(r, case)
            if t is not None:
                probs.append(r.probs)
                tiles.append(t)
        out: dict[str, Any] = {"n": float(len(outputs)), "positives": float(labels.sum())}
        if tiles:
            out["tile_auc"] = roc_auc(np.concatenate(probs), np.concatenate(tiles))
            out["tiles"] = float(sum(len(t) for t in tiles))
        else:
            out["tile_auc"] = float("nan")
        s1 = np.array([r.score1 for r in outputs])
        out["slide_auc"] = roc_auc(s1, labels)
        op = operating_point(s1, labels, s.threshold)
        out.update(sensitivity=op.sensitivity, specificity=op.specificity)
        if self.stage2 is not None and any(r.flagged or not np.isnan(r.score2) for r in outputs):
            both = np.array([r.score for r in outputs])
            out["slide_auc_2stage"] = roc_auc(both, labels)
            op2 = operating_point(both, labels, s.two_stage_threshold)
            out.update(sensitivity_2stage=op2.sensitivity, specificity_2stage=op2.specificity,
                       flagged=float(sum(r.flagged for r in outputs)))
        return {k: float(v) if isinstance(v, (int, float, np.floating)) else v for k, v in out.items()}

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        """Tile AUC and stage-1 slide AUC, each within ``max_drop``."""
        return gate_keys(ref, cand, limits, (self.primary, "slide_auc"))

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        """One picture as one tile: its probability of holding an abnormal cell."""
        p = float(sigmoid(np.asarray(outputs).reshape(-1)[:1])[0])
        return Prediction(self.name, scores={"abnormal": p}, thresholds={"abnormal": 0.5})

    def examples(self, data: SlideSet, outputs: dict[str, list[SlideResult]], n: int) -> list[Example]:  # type: ignore[override]
        """Up to ``n`` slides (abnormal ones first): the thumbnail with its abnormal cells
        marked (green, when the cells' JSON is there) and each variant's heat-map."""
        order = sorted(range(len(data)), key=lambda i: -data.cases[i].label)[:n]
        out = []
        for i in order:
            case = data.cases[i]
            with Slide.open(case.path) as slide:
                thumb = slide.thumbnail(512)
                size = slide.info.dimensions
            truth = case.read_truth()
            marked = thumb.copy()
            if truth is not None:
                h, w = thumb.shape[:2]
                for x, y in truth.centres(ABNORMAL):
                    a, b = int(y * h / size[1]), int(x * w / size[0])
                    marked[max(a - 2, 0):a + 3, max(b - 2, 0):b + 3] = (0, 200, 0)
            pictures = {f"truth (label {case.label})": marked}
            for variant, results in outputs.items():
                r = results[i]
                pictures[variant] = heatmap_overlay(thumb, self.heat_on(r.heat(), thumb.shape[:2], r.size))
            out.append(Example(case.name, pictures, {v: float(res[i].score) for v, res in outputs.items()}))
        return out

    # -- results -----------------------------------------------------------------------
    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """The heat-map over the thumbnail (PNG) and the cells as GeoJSON (QuPath)."""
        if not isinstance(pred, SlidePrediction):
            return []
        files = []
        if options.overlay and pred.heat is not None and pred.thumbnail is not None:
            picture = heatmap_overlay(pred.thumbnail, self.heat_on(pred.heat, pred.thumbnail.shape[:2],
                                                                  pred.extra["size"]))
            files.append(WrittenFile("heatmap", write_png(picture, out_dir / options.name("heatmap.png")),
                                     "image/png"))
        path = write_cells_geojson(pred.extra["cells"], out_dir / options.name("cells.geojson"),
                                   slide=pred.extra["slide"], radius=40.0)
        return files + [WrittenFile("geojson", path, "application/geo+json")]

    def heat_on(self, heat: np.ndarray, shape: tuple[int, int], size: Sequence[int]) -> np.ndarray:
        """The tile grid ``heat`` sampled at each pixel of a ``shape`` picture of the whole
        slide (level-0 ``size``): the grid runs past the slide's right and bottom edges by
        part of a tile, the picture does not."""
        h, w = shape
        span = self.reader.span
        ix = np.minimum(((np.arange(w) + 0.5) * size[0] / w // span).astype(np.int64), heat.shape[1] - 1)
        iy = np.minimum(((np.arange(h) + 0.5) * size[1] / h // span).astype(np.int64), heat.shape[0] - 1)
        return heat[iy[:, None], ix[None, :]]
