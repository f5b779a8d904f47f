"""`medinfer evaluate` for any task: the task's metrics of one variant over a data folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.runtime import EngineOptions
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
    engine, variant = task.open_engine(backend, precision, options)
    try:
        metrics = task.score(engine, data, n_boot=n_boot)
    finally:
        if engine is not None:
            engine.close()
    if "n" in metrics:
        metrics["n"] = int(metrics["n"])
    kind_backend, _, kind_precision = variant.partition("-")
    record = next((v for v in art.spec.variants if v.name == variant), None)
    return {**metrics, "backend": record.backend if record else kind_backend,
            "precision": record.precision if record else kind_precision,
            "variant": variant, "task": task.name}
