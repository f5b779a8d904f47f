"""Whole-slide images: one reader over OpenSlide and tiffslide (masks and tile grids:
:mod:`medinfer.data.slide_tiles`).

:meth:`Slide.open` tries OpenSlide first (every vendor format it knows) and falls back to
tiffslide (pure Python, TIFF-based formats) when OpenSlide is not importable or cannot open
the file; ``backend=`` picks one explicitly. Both are imported on first use.

Coordinates follow OpenSlide: ``x, y`` of a region are **level-0 pixels** whatever the
level read, ``w, h`` are pixels of the level read. Pixels are RGB ``uint8`` ``(h, w, 3)``;
transparency (OpenSlide's pixels outside scanned areas) and the parts of a region beyond
the slide's edges are white, like empty glass.

Memory stays bounded on slides of 100,000 x 100,000 pixels: one read is refused above
``max_pixels`` (64 Mi by default), :meth:`Slide.read_tile` keeps an LRU cache bounded in
bytes, and :meth:`Slide.thumbnail` downsamples a level strip by strip.

Every failure caused by the file (missing, not a slide, truncated or corrupt tile data, a
level or region that does not exist) is an :class:`~medinfer.errors.InputError` naming
the file; no OpenSlide, tifffile or codec exception escapes. OpenSlide stays in error
once a read has failed, so every later read of that slide fails the same way.

Example:
    >>> with Slide.open("case.svs") as slide:  # doctest: +SKIP
    ...     pixels = slide.read_region(0, 20_000, 30_000, 512, 512)  # (512, 512, 3) uint8
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image as PILImage

from medinfer.errors import BackendUnavailableError, InputError

__all__ = ["BACKENDS", "DEFAULT_MAX_PIXELS", "MULTI_FILE_SUFFIXES", "SINGLE_FILE_SUFFIXES",
           "SLIDE_SUFFIXES", "CacheInfo", "Slide", "SlideInfo"]

BACKENDS = ("openslide", "tiffslide")
SINGLE_FILE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".scn", ".bif", ".svslide")
"""Slide formats one file holds whole."""
MULTI_FILE_SUFFIXES = (".mrxs", ".vms", ".vmu")
"""Slide formats made of an index file plus other files (one upload cannot carry them)."""
SLIDE_SUFFIXES = SINGLE_FILE_SUFFIXES + MULTI_FILE_SUFFIXES
"""Files read as whole slides (OpenSlide's formats; the generic tiled TIFF among them)."""
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
# Pixels of one level strip read while downsampling a whole level (thumbnail, mask).
_STRIP_PIXELS = 8 * 1024 * 1024


@dataclass(frozen=True)
class SlideInfo:
    """What a slide is, read once at open.

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
        vendor: the format as the backend names it (``"aperio"``, ``"generic-tiff"``...).
        dimensions: level-0 ``(width, height)`` in pixels.
        level_dimensions: ``(width, height)`` of every level, finest first.
        level_downsamples: level-0 pixels per level pixel, one per level.
        mpp: level-0 microns per pixel ``(x, y)``; ``None`` when the file does not say.
    """

    path: Path
    backend: str
    vendor: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None


@dataclass(frozen=True)
class CacheInfo:
    """The tile cache of a :class:`Slide`: hits, misses, tiles held and bytes held / allowed."""

    hits: int
    misses: int
    tiles: int
    nbytes: int
    max_nbytes: int


class _Backend(Protocol):
    info: SlideInfo

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray: ...

    def close(self) -> None: ...


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w[, c]) uint8 -> (h, w, 3): grey repeated, alpha composited on white."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"{pixels.dtype} pixels (only 8-bit slides are supported)")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[2] in (1, 2):  # grey (+ alpha)
        pixels = np.concatenate([pixels[..., :1]] * 3 + [pixels[..., 1:]], axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:].astype(np.uint16)
        if alpha.min() == 255:
            return np.ascontiguousarray(pixels[..., :3])
        rgb = (pixels[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(pixels[..., :3])


def _mpp(x: Any, y: Any) -> tuple[float, float] | None:
    try:
        mpp = (float(x), float(y))
    except (TypeError, ValueError):
        return None
    return mpp if all(math.isfinite(v) and v > 0 for v in mpp) else None


class _OpenSlideBackend:
    def __init__(self, path: Path) -> None:
        import openslide

        self._osr = openslide.OpenSlide(str(path))
        try:
            props = self._osr.properties
            self.info = SlideInfo(
                path=path, backend="openslide",
                vendor=props.get(openslide.PROPERTY_NAME_VENDOR) or "unknown",
                dimensions=tuple(self._osr.dimensions),
                level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
                level_downsamples=tuple(float(d) for d in self._osr.level_downsamples),
                mpp=_mpp(props.get(openslide.PROPERTY_NAME_MPP_X),
                         props.get(openslide.PROPERTY_NAME_MPP_Y)))
        except BaseException:
            self._osr.close()
            raise

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return _rgb(np.asarray(self._osr.read_region((x, y), level, (w, h))))

    def close(self) -> None:
        self._osr.close()


class _TiffSlideBackend:
    def __init__(self, path: Path) -> None:
        import tiffslide

        self._ts = tiffslide.TiffSlide(str(path))
        try:
            props = self._ts.properties
            vendor = props.get("tiffslide.vendor") or tiffslide.TiffSlide.detect_format(str(path))
            self.info = SlideInfo(
                path=path, backend="tiffslide", vendor=vendor or "unknown",
                dimensions=tuple(self._ts.dimensions),
                level_dimensions=tuple(tuple(d) for d in self._ts.level_dimensions),
                level_downsamples=tuple(float(d) for d in self._ts.level_downsamples),
                mpp=_mpp(props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")))
            self._check_complete(path, props.get("tiffslide.series-index") or 0)
        except BaseException:
            self._ts.close()
            raise

    def _check_complete(self, path: Path, series: int) -> None:
        """Refuse a file cut short: tile data past its end decodes to garbage, silently
        for JPEG (OpenSlide checks this itself, on reading)."""
        try:
            levels = self._ts.ts_tifffile.series[series].levels
        except (AttributeError, NotImplementedError, RuntimeError):  # not a plain TIFF file
            return
        size = os.path.getsize(path)
        for index, level in enumerate(levels):
            for page in level.pages:
                ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
                if ends and max(ends) > size:
                    raise ValueError(f"truncated: level {index} tile data ends at byte "
                                     f"{max(ends)} but the file has {size} bytes")

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        region = self._ts.read_region((x, y), level, (w, h), as_array=True, padding=False)
        return _rgb(np.asarray(region))

    def close(self) -> None:
        self._ts.close()


_OPENERS = {"openslide": _OpenSlideBackend, "tiffslide": _TiffSlideBackend}


def _open_backend(path: Path, backend: str | None) -> _Backend:
    """The first backend (of ``backend``, else OpenSlide then tiffslide) that opens ``path``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown slide backend {backend!r}; choose one of {BACKENDS}")
    failures = []
    for name in (backend,) if backend else BACKENDS:
        try:
            return _OPENERS[name](path)
        except ImportError as exc:
            if backend:
                raise BackendUnavailableError(f"{name} is not installed ({exc})") from exc
            failures.append(f"{name}: not installed")
        except Exception as exc:  # OpenSlideError, TiffFileError, ValueError, OSError ...
            failures.append(f"{name}: {exc}")
    raise InputError(path, "not a whole-slide image, or a damaged one ("
                           + "; ".join(failures) + ")")


def _level0(coordinate: int, downsample: float) -> int:
    """The level-0 coordinate that both backends map back to level ``coordinate``
    (tiffslide truncates ``x / downsample``; the ceiling keeps it from falling short)."""
    return math.ceil(coordinate * downsample)


class Slide:
    """An open whole-slide image; use :meth:`open`, as a context manager.

    Attributes:
        info: the slide's :class:`SlideInfo`.
        max_pixels: the largest region one :meth:`read_region` returns (w x h).
    """

    def __init__(self, backend: _Backend, info: SlideInfo, cache_mb: float,
                 max_pixels: int) -> None:
        self.info = info
        self.max_pixels = max_pixels
        self._backend: _Backend | None = backend
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._cache_max = int(cache_mb * 1024 * 1024)
        self._cache_bytes = self._hits = self._misses = 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, backend: str | None = None, cache_mb: float = 64,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Slide:
        """Open a slide.

        Args:
            path: the slide file (``.svs``, ``.ndpi``, ``.mrxs``, pyramidal ``.tiff``...).
            backend: ``"openslide"`` or ``"tiffslide"``; ``None`` tries OpenSlide, then
                tiffslide when OpenSlide is missing or cannot open the file.
            cache_mb: bytes (MiB) of decoded tiles :meth:`read_tile` keeps; 0 disables it.
            max_pixels: the largest region one :meth:`read_region` returns.

        Raises:
            InputError: missing file, or no backend can read it (the message gives each
                backend's reason), or a TIFF cut short.
            BackendUnavailableError: the backend asked for is not installed.
        """
        if cache_mb < 0 or max_pixels < 1:
            raise ValueError(f"cache_mb ({cache_mb}) must be >= 0 and max_pixels "
                             f"({max_pixels}) >= 1")
        path = Path(path)
        if not path.exists():
            raise InputError(path, "no such file")
        if path.is_dir():
            raise InputError(path, "is a folder, not a slide file")
        opened = _open_backend(path, backend)
        return cls(opened, opened.info, cache_mb, max_pixels)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.info.path)!r}, backend={self.info.backend!r})"

    def close(self) -> None:
        """Release the file and the cache (closing twice is allowed)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        with self._lock:
            self._cache.clear()
            self._cache_bytes = 0

    def _check_level(self, level: int) -> tuple[int, int]:
        count = len(self.info.level_dimensions)
        if not 0 <= level < count:
            raise InputError(self.info.path, f"level {level} does not exist (the slide has "
                                             f"{count} levels, 0 to {count - 1})")
        return self.info.level_dimensions[level]

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read ``w x h`` pixels of ``level`` whose top-left corner is level-0 pixel ``(x, y)``.

        Args:
            level: pyramid level (0 = full resolution).
            x, y: top-left corner in **level-0** pixels (OpenSlide's convention).
            w, h: size in pixels of ``level``.

        Returns:
            (h, w, 3) uint8 RGB; parts beyond the slide's edges are white.

        Raises:
            InputError: no such level, a region outside the slide or larger than
                ``max_pixels``, or tile data that cannot be decoded (truncated, corrupt).
        """
        level_w, level_h = self._check_level(level)
        downsample = self.info.level_downsamples[level]
        if w < 1 or h < 1 or w * h > self.max_pixels:
            raise InputError(self.info.path, f"cannot read a {w} x {h} region at once (1 to "
                             f"{self.max_pixels} pixels): read tiles (read_tile, data.slide_sets.TileReader) "
                             "or a coarser level (best_level)")
        lx, ly = math.floor(x / downsample), math.floor(y / downsample)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, level_w), min(ly + h, level_h)
        if x0 >= x1 or y0 >= y1:
            raise InputError(self.info.path, f"region ({x}, {y}) + {w} x {h} of level {level} "
                             f"lies outside the slide ({level_w} x {level_h} at that level)")
        inside = self._read(level, x if lx >= 0 else 0, y if ly >= 0 else 0, x1 - x0, y1 - y0)
        if (x1 - x0, y1 - y0) == (w, h):
            return inside
        out = np.full((h, w, 3), 255, np.uint8)
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = inside
        return out

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._backend is None:
            raise ValueError(f"{self!r} is closed")
        try:
            pixels = self._backend.read(level, x, y, w, h)
        except Exception as exc:  # OpenSlideError, codec errors, zarr errors, OSError ...
            raise InputError(self.info.path, f"cannot read level {level} at ({x}, {y}) "
                             f"{w} x {h} (truncated or corrupt tile data?): {exc}") from exc
        if pixels.shape != (h, w, 3):
            raise InputError(self.info.path, f"the {self.info.backend} backend returned "
                             f"{pixels.shape} pixels for a {w} x {h} region")
        return pixels

    def read_tile(self, level: int, col: int, row: int, tile: int) -> np.ndarray:
        """Tile ``(col, row)`` of a ``tile x tile`` grid over ``level``, through the LRU cache.

        Returns:
            (tile, tile, 3) uint8, read-only (it is shared with the cache); edge tiles are
            padded with white.

        Raises:
            InputError: as :meth:`read_region` (a tile outside the level's grid included).
        """
        key = (level, col, row, tile)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self._hits += 1
                return cached
            self._misses += 1
        self._check_level(level)
        downsample = self.info.level_downsamples[level]
        pixels = self.read_region(level, _level0(col * tile, downsample),
                                  _level0(row * tile, downsample), tile, tile)
        pixels.flags.writeable = False
        self._remember(key, pixels)
        return pixels

    def _remember(self, key: tuple[int, ...], pixels: np.ndarray) -> None:
        if pixels.nbytes > self._cache_max:
            return
        with self._lock:
            if key not in self._cache:
                self._cache[key] = pixels
                self._cache_bytes += pixels.nbytes
            while self._cache_bytes > self._cache_max:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the :meth:`read_tile` cache."""
        with self._lock:
            return CacheInfo(self._hits, self._misses, len(self._cache), self._cache_bytes,
                             self._cache_max)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (OpenSlide's rule,
        with 0.1 % slack for downsamples such as 4.0003), 0 below 1."""
        levels = self.info.level_downsamples
        return max(i for i, d in enumerate(levels) if i == 0 or d <= downsample * 1.001)

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide with its longer side ``max_side`` pixels (never enlarged).

        Read from the smallest level at least that big (level 0 when none is), downsampled
        strip by strip, so memory stays bounded by the output plus one strip.

        Returns:
            (h, w, 3) uint8 RGB.
        """
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, not {max_side}")
        sides = [max(d) for d in self.info.level_dimensions]
        level = max((i for i, s in enumerate(sides) if s >= max_side), default=0)
        return self._level_image(level, max_side)

    def _level_image(self, level: int, max_side: int) -> np.ndarray:
        """All of ``level``, shrunk (area average) to fit ``max_side`` if it is larger."""
        level_w, level_h = self._check_level(level)
        scale = min(1.0, max_side / max(level_w, level_h))
        out_w, out_h = max(1, round(level_w * scale)), max(1, round(level_h * scale))
        out = np.empty((out_h, out_w, 3), np.uint8)
        rows_per_out = math.ceil(level_h / out_h)
        budget = min(_STRIP_PIXELS, self.max_pixels)
        step = max(1, budget // (level_w * rows_per_out))  # output rows per strip
        downsample = self.info.level_downsamples[level]
        for o0 in range(0, out_h, step):
            o1 = min(o0 + step, out_h)
            y0, y1 = o0 * level_h // out_h, o1 * level_h // out_h
            strip = self.read_region(level, 0, _level0(y0, downsample), level_w, y1 - y0)
            if strip.shape[:2] != (o1 - o0, out_w):
                strip = np.asarray(PILImage.fromarray(strip).resize(
                    (out_w, o1 - o0), PILImage.Resampling.BOX))
            out[o0:o1] = strip
        return out
