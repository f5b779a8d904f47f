"""`medinfer predict` for every task: files in, the task's results beside each input's name out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError
from medinfer.runtime import EngineOptions
from medinfer.tasks import Predictor, WriteOptions

log = logging.getLogger(__name__)

MAIN_KINDS = ("mask", "json")
"""The file that stands for a prediction, by preference (a mask, else the JSON summary)."""


def stem(path: Path) -> str:
    """File name without any suffix (``case.nii.gz`` -> ``case``); a folder (a DICOM series)
    keeps its whole name, dots and all (``2.000000-5mm-40805``), spaces made underscores."""
    if path.is_dir():
        return "_".join(path.name.split())
    return path.name.split(".")[0]


def predict_files(art: ModelArtifact, inputs: Sequence[str | Path], out_dir: str | Path,
                  backend: str | None = None, precision: str | None = None,
                  options: EngineOptions = EngineOptions(), dicom: bool = False,
                  **task_options: Any) -> list[Path]:
    """Run the model on each file and write the task's results; returns the main result paths.

    * 2D segmentation: ``<stem>_mask.png`` and ``<stem>_overlay.png`` at the image's own size;
    * 3D segmentation: ``<stem>_mask.nii.gz`` on the volume's grid with its geometry, and an
      overlay of the slice with the most foreground;
    * classification: ``<stem>.json`` with every finding's probability, threshold and the
      findings called positive;
    * detection: ``<stem>.json`` with every box (slice, pixels, scores, SOPInstanceUID) and
      ``<stem>_overlay.png`` of the slice with the best box;
    * every task: ``<stem>.json``, the prediction's summary; with ``dicom`` and a DICOM
      input also the task's DICOM results (``<stem>_seg.dcm`` / ``<stem>_sr.dcm`` /
      ``<stem>_sc.dcm``), as the service sends them to a PACS.

    Two inputs with the same stem are refused (their results would overwrite each other).

    An unreadable or unsuitable input is reported and skipped; results already written are
    kept.

    Raises:
        InputError: if no input could be processed (the first error is re-raised).
    """
    out_dir = Path(out_dir)
    stems: dict[str, Path] = {}
    for path in map(Path, inputs):
        if stems.setdefault(stem(path), path) != path:
            raise InputError(path, f"its results would overwrite those of {stems[stem(path)]} "
                                   f"(both named {stem(path)!r}); predict them into separate folders")
    written, errors = [], []
    with Predictor.open(art, backend, precision, options, **task_options) as predictor:
        for path in map(Path, inputs):
            try:
                image = predictor.read([path])
                pred = predictor.predict(image)
            except InputError as exc:
                log.error("skipped %s", exc)
                errors.append(exc)
                continue
            files = predictor.write(pred, image, out_dir, WriteOptions(stem=stem(path), dicom=dicom,
                                                                       summary={"input": str(path)}))
            written.append(next(f.path for k in MAIN_KINDS for f in files if f.kind == k))
    if errors and not written:
        raise errors[0]
    return written
