"""Routing: which model, if any, a received series goes to (first matching rule wins)."""

from __future__ import annotations

import re

from medinfer.serve.config import MatchRule, RouteConfig
from medinfer.serve.store import SeriesInfo

__all__ = ["matches", "route_series"]


def matches(rule: MatchRule, series: SeriesInfo) -> bool:
    """Whether ``series`` meets every condition ``rule`` sets (unset conditions pass)."""
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
    return True


def route_series(routes: list[RouteConfig],
                 series: SeriesInfo) -> tuple[str, str, int] | None:
    """``(route name, artifact dir, priority)`` of the first rule ``series`` matches, or None."""
    for r in routes:
        if matches(r.match, series):
            return r.name, str(r.artifact), r.priority
    return None
