"""PNG/JPEG reading, mask thresholding and folder listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from medinfer.errors import InputError
from medinfer.io import list_images, read_image, read_mask, write_mask_png


def _rgb(h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_rgb_roundtrip_is_exact(tmp_path: Path) -> None:
    arr = _rgb()
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.array.shape == (3, 12, 16)
    assert img.num_channels == 3 and img.spatial_shape == (12, 16)
    np.testing.assert_array_equal(img.array, np.moveaxis(arr, -1, 0))
    assert img.spacing == (1.0, 1.0) and img.origin == (0.0, 0.0)
    np.testing.assert_array_equal(img.direction, np.eye(2))
    assert img.meta["format"] == "png" and img.source == tmp_path / "a.png"


def test_png_greyscale_has_one_channel(tmp_path: Path) -> None:
    arr = _rgb()[..., 0]
    PILImage.fromarray(arr, mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.array.shape == (1, 12, 16) and img.array.dtype == np.uint8
    np.testing.assert_array_equal(img.array[0], arr)


def test_png_16bit_greyscale_keeps_range(tmp_path: Path) -> None:
    arr = np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300
    PILImage.fromarray(arr).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.num_channels == 1
    np.testing.assert_array_equal(img.array[0].astype(np.int64), arr.astype(np.int64))


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_rgba_and_palette_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = PILImage.fromarray(_rgb())
    src = rgb.convert("RGBA") if mode == "RGBA" else rgb.convert("P")
    src.save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    assert img.array.shape == (3, 12, 16)
    expected = np.moveaxis(np.asarray(src.convert("RGB")), -1, 0)
    np.testing.assert_array_equal(img.array, expected)


def test_jpeg_rgb_and_grey(tmp_path: Path) -> None:
    smooth = np.stack(np.meshgrid(np.arange(32) * 8, np.arange(24) * 10, indexing="xy"), -1)
    arr = np.concatenate([smooth, smooth[..., :1]], -1).astype(np.uint8)
    PILImage.fromarray(arr).save(tmp_path / "c.jpg", quality=95)
    PILImage.fromarray(arr[..., 0]).save(tmp_path / "g.jpeg", quality=95)
    colour, grey = read_image(tmp_path / "c.jpg"), read_image(tmp_path / "g.jpeg")
    assert colour.array.shape == (3, 24, 32) and grey.array.shape == (1, 24, 32)
    assert colour.meta["format"] == "jpeg"
    diff = np.abs(colour.array.astype(int) - np.moveaxis(arr, -1, 0).astype(int))
    assert diff.mean() < 3.0


def test_file_without_suffix_is_sniffed(tmp_path: Path) -> None:
    PILImage.fromarray(_rgb()).save(tmp_path / "noext", format="PNG")
    assert read_image(tmp_path / "noext").array.shape == (3, 12, 16)


def test_read_mask_thresholds_noisy_jpeg(tmp_path: Path) -> None:
    truth = np.zeros((64, 64), dtype=bool)
    truth[16:48, 20:44] = True
    PILImage.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "m.jpg", quality=30)
    raw = np.asarray(PILImage.open(tmp_path / "m.jpg"))
    assert np.any((raw > 0) & (raw < 255))  # the JPEG really is noisy
    assert not np.array_equal(raw > 0, truth)  # naive > 0 would be wrong
    mask = read_mask(tmp_path / "m.jpg")
    assert mask.dtype == np.bool_ and mask.shape == (64, 64)
    assert (mask != truth).mean() < 0.01
    assert read_mask(tmp_path / "m.jpg", threshold=254).sum() < mask.sum()


def test_read_mask_png_label_map_and_rgb(tmp_path: Path) -> None:
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:5, 3:6] = 1
    PILImage.fromarray(labels).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "l.png"), labels > 0)
    rgb = np.repeat((labels * 255)[..., None], 3, axis=-1)
    PILImage.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.png"), labels > 0)


def test_write_mask_png_roundtrip(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[3:7, 2:9] = True
    out = write_mask_png(mask, tmp_path / "sub" / "m.png")
    raw = np.asarray(PILImage.open(out))
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(read_mask(out), mask)


def test_real_kvasir_pair(shared_path) -> None:
    image = read_image(shared_path("kvasir-seg/images/train_1.jpg"))
    mask_path = shared_path("kvasir-seg/masks/train_1.jpg")
    mask = read_mask(mask_path)
    assert image.array.shape[0] == 3 and image.array.dtype == np.uint8
    assert mask.shape == image.spatial_shape and mask.dtype == np.bool_
    assert 0.005 < mask.mean() < 0.9
    raw = np.asarray(PILImage.open(mask_path).convert("L"))
    np.testing.assert_array_equal(mask, raw > 127)


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "c.nii.gz", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.nii.gz"]
    assert [p.name for p in list_images(tmp_path, suffixes=(".png",))] == ["b.png"]
    names = [p.name for p in list_images(tmp_path, suffixes=(".png",), recursive=True)]
    assert names == ["b.png", "d.png"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        list_images(tmp_path / "empty")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(InputError, match="f.png"):
        list_images(tmp_path / "f.png")
