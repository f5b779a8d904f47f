"""`medinfer predict` for every task: files in, results beside each input's name out."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from medinfer.apps.predictor import Predictor
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError
from medinfer.io import read_image
from medinfer.runtime import EngineOptions

log = logging.getLogger(__name__)


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def predict_files(art: ModelArtifact, inputs: Sequence[str | Path], out_dir: str | Path,
                  backend: str | None = None, precision: str | None = None,
                  options: EngineOptions = EngineOptions()) -> list[Path]:
    """Run the model on each file and write its result; returns the main result paths.

    * 2D segmentation: ``<stem>_mask.png`` and ``<stem>_overlay.png`` at the image's own size;
    * 3D segmentation: ``<stem>_mask.nii.gz`` on the volume's grid with its geometry;
    * classification: ``<stem>.json`` with every finding's probability, threshold and the
      findings called positive.

    An unreadable or unsuitable input is reported and skipped; results already written are
    kept.

    Raises:
        InputError: if no input could be processed (the first error is re-raised).
    """
    from medinfer.io import write_mask_nifti, write_mask_png, write_overlay_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, errors = [], []
    with Predictor.open(art, backend, precision, options) as predictor:
        for path in map(Path, inputs):
            try:
                image = read_image(path)
                pred = predictor.predict(image)
            except InputError as exc:
                log.error("skipped %s", exc)
                errors.append(exc)
                continue
            stem = _stem(path)
            if pred.mask is None:
                target = out_dir / f"{stem}.json"
                target.write_text(json.dumps({"input": str(path), **pred.summary()}, indent=2))
            elif pred.mask.ndim == 2:
                target = write_mask_png(pred.mask > 0, out_dir / f"{stem}_mask.png")
                write_overlay_png(image.array, pred.mask > 0, out_dir / f"{stem}_overlay.png")
            else:
                target = write_mask_nifti(pred.mask > 0, out_dir / f"{stem}_mask.nii.gz", reference=image)
            written.append(target)
    if errors and not written:
        raise errors[0]
    return written
