"""Per-image Dice/IoU on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.metrics import dice_iou_per_image


def _masks(n: int = 1, h: int = 4, w: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, h, w), bool), np.zeros((n, h, w), bool)


def test_identical_masks_score_one() -> None:
    p, t = _masks()
    p[0, 1:3, 1:3] = t[0, 1:3, 1:3] = True
    dice, iou = dice_iou_per_image(p, t)
    np.testing.assert_allclose(dice, [1.0])
    np.testing.assert_allclose(iou, [1.0])
    assert dice.dtype == iou.dtype == np.float64


def test_disjoint_masks_score_zero() -> None:
    p, t = _masks()
    p[0, 0, :] = True
    t[0, 3, :] = True
    dice, iou = dice_iou_per_image(p, t)
    np.testing.assert_allclose(dice, [0.0])
    np.testing.assert_allclose(iou, [0.0])


def test_half_overlap_exact_values() -> None:
    # pred: 4 pixels, target: 4 pixels, 2 shared -> Dice 2*2/8 = 0.5, IoU 2/6 = 1/3
    p, t = _masks()
    p[0, 0, 0:4] = True
    t[0, 0, 2:4] = True
    t[0, 1, 0:2] = True
    dice, iou = dice_iou_per_image(p, t)
    np.testing.assert_allclose(dice, [0.5], atol=1e-7)
    np.testing.assert_allclose(iou, [1 / 3], atol=1e-7)


def test_subset_exact_values() -> None:
    # pred 2 pixels inside target 4 pixels -> Dice 4/6, IoU 2/4
    p, t = _masks()
    t[0, 2, :] = True
    p[0, 2, :2] = True
    dice, iou = dice_iou_per_image(p, t)
    np.testing.assert_allclose(dice, [2 / 3], atol=1e-7)
    np.testing.assert_allclose(iou, [0.5], atol=1e-7)


def test_empty_cases() -> None:
    p, t = _masks(3)
    # image 0: both empty -> 1; image 1: empty prediction, non-empty target -> 0;
    # image 2: prediction on an empty target -> 0
    t[1, 0, 0] = True
    p[2, 0, 0] = True
    dice, iou = dice_iou_per_image(p, t)
    np.testing.assert_allclose(dice, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(iou, [1.0, 0.0, 0.0])


def test_scores_are_per_image() -> None:
    p, t = _masks(2, 8, 8)
    p[0] = t[0] = True  # perfect
    p[1, :4] = True  # half of the image, target the other half
    t[1, 4:] = True
    dice, iou = dice_iou_per_image(p, t)
    assert dice.shape == iou.shape == (2,)
    np.testing.assert_allclose(dice, [1.0, 0.0])
    np.testing.assert_allclose(iou, [1.0, 0.0])


def test_non_contiguous_input_accepted() -> None:
    p, t = _masks(1, 4, 6)
    p[0, :, :3] = True
    t[0, :, :3] = True
    dice, _ = dice_iou_per_image(p[:, :, ::-1], t[:, :, ::-1])
    np.testing.assert_allclose(dice, [1.0])


@pytest.mark.parametrize(("pshape", "tshape"), [((1, 4, 4), (1, 4, 5)), ((2, 4, 4), (1, 4, 4))])
def test_shape_mismatch_raises(pshape: tuple[int, ...], tshape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        dice_iou_per_image(np.zeros(pshape, bool), np.zeros(tshape, bool))


def test_empty_batch_gives_empty_scores() -> None:
    empty = np.zeros((0, 4, 4), bool)
    dice, iou = dice_iou_per_image(empty, empty)
    assert dice.shape == (0,) and iou.shape == (0,)


def test_mean_interval_brackets_the_mean_and_narrows_with_more_cases() -> None:
    import numpy as np

    from medinfer.metrics import mean_interval

    rng = np.random.default_rng(0)
    few, many = rng.uniform(0.6, 1.0, 20), rng.uniform(0.6, 1.0, 2000)
    lo, hi = mean_interval(few, 500)
    assert lo < few.mean() < hi
    lo2, hi2 = mean_interval(many, 500)
    assert hi2 - lo2 < (hi - lo) / 3
    assert all(np.isnan(mean_interval(few[:1], 500)))  # one case (one volume): no interval
