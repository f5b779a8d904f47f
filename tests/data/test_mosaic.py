"""Mosaic whole-slide images of real CRIC cells and the pyramidal TIFF writer behind them."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from medinfer.data.mosaic import (
    ABNORMAL,
    CLASSES,
    MosaicConfig,
    MosaicRenderer,
    compose_slide,
    crop_split,
    plan_slide,
    read_crops,
    read_truth,
    write_slide_set,
)
from medinfer.io.slide_writer import pyramid_sizes, write_pyramid

openslide = pytest.importorskip("openslide")
tiffslide = pytest.importorskip("tiffslide")

CRIC = "cervical-cytology-cric"
SIZE, TILE = 2048, 256
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cric(shared_path: Callable[[str], Path]) -> Path:
    return shared_path(CRIC)


@pytest.fixture(scope="module")
def parts(cric: Path) -> dict:
    return crop_split(cric)


def _cfg(seed: int = 7, **kw: object) -> MosaicConfig:
    return MosaicConfig(**{"size": (SIZE, SIZE), "tile": TILE, "seed": seed, **kw})


@pytest.fixture(scope="module")
def slides(parts: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One normal and one abnormal 2048^2 slide from the training crops."""
    root = tmp_path_factory.mktemp("mosaic")
    return {kind: (root / f"{kind}.tif",
                   compose_slide(root / f"{kind}.tif", parts["train"], kind == "abnormal",
                                 _cfg(seed=11 if kind == "abnormal" else 12)))
            for kind in ("normal", "abnormal")}


# --- the TIFF: both readers, every level --------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "abnormal"])
def test_both_readers_see_the_same_pyramid(slides: dict, kind: str) -> None:
    path, _ = slides[kind]
    with openslide.OpenSlide(path) as o, tiffslide.TiffSlide(path) as t:
        assert o.properties["openslide.vendor"] == "generic-tiff"
        assert o.level_count == t.level_count >= 3
        assert o.level_dimensions == t.level_dimensions == tuple(pyramid_sizes((SIZE, SIZE), TILE))
        for (w0, h0), (w1, h1) in zip(o.level_dimensions, o.level_dimensions[1:]):
            assert (w1, h1) == ((w0 + 1) // 2, (h0 + 1) // 2)
        assert o.level_downsamples == pytest.approx(t.level_downsamples)


def test_mpp_is_recovered_by_both_readers(slides: dict) -> None:
    path, truth = slides["abnormal"]
    with openslide.OpenSlide(path) as o, tiffslide.TiffSlide(path) as t:
        for p in (o.properties, t.properties):
            key = "openslide" if "openslide.mpp-x" in p else "tiffslide"
            assert float(p[f"{key}.mpp-x"]) == pytest.approx(truth.mpp, rel=1e-6)
            assert float(p[f"{key}.mpp-y"]) == pytest.approx(truth.mpp, rel=1e-6)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_readers_decode_the_same_pixels(slides: dict, level: int) -> None:
    path, _ = slides["abnormal"]
    with openslide.OpenSlide(path) as o, tiffslide.TiffSlide(path) as t:
        w, h = o.level_dimensions[level]
        a = np.asarray(o.read_region((0, 0), level, (w, h)))[..., :3].astype(int)
        b = np.asarray(t.read_region((0, 0), level, (w, h), as_array=True))[..., :3].astype(int)
    assert np.abs(a - b).max() <= 2


def test_level0_matches_the_renderer(slides: dict, parts: dict) -> None:
    path, _ = slides["abnormal"]
    render = MosaicRenderer(plan_slide(parts["train"], True, _cfg(seed=11)))
    with openslide.OpenSlide(path) as o:
        for x, y in ((0, 0), (700, 900), (SIZE - 300, SIZE - 200)):
            got = np.asarray(o.read_region((x, y), 0, (300, 200)))[..., :3].astype(int)
            assert np.abs(got - render(x, y, 300, 200)).mean() < 3  # JPEG q90 loss only


def test_smaller_levels_are_two_by_two_means(tmp_path: Path) -> None:
    w, h = 1000, 700  # odd tile counts and a ragged edge
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) // 8 % 256], -1).astype(np.uint8)
    path = write_pyramid(tmp_path / "ramp.tif", (w, h), lambda x, y, tw, th:
                         img[y : y + th, x : x + tw], tile=128, mpp=0.5)
    ref = img.astype(np.float64)
    with tiffslide.TiffSlide(path) as t:
        assert float(t.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        for level, (lw, lh) in enumerate(t.level_dimensions):
            got = np.asarray(t.read_region((0, 0), level, (lw, lh), as_array=True))[..., :3]
            assert got.shape == ref.shape
            assert np.abs(got - ref).mean() < 3
            pad = np.pad(ref, ((0, ref.shape[0] % 2), (0, ref.shape[1] % 2), (0, 0)), mode="edge")
            ref = pad.reshape(pad.shape[0] // 2, 2, pad.shape[1] // 2, 2, 3).mean((1, 3))


def test_writer_asks_for_one_tile_at_a_time(tmp_path: Path) -> None:
    calls: list[tuple[int, int, int, int]] = []

    def tiles(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, w, h))
        return np.full((h, w, 3), 200, np.uint8)

    w, h, tile = 1500, 1100, 256
    write_pyramid(tmp_path / "gray.tif", (w, h), tiles, tile=tile)
    assert max(c[2] for c in calls) <= tile and max(c[3] for c in calls) <= tile
    assert len(calls) == len(set(calls)) == math.ceil(w / tile) * math.ceil(h / tile)
    assert calls == sorted(calls, key=lambda c: (c[1], c[0]))  # row-major, each once
    assert sum(c[2] * c[3] for c in calls) == w * h


def test_writer_rejects_bad_tiles_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(tmp_path / "a.tif", (100, 100), lambda *r: np.zeros((1, 1, 3)), tile=100)
    with pytest.raises(ValueError, match="returned shape"):
        write_pyramid(tmp_path / "b.tif", (300, 300), lambda x, y, w, h: np.zeros((w, 5, 3)),
                      tile=128)
    assert not (tmp_path / "b.tif").exists()


# --- what the slide holds -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "abnormal"])
def test_json_records_every_cell_inside_the_slide(slides: dict, kind: str) -> None:
    path, truth = slides[kind]
    doc = json.loads(path.with_suffix(".json").read_text())
    assert read_truth(path.with_suffix(".json")) == truth
    assert len(doc["cells"]) == len(truth.cells) > 50
    for c in doc["cells"]:
        assert c["class"] in CLASSES and c["crop"].startswith(f"images/{c['class']}/")
        assert 0 <= c["x"] < SIZE and 0 <= c["y"] < SIZE and c["w"] > 0 and c["h"] > 0
    classes = {c["class"] for c in doc["cells"]}
    if kind == "normal":
        assert classes == {"NILM"} and doc["label"] == 0 and doc["grade"] == "NILM"
    else:
        assert classes & set(ABNORMAL) and doc["label"] == 1 and doc["grade"] in ABNORMAL
    assert "ASC-US or worse" in doc["rule"]


def test_cells_show_at_their_recorded_positions(slides: dict, parts: dict) -> None:
    path, truth = slides["abnormal"]
    render = MosaicRenderer(plan_slide(parts["train"], True, _cfg(seed=11)))
    with openslide.OpenSlide(path) as o:
        def change(x: float, y: float, r: int) -> float:
            x0, y0 = int(x) - r, int(y) - r
            got = np.asarray(o.read_region((x0, y0), 0, (2 * r, 2 * r)))[..., :3].astype(int)
            return float(np.abs(got - render.background(x0, y0, 2 * r, 2 * r)).mean())

        at_cells = np.array([change(c.x, c.y, c.w // 3) for c in truth.cells])
        away = [change(x, y, 30) for x, y in _free_spots(render, 20)]
    assert np.median(at_cells) > 10 and np.max(away) < 3
    assert np.mean(at_cells > 4) > 0.9, np.sort(at_cells)[:20]


def _free_spots(render: MosaicRenderer, n: int) -> list[tuple[int, int]]:
    rng, spots = np.random.default_rng(0), []
    while len(spots) < n:
        x, y = (int(v) for v in rng.integers(60, SIZE - 60, 2))
        if not len(render.cell_index.query(x - 40, y - 40, 80, 80)) and \
                not len(render.debris_index.query(x - 40, y - 40, 80, 80)):
            spots.append((x, y))
    return spots


def test_slides_are_deterministic_per_seed(parts: dict, tmp_path: Path) -> None:
    cfg = _cfg(seed=3, size=(768, 640), tile=128)
    a = compose_slide(tmp_path / "a.tif", parts["train"], True, cfg)
    (tmp_path / "again").mkdir()
    b = compose_slide(tmp_path / "again" / "a.tif", parts["train"], True, cfg)
    c = compose_slide(tmp_path / "c.tif", parts["train"], True, _cfg(seed=4, size=(768, 640),
                                                                      tile=128))
    assert a.cells == b.cells and a.cells != c.cells
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "again" / "a.tif").read_bytes()
    assert (tmp_path / "a.json").read_text() == (tmp_path / "again" / "a.json").read_text()
    # A pixel depends on its position only, not on the tile it is rendered in.
    render = MosaicRenderer(plan_slide(parts["train"], True, cfg))
    whole = render(0, 0, 768, 640)
    sx, sy = 333, 217  # an odd split, through cells
    quads = [[render(0, 0, sx, sy), render(sx, 0, 768 - sx, sy)],
             [render(0, sy, sx, 640 - sy), render(sx, sy, 768 - sx, 640 - sy)]]
    assert np.array_equal(whole, np.concatenate([np.concatenate(q, 1) for q in quads], 0))


def test_crop_split_parts_are_disjoint_and_stratified(cric: Path, parts: dict) -> None:
    everything = read_crops(cric)
    names = {k: {c.image for c in v} for k, v in parts.items()}
    ids = {k: {c.cell_id for c in v} for k, v in parts.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not names[a] & names[b] and not ids[a] & ids[b]
    assert set().union(*names.values()) == {c.image for c in everything}
    for cls in CLASSES:
        n = sum(c.cls == cls for c in everything)
        assert abs(sum(c.cls == cls for c in parts["train"]) - 0.6 * n) <= 1
    assert crop_split(cric) == parts and crop_split(cric, seed=1) != parts
    blocks = crop_split(cric, id_block=30)
    owner = {c.cell_id // 30: k for k, v in blocks.items() for c in v}
    assert all(owner[c.cell_id // 30] == k for k, v in blocks.items() for c in v)


def test_slide_set_writes_labels(parts: dict, tmp_path: Path) -> None:
    root = write_slide_set(tmp_path / "set", 2, 2, parts["val"], _cfg(seed=5, size=(512, 512),
                                                                        tile=128))
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["label"] for r in rows) == ["0", "0", "1", "1"]
    val = {c.image for c in parts["val"]}
    for r in rows:
        truth = read_truth((root / r["slide"]).with_suffix(".json"))
        assert truth.label == int(r["label"]) and (root / r["slide"]).is_file()
        assert {c.crop for c in truth.cells} <= val  # only the crops it was given


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="empty_fraction"):
        MosaicConfig(empty_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        MosaicConfig(size=(100, 5000))


# --- memory bound ----------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM (Linux)")
def test_a_20k_slide_keeps_memory_bounded(cric: Path, tmp_path: Path) -> None:
    """20,000^2 pixels (1.2 GB of RGB) written with well under 300 MB of growth.

    Peak RSS is the child's ``VmHWM`` (``ru_maxrss`` survives ``exec`` on Linux, so it
    would report the pytest parent's size), and tracemalloc's peak as a second opinion.
    """
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        import psutil
        sys.path.insert(0, {str(TESTS)!r})
        from peak_memory import Peak
        from medinfer.data.mosaic import MosaicConfig, compose_slide, crop_split
        crops = crop_split(Path({str(cric)!r}))["test"]
        base = psutil.Process().memory_info().rss
        with Peak() as peak:
            truth = compose_slide(Path({str(tmp_path / "big.tif")!r}), crops, True,
                                  MosaicConfig(size=(20000, 20000), seed=1))
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        print(json.dumps({{"rss": hwm - base, "traced": peak.bytes, "cells": len(truth.cells)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=900)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["cells"] > 5000
    assert got["rss"] < 300e6 and got["traced"] < 300e6, got
    with openslide.OpenSlide(tmp_path / "big.tif") as o:
        assert o.level_dimensions[0] == (20000, 20000) and o.level_count == 7


def test_tiles_are_labelled_by_the_abnormal_cells_they_hold() -> None:
    from medinfer.data.mosaic import CellRecord, SlideTruth
    from medinfer.data.slide_tiles import tile_counts

    cells = (CellRecord("a.png", "HSIL", 100.0, 100.0, 90, 90), CellRecord("b.png", "NILM", 700.0, 100.0, 90, 90),
             CellRecord("c.png", "LSIL", 600.0, 700.0, 90, 90), CellRecord("d.png", "SCC", 512.0, 10.0, 90, 90))
    truth = SlideTruth(Path("s.tif"), (1024, 1024), 0.25, 1, "SCC", cells, 0, 0)
    assert truth.centres().tolist() == [[100.0, 100.0], [600.0, 700.0], [512.0, 10.0]]
    grid = [(0, 0), (512, 0), (0, 512), (512, 512)]
    assert tile_counts(truth.centres(), grid, 512).tolist() == [1, 1, 0, 1]  # NILM not counted
    overlapping = [(0, 0), (256, 0), (512, 0)]  # stride 256: a point can be in two tiles
    assert tile_counts(truth.centres(), overlapping, 512).tolist() == [1, 1, 1]
    assert tile_counts(truth.centres(), grid, 256, downsample=2.0).tolist() == [1, 1, 0, 1]
    assert tile_counts(np.zeros((0, 2)), grid, 512).tolist() == [0, 0, 0, 0]
