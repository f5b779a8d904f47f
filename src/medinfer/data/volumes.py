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
from medinfer.io import read_image

VOLUME_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class VolumePair:
    name: str
    image: Path
    mask: Path


@dataclass
class VolumeSet:
    """Prepared volumes held in memory: ``images[i]`` float32 (C, X, Y, Z), ``masks[i]``
    uint8 label maps (X, Y, Z): 0 background, 1..K the segments (binary masks are 0/1)."""

    names: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int]) -> VolumeSet:
        return VolumeSet([self.names[i] for i in index], [self.images[i] for i in index],
                         [self.masks[i] for i in index])


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
    """Read and prepare volume pairs (images normalized; masks as uint8 label maps, a
    float mask rounded: some data sets store labels 0/1/2 as float32).

    Raises:
        InputError: a mask of another shape than its image, or with values that are not
            labels 0..255.
    """
    names, images, masks = [], [], []
    for pair in pairs:
        image = read_image(pair.image)
        raw = read_image(pair.mask).array[0]
        mask = np.rint(raw).astype(np.uint8)
        if raw.size and (raw.min() < 0 or raw.max() > 255 or not np.allclose(raw, mask)):
            raise InputError(pair.mask, "mask values are not integer labels 0..255")
        if mask.shape != image.spatial_shape:
            raise InputError(pair.mask, f"mask shape {mask.shape} differs from image {image.spatial_shape}")
        names.append(pair.name)
        images.append(prepare_volume(image.array, spec))
        masks.append(mask)
        if progress:
            progress(1)
    return VolumeSet(names, images, masks)


def pad_to(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad a (C, *S) array at the far end of each spatial axis up to ``size``."""
    pad = [(0, 0)] + [(0, max(int(s) - d, 0)) for d, s in zip(x.shape[1:], size)]
    return np.pad(x, pad) if any(p[1] for p in pad) else x


def window_at(image: np.ndarray, centre: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The (C, *size) window of ``image`` centred on ``centre`` (clipped to the volume,
    zero-padded where the volume is smaller), and its spatial slices."""
    shape, size_ = np.array(image.shape[1:]), np.array(size)
    lo = np.clip(np.asarray(centre) - size_ // 2, 0, np.maximum(shape - size_, 0))
    sl = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(lo, size_))
    return pad_to(image[(slice(None), *sl)], size), sl


def sample_windows(data: VolumeSet, size: tuple[int, ...], n: int, fg_prob: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows (image (n, C, *size), labels (n, 1, *size) as float32) from
    random volumes.

    With probability ``fg_prob`` a window is centred on a random foreground voxel (tumours
    are a small fraction of a brain), else anywhere; windows are clipped to the volume.
    """
    xs, ys = [], []
    for _ in range(n):
        v = int(rng.integers(len(data)))
        image, mask = data.images[v], data.masks[v]
        if rng.random() < fg_prob and mask.any():
            fg = np.argwhere(mask)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = np.array([rng.integers(s) for s in mask.shape])
        x, sl = window_at(image, centre, size)
        xs.append(x)
        ys.append(pad_to(mask[sl][None].astype(np.float32), size))
    return np.stack(xs), np.stack(ys)


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
