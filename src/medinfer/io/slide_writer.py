"""Write tiled pyramidal TIFF whole-slide images that OpenSlide and tiffslide both open.

Layout (checked with OpenSlide 4.0 "generic-tiff" and tiffslide 3.0):

- one page (IFD) per level in the main IFD chain, largest first; OpenSlide ignores SubIFDs,
  so a SubIFD pyramid would show it a single level. Pages after the first are marked
  ``NewSubfileType = REDUCEDIMAGE``; tifffile (hence tiffslide) gathers them into the levels
  of series 0;
- square tiles (a multiple of 16 pixels), JPEG in YCbCr with 4:2:0 chroma subsampling (as
  Philips and Hamamatsu scanners store it), RGB 8-bit; both readers decode these tiles to
  the same pixels;
- ``XResolution``/``YResolution`` in pixels per centimetre (``ResolutionUnit = CENTIMETER``):
  OpenSlide reports ``openslide.mpp-x = 10000 / XResolution``, tiffslide ``tiffslide.mpp-x``
  the same;
- BigTIFF once the uncompressed pyramid passes 2 GiB (OpenSlide reads it through libtiff).

Level ``k + 1`` is the 2 x 2 mean of level ``k`` (odd edges repeat their last row or column),
``ceil(size / 2)`` pixels a side.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["TileSource", "pyramid_sizes", "write_pyramid"]

log = logging.getLogger(__name__)

#: ``tiles(x, y, w, h)`` -> the level-0 RGB region ``(h, w, 3)`` uint8 at ``(x, y)``.
TileSource = Callable[[int, int, int, int], np.ndarray]

_SUBSAMPLING = (2, 2)  # 4:2:0; tiles must then be a multiple of 16 pixels
_CLASSIC_LIMIT = 2**31  # raw pyramid bytes above which BigTIFF is written


def pyramid_sizes(size: tuple[int, int], tile: int,
                  levels: int | None = None) -> list[tuple[int, int]]:
    """The ``(width, height)`` of every level, level 0 first.

    Args:
        size: level-0 ``(width, height)`` in pixels.
        tile: tile side in pixels.
        levels: how many levels; default: down to the first level whose longer side fits
            in one tile.

    Example::

        >>> pyramid_sizes((2048, 1000), 256)
        [(2048, 1000), (1024, 500), (512, 250), (256, 125)]
    """
    sizes = [(int(size[0]), int(size[1]))]
    while max(sizes[-1]) > tile if levels is None else len(sizes) < levels:
        w, h = sizes[-1]
        if w == 1 and h == 1:
            break
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def _halve(a: np.ndarray) -> np.ndarray:
    """2 x 2 mean (rounded) of an ``(h, w, 3)`` uint8 array; an odd last row/column is repeated."""
    h, w = a.shape[:2]
    if h % 2 or w % 2:
        a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    s = a[0::2, 0::2].astype(np.uint16)
    s += a[1::2, 0::2]
    s += a[0::2, 1::2]
    s += a[1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)


def _pad(a: np.ndarray, tile: int) -> np.ndarray:
    """An edge tile padded to ``tile x tile`` by repeating its border (no JPEG ringing)."""
    h, w = a.shape[:2]
    if h == tile and w == tile:
        return a
    return np.pad(a, ((0, tile - h), (0, tile - w), (0, 0)), mode="edge")


class _Reducer:
    """Turns the tiles of one level, fed in row-major order, into those of the next level.

    Holds the upper half of one tile row of the next level (``tile / 2 x width / 2 x 3``
    bytes) plus one tile: a tile of the next level is complete, and returned by
    :meth:`feed`, as soon as its lower-right source tile arrives.
    """

    def __init__(self, size: tuple[int, int], tile: int) -> None:
        self.tile = tile
        self.cols = math.ceil(size[0] / tile)
        self.rows = math.ceil(size[1] / tile)
        self.width = (size[0] + 1) // 2
        self.top = np.zeros((tile // 2, self.width, 3), np.uint8)
        self.bottom = np.zeros((tile // 2, tile, 3), np.uint8)

    def feed(self, row: int, col: int, a: np.ndarray) -> np.ndarray | None:
        """Take tile ``(row, col)`` (``(h, w, 3)``, cropped to the level); return the next
        level's tile ``(row // 2, col // 2)`` when this one completes it."""
        half, t = self.tile // 2, self.tile
        d = _halve(a)
        x = col * half
        last_col = col == self.cols - 1
        done = col % 2 == 1 or last_col
        x0, x1 = (col // 2) * t, min((col // 2 + 1) * t, self.width)
        if row % 2 == 0:
            self.top[: d.shape[0], x : x + d.shape[1]] = d
            if row == self.rows - 1 and done:  # no lower half below the last row
                return self.top[: d.shape[0], x0:x1].copy()
            return None
        self.bottom[: d.shape[0], (col % 2) * half : (col % 2) * half + d.shape[1]] = d
        if not done:
            return None
        return np.concatenate([self.top[:, x0:x1], self.bottom[: d.shape[0], : x1 - x0]])


class _Store:
    """Encoded tiles of levels 1.. kept in an anonymous temporary file until their page is
    written (level 0 goes out first, while the smaller levels are being computed)."""

    def __init__(self, fh: IO[bytes], levels: int) -> None:
        self.fh = fh
        self.index: list[list[tuple[int, int]]] = [[] for _ in range(levels)]

    def put(self, level: int, blob: bytes) -> None:
        self.fh.seek(0, 2)
        self.index[level].append((self.fh.tell(), len(blob)))
        self.fh.write(blob)

    def tiles(self, level: int) -> Iterator[bytes]:
        for offset, length in self.index[level]:
            self.fh.seek(offset)
            yield self.fh.read(length)


def _encoder(quality: int) -> Callable[[np.ndarray], bytes]:
    import imagecodecs

    def encode(a: np.ndarray) -> bytes:
        # The same call tifffile makes for compression="jpeg" on RGB data.
        return bytes(imagecodecs.jpeg8_encode(a, level=quality, colorspace="RGB",
                                              outcolorspace="YCBCR", subsampling=_SUBSAMPLING))

    return encode


def _check(size: tuple[int, int], tile: int, mpp: float, quality: int) -> None:
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16 (JPEG 4:2:0), got {tile}")
    if min(size) <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")


def write_pyramid(path: Path, size: tuple[int, int], tiles: TileSource, *, tile: int = 512,
                  levels: int | None = None, mpp: float = 0.25, quality: int = 90) -> Path:
    """Write a tiled, JPEG-compressed, pyramidal RGB TIFF from a tile callback.

    ``tiles`` is called once per level-0 tile, in row-major order, with the tile's region
    cropped to the image (never larger than ``tile x tile``). Each tile is JPEG-encoded and
    folded into the smaller levels at once, so the slide is rendered once and never held
    whole.

    Memory: about ``1.5 * tile * width`` bytes (the upper half of one pending tile row of
    every smaller level, ``tile/2 * width/2 * 3`` for level 1 and half as much for each
    next) plus a few tiles and the callback's own needs: 77 MB for a 100,000-pixel-wide
    slide with 512-pixel tiles, 38 MB with 256. The encoded smaller levels (about a third
    of the file) wait in an anonymous temporary file next to ``path``.

    Args:
        path: the ``.tif``/``.tiff`` file to write (replaced if present; removed on failure).
        size: level-0 ``(width, height)`` in pixels.
        tiles: ``tiles(x, y, w, h)`` -> ``(h, w, 3)`` uint8 RGB of level 0 at ``(x, y)``.
        tile: tile side in pixels, a multiple of 16 (256 or 512 are usual).
        levels: number of levels; default: until the longer side fits in one tile.
        mpp: level-0 microns per pixel, stored as pixels per centimetre.
        quality: JPEG quality 1..100.

    Returns:
        ``path``.

    Example::

        >>> gray = lambda x, y, w, h: np.full((h, w, 3), 200, np.uint8)
        >>> write_pyramid(Path("blank.tif"), (4096, 3072), gray, tile=256)  # doctest: +SKIP
    """
    import tifffile

    _check(size, tile, mpp, quality)
    path = Path(path)
    sizes = pyramid_sizes(size, tile, levels)
    encode = _encoder(quality)
    raw = sum(w * h * 3 for w, h in sizes)
    try:
        with tempfile.TemporaryFile(dir=path.parent, prefix=".pyramid-") as tmp, \
                tifffile.TiffWriter(path, bigtiff=raw > _CLASSIC_LIMIT) as tw:
            store = _Store(tmp, len(sizes))
            reducers = [_Reducer(s, tile) for s in sizes[:-1]]

            def cascade(level: int, row: int, col: int, a: np.ndarray) -> None:
                # A tile of `level` arrived: fold it into the next level (and so on down).
                if level >= len(reducers):
                    return
                nxt = reducers[level].feed(row, col, a)
                if nxt is not None:
                    store.put(level + 1, encode(_pad(nxt, tile)))
                    cascade(level + 1, row // 2, col // 2, nxt)

            def level0() -> Iterator[bytes]:
                w, h = sizes[0]
                for row, y in enumerate(range(0, h, tile)):
                    for col, x in enumerate(range(0, w, tile)):
                        tw_, th_ = min(tile, w - x), min(tile, h - y)
                        a = np.ascontiguousarray(tiles(x, y, tw_, th_), dtype=np.uint8)
                        if a.shape != (th_, tw_, 3):
                            raise ValueError(f"tiles({x}, {y}, {tw_}, {th_}) returned shape "
                                             f"{a.shape}, expected {(th_, tw_, 3)}")
                        cascade(0, row, col, a)
                        yield encode(_pad(a, tile))

            for k, (w, h) in enumerate(sizes):
                scale = sizes[0][0] / w
                res = 1e4 / (mpp * scale)  # pixels per centimetre
                tw.write(level0() if k == 0 else store.tiles(k), shape=(h, w, 3), dtype=np.uint8,
                         tile=(tile, tile), photometric="rgb", compression="jpeg",
                         subsampling=_SUBSAMPLING, resolution=(res, res),
                         resolutionunit="CENTIMETER", subfiletype=1 if k else 0, metadata=None)
                log.debug("level %d (%d x %d) written", k, w, h)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path
