"""Overlay rendering and writer error handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medinfer.errors import InputError
from medinfer.io import overlay, write_image_nifti, write_mask_nifti, write_mask_png
from medinfer.io import write_overlay_png
from medinfer.io.image import Image


def _scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((3, 20, 24), 100, dtype=np.uint8)
    mask = np.zeros((20, 24), dtype=bool)
    mask[5:15, 6:18] = True
    return image, mask


def test_overlay_shape_dtype_and_colour() -> None:
    image, mask = _scene()
    out = overlay(image, mask, color=(255, 0, 0), alpha=0.5, contour=True)
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~mask], 100)  # background unchanged
    inner = out[10, 12]  # interior pixel: blended
    np.testing.assert_array_equal(inner, [178, 50, 50])
    np.testing.assert_array_equal(out[5, 10], [255, 0, 0])  # boundary pixel: full colour
    np.testing.assert_array_equal(out[14, 17], [255, 0, 0])


def test_overlay_without_contour_and_zero_alpha() -> None:
    image, mask = _scene()
    out = overlay(image, mask, alpha=0.0, contour=False)
    np.testing.assert_array_equal(out, np.moveaxis(image, 0, -1))
    only_blend = overlay(image, mask, color=(0, 255, 0), alpha=1.0, contour=False)
    np.testing.assert_array_equal(only_blend[mask], np.tile([0, 255, 0], (mask.sum(), 1)))


@pytest.mark.parametrize(
    "image",
    [
        np.linspace(0.0, 1.0, 20 * 24).reshape(20, 24),  # (H, W) float
        np.arange(20 * 24, dtype=np.uint16).reshape(1, 20, 24) * 50,  # (1, H, W) uint16
    ],
)
def test_overlay_greyscale_inputs(image: np.ndarray) -> None:
    _, mask = _scene()
    out = overlay(image, mask)
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    bg = out[~mask]
    np.testing.assert_array_equal(bg[:, 0], bg[:, 1])  # grey stays grey off the mask
    assert out[..., 0].max() == 255 and bg.min() == 0  # min-max scaled to 0..255
    assert np.all(out[mask][:, 0] >= out[mask][:, 1])  # red dominates on the mask


def test_overlay_argument_errors() -> None:
    image, mask = _scene()
    with pytest.raises(ValueError, match="does not match"):
        overlay(image, mask[:10])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, mask, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        overlay(np.zeros((2, 20, 24)), mask)


def test_write_overlay_png_creates_parents(tmp_path: Path) -> None:
    image, mask = _scene()
    out = write_overlay_png(image, mask, tmp_path / "a" / "b" / "o.png", alpha=0.3)
    assert out.exists()
    np.testing.assert_array_equal(np.asarray(PILImage.open(out)), overlay(image, mask, alpha=0.3))


def test_unwritable_targets_raise_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("I am a file, not a folder")
    _, mask = _scene()
    target = blocker / "mask.png"
    with pytest.raises(InputError, match="mask.png"):
        write_mask_png(mask, target)
    with pytest.raises(InputError, match="mask.nii.gz"):
        write_mask_nifti(mask[None], blocker / "mask.nii.gz")
    img = Image(np.zeros((1, 2, 3, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(InputError, match="img.nii"):
        write_image_nifti(img, blocker / "img.nii")
    (tmp_path / "adir.png").mkdir()
    with pytest.raises(InputError, match="adir.png"):
        write_overlay_png(*_scene(), tmp_path / "adir.png")
