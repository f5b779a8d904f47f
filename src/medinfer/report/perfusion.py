"""The HTML report of one perfusion analysis: volumes, summary page, maps, curves, method."""

from __future__ import annotations

from pathlib import Path

import jinja2

from medinfer.io import Image
from medinfer.perfusion import curves_figure, maps_figure, summary_page
from medinfer.report.html import array_b64
from medinfer.tasks.perfusion import Perfusion, PerfusionPrediction


def render_perfusion_report(task: Perfusion, pred: PerfusionPrediction, image: Image, out: Path,
                            title: str = "", synthetic: str = "") -> Path:
    """Write a self-contained HTML report of ``pred`` (``synthetic``: a note shown when the
    input is a phantom). Returns ``out``."""
    assert pred.maps is not None and pred.lesions is not None
    maps, les = pred.maps, pred.lesions
    env = jinja2.Environment(loader=jinja2.PackageLoader("medinfer.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    summary = pred.summary()
    html = env.get_template("perfusion.html").render(
        title=title or str(image.source or "series"), frames=len(maps.times),
        interval=float(summary["frame_interval_s"]), shape=" × ".join(map(str, maps.brain.shape)),
        method=summary["method"], seconds=sum(pred.seconds.values()), s=summary, synthetic=synthetic,
        summary_png=array_b64(summary_page(maps, les)), maps_png=array_b64(maps_figure(maps, les)),
        curves_png=array_b64(curves_figure(maps, task.tissue_curves(image, maps, les))))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return out
