"""`medinfer explain`: heat-maps per finding and the nearest training images, for image files.

``medinfer explain --model ART INPUT... --out DIR`` writes, per input ``<stem>``:

* ``<stem>_<finding>.png``: image, Grad-CAM and LRP side by side, for the ``top`` most
  probable findings and every finding at or above its threshold;
* ``<stem>.json``: probabilities, thresholds, the findings explained (with the LRP
  convergence delta) and the ``k`` nearest training images per distance (Euclidean,
  cosine, Mahalanobis) in the network's penultimate feature space.

An input whose JSON already exists is kept, not recomputed. The explanations themselves
come from :mod:`medinfer.report.explainer`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medinfer.apps.predict import stem as file_stem
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError
from medinfer.io import read_image
from medinfer.progress import status_progress
from medinfer.report.explainer import INDEX_CACHE, ClassifierExplainer, ImageExplanation
from medinfer.report.heatmaps import display_rgb, heatmap_panel, resize_map

log = logging.getLogger(__name__)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_explanation(e: ImageExplanation, image: np.ndarray, out_dir: Path, stem: str,
                      source: str = "") -> Path:
    """Write ``<stem>_<finding>.png`` per explained finding (at the image's own size) and ``<stem>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = display_rgb(image)
    overlays = {}
    for f in e.findings:
        png = heatmap_panel(rgb, resize_map(f.maps.gradcam, rgb.shape[:2]),
                            resize_map(f.maps.lrp, rgb.shape[:2]),
                            f"{e.name}: {f.finding}  p={f.probability:.3f} (threshold {f.threshold:.3f})",
                            lrp_label="LRP-epsilon")
        overlays[f.finding] = f"{stem}_{_safe(f.finding)}.png"
        (out_dir / overlays[f.finding]).write_bytes(png)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(e.summary(overlays, source), indent=2) + "\n")
    return path


@dataclass
class ExplainRun:
    """What :func:`explain_files` did: JSON files written, inputs kept from before, errors."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)


def explain_files(art: ModelArtifact, inputs: Sequence[str | Path], out_dir: str | Path, top: int = 3,
                  k: int = 5, train_data: str | Path | None = None,
                  gradcam_layer: str = "features") -> ExplainRun:
    """Explain image files into ``out_dir`` (see the module docstring).

    An unreadable or non-2D input is logged and skipped; the others are still explained.

    Raises:
        InputError: naming the file, when no input could be explained (the first error).
    """
    out_dir = Path(out_dir)
    run = ExplainRun()
    todo = []
    for path in map(Path, inputs):
        stem = file_stem(path)
        if (out_dir / f"{stem}.json").is_file():
            run.kept.append(out_dir / f"{stem}.json")
            continue
        try:
            image = read_image(path)
            if image.ndim_spatial != 2:
                raise InputError(path, f"not a 2D image; {art.root.name} takes 2D images")
        except InputError as exc:
            log.error("skipped %s", exc)
            run.errors.append(exc)
            continue
        todo.append((path, stem, image))
    if todo:
        ex = ClassifierExplainer.open(art, train_data, out_dir / INDEX_CACHE, gradcam_layer=gradcam_layer)
        source = ex.index.source if ex.index else ""
        with status_progress() as bar:
            task = bar.add_task("explaining", total=len(todo), status="")
            for path, stem, image in todo:
                e = ex.explain(image, top, k)
                run.written.append(write_explanation(e, image.array, out_dir, stem, source))
                bar.update(task, advance=1, status=path.name)
                log.info("%s: explained %s", path.name, ", ".join(f.finding for f in e.findings))
    if run.errors and not run.written and not run.kept:
        raise run.errors[0]
    return run
