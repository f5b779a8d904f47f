"""Whole-slide cytology results: detected cells as QuPath GeoJSON, tile heatmaps on a thumbnail.

Cells travel as a GeoJSON ``FeatureCollection`` in level-0 pixel coordinates (origin at the
top-left corner of the full-resolution image, x to the right, y down), the layout QuPath
writes and reads (File > Import objects, or drag the file onto the viewer; QuPath 0.4/0.5,
``qupath.lib.io`` ``PathObjectTypeAdapter``). Each feature carries in ``properties``:

- ``objectType``: ``"detection"`` (QuPath would make an annotation if it were missing);
- ``classification``: ``{"name": ..., "color": [r, g, b]}``, the QuPath class and its colour;
- ``measurements``: ``{"score": ...}``, shown in QuPath's measurement table;
- ``class`` and ``score``: the same values as plain keys for tools that do not know QuPath.

Example::

    >>> cells = [{"class": "HSIL", "score": 0.93, "x": 51234.5, "y": 20480.0}]
    >>> write_cells_geojson(cells, Path("slide.geojson"))  # points  # doctest: +SKIP
    >>> read_cells_geojson(Path("slide.geojson"))  # doctest: +SKIP
    [{'class': 'HSIL', 'score': 0.93, 'x': 51234.5, 'y': 20480.0}]
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medinfer.errors import InputError

__all__ = [
    "BETHESDA_COLORS",
    "DEFAULT_COLOR",
    "class_color",
    "heatmap_overlay",
    "read_cells_geojson",
    "write_cells_geojson",
]

#: QuPath display colour (RGB 0..255) of each Bethesda class: green for normal, then
#: yellow -> orange -> pink -> red -> purple with rising severity.
BETHESDA_COLORS: dict[str, tuple[int, int, int]] = {
    "NILM": (46, 160, 67),
    "ASC-US": (255, 205, 0),
    "LSIL": (255, 127, 14),
    "ASC-H": (227, 80, 160),
    "HSIL": (214, 39, 40),
    "SCC": (120, 30, 160),
}
#: Colour of any class not in :data:`BETHESDA_COLORS`.
DEFAULT_COLOR: tuple[int, int, int] = (128, 128, 128)

_VERTICES = 32  # circle approximation of a cell outline
_DECIMALS = 2  # polygon vertices are rounded as QuPath writes them (0.01 px)


def class_color(name: str) -> tuple[int, int, int]:
    """RGB colour of a cell class: the Bethesda table (case-insensitive), else the default."""
    return BETHESDA_COLORS.get(name.strip().upper(), DEFAULT_COLOR)


def _reason(exc: OSError) -> str:
    """``"PermissionError: Permission denied"``-style one-liner."""
    return f"{type(exc).__name__}: {exc.strerror or exc}"


# --------------------------------------------------------------------------- write


def _cell_values(cell: Mapping[str, Any], i: int) -> tuple[str, float, float, float]:
    """``(class, score, x, y)`` of cell ``i``; ValueError names the cell and the key."""
    try:
        name, score, x, y = cell["class"], cell["score"], cell["x"], cell["y"]
    except KeyError as exc:
        raise ValueError(f"cell {i} has no {exc.args[0]!r} key") from None
    if not isinstance(name, str):
        raise ValueError(f"cell {i}: class must be a str, got {type(name).__name__}")
    try:
        values = (float(score), float(x), float(y))
    except (TypeError, ValueError):
        raise ValueError(f"cell {i}: score, x and y must be numbers, got "
                         f"{(score, x, y)!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"cell {i}: score, x and y must be finite, got {values}")
    return name, *values


def _circles(centres: np.ndarray, radius: float) -> list[list[list[list[float]]]]:
    """Closed ``_VERTICES``-gons around each ``(x, y)`` row of ``centres`` (Polygon coordinates)."""
    t = np.linspace(0.0, 2.0 * np.pi, _VERTICES, endpoint=False)
    ring = np.stack([np.cos(t), np.sin(t)], axis=1) * radius  # (V, 2)
    rings = np.round(centres[:, None, :] + ring[None], _DECIMALS).tolist()  # (n, V, 2)
    return [[r + [r[0]]] for r in rings]


def _feature(name: str, score: float, geometry: dict[str, Any]) -> dict[str, Any]:
    """One QuPath detection feature."""
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": {"name": name, "color": list(class_color(name))},
            "measurements": {"score": score},
            "class": name,
            "score": score,
        },
    }


def _write_atomic(text: str, out: Path) -> None:
    """Write ``text`` to a temporary file next to ``out``, then rename it onto ``out``.

    Readers never see a half-written file, and a failed write leaves any old ``out`` as it
    was. The temporary file is opened normally (not ``mkstemp``) so that the result gets
    the usual permissions of the umask rather than owner-only ones.
    """
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(out, f"cannot write ({_reason(exc)})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_cells_geojson(cells: Sequence[Mapping[str, Any]], out: Path, *, slide: str = "",
                        radius: float = 0.0) -> Path:
    """Write detected cells as a GeoJSON FeatureCollection that QuPath imports as detections.

    For QuPath pass ``radius > 0`` (about a cell's radius in level-0 pixels): each cell
    becomes a 32-vertex circle, an outline QuPath draws in the class colour and can select.
    QuPath shows a detection whose outline is a single point poorly (point outlines are
    meant for point annotations), so ``radius = 0`` (GeoJSON ``Point [x, y]``, exact
    centres) is for other tools and scripts that want the centres only.

    Args:
        cells: one mapping per cell with ``class`` (str, e.g. ``"HSIL"``), ``score``
            (float) and ``x``, ``y`` (level-0 pixel coordinates of the centre, float).
        out: the ``.geojson`` file to write; parent folders are created, an existing file
            is replaced atomically (written to a temporary file, then renamed).
        slide: name of the slide, stored as a top-level ``"slide"`` member of the
            collection (a foreign member: QuPath ignores it); omitted when empty.
        radius: cell radius in level-0 pixels; 0 writes points. Polygon vertices are
            rounded to 0.01 px, as QuPath itself writes them; point coordinates are exact.

    Returns:
        ``out``.

    Raises:
        ValueError: a cell lacks a key or has a non-finite score or coordinate, or
            ``radius`` is negative or not finite.
        InputError: ``out`` cannot be written.

    Example::

        >>> cells = [{"class": "ASC-US", "score": 0.71, "x": 1200.0, "y": 860.5}]
        >>> write_cells_geojson(cells, Path("cells.geojson"), radius=20)  # doctest: +SKIP
    """
    radius = float(radius)
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius}")
    out = Path(out)
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if slide:
        collection["slide"] = slide
    values = [_cell_values(c, i) for i, c in enumerate(cells)]
    if radius > 0:
        # All outlines in one numpy pass: a slide holds tens of thousands of cells.
        centres = np.array([(x, y) for _, _, x, y in values], dtype=np.float64).reshape(-1, 2)
        geometries = [{"type": "Polygon", "coordinates": c} for c in _circles(centres, radius)]
    else:
        geometries = [{"type": "Point", "coordinates": [x, y]} for _, _, x, y in values]
    collection["features"] = [_feature(name, score, g)
                              for (name, score, _, _), g in zip(values, geometries)]
    _write_atomic(json.dumps(collection, separators=(",", ":"), allow_nan=False), out)
    return out


# --------------------------------------------------------------------------- read


def _number(value: Any) -> float:
    """A finite JSON number as float; ValueError otherwise (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _ring_centroid(ring: Any) -> tuple[float, float]:
    """Area centroid of a polygon ring ``[[x, y], ...]``; the vertex mean if it has no area.

    Plain Python: rings are short (33 positions here) and there is one per cell, where
    numpy's per-call overhead would dominate.
    """
    if not isinstance(ring, list) or len(ring) < 3:
        raise ValueError("polygon ring has fewer than 3 positions")
    pts = [(_number(p[0]), _number(p[1])) for p in ring]
    if pts[0] == pts[-1]:
        pts.pop()
    # Shift to the first vertex so the shoelace sums do not lose digits at slide scale.
    x0, y0 = pts[0]
    pts = [(x - x0, y - y0) for x, y in pts]
    area2 = cx = cy = 0.0
    for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[:1]):
        cross = xa * yb - xb * ya
        area2 += cross
        cx += (xa + xb) * cross
        cy += (ya + yb) * cross
    if abs(area2) < 1e-12:
        n = len(pts)
        return sum(x for x, _ in pts) / n + x0, sum(y for _, y in pts) / n + y0
    return cx / (3 * area2) + x0, cy / (3 * area2) + y0


def _centre(geometry: Any) -> tuple[float, float]:
    """``(x, y)`` of a Point, or the centroid of a Polygon's outer ring."""
    if not isinstance(geometry, dict):
        raise ValueError("no geometry")
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if not isinstance(coords, list) or not coords:
        raise ValueError(f"{kind or 'geometry'} without coordinates")
    try:
        if kind == "Point":
            return _number(coords[0]), _number(coords[1])
        if kind == "Polygon":
            return _ring_centroid(coords[0])
    except (IndexError, TypeError) as exc:
        raise ValueError(f"malformed {kind} coordinates ({exc})") from None
    raise ValueError(f"geometry type {kind!r} is not a Point or Polygon")


def _class_name(props: Mapping[str, Any]) -> str:
    """QuPath's classification name (derived ``names`` joined by ': '), else ``class``, else ''."""
    cls = props.get("classification")
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str):
            return cls["name"]
        if isinstance(cls.get("names"), list):
            return ": ".join(str(n) for n in cls["names"])
    name = props.get("class", "")
    if not isinstance(name, str):
        raise ValueError(f"class is not a string: {name!r}")
    return name


def _score(props: Mapping[str, Any]) -> float:
    """``score``, else ``measurements.score`` (dict, or QuPath < 0.4 name/value list), else NaN."""
    if "score" in props:
        return _number(props["score"])
    meas = props.get("measurements")
    if isinstance(meas, dict) and "score" in meas:
        return _number(meas["score"])
    if isinstance(meas, list):
        for m in meas:
            if isinstance(m, dict) and m.get("name") == "score":
                return _number(m.get("value"))
    return math.nan


def _cell(feature: Any) -> dict[str, Any]:
    """One feature back to ``{"class", "score", "x", "y"}``; ValueError says what is wrong."""
    if not isinstance(feature, dict):
        raise ValueError("is not a JSON object")
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        raise ValueError("properties is not a JSON object")
    x, y = _centre(feature.get("geometry"))
    return {"class": _class_name(props), "score": _score(props), "x": x, "y": y}


def read_cells_geojson(path: Path) -> list[dict[str, Any]]:
    """Read cells back from a GeoJSON FeatureCollection (ours, or a QuPath export).

    A Polygon becomes its area centroid. The class is ``classification.name`` (a QuPath
    derived class ``names: [a, b]`` becomes ``"a: b"``), else the plain ``class`` key, else
    ``""`` (unclassified). The score is the plain ``score`` key, else the ``score``
    measurement, else NaN. A bare JSON array of features (QuPath's export without
    ``FEATURE_COLLECTION``) is read too.

    Args:
        path: the ``.geojson``/``.json`` file.

    Returns:
        One ``{"class": str, "score": float, "x": float, "y": float}`` per feature, in
        file order; coordinates in level-0 pixels.

    Raises:
        InputError: the file cannot be read, is not JSON, has no ``features`` list, or a
            feature lacks a Point/Polygon geometry with finite coordinates (the message
            names the feature's index).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(path, f"cannot read ({_reason(exc)})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a JSON file ({exc})") from exc
    features = data if isinstance(data, list) else (
        data.get("features") if isinstance(data, dict) else None)
    if not isinstance(features, list):
        raise InputError(path, "not GeoJSON: no 'features' list (expected a FeatureCollection)")
    cells = []
    for i, feature in enumerate(features):
        try:
            cells.append(_cell(feature))
        except ValueError as exc:
            raise InputError(path, f"feature {i}: {exc}") from exc
    return cells


# --------------------------------------------------------------------------- heatmap


def _grid_index(n: int, cells: int) -> np.ndarray:
    """Nearest-neighbour index ``i * cells // n`` of each of ``n`` pixels into ``cells`` cells."""
    return (np.arange(n, dtype=np.int64) * cells) // n


def heatmap_overlay(picture: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45,
                    vmax: float = 1.0, cmap: str = "inferno") -> np.ndarray:
    """Blend a per-tile probability grid onto a slide picture.

    ``heat`` is stretched over the whole picture by nearest neighbour, so each tile stays a
    uniform rectangle (sides differ by at most one pixel when the sizes do not divide).
    Values are scaled by ``vmax`` and clipped to [0, 1] before the colour map; NaN marks
    a grid cell without a tile (background), where the picture is left unchanged.

    Args:
        picture: ``(h, w, 3)`` uint8 RGB, e.g. a slide thumbnail.
        heat: ``(gh, gw)`` float grid of tile probabilities, row-major like the picture
            (row 0 at the top); NaN = no tile.
        alpha: heatmap opacity in [0, 1].
        vmax: value shown with the top colour of ``cmap`` (> 0).
        cmap: name of a matplotlib colour map.

    Returns:
        ``(h, w, 3)`` uint8 RGB; ``picture`` itself is not modified.

    Raises:
        ValueError: wrong shapes or dtype, ``alpha`` outside [0, 1], ``vmax <= 0`` or an
            unknown ``cmap``.

    Example::

        >>> thumb = np.full((600, 800, 3), 230, np.uint8)
        >>> heat = np.full((30, 40), np.nan); heat[10:20, 10:30] = 0.8
        >>> heatmap_overlay(thumb, heat).shape
        (600, 800, 3)
    """
    from matplotlib import colormaps  # keeps matplotlib off `import medinfer.io`

    picture = np.asarray(picture)
    heat = np.asarray(heat, dtype=np.float64)
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"picture must be (h, w, 3) uint8, got {picture.shape} {picture.dtype}")
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heat must be a non-empty (gh, gw) grid, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not (math.isfinite(vmax) and vmax > 0):
        raise ValueError(f"vmax must be a finite number > 0, got {vmax}")
    try:
        colormap = colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown matplotlib colour map {cmap!r}") from None
    # Colour the small grid once (premultiplied by alpha) and expand it by row and column
    # takes; the blend is then one float32 pass over the picture.
    lut = colormap(np.clip(np.nan_to_num(heat / vmax), 0.0, 1.0))[..., :3] * (255.0 * alpha)
    h, w = picture.shape[:2]
    rows, cols = _grid_index(h, heat.shape[0]), _grid_index(w, heat.shape[1])
    covered = ~np.isnan(heat)[np.ix_(rows, cols)]  # NaN only means "no tile"; inf is clipped
    blended = picture.astype(np.float32)
    blended *= np.float32(1.0 - alpha)
    blended += lut.astype(np.float32)[rows][:, cols]
    # A convex mix of 0..255 values: rounding keeps it in range, no clip needed.
    out = np.rint(blended, out=blended).astype(np.uint8)
    return np.where(covered[..., None], out, picture)
