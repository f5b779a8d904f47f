"""Routing: which model, if any, a received series goes to (first matching rule wins)."""

from __future__ import annotations

import re

from functools import lru_cache

from medinfer.serve.config import MatchRule, RouteConfig
from medinfer.serve.store import SeriesInfo

__all__ = ["is_temporal", "matches", "route_series", "slide_routes"]

_POSITION_MM = 0.01


@lru_cache(maxsize=64)
def is_temporal(paths: tuple[str, ...]) -> bool:
    """Whether stored DICOM files hold several time points of one slice position: two
    files at the same ImagePositionPatient, or a multi-frame file with several temporal
    positions (headers only; unreadable files count as not temporal)."""
    import pydicom

    seen: set[tuple[int, ...]] = set()
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "ImagePositionPatient", "NumberOfTemporalPositions", "NumberOfFrames"])
        except Exception:  # noqa: BLE001 - a damaged file is the reader's to report
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 and int(ds.get("NumberOfTemporalPositions", 1) or 1) > 1:
            return True
        ipp = ds.get("ImagePositionPatient")
        if ipp is None or len(ipp) != 3:
            continue
        key = tuple(int(round(float(v) / _POSITION_MM)) for v in ipp)
        if key in seen:
            return True
        seen.add(key)
    return False


def matches(rule: MatchRule, series: SeriesInfo) -> bool:
    """Whether ``series`` meets every condition ``rule`` sets (unset conditions pass; a
    whole slide only meets a rule whose ``formats`` name ``slide``)."""
    if series.format == "slide" and "slide" not in rule.formats:
        return False
    if rule.modality and series.modality.upper() not in {m.upper() for m in rule.modality}:
        return False
    if rule.body_part and series.body_part.upper() not in {b.upper() for b in rule.body_part}:
        return False
    if rule.series_description is not None and not re.search(
            rule.series_description, series.series_description, flags=re.IGNORECASE):
        return False
    if rule.sop_class_uid and series.sop_class_uid not in rule.sop_class_uid:
        return False
    if rule.formats and series.format not in rule.formats:
        return False
    if rule.temporal is not None and (series.format == "dicom" and is_temporal(series.paths)) != rule.temporal:
        return False
    return True


def route_series(routes: list[RouteConfig],
                 series: SeriesInfo) -> tuple[str, str, int] | None:
    """``(route name, artifact dir, priority)`` of the first rule ``series`` matches, or None."""
    for r in routes:
        if matches(r.match, series):
            return r.name, str(r.artifact), r.priority
    return None


def slide_routes(routes: list[RouteConfig]) -> list[RouteConfig]:
    """The routes that take whole-slide images (``match.formats`` names ``slide``)."""
    return [r for r in routes if "slide" in r.match.formats]
