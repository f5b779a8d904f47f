"""Few-shot synthesis (S9): the product is found, moved onto new backgrounds, and the
random changes stay within their settings and follow the seed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medinfer.data.synthesis import (
    SynthesisConfig,
    crop_background,
    object_mask,
    synthesize,
    texture_background,
)

PILLS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pill-images-nlm" / "images"


def _photo() -> np.ndarray:
    """A red box with a white label on a near-white background, 80 x 120."""
    img = np.full((80, 120, 3), 245, np.uint8)
    img[20:60, 30:90] = (200, 30, 40)
    img[35:45, 45:75] = 255  # a label inside the box: a hole the mask must fill
    return img


def test_object_mask_finds_the_product_and_fills_its_label() -> None:
    mask = object_mask(_photo())
    assert mask[20:60, 30:90].all()  # the white label inside counts as product
    assert not mask[:15].any() and not mask[:, :25].any()
    assert object_mask(np.full((20, 20, 3), 200, np.uint8)).all()  # nothing found: the whole photo


def test_synthesized_image_puts_the_product_on_the_new_background() -> None:
    cfg = SynthesisConfig(size=64, occlusion_prob=0.0, blur_prob=0.0, brightness=0.0, contrast=0.0, colour=0.0,
                          rotation=0.0, perspective=0.0, scale=(0.5, 0.5))
    background = np.zeros((64, 64, 3), np.uint8)
    out = synthesize(_photo(), object_mask(_photo()), background, np.random.default_rng(0), cfg)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    red = (out[..., 0] > 150) & (out[..., 1] < 80)
    assert 0.08 < red.mean() < 0.25  # a 32-pixel-wide box minus its label, on a 64 x 64 image
    assert (out.sum(axis=-1) == 0).mean() > 0.5  # the old white background is gone


def test_the_seed_decides_every_change() -> None:
    photo, bg = _photo(), texture_background(64, np.random.default_rng(1))
    a = synthesize(photo, object_mask(photo), bg, np.random.default_rng(7))
    b = synthesize(photo, object_mask(photo), bg, np.random.default_rng(7))
    c = synthesize(photo, object_mask(photo), bg, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_occlusion_covers_part_of_the_product_never_all() -> None:
    photo = _photo()
    cfg = SynthesisConfig(occlusion_prob=1.0, occlusion_max=0.3, blur_prob=0.0, brightness=0.0, contrast=0.0,
                          colour=0.0, rotation=0.0, perspective=0.0, scale=(0.6, 0.6))
    clear = replace(cfg, occlusion_prob=0.0)
    bg = np.zeros((64, 64, 3), np.uint8)
    for seed in range(10):
        seen = synthesize(photo, object_mask(photo), bg, np.random.default_rng(seed), cfg)
        whole = synthesize(photo, object_mask(photo), bg, np.random.default_rng(seed), clear)
        red_seen = ((seen[..., 0] > 150) & (seen[..., 1] < 80)).sum()
        red_whole = ((whole[..., 0] > 150) & (whole[..., 1] < 80)).sum()
        assert 0.3 * red_whole < red_seen <= red_whole


def test_backgrounds_have_the_size_asked_and_vary() -> None:
    rng = np.random.default_rng(3)
    a, b = texture_background(48, rng), texture_background(48, rng)
    assert a.shape == (48, 48, 3) and not np.array_equal(a, b) and a.std() > 1
    crop = crop_background(_photo(), 32, rng)
    assert crop.shape == (32, 32, 3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        synthesize(_photo(), np.zeros((80, 120), bool), np.zeros((64, 64, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="background"):
        synthesize(_photo(), object_mask(_photo()), np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0))


def test_a_real_pill_photo_is_cut_out() -> None:
    photos = sorted(PILLS.glob("*.jpg"))[:3] if PILLS.is_dir() else []
    if not photos:
        pytest.skip("pill-images-nlm not here")
    for path in photos:
        photo = np.asarray(Image.open(path).convert("RGB"))
        mask = object_mask(photo)
        assert 0.01 < mask.mean() < 0.9, path.name  # a pill, not the whole photo nor nothing
        out = synthesize(photo, mask, texture_background(64, np.random.default_rng(0)), np.random.default_rng(0))
        assert out.shape == (64, 64, 3)
