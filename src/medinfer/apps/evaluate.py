"""`medinfer evaluate` for any task: the task's metrics of one variant over a data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.runtime import EngineOptions, open_engine, resolve_variant
from medinfer.tasks import task_for


def evaluate_folder(art: ModelArtifact, data_dir: str | Path, backend: str | None = None,
                    precision: str | None = None, options: EngineOptions = EngineOptions(),
                    limit: int | None = None, n_boot: int = 1000) -> dict[str, Any]:
    """Metrics of a variant of ``art`` (the chosen one by default) on ``data_dir``.

    Returns the task's metrics plus ``backend``, ``precision``, ``variant`` and ``task``;
    segmentation keeps the foundation contract ``{dice, iou, n, backend, precision}``.

    Raises:
        InputError: the folder is missing or not in the model's data layout.
    """
    task = task_for(art)
    task.check_layout(Path(data_dir))
    data = task.load_eval(Path(data_dir), limit)
    variant = resolve_variant(art, backend, precision)
    engine = open_engine(art, variant, options)
    try:
        metrics = task.score(engine, data, n_boot=n_boot)
    finally:
        engine.close()
    if "n" in metrics:
        metrics["n"] = int(metrics["n"])
    return {**metrics, "backend": variant.backend, "precision": variant.precision,
            "variant": variant.name, "task": task.name}
