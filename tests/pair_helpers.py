"""Tiny Kvasir-layout pairs (a bright disk and its mask) for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def disk_image(rng: np.random.Generator, side: int, centre: tuple[int, int], r: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` x ``side`` RGB noise image with a bright disk, and the disk's mask."""
    yy, xx = np.mgrid[:side, :side]
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r
    img = rng.integers(0, 80, (side, side, 3)).astype(np.uint8)
    img[mask] = np.clip(img[mask].astype(int) + 150, 0, 255).astype(np.uint8)
    return img, mask


def write_disk_pairs(root: Path, n: int, seed: int) -> Path:
    """``n`` Kvasir-layout 32x32 pairs (a bright disk, its mask) in ``root``; 80 % train under
    the default split, so 20 pairs give 16 training images (global batches of 8 stay full)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = disk_image(rng, 32, (8 + i % 14, 22 - i // 3), 5 + i % 3)
        Image.fromarray(img, "RGB").save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8), "L").save(root / "masks" / f"c{i:02d}.png")
    return root
