"""Image/mask folder pairs in the Kvasir-SEG layout, loaded into memory once.

Layout: ``DIR/images/<name>.jpg`` and ``DIR/masks/<name>.jpg`` (masks greyscale,
thresholded at ``> 127`` since JPEG noise blurs their edges).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medinfer.data.preprocess import Preprocessing, prepare_image, resize_mask
from medinfer.errors import InputError
from medinfer.io import list_images, read_image, read_mask

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Pair:
    """One image file and its mask file, matched by stem."""

    name: str
    image: Path
    mask: Path


@dataclass
class PairArrays:
    """Preprocessed pairs held in memory.

    Attributes:
        names: file stems, length N.
        images: float32 (N, C, H, W), normalized network input.
        masks: bool (N, H, W) ground truth at network resolution.
    """

    names: list[str]
    images: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: list[int] | np.ndarray) -> PairArrays:
        idx = list(index)
        return PairArrays([self.names[i] for i in idx], self.images[idx], self.masks[idx])


def find_pairs(root: str | Path) -> list[Pair]:
    """Match ``root/images/*`` with ``root/masks/*`` by file stem.

    Raises:
        InputError: the folder lacks ``images/`` or ``masks/``, or an image has no mask.
    """
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise InputError(d, "missing folder; expected the Kvasir layout DIR/images, DIR/masks")
    masks = {p.stem: p for p in list_images(mask_dir, IMAGE_SUFFIXES)}
    pairs = []
    for img in list_images(img_dir, IMAGE_SUFFIXES):
        if img.stem not in masks:
            raise InputError(img, f"no mask with the same name in {mask_dir}")
        pairs.append(Pair(img.stem, img, masks[img.stem]))
    return pairs


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/validation split: shuffle names with ``seed``, cut at the fraction.

    The split depends only on the sorted names and the seed, never on file-system order.
    """
    ordered = sorted(pairs, key=lambda p: p.name)
    random.Random(seed).shuffle(ordered)
    n_val = int(round(len(ordered) * val_fraction))
    return ordered[n_val:], ordered[:n_val]


def load_pairs(pairs: list[Pair], spec: Preprocessing, progress: object | None = None) -> PairArrays:
    """Read, resize and normalize pairs into memory (``progress``: optional callable(advance))."""
    images, masks = [], []
    for pair in pairs:
        im = read_image(pair.image)
        images.append(prepare_image(im.array, spec))
        masks.append(resize_mask(read_mask(pair.mask, threshold=spec.mask_threshold), spec.size))
        if callable(progress):
            progress(1)
    if not pairs:
        raise InputError(Path("."), "no image/mask pairs to load")
    return PairArrays([p.name for p in pairs], np.stack(images), np.stack(masks))


def materialize_pairs(pairs: list[Pair], out_dir: str | Path) -> Path:
    """Lay ``pairs`` out as a Kvasir-layout folder of symbolic links (no pixel copies).

    Lets a split (e.g. the training run's own validation part) be passed to any command
    that takes a data folder.
    """
    out = Path(out_dir)
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in pairs:
        for src, sub in ((p.image, "images"), (p.mask, "masks")):
            link = out / sub / src.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(src.resolve())
    return out


def load_calibration_images(root: str | Path, spec: Preprocessing, limit: int | None = None) -> np.ndarray:
    """Preprocessed images (N, C, H, W) for calibration from ``root/images`` or ``root`` itself."""
    root = Path(root)
    folder = root / "images" if (root / "images").is_dir() else root
    files = list_images(folder, IMAGE_SUFFIXES)[:limit] if limit else list_images(folder, IMAGE_SUFFIXES)
    return np.stack([prepare_image(read_image(f).array, spec)
                     for f in files])
