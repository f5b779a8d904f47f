"""Tests of the Image dataclass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medinfer.io import Image


def _volume() -> Image:
    return Image(
        array=np.zeros((2, 4, 5, 6), dtype=np.float32),
        spacing=(0.5, 1, 2.5),
        origin=(1, 2, 3),
        direction=np.eye(3),
        source="x.nii.gz",
        meta={"format": "nifti"},
    )


def test_properties_and_normalised_fields() -> None:
    img = _volume()
    assert img.spatial_shape == (4, 5, 6)
    assert img.ndim_spatial == 3
    assert img.num_channels == 2
    assert img.spacing == (0.5, 1.0, 2.5) and all(isinstance(s, float) for s in img.spacing)
    assert img.origin == (1.0, 2.0, 3.0)
    assert isinstance(img.source, Path)
    assert img.direction.dtype == np.float64


def test_2d_image_properties() -> None:
    img = Image(np.zeros((3, 7, 9), np.uint8), (1.0, 1.0), (0.0, 0.0), np.eye(2))
    assert img.spatial_shape == (7, 9)
    assert img.ndim_spatial == 2
    assert img.num_channels == 3
    assert img.source is None and img.meta == {}


def test_affine_maps_index_to_world() -> None:
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img = Image(np.zeros((1, 2, 3, 4)), (2.0, 3.0, 4.0), (10.0, 20.0, 30.0), rot)
    idx = np.array([1.0, 2.0, 3.0, 1.0])
    world = img.affine @ idx
    expected = np.array([10.0, 20.0, 30.0]) + rot @ (np.array([2.0, 3.0, 4.0]) * idx[:3])
    np.testing.assert_allclose(world[:3], expected)


def test_frozen_fields() -> None:
    img = _volume()
    with pytest.raises(dataclasses.FrozenInstanceError):
        img.spacing = (1.0, 1.0, 1.0)  # type: ignore[misc]
    moved = dataclasses.replace(img, origin=(0.0, 0.0, 0.0))
    assert moved.origin == (0.0, 0.0, 0.0) and img.origin == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    ("shape", "spacing", "origin", "direction", "match"),
    [
        ((4, 5), (1.0, 1.0), (0.0, 0.0), np.eye(2), "channel-first"),
        ((1, 4, 5), (1.0,), (0.0, 0.0), np.eye(2), "spacing"),
        ((1, 4, 5), (1.0, 1.0), (0.0,), np.eye(2), "origin"),
        ((1, 4, 5), (1.0, 1.0), (0.0, 0.0), np.eye(3), "direction"),
        ((1, 4, 5), (1.0, 0.0), (0.0, 0.0), np.eye(2), "spacing"),
        ((1, 4, 5), (1.0, np.nan), (0.0, 0.0), np.eye(2), "spacing"),
    ],
)
def test_validation(shape, spacing, origin, direction, match) -> None:
    with pytest.raises(ValueError, match=match):
        Image(np.zeros(shape), spacing, origin, direction)


def test_import_is_light() -> None:
    """``import medinfer.io`` must not pull in torch (nor nibabel/pydicom before first use)."""
    import subprocess
    import sys

    code = (
        "import sys, medinfer.io; "
        "print(sorted(m for m in ('torch', 'nibabel', 'pydicom', 'monai') if m in sys.modules))"
    )
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(src), "PATH": ""},
    )
    assert out.stdout.strip() == "[]"
