"""The paper's augmentation: masks stay binary and move with their images."""

from __future__ import annotations

import numpy as np
import torch

from medinfer.data.augment import augment_batch, paper_augmentation


def _sample(seed: int = 0, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric mask (off-centre box) and an image whose channel 0 is that mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    mask[3:12, 2:13] = True
    image = rng.random((3, h, w)).astype(np.float32)
    image[0] = mask
    return image, mask


def test_flip_only_moves_image_and_mask_together() -> None:
    image, mask = _sample()
    aug = paper_augmentation(prob=1.0, max_degrees=0.0, seed=0)
    out = aug({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask[None].astype(np.float32))})
    got_img, got_mask = np.asarray(out["image"]), np.asarray(out["mask"])
    assert got_mask.shape == (1, 24, 32)
    # horizontal flip = last (width) axis
    np.testing.assert_array_equal(got_mask[0], mask[:, ::-1])
    np.testing.assert_allclose(got_img, image[:, :, ::-1], atol=1e-5)


def test_probability_zero_is_identity() -> None:
    image, mask = _sample()
    x, y = augment_batch(paper_augmentation(prob=0.0, seed=0), image[None], mask[None])
    np.testing.assert_allclose(x.numpy()[0], image, atol=1e-6)
    np.testing.assert_array_equal(y.numpy()[0, 0], mask)


def test_rotation_keeps_mask_binary_and_aligned() -> None:
    images, masks = zip(*(_sample(s) for s in range(6)), strict=True)
    aug = paper_augmentation(prob=1.0, max_degrees=30.0, seed=3)
    x, y = augment_batch(aug, np.stack(images), np.stack(masks))
    assert x.shape == (6, 3, 24, 32) and y.shape == (6, 1, 24, 32)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}  # nearest interpolation: still binary
    changed = 0
    for i in range(6):
        m = y[i, 0].numpy() > 0.5
        # channel 0 of the image (bilinear) was the mask: it must land where the mask (nearest) landed
        agree = ((x[i, 0].numpy() > 0.5) == m).mean()
        assert agree > 0.95, f"sample {i}: image and mask disagree on {1 - agree:.1%} of pixels"
        changed += int(not np.array_equal(m, masks[i]))
    assert changed >= 5  # the transform really rotated (or flipped) the samples


def test_same_seed_same_augmentation_other_seed_differs() -> None:
    images, masks = zip(*(_sample(s) for s in range(4)), strict=True)
    images, masks = np.stack(images), np.stack(masks)
    a = augment_batch(paper_augmentation(seed=7), images, masks)
    b = augment_batch(paper_augmentation(seed=7), images, masks)
    c = augment_batch(paper_augmentation(seed=8), images, masks)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_strong_augmentation_keeps_masks_binary_and_aligned() -> None:
    from medinfer.data.augment import strong_augmentation

    images, masks = zip(*(_sample(s) for s in range(8)), strict=True)
    aug = strong_augmentation((24, 32), prob=1.0, seed=3)
    x, y = augment_batch(aug, np.stack(images), np.stack(masks))
    assert x.shape == (8, 3, 24, 32) and y.shape == (8, 1, 24, 32)
    assert set(np.unique(y.numpy())) <= {0.0, 1.0}
    # channel 0 of each image was its mask: geometry moved both alike, colour changes only
    # rescale it, so where the mask is 1 the image is brighter than where it is 0
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        inside, outside = xi[0][yi[0] > 0.5], xi[0][yi[0] < 0.5]
        if inside.size > 10 and outside.size > 10:
            assert np.median(inside) > np.median(outside) + 0.3
    assert not np.allclose(x.numpy()[:, 1:], np.stack(images)[:, 1:])  # something changed


def test_strong_augmentation_is_seeded() -> None:
    from medinfer.data.augment import strong_augmentation

    image, mask = _sample()
    a = augment_batch(strong_augmentation((24, 32), seed=5), image[None], mask[None])[0]
    b = augment_batch(strong_augmentation((24, 32), seed=5), image[None], mask[None])[0]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
