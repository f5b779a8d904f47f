"""HTML for explained false positives: heat-maps and nearest training images (S11).

Call :func:`false_positive_report` for a standalone page, or
:func:`false_positive_section` for an HTML fragment to embed in another report (its CSS
classes ``reject``, ``note`` are the main report's; ``panel`` and ``nb`` are styled by the
standalone page and fall back to plain images elsewhere).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import jinja2

from medinfer.artifact import ModelArtifact
from medinfer.io import read_image
from medinfer.report.explainer import (
    INDEX_CACHE,
    ClassifierExplainer,
    FalsePositive,
    find_false_positives,
)
from medinfer.report.heatmaps import display_rgb, heatmap_panel, resize_map
from medinfer.report.html import array_b64
from medinfer.report.neighbours import training_records

log = logging.getLogger(__name__)


@dataclass
class ShownNeighbour:
    name: str
    findings: list[str]
    distance: float
    shares: bool
    thumb: str | None


@dataclass
class ShownCase:
    """One false positive as the template shows it (images as base64 PNG)."""

    name: str
    finding: str
    probability: float
    threshold: float
    truth: list[str]
    panel: str
    neighbours: dict[str, list[ShownNeighbour]]


def _thumb(path: Path | None) -> str | None:
    return None if path is None else array_b64(display_rgb(read_image(path).array))


def explain_cases(ex: ClassifierExplainer, cases: list[FalsePositive], k: int,
                  train_paths: dict[str, Path]) -> list[ShownCase]:
    """Heat-maps (for the false finding) and neighbours of each case, ready for the template."""
    out = []
    for c in cases:
        image = read_image(c.path)
        e = ex.explain(image, k=k, findings=[c.finding])
        rgb = display_rgb(image.array)
        m = e.findings[0].maps
        png = heatmap_panel(rgb, resize_map(m.gradcam, rgb.shape[:2]), resize_map(m.lrp, rgb.shape[:2]),
                            f"{c.finding}  p={c.probability:.3f}", lrp_label="LRP-epsilon")
        shown = {kind: [ShownNeighbour(n.name, n.findings, n.distance, c.finding in n.findings,
                                       _thumb(train_paths.get(n.name))) for n in ns]
                 for kind, ns in e.neighbours.items()}
        out.append(ShownCase(c.path.name, c.finding, c.probability, c.threshold, c.truth,
                             base64.b64encode(png).decode(), shown))
    return out


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("medinfer.report", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]))


def false_positive_section(art: ModelArtifact, data_dir: str | Path, n: int = 4, k: int = 5,
                           train_data: str | Path | None = None, cache: Path | None = None,
                           gradcam_layer: str = "features") -> str:
    """HTML fragment: the ``n`` most confident false positives of ``data_dir``, explained.

    Args:
        art: a classification artifact.
        data_dir: labeled evaluation folder (``labels.csv``, ``images/``); see
            :func:`~medinfer.report.explainer.find_false_positives` for which images count.
        n: false positives shown; k: neighbours per distance.
        train_data: training folder when the artifact's recorded one is not readable.
        cache: ``.npz`` file to cache the training features in.
        gradcam_layer: the network submodule Grad-CAM explains.
    """
    ex = ClassifierExplainer.open(art, train_data, cache, gradcam_layer=gradcam_layer)
    cases = find_false_positives(art, data_dir, n, net=ex.net)
    records, source = training_records(art, train_data)
    shown = explain_cases(ex, cases, k, {r.name: r.path for r in records})
    return _env().get_template("explain_section.html").render(
        cases=shown, k=k, source=f"{data_dir} (its recorded test patients if the model was trained on it, else all but the training patients)",
        methods=ex.explainer.methods, training_set=source,
        shrinkage=ex.index.shrinkage if ex.index else float("nan"))


def false_positive_report(art: ModelArtifact, data_dir: str | Path, out: str | Path, n: int = 4,
                          k: int = 5, train_data: str | Path | None = None,
                          gradcam_layer: str = "features") -> Path:
    """Write a self-contained HTML page of :func:`false_positive_section` to ``out``."""
    out = Path(out)
    section = false_positive_section(art, data_dir, n, k, train_data, out.parent / INDEX_CACHE,
                                     gradcam_layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_env().get_template("explain.html").render(title=art.root.name, section=section))
    return out
