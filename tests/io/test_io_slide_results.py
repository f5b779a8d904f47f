"""Slide results: cells as QuPath GeoJSON (round trip, layout, bad files), the heatmap overlay."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colormaps

from medinfer.errors import InputError
from medinfer.io.slide_results import (
    BETHESDA_COLORS,
    DEFAULT_COLOR,
    heatmap_overlay,
    read_cells_geojson,
    write_cells_geojson,
)

CELLS = [
    {"class": "NILM", "score": 0.12, "x": 10.25, "y": 20.5},
    {"class": "ASC-US", "score": 0.5, "x": 98765.4321, "y": 45678.123456},
    {"class": "LSIL", "score": 0.61, "x": 0.0, "y": 0.0},
    {"class": "ASC-H", "score": 0.7, "x": 1234.5, "y": 5.0},
    {"class": "HSIL", "score": 0.93, "x": 51234.5, "y": 20480.0},
    {"class": "SCC", "score": 0.99, "x": 7.0, "y": 123456.75},
    {"class": "artefact", "score": 0.33333333333, "x": 300.0, "y": 400.0},
]


def _features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(("radius", "tol"), [(0.0, 1e-6), (24.0, 0.5), (3.5, 0.5)])
def test_round_trip(tmp_path: Path, radius: float, tol: float) -> None:
    out = write_cells_geojson(CELLS, tmp_path / "cells.geojson", slide="S1", radius=radius)
    assert out == tmp_path / "cells.geojson"
    back = read_cells_geojson(out)
    assert [c["class"] for c in back] == [c["class"] for c in CELLS]
    np.testing.assert_allclose([c["score"] for c in back], [c["score"] for c in CELLS], atol=1e-12)
    for got, want in zip(back, CELLS):
        assert abs(got["x"] - want["x"]) <= tol and abs(got["y"] - want["y"]) <= tol


def test_empty_list_round_trips(tmp_path: Path) -> None:
    out = write_cells_geojson([], tmp_path / "none.geojson")
    assert json.loads(out.read_text()) == {"type": "FeatureCollection", "features": []}
    assert read_cells_geojson(out) == []


# --------------------------------------------------------------------------- structure


def test_point_structure(tmp_path: Path) -> None:
    out = write_cells_geojson(CELLS, tmp_path / "a" / "b" / "cells.geojson", slide="S1")
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["slide"] == "S1"
    assert len(doc["features"]) == len(CELLS)
    for feat, cell in zip(doc["features"], CELLS):
        assert feat["type"] == "Feature"
        assert feat["geometry"] == {"type": "Point", "coordinates": [cell["x"], cell["y"]]}
        props = feat["properties"]
        assert props["objectType"] == "detection"
        assert props["classification"] == {
            "name": cell["class"], "color": list(BETHESDA_COLORS.get(cell["class"], DEFAULT_COLOR))}
        assert props["measurements"] == {"score": cell["score"]}
        assert props["class"] == cell["class"] and props["score"] == cell["score"]


def test_bethesda_colours_are_distinct_and_valid() -> None:
    colours = list(BETHESDA_COLORS.values()) + [DEFAULT_COLOR]
    assert set(BETHESDA_COLORS) == {"ASC-US", "LSIL", "ASC-H", "HSIL", "SCC", "NILM"}
    assert len(set(colours)) == len(colours)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


def test_polygon_is_a_closed_32_vertex_circle(tmp_path: Path) -> None:
    out = write_cells_geojson(CELLS[:1], tmp_path / "c.geojson", radius=10.0)
    (feat,) = _features(out)
    assert feat["geometry"]["type"] == "Polygon"
    (ring,) = feat["geometry"]["coordinates"]
    assert len(ring) == 33 and ring[0] == ring[-1]
    xy = np.array(ring[:-1])
    assert len({tuple(p) for p in ring[:-1]}) == 32
    dist = np.hypot(xy[:, 0] - CELLS[0]["x"], xy[:, 1] - CELLS[0]["y"])
    np.testing.assert_allclose(dist, 10.0, atol=0.01)


def test_no_slide_member_when_empty_and_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "cells.geojson"
    out.write_text("old")
    write_cells_geojson(CELLS, out)
    assert "slide" not in json.loads(out.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["cells.geojson"]  # no temp file left


@pytest.mark.parametrize(("cells", "radius", "match"), [
    ([{"class": "HSIL", "score": 0.9, "x": 1.0}], 0.0, "'y'"),
    ([{"class": "HSIL", "score": math.nan, "x": 1.0, "y": 2.0}], 0.0, "finite"),
    ([{"class": "HSIL", "score": "high", "x": 1.0, "y": 2.0}], 0.0, "numbers"),
    ([{"class": 3, "score": 0.9, "x": 1.0, "y": 2.0}], 0.0, "str"),
    (CELLS, -1.0, "radius"),
    (CELLS, math.inf, "radius"),
])
def test_bad_cells_are_value_errors(tmp_path: Path, cells, radius, match) -> None:
    out = tmp_path / "x.geojson"
    with pytest.raises(ValueError, match=match):
        write_cells_geojson(cells, out, radius=radius)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_target_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "dir.geojson").mkdir()
    with pytest.raises(InputError) as err:
        write_cells_geojson(CELLS, tmp_path / "dir.geojson")
    assert err.value.path == tmp_path / "dir.geojson"
    assert [p.name for p in tmp_path.iterdir()] == ["dir.geojson"]


# --------------------------------------------------------------------------- reading others


def test_reads_qupath_style_export(tmp_path: Path) -> None:
    """A bare feature array, derived class ``names``, pre-0.4 measurement list, no class."""
    features = [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]},
         "properties": {"objectType": "detection",
                        "classification": {"names": ["HSIL", "Koilocyte"], "color": [1, 2, 3]},
                        "measurements": [{"name": "score", "value": 0.25}]}},
        {"type": "Feature", "geometry": {"type": "Polygon",
                                         "coordinates": [[[0, 0], [4, 0], [4, 2], [0, 2], [0, 0]]]},
         "properties": {"objectType": "annotation"}},
    ]
    path = tmp_path / "qupath.json"
    path.write_text(json.dumps(features))
    first, second = read_cells_geojson(path)
    assert first == {"class": "HSIL: Koilocyte", "score": 0.25, "x": 5.0, "y": 6.0}
    assert second["class"] == "" and math.isnan(second["score"])
    assert (second["x"], second["y"]) == pytest.approx((2.0, 1.0))


_POINT = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
          "properties": {"class": "NILM", "score": 0.1}}


@pytest.mark.parametrize(("text", "reason"), [
    ("this is not json {", "not a JSON file"),
    (b"\xff\xfe\x00garbage", "not a JSON file"),
    ('{"type": "FeatureCollection"}', "no 'features'"),
    ('"just a string"', "no 'features'"),
    (json.dumps({"features": [_POINT, {"type": "Feature", "geometry": {"type": "Point"}}]}),
     "feature 1: Point without coordinates"),
    (json.dumps({"features": [{"type": "Feature", "properties": {}}]}), "feature 0: no geometry"),
    (json.dumps({"features": [{"geometry": {"type": "Point", "coordinates": ["a", 2]}}]}),
     "feature 0: not a finite number"),
    (json.dumps({"features": [{"geometry": {"type": "Polygon", "coordinates": [[[0, 0]]]}}]}),
     "fewer than 3"),
    (json.dumps({"features": [{"geometry": {"type": "LineString", "coordinates": [[0, 0]]}}]}),
     "not a Point or Polygon"),
    (json.dumps({"features": [{**_POINT, "properties": {"score": "high"}}]}), "feature 0"),
    (json.dumps({"features": ["nope"]}), "feature 0: is not a JSON object"),
])
def test_bad_files_raise_input_error_naming_the_file(tmp_path: Path, text, reason) -> None:
    path = tmp_path / "bad.geojson"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(InputError) as err:
        read_cells_geojson(path)
    assert err.value.path == path and str(path) in str(err.value)
    assert reason in err.value.reason


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_cells_geojson(tmp_path / "missing.geojson")


# --------------------------------------------------------------------------- heatmap overlay


def _expected_blend(pixel, value: float, alpha: float, vmax: float = 1.0, cmap: str = "inferno"):
    rgb = np.asarray(colormaps[cmap](min(max(value / vmax, 0.0), 1.0))[:3]) * 255.0
    return np.round((1 - alpha) * np.asarray(pixel, float) + alpha * rgb).astype(np.uint8)


def test_overlay_leaves_nan_tiles_untouched_and_colours_the_others() -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    original = picture.copy()
    heat = np.array([[np.nan, 0.2, 0.9], [0.5, np.nan, 1.7]])  # tiles of 20 x 20 px
    out = heatmap_overlay(picture, heat, alpha=0.5)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(picture, original)  # input not modified
    np.testing.assert_array_equal(out[:20, :20], picture[:20, :20])
    np.testing.assert_array_equal(out[20:, 20:40], picture[20:, 20:40])
    for (r, c), v in np.ndenumerate(heat):
        if np.isnan(v):
            continue
        block = (slice(20 * r, 20 * r + 20), slice(20 * c, 20 * c + 20))
        want = np.stack([_expected_blend(p, v, 0.5) for p in picture[block].reshape(-1, 3)])
        np.testing.assert_array_equal(out[block].reshape(-1, 3), want)


@pytest.mark.parametrize(("shape", "grid"), [((7, 10), (3, 4)), ((5, 3), (4, 4)), ((1, 1), (2, 3)),
                                             ((11, 13), (1, 1))])
def test_overlay_sizes_that_do_not_divide(shape, grid) -> None:
    picture = np.full((*shape, 3), 128, np.uint8)
    heat = np.arange(np.prod(grid), dtype=float).reshape(grid) / np.prod(grid)
    out = heatmap_overlay(picture, heat, alpha=1.0, cmap="viridis")
    assert out.shape == (*shape, 3)
    # alpha = 1: every pixel shows its tile's colour; tiles are constant blocks in order,
    # each grid row/column spanning floor or ceil of (picture size / grid size) pixels.
    lut = np.round(colormaps["viridis"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)
    for axis, (n, g) in enumerate(zip(shape, grid)):
        idx = np.arange(n) * g // n
        assert np.all(np.diff(idx) >= 0) and idx[0] == 0
        if n >= g:
            spans = np.bincount(idx, minlength=g)
            assert spans.min() >= n // g and spans.max() <= -(-n // g)
    rows = np.arange(shape[0]) * grid[0] // shape[0]
    cols = np.arange(shape[1]) * grid[1] // shape[1]
    np.testing.assert_array_equal(out, lut[np.ix_(rows, cols)])


def test_overlay_alpha_zero_and_vmax() -> None:
    picture = np.full((4, 4, 3), 200, np.uint8)
    heat = np.full((2, 2), 0.25)
    np.testing.assert_array_equal(heatmap_overlay(picture, heat, alpha=0.0), picture)
    top = heatmap_overlay(picture, heat, alpha=1.0, vmax=0.25)
    np.testing.assert_array_equal(top[0, 0], _expected_blend(picture[0, 0], 1.0, 1.0))


@pytest.mark.parametrize(("picture", "heat", "kw", "match"), [
    (np.zeros((4, 4), np.uint8), np.zeros((2, 2)), {}, "picture"),
    (np.zeros((4, 4, 3), np.float32), np.zeros((2, 2)), {}, "picture"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros(4), {}, "heat"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((0, 2)), {}, "heat"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), {"alpha": 1.5}, "alpha"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), {"vmax": 0.0}, "vmax"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), {"cmap": "no-such-map"}, "colour map"),
])
def test_overlay_bad_arguments(picture, heat, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        heatmap_overlay(picture, heat, **kw)
