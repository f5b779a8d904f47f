"""Tiny synthetic data folders for every training recipe (a few seconds of CPU each)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pair_helpers import disk_image

CLASSES = ("Effusion", "Mass")
VOL_SHAPE = (20, 18, 9)


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 Kvasir-layout pairs: 32x32 RGB images with a bright disk and its mask."""
    root = tmp_path_factory.mktemp("kvasir")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        img, mask = disk_image(rng, 32, (8 + i, 20 - i // 2), 5 + i % 3)
        Image.fromarray(img, "RGB").save(root / "images" / f"c{i:02d}.png")
        Image.fromarray((mask * 255).astype(np.uint8), "L").save(root / "masks" / f"c{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 labeled 24x24 images of 20 patients; each class alternates so every part has both."""
    root = tmp_path_factory.mktemp("cxr")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    lines = ["image,abnormal,findings,patient_id"]
    for i in range(20):
        found = [c for k, c in enumerate(CLASSES) if (i + k) % 2 == 0]
        img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        if found:
            img[4:12, 4:12] = 255
        Image.fromarray(img, "RGB").save(root / "images" / f"{i}.png")
        lines.append(f"{i}.png,{int(bool(found))},{'|'.join(found) or 'No Finding'},{i}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def vol_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three NIfTI volumes with a bright box and its mask; ``held-*`` is the validation one."""
    root = tmp_path_factory.mktemp("vols")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    rng = np.random.default_rng(2)
    for i, name in enumerate(("train-a", "train-b", "held-a")):
        img = rng.normal(100, 10, VOL_SHAPE).astype(np.int16)
        mask = np.zeros(VOL_SHAPE, np.uint8)
        mask[4 + i:12, 5:13, 2:7] = 1
        img[mask > 0] += 60
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "masks" / f"{name}.nii.gz")
    return root


@pytest.fixture(scope="session")
def labels_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four volumes with two labels (a box split into label 1 and label 2, as the
    hippocampus set's anterior/posterior), masks stored as float32 like two of its cases;
    ``held-*`` is validation."""
    root = tmp_path_factory.mktemp("labels")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    rng = np.random.default_rng(3)
    for i, name in enumerate(("train-a", "train-b", "train-c", "held-a")):
        img = rng.normal(100, 10, VOL_SHAPE).astype(np.float32)
        mask = np.zeros(VOL_SHAPE, np.float32)
        mask[4 + i % 2:10, 5:13, 2:7] = 1
        mask[10:15, 5:13, 2:7] = 2
        img[mask == 1] += 60
        img[mask == 2] += 120
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), root / "masks" / f"{name}.nii.gz")
    return root
