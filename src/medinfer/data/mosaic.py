"""Mosaic whole-slide images of real cervical cells, with a known slide label.

No real whole-slide image is available, so a slide is composed from the real CRIC cell
crops (``../shared/data/cervical-cytology-cric``: 100 x 100 RGB PNG, six Bethesda classes)
laid on simulated glass and written as a pyramidal TIFF (:func:`medinfer.io.slide_writer.
write_pyramid`) with a JSON of every cell next to it.

**Slide label rule** (:data:`RULE`): a slide is abnormal (1) when it holds at least one cell
of ASC-US or worse (ASC-US, LSIL, ASC-H, HSIL, SCC); a normal slide (0) holds NILM cells only.
Its ``grade`` is its most severe cell class (NILM < ASC-US < LSIL < ASC-H < HSIL < SCC).

How a slide is made (:class:`MosaicConfig` holds every knob):

- *Scale.* A crop is pasted at ``cell_scale`` (default 1.0, +-10 % per cell) of its 100
  pixels at 0.25 um/pixel: intermediate-cell nuclei span about 30 crop pixels, i.e. 7-8 um
  at 0.25 um/pixel, so a crop shows about 25 x 25 um around a nucleus. (The CRIC pixel size
  could not be confirmed here; this is read off the nuclei.)
- *Density.* ``density`` cells per mm^2 of non-empty glass (default 600: with 25-um crops
  about a third of the glass is covered, a cellular liquid-based preparation). A 100,000^2
  slide at 0.25 um (625 mm^2, 80 % non-empty) then holds about 300,000 cells: the plan keeps
  them in numpy arrays (40 bytes a cell, 12 MB; placing them peaks at about 65 MB), the
  :class:`SlideTruth` in slotted records (about 40 MB), and the JSON is streamed.
- *Layout.* A share ``clustering`` of the cells sits in clusters of about six around
  cluster centres, the rest alone; both follow a smooth log-normal clumping field. A second
  smooth field leaves ``empty_fraction`` of the area as empty glass. Two cell centres are at
  least ``(1 - overlap) * cell size`` apart, so cells overlap by up to ``overlap``.
- *Blending.* Brightfield optics: transmittances multiply. A crop is divided by its own
  glass colour (its 99th percentile, or the typical CRIC glass where the crop holds none),
  turned into optical density (less a 0.03 floor of glass haze), scaled by the slide's
  stain and the cell's jitter, and multiplied into the glass under a cell-like mask (an
  ellipse with a wavy rim, feathered). The crop's own glass vanishes, overlapping cells
  darken each other, and no square edges show. Each cell is turned by a multiple of 90
  degrees, maybe mirrored, and scaled by 0.9-1.1.
- *Crops.* About a third of the CRIC crops show bare glass (bacteria, haze) rather than a
  cell, in every class, and the crops are not centred on the labelled nucleus (the
  darkest spot of a crop is anywhere in it). Crops with less than ``min_content`` stained
  pixels are skipped (:func:`crop_content`); whether a kept crop's visible nucleus is the
  labelled cell cannot be checked here.
- *Stain.* Per slide, each channel's optical density is scaled by ``exp(N(0, stain_jitter))``
  (a hue and intensity change of the stained material), per cell by a third of that.
- *Glass and debris.* Pale pink-to-blue-grey glass with low-frequency variation (at 600
  and 60 um) and per-pixel sensor noise; ``debris`` dark specks and thin fibres per mm^2.
- *Abnormal slides.* ``abnormal_fraction`` of the cells (at least one) come from abnormal
  crops: 70 % from one dominant class drawn per slide, the rest from any abnormal class.

Every pixel is a function of its position and the seed alone (noise is hashed from the
coordinates), and the writer asks for one tile at a time: the tile renders only the cells
and debris found in a spatial index of the precomputed plan, so memory stays bounded
whatever the slide size. Crops are drawn with replacement (a slide may repeat a crop, rotated,
flipped, rescaled and stained differently); :func:`crop_split` keeps the crops of training
and evaluation slides apart.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from medinfer.errors import InputError
from medinfer.io.slide_writer import write_pyramid
from medinfer.progress import progress_bar

__all__ = [
    "ABNORMAL", "CLASSES", "RULE", "CellRecord", "LabeledCrop", "MosaicConfig", "MosaicRenderer",
    "SlidePlan", "SlideTruth", "compose_slide", "crop_content", "crop_split", "plan_slide",
    "read_crops", "read_truth", "write_slide_set",
]

log = logging.getLogger(__name__)

#: Bethesda classes of the crops, least to most severe.
CLASSES: tuple[str, ...] = ("NILM", "ASC-US", "LSIL", "ASC-H", "HSIL", "SCC")
ABNORMAL: tuple[str, ...] = CLASSES[1:]
RULE = ("abnormal (1) if the slide holds at least one cell of ASC-US or worse "
        "(ASC-US, LSIL, ASC-H, HSIL, SCC); normal (0) if it holds NILM cells only")
CROP_PX = 100  # side of a CRIC crop
_BIN = 512  # side of a spatial-index bin, level-0 pixels
_OD_FLOOR = 0.03  # optical density of a crop's glass haze, dropped
_CRIC_GLASS = np.array([252, 252, 254], np.float32)  # median 99th percentile of the crops
_DOMINANT = 0.7  # share of an abnormal slide's abnormal cells from its dominant class


@dataclass(frozen=True)
class LabeledCrop:
    """One row of the crops' ``labels.csv``: ``image`` as written there, ``path`` resolved."""

    image: str
    path: Path
    cls: str
    cell_id: int


@dataclass(frozen=True, slots=True)
class CellRecord:
    """One pasted cell: its crop (``labels.csv`` image path), class, centre and pasted size
    (level-0 pixels)."""

    crop: str
    cls: str
    x: float
    y: float
    w: int
    h: int


@dataclass(frozen=True)
class MosaicConfig:
    """How a mosaic slide is made (see the module docstring for the model behind each).

    Args:
        size: level-0 ``(width, height)`` in pixels.
        density: cells per mm^2 of non-empty glass.
        abnormal_fraction: share of an abnormal slide's cells drawn from abnormal classes.
        debris: specks and fibres per mm^2.
        stain_jitter: standard deviation of the per-slide log optical-density scale.
        empty_fraction: share of the area left as empty glass.
        overlap: how far two cells may overlap, as a share of the cell size (0: none).
        clustering: share of the cells placed in clusters.
        seed: the slide's seed; everything follows from it.
        mpp: microns per level-0 pixel.
        cell_scale: pasted size of a 100-pixel crop, relative (1.0: 100 pixels).
        min_content: crops with a smaller share of stained pixels (mean optical density
            >= 0.2) are not used: about a third of the CRIC crops show bare glass.
        tile: TIFF tile side (multiple of 16); quality: JPEG quality.
    """

    size: tuple[int, int] = (8192, 8192)
    density: float = 600.0
    abnormal_fraction: float = 0.05
    debris: float = 40.0
    stain_jitter: float = 0.12
    empty_fraction: float = 0.2
    overlap: float = 0.5
    clustering: float = 0.4
    seed: int = 0
    mpp: float = 0.25
    cell_scale: float = 1.0
    min_content: float = 0.06
    tile: int = 512
    quality: int = 90

    def __post_init__(self) -> None:
        checks = {"density": self.density >= 0, "debris": self.debris >= 0,
                  "abnormal_fraction": 0 <= self.abnormal_fraction <= 1,
                  "empty_fraction": 0 <= self.empty_fraction < 1, "overlap": 0 <= self.overlap <= 1,
                  "clustering": 0 <= self.clustering <= 1, "stain_jitter": self.stain_jitter >= 0,
                  "mpp": self.mpp > 0, "cell_scale": self.cell_scale > 0,
                  "min_content": 0 <= self.min_content < 1,
                  "size": min(self.size) >= 2 * CROP_PX * self.cell_scale}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid MosaicConfig {', '.join(bad)}: {self}")


@dataclass(frozen=True)
class SlideTruth:
    """What a mosaic slide holds: written next to it as ``<slide>.json``."""

    slide: Path
    size: tuple[int, int]
    mpp: float
    label: int
    grade: str
    cells: tuple[CellRecord, ...]
    debris: int
    seed: int
    rule: str = RULE
    config: Mapping[str, object] = field(default_factory=dict)

    def centres(self, classes: Sequence[str] = ABNORMAL) -> np.ndarray:
        """Level-0 ``(x, y)`` of the cells of ``classes`` (the abnormal ones by default): with
        :func:`medinfer.data.slide_tiles.tile_counts`, the tiles' training labels."""
        wanted = set(classes)
        return np.array([(c.x, c.y) for c in self.cells if c.cls in wanted], np.float64).reshape(-1, 2)


# --- crops -------------------------------------------------------------------------------

def read_crops(root: Path) -> list[LabeledCrop]:
    """The crops listed in ``root/labels.csv`` (columns image, class, cric_cell_id)."""
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise InputError(root, "no labels.csv (expected the cervical-cytology-cric layout)")
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"image", "class", "cric_cell_id"} - set(rows[0] if rows else ())
    if missing:
        raise InputError(csv_path, f"missing columns {sorted(missing)}")
    crops = [LabeledCrop(r["image"], root / r["image"], r["class"], int(r["cric_cell_id"]))
             for r in rows]
    unknown = {c.cls for c in crops} - set(CLASSES)
    if unknown:
        raise InputError(csv_path, f"unknown classes {sorted(unknown)}")
    return crops


def crop_split(root: Path, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0, *,
               id_block: int = 1) -> dict[str, list[LabeledCrop]]:
    """Split the crops into ``train``/``val``/``test``, stratified by class.

    Groups of crops (``cric_cell_id // id_block``; default: each cell alone) go whole to one
    part, so the parts share no crop and no cell. CRIC numbers the cells of one microscope
    image consecutively: ``id_block`` of about 30 keeps most cells of one image together
    (an approximation; the image of a cell is not in ``labels.csv``).

    Args:
        root: the crops' folder (``labels.csv`` + ``images/``).
        fractions: shares of the three parts (sum 1).
        seed: shuffling seed.
        id_block: cell ids per group.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three shares summing to 1, got {fractions}")
    groups: dict[int, list[LabeledCrop]] = {}
    for c in sorted(read_crops(root), key=lambda c: c.cell_id):
        groups.setdefault(c.cell_id // max(1, id_block), []).append(c)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[LabeledCrop]] = {"train": [], "val": [], "test": []}
    for cls in CLASSES:  # stratify by each group's most common class
        mine = [g for g, cs in groups.items()
                if max(CLASSES, key=[c.cls for c in cs].count) == cls]
        total = sum(len(groups[g]) for g in mine)
        bounds = np.cumsum(fractions)[:2] * total
        taken = 0
        for i in rng.permutation(len(mine)):
            part = "train" if taken < bounds[0] else "val" if taken < bounds[1] else "test"
            parts[part].extend(groups[mine[i]])
            taken += len(groups[mine[i]])
    return {k: sorted(v, key=lambda c: c.image) for k, v in parts.items()}


# --- smooth fields and noise -----------------------------------------------------------------

def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


class _Lattice:
    """A smooth random field: normal values on a lattice of ``step`` pixels, interpolated."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], step: int) -> None:
        self.step = step
        self.v = rng.standard_normal((size[1] // step + 2, size[0] // step + 2)).astype(np.float32)

    def _axis(self, c: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Lattice index and smoothed fraction along ``axis`` (1: x, 0: y) of coordinates."""
        i = np.clip((c // self.step).astype(np.int64), 0, self.v.shape[axis] - 2)
        return i, _smooth(np.clip(c / self.step - i, 0, 1).astype(np.float32))

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Field values at points ``(x[i], y[i])``."""
        (ix, fx), (iy, fy) = self._axis(x, 1), self._axis(y, 0)
        v = self.v
        top = v[iy, ix] * (1 - fx) + v[iy, ix + 1] * fx
        bottom = v[iy + 1, ix] * (1 - fx) + v[iy + 1, ix + 1] * fx
        return top * (1 - fy) + bottom * fy

    def grid(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Field values on the pixel grid ``(h, w)`` at ``(x, y)``."""
        ix, fx = self._axis(np.arange(x, x + w), 1)
        iy, fy = self._axis(np.arange(y, y + h), 0)
        r0 = int(iy.min())
        rows = self.v[r0 : int(iy.max()) + 2]
        along = rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx  # (rows, w)
        iy = iy - r0
        return along[iy] * (1 - fy)[:, None] + along[iy + 1] * fy[:, None]


def _hash_noise(x: int, y: int, w: int, h: int, seed: int) -> np.ndarray:
    """Uniform noise bytes ``(h, w, 3)`` uint8, a function of the pixel position and seed
    only (a murmur3-style hash of the coordinates; each byte of the hash is one channel)."""
    xs = np.arange(x, x + w, dtype=np.uint32) * np.uint32(0x9E3779B1)
    ys = np.arange(y, y + h, dtype=np.uint32) + np.uint32(seed & 0xFFFFFFFF)
    ys *= np.uint32(0x85EBCA77)
    k = ys[:, None] ^ xs[None, :]
    for shift, mul in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):  # murmur3 finaliser
        k ^= k >> np.uint32(shift)
        k *= np.uint32(mul)
    k ^= k >> np.uint32(16)
    return k.view(np.uint8).reshape(h, w, 4)[..., :3]


# --- the plan: every cell and speck of a slide, before any pixel -----------------------------

_CELL = np.dtype([("x", "f4"), ("y", "f4"), ("crop", "i4"), ("size", "i2"), ("rot", "i1"),
                  ("flip", "?"), ("aspect", "f4"), ("angle", "f4"), ("shape", "u4"),
                  ("jitter", "f4", 3)])
_DEBRIS = np.dtype([("x", "f4"), ("y", "f4"), ("fibre", "?"), ("length", "f4"), ("width", "f4"),
                    ("angle", "f4"), ("bend", "f4"), ("od", "f4"), ("colour", "f4", 3)])


@dataclass(frozen=True)
class SlidePlan:
    """Everything drawn on one slide: ``cells`` and ``debris`` (structured arrays, level-0
    pixels), the crops the cells index, the glass colour and fields, and the stain."""

    cfg: MosaicConfig
    crops: tuple[LabeledCrop, ...]
    cells: np.ndarray
    debris: np.ndarray
    glass: np.ndarray  # (3,) transmittance of clean glass
    stain: np.ndarray  # (3,) optical-density scale of the slide
    fields: tuple[_Lattice, _Lattice]  # low- and mid-frequency glass variation

    @property
    def classes(self) -> list[str]:
        return [self.crops[i].cls for i in self.cells["crop"]]

    def truth(self, slide: Path) -> SlideTruth:
        """The slide's :class:`SlideTruth` (label by :data:`RULE`)."""
        classes = self.classes
        grade = max(classes, key=CLASSES.index) if classes else "NILM"
        cells = tuple(CellRecord(self.crops[c["crop"]].image, cls, round(float(c["x"]), 1),
                                 round(float(c["y"]), 1), int(c["size"]), int(c["size"]))
                      for c, cls in zip(self.cells, classes, strict=True))
        return SlideTruth(Path(slide), self.cfg.size, self.cfg.mpp, int(grade != "NILM"), grade,
                          cells, len(self.debris), self.cfg.seed,
                          config={**dataclasses.asdict(self.cfg), "size": list(self.cfg.size)})


def _um(cfg: MosaicConfig, microns: float) -> float:
    return microns / cfg.mpp


def _place(rng: np.random.Generator, cfg: MosaicConfig) -> tuple[np.ndarray, np.ndarray]:
    """Cell centres: clustered and single cells on a clumping field, off the empty glass,
    at least ``(1 - overlap)`` cell sizes apart."""
    w, h = cfg.size
    cell = CROP_PX * cfg.cell_scale
    mm2 = w * h * (cfg.mpp / 1000) ** 2
    n = max(1, int(rng.poisson(cfg.density * mm2 * (1 - cfg.empty_fraction))))
    empty = _Lattice(rng, cfg.size, max(64, int(_um(cfg, 400))))
    clump = _Lattice(rng, cfg.size, max(64, int(_um(cfg, 120))))
    probe = rng.random((4096, 2)) * (w, h)
    threshold = (np.quantile(empty.points(probe[:, 0], probe[:, 1]), cfg.empty_fraction)
                 if cfg.empty_fraction > 0 else -np.inf)
    margin, peak = 0.6 * cell, math.exp(0.8 * float(clump.v.max()))

    def ok(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = (x >= margin) & (x <= w - margin) & (y >= margin) & (y <= h - margin)
        return inside & (empty.points(x, y) >= threshold)

    def draw(k: int) -> np.ndarray:  # k points from the clumping field (thinning), in chunks
        out, got = [], 0
        for _ in range(64):
            m = min(8 * (k - got) + 64, 1 << 16)
            x, y = rng.uniform(margin, w - margin, m), rng.uniform(margin, h - margin, m)
            keep = ok(x, y) & (rng.random(m) * peak < np.exp(0.8 * clump.points(x, y)))
            out.append(np.stack([x[keep], y[keep]], 1))
            got += int(keep.sum())
            if got >= k:
                break
        return np.concatenate(out)[:k]

    spacer = _Spacer((1 - cfg.overlap) * cell)
    for _ in range(40):
        need = n - len(spacer.x)
        if need <= 0:
            break
        parents = draw(max(1, round(need * cfg.clustering / 6)))
        counts = 1 + rng.poisson(5, len(parents))
        kids = np.repeat(parents, counts, 0) + rng.normal(0, 0.5 * cell, (int(counts.sum()), 2))
        kids = kids[ok(kids[:, 0], kids[:, 1])][: round(need * cfg.clustering)]
        for x, y in np.concatenate([kids, draw(need)]).tolist():
            if len(spacer.x) < n:
                spacer.add(x, y)
    if len(spacer.x) < n:
        log.warning("only %d of %d cells fit at overlap %.2f", len(spacer.x), n, cfg.overlap)
    return np.asarray(spacer.x, np.float32), np.asarray(spacer.y, np.float32)


class _Spacer:
    """Keeps points at least ``dmin`` apart: a hash grid of side ``dmin / sqrt(2)`` holds at
    most one point per square, so a new point checks the 5 x 5 squares around it."""

    def __init__(self, dmin: float) -> None:
        self.d2, self.g = dmin * dmin, dmin / math.sqrt(2)
        self.grid: dict[int, int] = {}
        self.x, self.y = array("d"), array("d")

    def add(self, x: float, y: float) -> bool:
        if self.g > 0:
            gx, gy = int(x / self.g), int(y / self.g)
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    k = self.grid.get(((gy + dy) << 24) + gx + dx)
                    if k is not None and (self.x[k] - x) ** 2 + (self.y[k] - y) ** 2 < self.d2:
                        return False
            self.grid[(gy << 24) + gx] = len(self.x)
        self.x.append(x)
        self.y.append(y)
        return True


def _choose_crops(rng: np.random.Generator, crops: Sequence[LabeledCrop], n: int,
                  abnormal: bool, fraction: float) -> np.ndarray:
    """Index into ``crops`` for each of ``n`` cells (see the module docstring)."""
    normal = np.array([i for i, c in enumerate(crops) if c.cls == "NILM"])
    bad = np.array([i for i, c in enumerate(crops) if c.cls in ABNORMAL])
    if normal.size == 0:
        raise ValueError("no NILM crop to compose a slide from")
    out = rng.choice(normal, n)
    if abnormal:
        if bad.size == 0:
            raise ValueError("an abnormal slide needs abnormal crops; none given")
        k = min(n, max(1, round(fraction * n)))
        present = sorted({crops[i].cls for i in bad}, key=CLASSES.index)
        lead = present[int(rng.integers(len(present)))]
        dominant = np.array([i for i in bad if crops[i].cls == lead])
        pick = np.where(rng.random(k) < _DOMINANT, rng.choice(dominant, k), rng.choice(bad, k))
        out[rng.choice(n, k, replace=False)] = pick
    return out


def _debris(rng: np.random.Generator, cfg: MosaicConfig) -> np.ndarray:
    w, h = cfg.size
    n = int(rng.poisson(cfg.debris * w * h * (cfg.mpp / 1000) ** 2))
    d = np.zeros(n, _DEBRIS)
    d["x"], d["y"] = rng.uniform(0, w, n), rng.uniform(0, h, n)
    d["fibre"] = rng.random(n) < 0.3
    d["length"] = np.where(d["fibre"], rng.uniform(_um(cfg, 10), _um(cfg, 60), n), 0)
    d["width"] = np.where(d["fibre"], rng.uniform(_um(cfg, 0.4), _um(cfg, 1.2), n),
                          rng.uniform(_um(cfg, 0.4), _um(cfg, 1.5), n))
    d["angle"], d["bend"] = rng.uniform(0, np.pi, n), rng.normal(0, 0.15, n)
    d["od"] = np.where(d["fibre"], rng.uniform(0.15, 0.5, n), rng.uniform(0.4, 1.4, n))
    d["colour"] = rng.uniform(0.8, 1.25, (n, 3))  # near-neutral dark, brownish to bluish
    return d


def plan_slide(crops: Sequence[LabeledCrop], abnormal: bool, cfg: MosaicConfig) -> SlidePlan:
    """Draw a slide's cells, debris, glass and stain from ``cfg.seed`` (no pixels yet).

    Args:
        crops: crops to draw from (e.g. one part of :func:`crop_split`); those under
            ``cfg.min_content`` are skipped. NILM crops are needed, abnormal ones too when
            ``abnormal``.
        abnormal: compose an abnormal slide (see :data:`RULE`).
        cfg: the slide's settings.
    """
    rng = np.random.default_rng(cfg.seed)
    crops = tuple(c for c in crops if crop_content(c) >= cfg.min_content)
    x, y = _place(rng, cfg)
    n = x.size
    cells = np.zeros(n, _CELL)
    cells["x"], cells["y"] = x, y
    cells["crop"] = _choose_crops(rng, crops, n, abnormal, cfg.abnormal_fraction)
    cells["size"] = np.round(CROP_PX * cfg.cell_scale * rng.uniform(0.9, 1.1, n))
    cells["rot"], cells["flip"] = rng.integers(0, 4, n), rng.random(n) < 0.5
    cells["aspect"], cells["angle"] = rng.uniform(0.75, 1.0, n), rng.uniform(0, np.pi, n)
    cells["shape"] = rng.integers(0, 2**32, n, dtype=np.uint32)
    cells["jitter"] = np.exp(rng.normal(0, cfg.stain_jitter / 3, (n, 3)))
    stain = np.exp(rng.normal(0, cfg.stain_jitter, 3) + rng.normal(0, cfg.stain_jitter / 2))
    glass = np.clip(np.array([0.955, 0.945, 0.965]) + rng.uniform(-0.02, 0.02, 3), 0.85, 0.99)
    fields = (_Lattice(rng, cfg.size, max(64, int(_um(cfg, 600)))),
              _Lattice(rng, cfg.size, max(16, int(_um(cfg, 60)))))
    return SlidePlan(cfg, crops, cells, _debris(rng, cfg), glass.astype(np.float32),
                     stain.astype(np.float32), fields)


# --- rendering, one region at a time ---------------------------------------------------------

class _Index:
    """Items (by bounding box) in square bins of :data:`_BIN` pixels, for region queries."""

    def __init__(self, box: np.ndarray, size: tuple[int, int]) -> None:
        self.box = box  # (n, 4) x0, y0, x1, y1
        self.nx = math.ceil(size[0] / _BIN)
        ny = math.ceil(size[1] / _BIN)
        b = np.clip(box // _BIN, 0, [self.nx - 1, ny - 1, self.nx - 1, ny - 1]).astype(np.int64)
        ids, keys = [], []
        for ox in range(int((b[:, 2] - b[:, 0]).max(initial=0)) + 1):
            for oy in range(int((b[:, 3] - b[:, 1]).max(initial=0)) + 1):
                m = (b[:, 0] + ox <= b[:, 2]) & (b[:, 1] + oy <= b[:, 3])
                ids.append(np.flatnonzero(m))
                keys.append((b[m, 1] + oy) * self.nx + b[m, 0] + ox)
        key = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        order = np.argsort(key, kind="stable")
        self.items = (np.concatenate(ids) if ids else key)[order]
        self.starts = np.searchsorted(key[order], np.arange(self.nx * ny + 1))

    def query(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Sorted ids of the items whose box meets the region."""
        bx = range(x // _BIN, min(self.nx, (x + w - 1) // _BIN + 1))
        hits = [self.items[self.starts[k] : self.starts[k + 1]]
                for by in range(y // _BIN, (y + h - 1) // _BIN + 1) for k in
                (by * self.nx + i for i in bx) if k + 1 < len(self.starts)]
        ids = np.unique(np.concatenate(hits)) if hits else np.zeros(0, np.int64)
        b = self.box[ids]
        return ids[(b[:, 0] < x + w) & (b[:, 2] > x) & (b[:, 1] < y + h) & (b[:, 3] > y)]


def _corner(centre: np.ndarray, size: np.ndarray | int) -> np.ndarray:
    """Top-left pixel of a ``size``-pixel square around ``centre`` (float32 coordinates)."""
    return np.floor(np.asarray(centre, np.float32) - np.float32(0.5) * np.asarray(size)).astype(
        np.int64)


def _reach(d: np.ndarray) -> np.ndarray:
    """Half-side (pixels) of the square a speck or fibre paints."""
    length = np.where(d["fibre"], d["length"] / 2, 0)
    return np.ceil(length + 3 * d["width"]).astype(np.int64) + 1


def _outline(size: int, aspect: float, angle: float, shape: int) -> np.ndarray:
    """A cell-like alpha mask ``(size, size)``: an ellipse (minor/major ``aspect``, turned by
    ``angle``) with a wavy rim (harmonics 3-6 drawn from ``shape``), 1 inside, feathered
    over the outer 15 % of the radius, 0 outside."""
    amp = np.random.default_rng(shape).uniform(-0.04, 0.04, (2, 4)).astype(np.float32)
    c = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    u = c[None, :] * math.cos(angle) + c[:, None] * math.sin(angle)
    v = (-c[None, :] * math.sin(angle) + c[:, None] * math.cos(angle)) / aspect
    theta = np.arctan2(v, u)
    rim = 0.88 * (1 + sum(amp[0, k] * np.cos((k + 3) * theta) + amp[1, k] * np.sin((k + 3) * theta)
                          for k in range(4)))
    return 1 - _smooth(np.clip((np.sqrt(u * u + v * v) / rim - 0.85) / 0.15, 0, 1))


class MosaicRenderer:
    """The pixels of a :class:`SlidePlan`: ``renderer(x, y, w, h)`` -> ``(h, w, 3)`` uint8.

    The writer's tile callback. Reads the plan's crops once (about 30 kB each) and keeps
    nothing per tile, so its memory is the plan plus the crops plus one region.
    """

    NOISE = 5.0  # sensor noise, peak-to-peak grey levels (sd 1.4)

    def __init__(self, plan: SlidePlan) -> None:
        self.plan = plan
        used = np.unique(plan.cells["crop"])
        self.pixels = {int(i): _crop_pixels(plan.crops[i].path) for i in used}
        c, d = plan.cells, plan.debris
        # Boxes of exactly the pixels each item paints (so a pixel never depends on its tile).
        s = c["size"].astype(np.int64)
        x0, y0 = _corner(c["x"], s), _corner(c["y"], s)
        self.cell_index = _Index(np.stack([x0, y0, x0 + s, y0 + s], 1), plan.cfg.size)
        r = _reach(d)
        x0, y0 = d["x"].astype(np.int64) - r, d["y"].astype(np.int64) - r
        self.debris_index = _Index(np.stack([x0, y0, x0 + 2 * r + 1, y0 + 2 * r + 1], 1),
                                   plan.cfg.size)

    def glass(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Transmittance ``(h, w, 3)`` float32 of the bare glass (no noise)."""
        low, mid = self.plan.fields
        od = low.grid(x, y, w, h)
        od *= 0.02
        od += 0.008 * mid.grid(x, y, w, h)
        t = od[..., None] * np.array([-1.0, -1.15, -0.9], np.float32)
        np.exp(t, out=t)
        t *= self.plan.glass
        return t

    def background(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """What the slide shows at the region with no cell or debris: ``(h, w, 3)`` uint8."""
        return self._to_uint8(self.glass(x, y, w, h), x, y)

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        t = self.glass(x, y, w, h)
        for i in self.cell_index.query(x, y, w, h):
            self._paste(t, x, y, self.plan.cells[i])
        for j in self.debris_index.query(x, y, w, h):
            self._speck(t, x, y, self.plan.debris[j])
        return self._to_uint8(t, x, y)

    def _to_uint8(self, t: np.ndarray, x: int, y: int) -> np.ndarray:
        h, w = t.shape[:2]
        v = _hash_noise(x, y, w, h, self.plan.cfg.seed).astype(np.float32)
        v *= self.NOISE / 256
        v += t * 255 + (0.5 - self.NOISE / 2)  # + 0.5: round by truncation
        np.clip(v, 0, 255, out=v)
        return v.astype(np.uint8)

    def _paste(self, t: np.ndarray, x: int, y: int, c: np.void) -> None:
        s = int(c["size"])
        x0, y0 = int(_corner(c["x"], s)), int(_corner(c["y"], s))
        a = np.rot90(self.pixels[int(c["crop"])], int(c["rot"]))
        if c["flip"]:
            a = a[:, ::-1]
        if s != a.shape[0]:
            img = PILImage.fromarray(np.ascontiguousarray(a))
            a = np.asarray(img.resize((s, s), PILImage.Resampling.BILINEAR))
        od = _crop_od(a) * (self.plan.stain * c["jitter"])
        alpha = _outline(s, float(c["aspect"]), float(c["angle"]), int(c["shape"]))
        self._multiply(t, x, y, x0, y0, np.exp(-alpha[..., None] * od))

    def _speck(self, t: np.ndarray, x: int, y: int, d: np.void) -> None:
        reach = int(_reach(d))
        x0, y0 = int(d["x"]) - reach, int(d["y"]) - reach
        yy, xx = np.mgrid[y0 : y0 + 2 * reach + 1, x0 : x0 + 2 * reach + 1].astype(np.float32)
        u, v = xx - d["x"], yy - d["y"]
        if d["fibre"]:
            ca, sa, half = math.cos(d["angle"]), math.sin(d["angle"]), d["length"] / 2
            u, v = u * ca + v * sa, -u * sa + v * ca
            v = v - d["bend"] * half * (1 - (u / half) ** 2)  # a gentle arc
            ends = 1 - _smooth(np.clip((np.abs(u) - 0.8 * half) / (0.2 * half), 0, 1))
            od = d["od"] * np.exp(-(v * v) / (2 * d["width"] ** 2)) * ends
        else:
            od = d["od"] * np.exp(-(u * u + v * v) / (2 * d["width"] ** 2))
        self._multiply(t, x, y, x0, y0, np.exp(-od[..., None] * d["colour"]))

    @staticmethod
    def _multiply(t: np.ndarray, x: int, y: int, x0: int, y0: int, patch: np.ndarray) -> None:
        """``t`` (the region at ``x, y``) *= ``patch`` placed at ``x0, y0``, where they meet."""
        h, w = t.shape[:2]
        ax, ay = max(x0, x), max(y0, y)
        bx, by = min(x0 + patch.shape[1], x + w), min(y0 + patch.shape[0], y + h)
        if ax < bx and ay < by:
            t[ay - y : by - y, ax - x : bx - x] *= patch[ay - y0 : by - y0, ax - x0 : bx - x0]


@functools.lru_cache(maxsize=2048)  # the whole CRIC set is 1535 crops, 46 MB
def _crop_pixels(path: Path) -> np.ndarray:
    try:
        with PILImage.open(path) as im:
            a = np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(path, f"cannot read crop: {exc}") from exc
    a.flags.writeable = False
    return a


def _crop_white(a: np.ndarray) -> np.ndarray:
    """A crop's glass colour: its 99th percentile where that is bright (glass is in the
    crop), else the typical CRIC glass (a crop filled by cytoplasm)."""
    p99 = np.percentile(a.reshape(-1, 3), 99, axis=0).astype(np.float32)
    return p99 if p99.mean() >= 235 else _CRIC_GLASS


def _crop_od(a: np.ndarray) -> np.ndarray:
    """Optical density ``(h, w, 3)`` of a crop against its own glass, haze floor removed."""
    trans = np.clip(a.astype(np.float32) / _crop_white(a), 1 / 255, 1)
    # The floor drops the faint haze of a crop's own glass, which would outline the crop.
    return np.maximum(-np.log(trans) - _OD_FLOOR, 0)


def crop_content(crop: LabeledCrop) -> float:
    """Share of a crop's pixels that are stained (mean optical density >= 0.2): below
    :attr:`MosaicConfig.min_content` a crop shows bare glass (bacteria, haze) rather than
    the cell it is labelled with."""
    return _content(crop.path)


@functools.lru_cache(maxsize=4096)
def _content(path: Path) -> float:
    return float((_crop_od(_crop_pixels(path)).mean(-1) >= 0.2).mean())


# --- slides on disk ----------------------------------------------------------------------

def compose_slide(out: Path, crops: Sequence[LabeledCrop], abnormal: bool,
                  cfg: MosaicConfig) -> SlideTruth:
    """Compose one mosaic slide: ``out`` (pyramidal TIFF) and ``out.with_suffix('.json')``.

    Args:
        out: the ``.tif`` to write.
        crops: the crops to draw from (one part of :func:`crop_split`).
        abnormal: whether the slide is abnormal (:data:`RULE`).
        cfg: size, density, seed, ... (:class:`MosaicConfig`).

    Returns:
        The :class:`SlideTruth` also written as JSON.

    Example::

        parts = crop_split(Path("../shared/data/cervical-cytology-cric"))
        truth = compose_slide(Path("s0.tif"), parts["train"], True, MosaicConfig(seed=3))
    """
    out = Path(out)
    plan = plan_slide(crops, abnormal, cfg)
    write_pyramid(out, cfg.size, MosaicRenderer(plan), tile=cfg.tile, mpp=cfg.mpp,
                  quality=cfg.quality)
    truth = plan.truth(out)
    _write_truth(out.with_suffix(".json"), truth)
    return truth


def _write_truth(path: Path, truth: SlideTruth) -> None:
    """The JSON, one cell per line (streamed: a 100,000^2 slide holds ~300,000 cells)."""
    head = {"slide": truth.slide.name, "size": list(truth.size), "mpp": truth.mpp,
            "label": truth.label, "grade": truth.grade, "rule": truth.rule, "seed": truth.seed,
            "debris": truth.debris, "config": truth.config}
    with path.open("w") as f:
        f.write(json.dumps(head)[:-1] + ', "cells": [')
        for i, c in enumerate(truth.cells):
            cell = {"crop": c.crop, "class": c.cls, "x": c.x, "y": c.y, "w": c.w, "h": c.h}
            f.write(("," if i else "") + "\n" + json.dumps(cell))
        f.write("\n]}\n")


def read_truth(path: Path) -> SlideTruth:
    """Read a slide's JSON (written by :func:`compose_slide`) back as a :class:`SlideTruth`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        cells = tuple(CellRecord(c["crop"], c["class"], c["x"], c["y"], c["w"], c["h"])
                      for c in doc["cells"])
        return SlideTruth(path.parent / doc["slide"], tuple(doc["size"]), doc["mpp"],
                          doc["label"], doc["grade"], cells, doc["debris"], doc["seed"],
                          doc["rule"], doc["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a mosaic slide JSON: {exc}") from exc


def write_slide_set(root: Path, n_normal: int, n_abnormal: int, split_crops: Sequence[LabeledCrop],
                    cfg: MosaicConfig, *, progress: bool = False) -> Path:
    """Write ``n_normal + n_abnormal`` slides ``slide_0000.tif``... (+ JSON) and
    ``labels.csv`` (columns slide, label) into ``root``.

    Labels are shuffled with ``cfg.seed``; slide ``i`` gets its own seed drawn from
    ``(cfg.seed, i)``, so the set is deterministic. Pass one part of :func:`crop_split` as
    ``split_crops`` so that training and evaluation slides share no crop.

    Returns:
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.array([0] * n_normal + [1] * n_abnormal)
    np.random.default_rng(cfg.seed).shuffle(labels)
    seeds = np.random.SeedSequence(cfg.seed).generate_state(len(labels))
    rows = []
    with progress_bar("slides", len(labels), progress) as advance:
        for i, label in enumerate(labels):
            name = f"slide_{i:04d}.tif"
            compose_slide(root / name, split_crops, bool(label),
                          dataclasses.replace(cfg, seed=int(seeds[i])))
            rows.append((name, int(label)))
            advance()
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("slide", "label"), *rows])
    return root
