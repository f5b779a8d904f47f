"""3D image/mask volumes (NIfTI): ``DIR/images/<name>.nii.gz`` with ``DIR/masks/<name>.nii.gz``.

Volumes keep their own voxel grid (no resampling): networks see them through a sliding
window, so every volume is scored and returned at full resolution.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class VolumePair:
    name: str
    image: Path
    mask: Path


@dataclass
class VolumeSet:
    """Prepared volumes held in memory: ``images[i]`` float32 (C, X, Y, Z), ``masks[i]`` bool (X, Y, Z)."""

    names: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)


def _stem(path: Path) -> str:
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def is_volume_folder(root: str | Path) -> bool:
    """Whether ``root/images`` holds NIfTI volumes (the 3D segmentation layout)."""
    images = Path(root) / "images"
    return images.is_dir() and any(p.name.endswith(VOLUME_SUFFIXES) for p in images.iterdir())


def find_volume_pairs(root: str | Path) -> list[VolumePair]:
    """Match ``root/images/*.nii[.gz]`` with ``root/masks/`` by name.

    Raises:
        InputError: no ``images/`` or ``masks/`` folder, no volumes, or a volume without a mask.
    """
    root = Path(root)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(root, f"no {sub}/ folder: not a volume data folder")
    masks = {_stem(p): p for p in (root / "masks").iterdir() if p.name.endswith(VOLUME_SUFFIXES)}
    out = []
    for p in sorted((root / "images").iterdir()):
        if not p.name.endswith(VOLUME_SUFFIXES):
            continue
        if _stem(p) not in masks:
            raise InputError(p, "no matching mask under masks/")
        out.append(VolumePair(_stem(p), p, masks[_stem(p)]))
    if not out:
        raise InputError(root / "images", "no NIfTI volumes")
    return out


def prepare_volume(array: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Raw (C, X, Y, Z) intensities -> float32 network input on the same grid.

    ``zscore``: per channel, over the nonzero voxels (the background of a skull-stripped
    or masked MR stays at its own value); ``scale``: ``x * scale`` then ``spec`` mean/std.
    """
    x = np.asarray(array, np.float32)
    if x.shape[0] != spec.channels:
        raise ValueError(f"volume has {x.shape[0]} channels, the model takes {spec.channels}")
    if spec.intensity == "zscore":
        out = np.empty_like(x)
        for c in range(x.shape[0]):
            fg = x[c][x[c] != 0]
            mu, sd = (float(fg.mean()), float(fg.std())) if fg.size else (0.0, 1.0)
            out[c] = (x[c] - mu) / max(sd, 1e-6)
        return out
    mean = np.asarray(spec.mean[: x.shape[0]], np.float32).reshape(-1, 1, 1, 1)
    std = np.asarray(spec.std[: x.shape[0]], np.float32).reshape(-1, 1, 1, 1)
    return (x * spec.scale - mean) / std


def load_volumes(pairs: Sequence[VolumePair], spec: Preprocessing,
                 progress: Callable[[int], None] | None = None) -> VolumeSet:
    """Read and prepare volume pairs (images normalized, masks > 0 as bool)."""
    from medinfer.io import read_image

    names, images, masks = [], [], []
    for pair in pairs:
        image = read_image(pair.image)
        mask = read_image(pair.mask).array[0] > 0
        if mask.shape != image.spatial_shape:
            raise InputError(pair.mask, f"mask shape {mask.shape} differs from image {image.spatial_shape}")
        names.append(pair.name)
        images.append(prepare_volume(image.array, spec))
        masks.append(mask)
        if progress:
            progress(1)
    return VolumeSet(names, images, masks)


def write_volume_subset(pairs: Sequence[VolumePair], dest: str | Path) -> Path:
    """Make ``dest`` a volume folder of ``pairs`` (files symlinked)."""
    dest = Path(dest)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for p in pairs:
        for sub, src in (("images", p.image), ("masks", p.mask)):
            link = dest / sub / src.name
            if not link.exists():
                os.symlink(src.resolve(), link)
    return dest
