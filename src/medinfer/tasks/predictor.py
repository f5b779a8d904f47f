"""One model, ready to answer: ``Predictor.open(artifact).predict(image) -> Prediction``.

The boundary the service and the commands call: the artifact's variant opened once in an
engine, the artifact's task around it (load once, predict many). Results come back in
the input image's own geometry, whatever the network's input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.io import Image
from medinfer.io.limits import ReadLimits
from medinfer.runtime import Engine, EngineOptions
from medinfer.tasks.base import Prediction, Task, WriteOptions, WrittenFile
from medinfer.tasks.registry import task_for


class Predictor:
    """An artifact's variant opened once, predicting image after image.

    Example::

        with Predictor.open("models/polyp-resunet") as predictor:   # the chosen variant
            pred = predictor.predict(read_image("frame.jpg"))
        pred.mask.shape == image.array.shape[1:]
    """

    def __init__(self, task: Task, engine: Engine | None, variant: str) -> None:
        self.task, self.engine, self.variant = task, engine, variant

    @property
    def artifact(self) -> ModelArtifact:
        return self.task.art

    @classmethod
    def open(cls, artifact: str | Path | ModelArtifact, backend: str | None = None,
             precision: str | None = None, options: EngineOptions = EngineOptions(),
             **task_options: Any) -> Predictor:
        """Load ``artifact`` (a folder or a loaded artifact), its chosen variant by default;
        ``task_options`` go to the task (e.g. the 3D task's ``inference``)."""
        art = artifact if isinstance(artifact, ModelArtifact) else ModelArtifact.load(artifact)
        task = task_for(art, **task_options)
        engine, variant = task.open_engine(backend, precision, options)
        return cls(task, engine, variant)

    def read(self, paths: list[Path], limits: ReadLimits | None = None) -> Image:
        """The input of one request from its files, read the way the task needs it (a 4D
        perfusion series, a 3D volume, a picture)."""
        return self.task.read_input(paths, limits)

    def warm_up(self) -> None:
        """Run once on the task's :meth:`~Task.blank_input`, so the first request pays no
        first-call costs (imports, compilation, allocations)."""
        image = self.task.blank_input()
        if image is not None:
            self.predict(image)

    def predict(self, image: Image) -> Prediction:
        """Run the model on one image (picture or volume, channel-first, any size).

        Raises:
            InputError: naming ``image.source`` when the image does not suit the model.
        """
        return self.task.predict(self.engine, image, self.variant)

    def write(self, pred: Prediction, image: Image, out_dir: Path,
              options: WriteOptions = WriteOptions()) -> list[WrittenFile]:
        """Write ``pred`` as the task writes its results (see :meth:`Task.write`)."""
        return self.task.write(pred, image, out_dir, options)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
