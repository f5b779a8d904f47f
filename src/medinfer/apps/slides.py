"""Whole-slide commands: ``medinfer slide`` (one slide through both stages) and
``medinfer mosaic`` (training / validation / evaluation sets of mosaic slides)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.data.mosaic import MosaicConfig, crop_split, write_slide_set
from medinfer.runtime import EngineOptions
from medinfer.tasks import Predictor, WriteOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetPlan:
    """One part of a slide set: how many normal and abnormal slides, their side (level-0
    pixels) and the share of abnormal cells on an abnormal slide."""

    normal: int
    abnormal: int
    side: int
    abnormal_fraction: float


DEFAULT_SETS: dict[str, SetPlan] = {
    "train": SetPlan(16, 16, 6144, 0.08),
    "val": SetPlan(20, 20, 4096, 0.05),
    "test": SetPlan(40, 40, 4096, 0.05),
}
"""The shipped cytology model's sets: training slides richer in abnormal cells (8 %: more
positive tiles), validation and evaluation slides with 5 % (about 25 of some 500 cells on an
abnormal slide). With 1 % (a handful per slide) a first model stayed at chance: the CRIC crops
carry a weak label (a small ResNet separates NILM from abnormal crops at AUC ~0.6, see
BENCHMARKS "S7"), too weak to find five cells among 500."""


def make_slide_sets(out: Path, crops_root: Path, plans: dict[str, SetPlan] | None = None,
                    seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Write ``out/train``, ``out/val``, ``out/test`` mosaic slide folders, each composed only
    of its own part of the crops (:func:`~medinfer.data.mosaic.crop_split`: no crop is in
    two parts). Returns the folders."""
    plans = plans or DEFAULT_SETS
    parts = crop_split(Path(crops_root), seed=seed)
    folders = {}
    for i, (name, plan) in enumerate(plans.items()):
        cfg = MosaicConfig(size=(plan.side, plan.side), abnormal_fraction=plan.abnormal_fraction,
                           seed=seed * 1000 + i)
        log.info("%s: %d normal + %d abnormal slides of %d^2 pixels", name, plan.normal, plan.abnormal, plan.side)
        folders[name] = write_slide_set(Path(out) / name, plan.normal, plan.abnormal, parts[name],
                                        cfg, progress=progress)
    (Path(out) / "README.txt").write_text(
        "Mosaic slides: real CRIC cervical cell crops on a synthetic layout (medinfer mosaic).\n"
        f"Parts and crops: {json.dumps({k: dataclasses.asdict(v) for k, v in plans.items()})}, seed {seed}.\n"
        "train/val/test are composed from disjoint crops.\n")
    return folders


def run_slide(art: ModelArtifact, slide: Path, out_dir: Path, backend: str | None = None,
              precision: str | None = None, options: EngineOptions = EngineOptions(),
              thumbnail: int = 2048, progress: bool = True) -> dict[str, Any]:
    """One slide through the artifact's pipeline: ``<stem>_heatmap.png``,
    ``<stem>_cells.geojson`` and ``<stem>.json`` in ``out_dir``; returns the JSON summary."""
    stem = Path(slide).name.split(".")[0]
    with Predictor.open(art, backend, precision, options, thumbnail=thumbnail, progress=progress) as predictor:
        image = predictor.read([Path(slide)])
        pred = predictor.predict(image)
        files = predictor.write(pred, image, Path(out_dir), WriteOptions(stem=stem, summary={"input": str(slide)}))
    summary = json.loads(next(f.path for f in files if f.kind == "json").read_text())
    summary["files"] = {f.kind: str(f.path) for f in files}
    return summary
