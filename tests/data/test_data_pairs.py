"""Kvasir-layout pairs: matching, splitting, loading, materializing; preprocessing helpers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medinfer.data.pairs import (
    Pair,
    find_pairs,
    load_calibration_images,
    load_pairs,
    materialize_pairs,
    split_pairs,
)
from medinfer.data.preprocess import normalize, prepare_batch, to_channels
from medinfer.data.spec import Preprocessing
from medinfer.data.synthetic import box_mask, write_kvasir_pairs
from medinfer.errors import InputError

PP32 = Preprocessing(size=(32, 32))


# --- find_pairs -------------------------------------------------------------------------------

def test_find_pairs_matches_by_stem(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["b", "a", "c"])
    # a JPEG image whose mask is a PNG still matches by stem
    write_kvasir_pairs(tmp_path / "ds", ["d"], image_suffix=".jpg")
    (tmp_path / "ds" / "masks" / "extra_mask_only.png").write_bytes(
        (tmp_path / "ds" / "masks" / "a.png").read_bytes())
    pairs = find_pairs(root)
    assert [p.name for p in pairs] == ["a", "b", "c", "d"]
    for p in pairs:
        assert p.image.parent == root / "images" and p.mask.parent == root / "masks"
        assert p.image.stem == p.mask.stem == p.name
    assert pairs[3].image.suffix == ".jpg" and pairs[3].mask.suffix == ".png"


def test_find_pairs_missing_masks_folder(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a"])
    for f in (root / "masks").iterdir():
        f.unlink()
    (root / "masks").rmdir()
    with pytest.raises(InputError, match="missing folder") as info:
        find_pairs(root)
    assert info.value.path == root / "masks"


def test_find_pairs_missing_images_folder(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError) as info:
        find_pairs(tmp_path)
    assert info.value.path == tmp_path / "images"


def test_find_pairs_image_without_mask_names_file(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a", "b"])
    Image.new("RGB", (8, 8)).save(root / "images" / "orphan_17.png")
    with pytest.raises(InputError, match="orphan_17.png") as info:
        find_pairs(root)
    assert info.value.path == root / "images" / "orphan_17.png"


# --- split_pairs ------------------------------------------------------------------------------

def _fake_pairs(n: int) -> list[Pair]:
    return [Pair(f"p{i:02d}", Path(f"images/p{i:02d}.png"), Path(f"masks/p{i:02d}.png")) for i in range(n)]


def test_split_pairs_deterministic_disjoint_complete() -> None:
    pairs = _fake_pairs(20)
    train, val = split_pairs(pairs, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16
    assert {p.name for p in train}.isdisjoint({p.name for p in val})
    assert {p.name for p in train} | {p.name for p in val} == {p.name for p in pairs}
    # same seed, any input order -> same split
    shuffled = pairs[:]
    random.Random(123).shuffle(shuffled)
    assert split_pairs(shuffled, 0.2, seed=0) == (train, val)
    assert split_pairs(pairs, 0.2, seed=0) == (train, val)
    # another seed -> another split
    train1, val1 = split_pairs(pairs, 0.2, seed=1)
    assert {p.name for p in val1} != {p.name for p in val}
    assert len(val1) == 4


@pytest.mark.parametrize(("n", "fraction", "n_val"), [(10, 0.0, 0), (10, 1.0, 10), (12, 0.25, 3), (7, 0.5, 4)])
def test_split_pairs_sizes(n: int, fraction: float, n_val: int) -> None:
    train, val = split_pairs(_fake_pairs(n), fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val


# --- load_pairs / load_calibration_images / materialize_pairs ---------------------------------

def test_load_pairs_shapes_dtypes_and_values(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a", "b", "c"])
    pairs = find_pairs(root)
    calls: list[int] = []
    data = load_pairs(pairs, PP32, progress=calls.append)
    assert len(data) == 3 and data.names == ["a", "b", "c"]
    assert data.images.shape == (3, 3, 32, 32) and data.images.dtype == np.float32
    assert data.masks.shape == (3, 32, 32) and data.masks.dtype == np.bool_
    assert calls == [1, 1, 1]
    # same size -> no resampling: pixels are raw / 255 and the mask is exactly the drawn box
    raw = np.asarray(Image.open(root / "images" / "b.png")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(data.images[1], raw, atol=1e-6)
    np.testing.assert_array_equal(data.masks[1], box_mask(1, (32, 32)) > 0)
    sub = data.subset([2, 0])
    assert sub.names == ["c", "a"]
    np.testing.assert_array_equal(sub.masks[1], data.masks[0])


def test_load_pairs_resizes_and_keeps_mask_binary(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a", "b"], size=(48, 40))
    data = load_pairs(find_pairs(root), PP32)
    assert data.images.shape == (2, 3, 32, 32)
    assert data.masks.dtype == np.bool_
    frac = data.masks.mean(axis=(1, 2))
    want = np.array([(box_mask(i, (48, 40)) > 0).mean() for i in range(2)])
    np.testing.assert_allclose(frac, want, atol=0.05)  # nearest resize keeps the box's area


def test_load_pairs_empty_raises() -> None:
    with pytest.raises(InputError, match="no image/mask pairs"):
        load_pairs([], PP32)


def test_load_pairs_applies_mean_std(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a"])
    spec = Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = load_pairs(find_pairs(root), PP32).images
    scaled = load_pairs(find_pairs(root), spec).images
    np.testing.assert_allclose(scaled, (plain - 0.5) / 0.25, atol=1e-5)


def test_materialize_pairs_roundtrip(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a", "b", "c", "d"])
    pairs = find_pairs(root)
    out = materialize_pairs(pairs[1:3], tmp_path / "split")
    out = materialize_pairs(pairs[1:3], tmp_path / "split")  # twice: replaces its own links
    again = find_pairs(out)
    assert [p.name for p in again] == ["b", "c"]
    assert all(p.image.is_symlink() and p.image.resolve() == root.resolve() / "images" / p.image.name
               for p in again)
    np.testing.assert_array_equal(load_pairs(again, PP32).masks, load_pairs(pairs[1:3], PP32).masks)


def test_load_calibration_images_layout_and_limit(tmp_path: Path) -> None:
    root = write_kvasir_pairs(tmp_path / "ds", ["a", "b", "c"])
    calib = load_calibration_images(root, PP32)
    assert calib.shape == (3, 3, 32, 32) and calib.dtype == np.float32
    np.testing.assert_allclose(calib, load_pairs(find_pairs(root), PP32).images, atol=1e-6)
    assert load_calibration_images(root, PP32, limit=2).shape[0] == 2
    plain = load_calibration_images(root / "images", PP32)  # a plain folder of images works too
    np.testing.assert_array_equal(plain, calib)


def test_real_kvasir_pairs(tmp_path: Path, shared_path) -> None:
    kvasir = shared_path("kvasir-seg")
    names = ["train_0", "train_1", "train_10"]
    pairs = [Pair(n, kvasir / "images" / f"{n}.jpg", kvasir / "masks" / f"{n}.jpg") for n in names]
    out = materialize_pairs(pairs, tmp_path / "real")
    data = load_pairs(find_pairs(out), PP32)
    assert data.images.shape == (3, 3, 32, 32)
    assert np.isfinite(data.images).all() and 0.0 <= data.images.min() and data.images.max() <= 1.0
    frac = data.masks.mean(axis=(1, 2))
    assert ((frac > 0) & (frac < 1)).all()  # every polyp mask has foreground and background


# --- preprocessing helpers ---------------------------------------------------------------------

def test_to_channels_and_prepare_batch() -> None:
    grey = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    rgb = to_channels(grey, 3)
    assert rgb.shape == (3, 3, 4) and (rgb == grey).all()
    rgba = np.zeros((4, 3, 4), np.float32)
    assert to_channels(rgba, 3).shape == (3, 3, 4)
    batch = prepare_batch([np.full((3, 40, 20), 255, np.float32), np.zeros((1, 8, 8), np.float32)], PP32)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(batch[1], 0.0, atol=1e-6)
    assert prepare_batch([], PP32).shape == (0, 3, 32, 32)


def test_normalize_batched_and_single() -> None:
    spec = Preprocessing(scale=1.0, mean=(1.0, 2.0, 3.0), std=(1.0, 2.0, 4.0))
    x = np.ones((2, 3, 2, 2), np.float32) * 5
    out = normalize(x, spec)
    np.testing.assert_allclose(out[:, :, 0, 0], [[4.0, 1.5, 0.5]] * 2)
    np.testing.assert_allclose(normalize(x[0], spec), out[0])
