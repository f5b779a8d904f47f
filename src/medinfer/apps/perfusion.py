"""`medinfer perfusion`: a 4D CT perfusion series -> maps, lesions, DICOM results, report.

Reads DICOM (a folder or files of one series; an enhanced multi-frame file) or a 4D NIfTI
with its frame times, runs the perfusion task of an artifact (the shipped settings by
default), writes what the task writes (NIfTI maps and masks, or for DICOM input the
Parametric Maps, SEG, SR and summary Secondary Capture), the HTML report and the JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError
from medinfer.io import Image
from medinfer.io.perfusion import read_perfusion
from medinfer.io.writers import ras_affine
from medinfer.perfusion import PerfusionConfig
from medinfer.report.perfusion import render_perfusion_report
from medinfer.runtime import EngineOptions
from medinfer.tasks import WriteOptions
from medinfer.tasks.perfusion import Perfusion, PerfusionPrediction, perfusion_artifact

__all__ = ["read_aif_mask", "run_perfusion"]


def read_aif_mask(path: Path, image: Image) -> np.ndarray:
    """An arterial mask in ``image``'s grid: a NIfTI written in its geometry (e.g. drawn on
    the exported maps; its affine must agree) or a ``.npy`` array ``(rows, cols, slices)``.

    Raises:
        InputError: naming ``path``: unreadable, another shape or another geometry.
    """
    path = Path(path)
    grid = image.spatial_shape
    if not path.is_file():
        raise InputError(path, "AIF mask file does not exist")
    if path.suffix == ".npy":
        try:
            mask = np.load(path)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read the AIF mask: {exc}") from exc
    else:
        import nibabel as nib

        try:
            img = nib.load(str(path))
            mask = np.asarray(img.dataobj)
        except Exception as exc:  # nibabel raises many types on a damaged file
            raise InputError(path, f"cannot read the AIF mask as NIfTI: {exc}") from exc
        ref = ras_affine(Image(np.zeros((1, *grid), np.uint8), image.spacing, image.origin, image.direction,
                               None, {"frame": image.meta.get("frame", "LPS")}))
        if mask.shape == grid and not np.allclose(img.affine, ref, atol=1e-2):
            raise InputError(path, "AIF mask geometry (affine) differs from the series'")
    mask = np.squeeze(mask) if mask.ndim > 3 else mask
    if mask.shape != grid:
        raise InputError(path, f"AIF mask has shape {mask.shape}, the series' grid is {grid}")
    return mask != 0


def run_perfusion(inputs: list[Path], out_dir: Path, *, model: Path | None = None,
                  settings: dict[str, Any] | None = None, aif_mask: Path | None = None,
                  frame_times: list[float] | None = None, frame_interval: float | None = None,
                  resample: bool = False,
                  backend: str | None = None, report: bool = True, synthetic: str = "") -> dict[str, Any]:
    """Analyse one series and write its results under ``out_dir``.

    Args:
        inputs: a folder or the files of one series, one multi-frame file or one 4D NIfTI.
        out_dir: results folder (created).
        model: a perfusion artifact (its settings); None: the defaults.
        settings: :class:`PerfusionConfig` fields overriding the artifact's.
        aif_mask: arterial voxels overriding the automatic AIF.
        frame_times: seconds of each frame (required for NIfTI without a sidecar).
        frame_interval: NIfTI: seconds between frames (instead of ``frame_times``).
        resample: put unevenly sampled series on an even grid instead of refusing them.
        backend: ``torch`` or ``numpy`` (default: the settings').
        report: also write ``report.html``.
        synthetic: a note for the report when the series is a phantom.

    Returns:
        The JSON summary (also written as ``result.json``).
    """
    art = ModelArtifact.load(model) if model is not None else perfusion_artifact()
    config = PerfusionConfig.model_validate({**art.spec.arch_kwargs, **(settings or {})})
    source: Path | list[Path] = inputs[0] if len(inputs) == 1 else list(inputs)
    task = Perfusion(art, config)
    _, variant = task.open_engine(backend, None, EngineOptions())  # a bad backend fails before reading
    if frame_interval is not None and not frame_times:
        frame_times = _even_times(source, frame_interval)
    image = read_perfusion(source, frame_times=frame_times, resample=resample)
    mask = read_aif_mask(aif_mask, image) if aif_mask is not None else None
    task.aif_mask, task.aif_mask_path = mask, str(aif_mask or "")
    pred = task.predict(None, image, variant)
    assert isinstance(pred, PerfusionPrediction)
    out_dir = Path(out_dir)
    files = task.write(pred, image, out_dir, WriteOptions(summary={"input": str(source)}))
    if report:
        render_perfusion_report(task, pred, image, out_dir / "report.html", synthetic=synthetic)
    summary = pred.summary()
    summary["files"] = sorted(str(f.path.name) for f in files) + (["report.html"] if report else [])
    return {"input": str(source), **summary}


def _even_times(source: Path | list[Path], interval: float) -> list[float]:
    """Frame times ``0, interval, 2 interval ...`` for a 4D NIfTI (its last axis counts frames)."""
    if isinstance(source, list) or source.suffix not in (".nii", ".gz"):
        raise InputError(source if not isinstance(source, list) else source[0],
                         "--frame-interval is for a 4D NIfTI; DICOM carries its own times")
    import nibabel as nib

    try:
        shape = nib.load(str(source)).shape
    except Exception as exc:  # nibabel raises many types on a damaged file
        raise InputError(source, f"cannot read NIfTI header: {exc}") from exc
    if len(shape) != 4:
        raise InputError(source, f"NIfTI has shape {shape}; a perfusion series needs 4 axes")
    return [i * float(interval) for i in range(shape[3])]
