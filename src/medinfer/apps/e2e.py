"""End-to-end timing of a prediction, stage by stage: read -> preprocess -> infer ->
postprocess -> write, for several variants side by side.

A model that runs 4x faster rarely makes a request 4x faster: reading a file,
resizing, thresholding and writing the result do not get quantized. This module
measures exactly that, so a model speed-up is always shown beside the whole-request
speed-up (MONAI's own spleen bundle reports 3.3x on the model and 1.00x end to end).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medinfer.apps.predict import stem
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError
from medinfer.io import read_image
from medinfer.runtime import EngineOptions, variant_by_name
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import Predictor, WriteOptions
from medinfer.variants import REFERENCE

STAGES = ("read", "preprocess", "infer", "postprocess", "write")


@dataclass
class StageTimes:
    """Median milliseconds per stage for one variant over the inputs (after warm-up)."""

    variant: str
    n: int
    median_ms: dict[str, float]
    total_ms: float
    samples_ms: dict[str, list[float]] = field(default_factory=dict)


def time_variant(art: ModelArtifact, variant: str, inputs: Sequence[Path], out_dir: Path,
                 options: EngineOptions = EngineOptions(), warmup: int = 1,
                 on_input: Callable[[], None] = lambda: None) -> StageTimes:
    """Run every input through ``variant`` and time each stage of each request; ``write`` is
    what a caller keeps (the task's result files and JSON summary, no overlay picture)."""
    rec = variant_by_name(art, variant)
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    with Predictor.open(art, rec.backend, rec.precision, options) as predictor:
        for i, path in enumerate([*inputs[:warmup], *inputs]):
            t0 = time.perf_counter()
            image = read_image(path)
            t1 = time.perf_counter()
            pred = predictor.predict(image)
            t2 = time.perf_counter()
            predictor.write(pred, image, out_dir, WriteOptions(stem=f"{variant}_{stem(Path(path))}",
                                                               dicom=False, overlay=False))
            t3 = time.perf_counter()
            if i < warmup:
                continue
            for stage, sec in (("read", t1 - t0), ("write", t3 - t2), *pred.seconds.items()):
                samples[stage].append(sec * 1e3)
            on_input()
    med = {s: statistics.median(v) for s, v in samples.items()}
    return StageTimes(variant, len(inputs), med, sum(med.values()),
                      {s: [round(x, 3) for x in v] for s, v in samples.items()})


def end_to_end(art: ModelArtifact, variants: Sequence[str], inputs: Sequence[str | Path],
               options: EngineOptions = EngineOptions(), out_dir: Path | None = None,
               on_input: Callable[[], None] = lambda: None) -> list[StageTimes]:
    """Stage medians for each variant over the same inputs, in one process, one after another.

    Raises:
        InputError: an input does not exist (checked before anything runs).
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise InputError(p, "input does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(out_dir) if out_dir else Path(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        return [time_variant(art, v, paths, dest, options, on_input=on_input) for v in variants]


def speedups(rows: list[StageTimes], reference: str = REFERENCE) -> list[dict[str, object]]:
    """Per variant: model (infer) speed-up and whole-request speed-up against ``reference``."""
    ref = next((r for r in rows if r.variant == reference), rows[0])
    return [{**asdict(r), "samples_ms": None,
             "model_speedup": ref.median_ms["infer"] / r.median_ms["infer"],
             "end_to_end_speedup": ref.total_ms / r.total_ms} for r in rows]


def end_to_end_report(art: ModelArtifact, variants: Sequence[str] | None, inputs: Sequence[str | Path],
                      options: EngineOptions, command: str,
                      on_input: Callable[[], None] = lambda: None) -> dict[str, object]:
    """``medinfer bench --end-to-end``: stage timings with speed-ups, machine and versions.

    ``variants`` default to the reference and the artifact's chosen variant.
    """
    names = list(variants) if variants else list(dict.fromkeys([REFERENCE, art.spec.chosen or REFERENCE]))
    rows = end_to_end(art, names, inputs, options, on_input=on_input)
    return {"artifact": str(art.root), "command": command, "machine": machine_info(),
            "versions": versions(), "threads": options.threads, "inputs": [str(p) for p in inputs],
            "variants": speedups(rows)}
