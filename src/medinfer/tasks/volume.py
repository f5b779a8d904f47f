"""3D segmentation (brain tumour MR, S3; CT): whole volumes on their own voxel grid.

Two inference strategies over the same prepared input:

* ``sliding`` (default): MONAI's sliding window over windows of the artifact's input size
  with its overlap and Gaussian blending, each batch of windows run by any engine;
* ``exact``: the whole volume at once, exactly (:func:`medinfer.partition.exact_inference`
  tiles within a memory budget and returns what one huge pass would); PyTorch engines.

Split over several processes, the same prepared input goes to
:func:`medinfer.partition.distributed_inference` (``medinfer partition --mesh``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.data.volumes import (
    find_volume_pairs,
    is_volume_folder,
    load_volumes,
    prepare_volume,
    sample_windows,
    window_at,
)
from medinfer.errors import BackendUnavailableError, InputError
from medinfer.io import Image
from medinfer.partition import exact_inference, network_geometry
from medinfer.runtime import Engine
from medinfer.tasks.base import Infer
from medinfer.tasks.segmentation import SegmentationTask


@dataclass(frozen=True)
class VolumeInference:
    """How a whole volume is run.

    Attributes:
        strategy: ``sliding`` (MONAI sliding window, any engine) or ``exact`` (whole-volume
            result through exact tiling; torch engines).
        memory_budget_mb: ``exact``: the tiling's memory budget (None: no limit).
        sw_batch: ``sliding``: windows per engine call.
        progress: ``exact``: draw a progress bar.
    """

    strategy: str = "sliding"
    memory_budget_mb: float | None = None
    sw_batch: int = 4
    progress: bool = False


def window_logits(infer: Infer, volume: np.ndarray, size: tuple[int, ...], overlap: float,
                  sw_batch: int = 4) -> np.ndarray:
    """Logits (K, X, Y, Z) of one prepared volume (C, X, Y, Z) through MONAI's sliding window
    (windows of ``size``, ``overlap``, Gaussian blending), windows run by ``infer``."""
    import torch
    from monai.inferers import sliding_window_inference

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(infer(x.numpy().astype(np.float32, copy=False))))

    with torch.inference_mode():
        out = sliding_window_inference(torch.from_numpy(volume[None]), roi_size=size,
                                       sw_batch_size=sw_batch, predictor=run, overlap=overlap,
                                       mode="gaussian", padding_mode="constant")
    return out[0].numpy()


def pad_to_stride(net, x: np.ndarray):
    """``x`` (C, *S) as a tensor zero-padded so every side divides the network's total stride."""
    import torch

    shape = x.shape[1:]
    align = network_geometry(net, x.shape[0], tuple(-(-n // 16) * 16 for n in shape)).align
    padded = [-(-n // a) * a for n, a in zip(shape, align)]
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if padded != list(shape):
        pads = [p for n, m in zip(reversed(shape), reversed(padded)) for p in (0, m - n)]
        t = torch.nn.functional.pad(t, pads)
    return t


class Segmentation3D(SegmentationTask):
    """3D segmentation of volumes (NIfTI layout: ``images/*.nii.gz`` + ``masks/``)."""

    name: ClassVar[str] = "segmentation3d"
    layout: ClassVar[str] = "images/*.nii.gz + masks/"

    def __init__(self, art: ModelArtifact, inference: VolumeInference = VolumeInference()) -> None:
        super().__init__(art)
        if inference.strategy not in ("sliding", "exact"):
            raise ValueError(f"unknown volume strategy {inference.strategy!r}; use sliding or exact")
        self.inference = inference

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "segmentation" and len(art.spec.input.spatial) == 3

    def is_layout(self, folder: Path) -> bool:
        return is_volume_folder(folder)

    def load_eval(self, folder: Path, limit: int | None = None):
        pairs = find_volume_pairs(folder)
        return load_volumes(pairs[:limit] if limit else pairs, self.spec)

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Windows (foreground-biased, seeded) from the folder's volumes."""
        data = self.load_eval(folder)
        n = limit or 32 * len(data)
        return sample_windows(data, self.spec.size, n, 0.5, np.random.default_rng(0))[0]

    def latency_batch(self, data) -> np.ndarray:
        return sample_windows(data, self.spec.size, 4, 0.5, np.random.default_rng(1))[0]

    def network_input(self, data, i: int) -> np.ndarray:
        """The window centred on case ``i``'s foreground (its middle when it has none)."""
        mask = data.masks[i]
        centre = np.argwhere(mask).mean(axis=0).astype(int) if mask.any() else np.array(mask.shape) // 2
        return window_at(data.images[i], centre, self.spec.size)[0][None]

    def prepare(self, image: Image) -> np.ndarray:
        """(C, X, Y, Z) float32 on the volume's own grid, normalized as the artifact says."""
        try:
            return prepare_volume(image.array, self.spec)
        except ValueError as exc:
            raise InputError(image.source or "<image>", str(exc)) from exc

    def infer(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        """Logits (K, X, Y, Z) by the configured strategy."""
        if self.inference.strategy == "sliding":
            return window_logits(engine.infer, x, self.spec.size, self.spec.overlap, self.inference.sw_batch)
        net = getattr(engine, "net", None)
        if net is None:
            raise BackendUnavailableError(
                f"exact whole-volume inference runs the PyTorch network, not {engine.backend}; "
                "use --backend torch")
        logits = exact_inference(net, pad_to_stride(net, x), self.inference.memory_budget_mb,
                                 progress=self.inference.progress)
        return logits[(slice(None), *(slice(0, n) for n in x.shape[1:]))].numpy()

    def outputs(self, infer: Infer, data) -> list[np.ndarray]:
        """Whole-volume logits through the sliding window (the deployed strategy)."""
        return [window_logits(infer, v, self.spec.size, self.spec.overlap, self.inference.sw_batch)
                for v in data.images]
