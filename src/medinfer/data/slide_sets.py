"""Folders of whole slides with slide labels, and the tiles and regions a network reads there.

A slide folder holds the slides and ``labels.csv`` (columns ``slide``, ``label``: 0 normal,
1 abnormal), as :func:`medinfer.data.mosaic.write_slide_set` writes it; a slide's cells
(``<slide>.json``, :func:`medinfer.data.mosaic.read_truth`), when present, give tile and
cell labels. :class:`TileReader` reads the tiles of one scale from any slide: from the
level of that downsample, or pooled from a finer level, in blocks so that each stored
tile of the file is decoded about once.
"""

from __future__ import annotations

import csv
import functools
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medinfer.data.mosaic import ABNORMAL, CLASSES, SlideTruth, read_truth
from medinfer.data.slide_tiles import tile_grid, tissue_mask
from medinfer.errors import InputError
from medinfer.io.slides import Slide

__all__ = ["SlideCase", "TileReader", "is_slide_folder", "read_slide_folder", "sample_regions",
           "sample_tiles"]

LABELS = "labels.csv"


@dataclass(frozen=True)
class SlideCase:
    """One slide of a folder: its file, label (1 abnormal) and cells' JSON (None: unknown)."""

    path: Path
    label: int
    truth: Path | None

    @property
    def name(self) -> str:
        return self.path.name

    def read_truth(self) -> SlideTruth | None:
        return read_truth(self.truth) if self.truth is not None else None


def is_slide_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``labels.csv`` with ``slide`` and ``label`` columns."""
    path = Path(folder) / LABELS
    if not path.is_file():
        return False
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return {"slide", "label"} <= set(header)


def read_slide_folder(folder: Path) -> list[SlideCase]:
    """The slides ``labels.csv`` lists, in its order.

    Raises:
        InputError: no ``labels.csv`` or wrong columns, a label that is not 0/1, or a slide
            file that is missing (each naming the file).
    """
    folder = Path(folder)
    path = folder / LABELS
    if not is_slide_folder(folder):
        raise InputError(path, "needs a labels.csv with columns slide,label")
    cases = []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            slide = folder / row["slide"]
            if row["label"] not in ("0", "1"):
                raise InputError(path, f"line {line}: label {row['label']!r} is not 0 or 1")
            if not slide.is_file():
                raise InputError(slide, f"listed in {path.name} line {line} but missing")
            truth = slide.with_suffix(".json")
            cases.append(SlideCase(slide, int(row["label"]), truth if truth.is_file() else None))
    if not cases:
        raise InputError(path, "lists no slide")
    return cases


@dataclass(frozen=True)
class TileReader:
    """Square tiles of ``tile`` pixels at ``downsample`` level-0 pixels per tile pixel.

    Attributes:
        tile: tile side (the network's input side).
        downsample: level-0 pixels per tile pixel.
        block: tiles per side of one read (a block is read once and cut into tiles).
    """

    tile: int
    downsample: float
    block: int = 4

    @property
    def span(self) -> int:
        """Level-0 pixels one tile spans."""
        return round(self.tile * self.downsample)

    def source(self, slide: Slide) -> tuple[int, int]:
        """``(level, pool)``: the level read and the integer factor its pixels are averaged by.

        Raises:
            InputError: no level whose downsample divides ``downsample`` (naming the slide).
        """
        for level in range(slide.best_level(self.downsample), -1, -1):
            ratio = self.downsample / slide.info.level_downsamples[level]
            if abs(ratio - round(ratio)) < 0.01:
                return level, round(ratio)
        raise InputError(slide.info.path, f"no level whose downsample divides {self.downsample} "
                                          f"(levels {slide.info.level_downsamples})")

    def grid(self, slide: Slide, min_tissue: float) -> list[tuple[int, int]]:
        """Level-0 corners of the tiles covering the slide where the tissue mask covers at
        least ``min_tissue`` of a tile, row-major."""
        level, pool = self.source(slide)
        return tile_grid(slide, self.tile * pool, level, tissue_mask(slide), min_tissue)

    def read(self, slide: Slide, x: int, y: int, side: int | None = None) -> np.ndarray:
        """One ``side`` x ``side`` picture (default: a tile) at this scale, corner at level-0
        ``(x, y)``: (side, side, 3) uint8."""
        level, pool = self.source(slide)
        side = side or self.tile
        pixels = slide.read_region(level, int(x), int(y), side * pool, side * pool)
        return _pool(pixels, pool)

    def blocks(self, positions: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Indices into ``positions`` grouped by block, blocks row-major (each read once)."""
        if not len(positions):
            return []
        step = self.block * self.span
        xy = np.asarray(positions, np.int64).reshape(-1, 2)
        key = (xy[:, 1] // step) * (int(xy[:, 0].max()) // step + 1) + xy[:, 0] // step
        order = np.lexsort((xy[:, 0], xy[:, 1], key))
        cuts = np.flatnonzero(np.diff(key[order])) + 1
        return np.split(order, cuts)

    def read_block(self, slide: Slide, xy: np.ndarray, members: np.ndarray) -> np.ndarray:
        """The tiles ``members`` of one block (level-0 corners ``xy[members]``), from one read:
        (k, tile, tile, 3) uint8."""
        level, pool = self.source(slide)
        x0, y0 = xy[members, 0].min(), xy[members, 1].min()
        w = xy[members, 0].max() - x0 + self.span
        h = xy[members, 1].max() - y0 + self.span
        scale = self.downsample  # level-0 pixels per output pixel
        pixels = _pool(slide.read_region(level, int(x0), int(y0), math.ceil(w / scale) * pool,
                                         math.ceil(h / scale) * pool), pool)
        out = np.empty((len(members), self.tile, self.tile, 3), np.uint8)
        for k, i in enumerate(members):
            dx, dy = round((xy[i, 0] - x0) / scale), round((xy[i, 1] - y0) / scale)
            out[k] = pixels[dy:dy + self.tile, dx:dx + self.tile]
        return out

    def batches(self, slide: Slide, positions: Sequence[tuple[int, int]], batch: int,
                workers: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The tiles at ``positions`` in batches: ``(pixels (n, tile, tile, 3) uint8,
        index (n,) into positions)``, read block by block (:meth:`blocks`), ``workers``
        blocks at a time (the slide's decoder releases the GIL), in block order.

        Memory: ``2 * workers`` blocks (``(block * tile * pool)^2`` pixels each) and one batch.
        """
        xy = np.asarray(positions, np.int64).reshape(-1, 2)
        groups = self.blocks(positions)
        read = functools.partial(self.read_block, slide, xy)
        out = np.empty((batch, self.tile, self.tile, 3), np.uint8)
        index = np.empty(batch, np.int64)
        n = 0
        for members, tiles in zip(groups, _ordered(read, groups, workers)):
            for i, tile in zip(members, tiles):
                out[n] = tile
                index[n] = i
                n += 1
                if n == batch:
                    yield out.copy(), index.copy()
                    n = 0
        if n:
            yield out[:n].copy(), index[:n].copy()


def _ordered(fn: Callable[[np.ndarray], np.ndarray], items: Sequence[np.ndarray],
             workers: int) -> Iterator[np.ndarray]:
    """``fn`` of each item, in order, ``workers`` threads computing ahead (at most
    ``2 * workers`` results waiting)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="slide-read") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pool(pixels: np.ndarray, pool: int) -> np.ndarray:
    """Average ``pool`` x ``pool`` pixel blocks (uint8 in and out)."""
    if pool == 1:
        return pixels
    h, w = pixels.shape[0] // pool, pixels.shape[1] // pool
    blocks = pixels[:h * pool, :w * pool].reshape(h, pool, w, pool, 3).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _jittered(centre: np.ndarray, span: int, margin: float, rng: np.random.Generator) -> np.ndarray:
    """A level-0 corner putting ``centre`` inside the tile, at least ``margin`` of the span
    from its edges."""
    low = centre - span * (1 - margin)
    return np.floor(low + rng.uniform(0, 1, 2) * span * (1 - 2 * margin)).astype(np.int64)


def sample_tiles(case: SlideCase, reader: TileReader, rng: np.random.Generator, *,
                 negatives: int = 64, per_cell: int = 2, margin: float = 0.2,
                 min_tissue: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Training tiles of one slide with its cells: ``(tiles (n, t, t, 3) uint8, labels (n,))``.

    Positives: ``per_cell`` tiles per abnormal cell, placed at random so that its centre
    lies at least ``margin`` of the span inside the tile. Negatives: ``negatives`` tiles
    holding no abnormal cell's centre (on normal and abnormal slides alike), half placed the
    same way around random normal cells, half from the slide's tissue grid, so that "a cell
    near the middle" does not give a tile away. Label 1: the tile holds an abnormal cell's
    centre.
    """
    truth = case.read_truth()
    if truth is None:
        raise InputError(case.path, "no cells JSON beside the slide: tile labels are unknown")
    abnormal = truth.centres(ABNORMAL)
    normal = truth.centres([c for c in CLASSES if c not in ABNORMAL])
    span = reader.span

    def clear(corner: np.ndarray) -> bool:
        inside = np.all((abnormal >= corner) & (abnormal < corner + span), axis=1)
        return not inside.any()

    with Slide.open(case.path) as slide:
        grid = np.asarray(reader.grid(slide, min_tissue), np.int64).reshape(-1, 2)
        corners: list[np.ndarray] = []
        for pool, around in ((normal, True), (grid, False)):
            want = negatives // 2 if around else negatives - len(corners)
            for i in rng.permutation(len(pool))[:4 * want]:
                corner = _jittered(pool[i], span, margin, rng) if around else pool[i]
                if clear(corner):
                    corners.append(corner)
                if len(corners) >= (want if around else negatives):
                    break
        labels = [0] * len(corners)
        for c in abnormal:
            for _ in range(per_cell):
                corners.append(_jittered(c, span, margin, rng))
                labels.append(1)
        tiles = np.stack([reader.read(slide, int(x), int(y)) for x, y in corners]) if corners else \
            np.zeros((0, reader.tile, reader.tile, 3), np.uint8)
    return tiles, np.asarray(labels, np.int64)


def sample_regions(case: SlideCase, side: int, rng: np.random.Generator, *, negatives: int = 8,
                   per_cell: int = 1, classes: Sequence[str] = ABNORMAL, margin: float = 0.15,
                   limit: int | None = None) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Level-0 training regions of one slide for the cell-centre detector.

    Returns ``(regions (n, side, side, 3) uint8, centres, labels)``: per region the
    region-local ``(x, y)`` of every cell of ``classes`` whose centre lies within half a
    cell of it, and their class indices. Regions: ``per_cell`` around each such cell
    (placed at random) and ``negatives`` at random tissue positions; with ``limit``, only
    ``limit`` of those, drawn at random, are read.
    """
    truth = case.read_truth()
    if truth is None:
        raise InputError(case.path, "no cells JSON beside the slide: cell positions are unknown")
    wanted = {c: i for i, c in enumerate(classes)}
    cells = [c for c in truth.cells if c.cls in wanted]
    xy = np.array([(c.x, c.y) for c in cells], np.float64).reshape(-1, 2)
    cls = np.array([wanted[c.cls] for c in cells], np.int64)
    reader = TileReader(side, 1.0)
    with Slide.open(case.path) as slide:
        corners = [tuple(_jittered(c, side, margin, rng)) for c in xy for _ in range(per_cell)]
        grid = tile_grid(slide, side, 0, tissue_mask(slide), 0.2)
        if grid:
            corners += [grid[i] for i in rng.choice(len(grid), min(negatives, len(grid)), replace=False)]
        if limit is not None:
            corners = [corners[i] for i in rng.permutation(len(corners))[:limit]]
        regions = np.stack([reader.read(slide, x, y) for x, y in corners]) if corners else \
            np.zeros((0, side, side, 3), np.uint8)
    centres, labels = [], []
    for x, y in corners:
        local = xy - np.array([x, y], np.float64)
        inside = np.all((local > -side * 0.1) & (local < side * 1.1), axis=1)
        centres.append(local[inside].astype(np.float32))
        labels.append(cls[inside])
    return regions, centres, labels
