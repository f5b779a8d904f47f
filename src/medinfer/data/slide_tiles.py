"""Where the cells are on a whole slide, and the tiles a network reads there.

A mask of "something on the glass" at a low level (:func:`tissue_mask`), the level-0
positions of the tiles it covers (:func:`tile_grid`) and how many recorded cells each tile
holds (:func:`tile_counts`), over a :class:`~medinfer.io.slides.Slide`. The tiles themselves
are read by :class:`medinfer.data.slide_sets.TileReader` (by blocks, bounded memory).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from medinfer.io.slides import Slide

__all__ = ["tile_counts", "tile_grid", "tissue_mask"]


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of 0..255 values (the level splitting them into two classes with
    the largest between-class variance)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(), minlength=256)
    hist = hist.astype(np.float64)
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * np.arange(256))
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    between = np.nan_to_num(between, nan=0.0, posinf=0.0)
    return float(np.argmax(between))


def tissue_mask(slide: Slide, level: int | None = None, max_side: int = 2048, *,
                min_saturation: float = 20, min_darkness: float = 25,
                min_object_px: int = 4) -> tuple[np.ndarray, float]:
    """Where something lies on the glass (cells, tissue, debris) rather than empty glass.

    The rule, for cytology on glass (bright, unsaturated background): a pixel is
    "something" when its HSV saturation (0-255) is above Otsu's threshold of the saturation
    histogram, or its darkness ``255 - grey`` (BT.601 luma) is above Otsu's threshold of
    the darkness histogram. Each threshold is at least its floor (``min_saturation``,
    ``min_darkness``) so that an empty slide's glass noise is not split in two. Connected
    components (8-connected) smaller than ``min_object_px`` mask pixels (dust, noise) are
    dropped; at the default ``max_side`` a mask pixel of a 100,000-pixel slide is about
    50 x 50 level-0 pixels, so isolated cells are kept.

    Args:
        slide: the open slide.
        level: the level to threshold (shrunk to ``max_side`` if larger); ``None``: the
            :meth:`Slide.thumbnail` of ``max_side``.
        max_side: the longer side of the mask in pixels, at most.
        min_saturation, min_darkness: floors of the two thresholds (0-255).
        min_object_px: smallest component kept, in mask pixels.

    Returns:
        ``(mask, downsample)``: (h, w) bool, and level-0 pixels per mask pixel (width ratio).
    """
    image = slide.thumbnail(max_side) if level is None else slide._level_image(level, max_side)
    rgb = image.astype(np.float32)
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(high > 0, (high - low) * 255.0 / np.maximum(high, 1), 0.0)
    darkness = 255.0 - (rgb @ np.array([0.299, 0.587, 0.114], np.float32))
    mask = ((saturation > max(_otsu(saturation), min_saturation))
            | (darkness > max(_otsu(darkness), min_darkness)))
    if min_object_px > 1 and mask.any():
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_object_px
        keep[0] = False
        mask = keep[labels]
    return mask, slide.info.dimensions[0] / mask.shape[1]


def tile_grid(slide: Slide, tile: int, level: int = 0,
              mask: tuple[np.ndarray, float] | None = None, min_fraction: float = 0.05,
              overlap: int = 0) -> list[tuple[int, int]]:
    """Level-0 ``(x, y)`` of the tiles of a grid over ``level``, row-major.

    Tiles are ``tile x tile`` pixels of ``level`` with a stride of ``tile - overlap``,
    covering the whole level (the last row and column may run past the edge: they read
    as white). With a :func:`tissue_mask`, only tiles whose footprint is at least
    ``min_fraction`` covered by the mask are kept (the footprint's part beyond the slide
    counts as empty).

    Args:
        slide: the open slide.
        tile: tile side in pixels of ``level``.
        level: the level tiled.
        mask: ``(mask, downsample)`` as :func:`tissue_mask` returns it; ``None``: every tile.
        min_fraction: the smallest mask coverage kept, 0 to 1.
        overlap: pixels of ``level`` shared by neighbouring tiles, 0 to ``tile - 1``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tile ({tile}) must be >= 1 and overlap ({overlap}) in 0..tile-1")
    level_w, level_h = slide._check_level(level)
    downsample = slide.info.level_downsamples[level]
    stride = tile - overlap
    cols = np.arange(0, max(level_w - overlap, 1), stride)
    rows = np.arange(0, max(level_h - overlap, 1), stride)
    gy, gx = np.meshgrid(rows, cols, indexing="ij")
    # as _level0, vectorised
    xs = np.ceil(gx.ravel() * downsample).astype(np.int64)
    ys = np.ceil(gy.ravel() * downsample).astype(np.int64)
    if mask is not None:
        keep = _coverage(mask, xs, ys, tile * downsample) >= min_fraction
        xs, ys = xs[keep], ys[keep]
    return [(int(x), int(y)) for x, y in zip(xs, ys)]


def _coverage(mask: tuple[np.ndarray, float], xs: np.ndarray, ys: np.ndarray,
              side: float) -> np.ndarray:
    """Fraction of each level-0 square ``(x, y) + side`` covered by the mask (summed-area table)."""
    pixels, downsample = mask
    height, width = pixels.shape
    table = np.zeros((height + 1, width + 1), np.int64)
    table[1:, 1:] = pixels.astype(np.int64).cumsum(0).cumsum(1)
    x0, y0 = np.floor(xs / downsample).astype(np.int64), np.floor(ys / downsample).astype(np.int64)
    x1 = np.maximum(np.ceil((xs + side) / downsample).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.ceil((ys + side) / downsample).astype(np.int64), y0 + 1)
    area = (x1 - x0) * (y1 - y0)
    cx0, cx1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    cy0, cy1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    inside = table[cy1, cx1] - table[cy0, cx1] - table[cy1, cx0] + table[cy0, cx0]
    return inside / area


def tile_counts(points: np.ndarray, positions: Iterable[tuple[int, int]], tile: int,
                downsample: float = 1.0) -> np.ndarray:
    """How many of ``points`` (level-0 ``(x, y)``, e.g. the centres of abnormal cells) fall in
    each tile of ``positions`` (level-0 corners from :func:`tile_grid`; a tile spans
    ``tile * downsample`` level-0 pixels, and overlapping tiles both count a point in their
    overlap). A tile's training label is ``counts > 0``."""
    corners = [(int(x), int(y)) for x, y in positions]
    counts = np.zeros(len(corners), np.int64)
    index = {c: i for i, c in enumerate(corners)}
    xs = np.unique([c[0] for c in corners])
    ys = np.unique([c[1] for c in corners])
    span = tile * downsample
    for x, y in np.asarray(points, np.float64).reshape(-1, 2):
        for cx in xs[np.searchsorted(xs, x - span, "right"):np.searchsorted(xs, x, "right")]:
            for cy in ys[np.searchsorted(ys, y - span, "right"):np.searchsorted(ys, y, "right")]:
                i = index.get((int(cx), int(cy)))
                if i is not None:
                    counts[i] += 1
    return counts
