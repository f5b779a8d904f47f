"""Per-slice detection metrics on hand-built cases: FROC sensitivities, CPM, AP, matching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from monai.metrics import compute_froc_curve_data

from medinfer.metrics import (SliceDetections, SliceTruth, boxes_agree, detection_scores,
                              froc_curve, match_boxes)

TRUTH = [10.0, 10.0, 30.0, 30.0]
HIT = [11.0, 10.0, 31.0, 30.0]  # IoU 380/420 = 0.905 with TRUTH
AWAY = [100.0, 100.0, 120.0, 120.0]  # IoU 0 with TRUTH
SENS_KEYS = ["sensitivity@0.125fp", "sensitivity@0.25fp", "sensitivity@0.5fp", "sensitivity@1fp",
             "sensitivity@2fp", "sensitivity@4fp", "sensitivity@8fp"]


def _det(*pairs: tuple[list[float], float]) -> SliceDetections:
    boxes = np.array([b for b, _ in pairs], np.float32).reshape(-1, 4)
    return SliceDetections(boxes, np.array([s for _, s in pairs], np.float32))


def _truth(*boxes: list[float]) -> SliceTruth:
    return SliceTruth(np.array(boxes, np.float32).reshape(-1, 4))


def _random_case(n: int, seed: int) -> tuple[list[SliceDetections], list[SliceTruth]]:
    """Slices with 0-2 lesions; each found with probability 0.7 (jittered box, high score),
    plus 0-2 false positives (lower scores)."""
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(n):
        xy = rng.uniform(0, 200, size=(rng.integers(0, 3), 2))
        gt = np.hstack([xy, xy + rng.uniform(10, 30, size=xy.shape)])
        found = gt[rng.random(len(gt)) < 0.7] + rng.normal(0, 1.0, size=(1, 4))
        fxy = rng.uniform(300, 400, size=(rng.integers(0, 3), 2))
        fp = np.hstack([fxy, fxy + 15])
        boxes = np.vstack([found, fp, np.zeros((0, 4))])
        scores = np.concatenate([rng.uniform(0.4, 1.0, len(found)), rng.uniform(0.0, 0.7, len(fp))])
        preds.append(SliceDetections(boxes.astype(np.float32), scores.astype(np.float32)))
        truths.append(SliceTruth(gt.astype(np.float32)))
    return preds, truths


def test_perfect_detections_score_one() -> None:
    truths = [_truth(TRUTH), _truth(TRUTH, AWAY), _truth()]  # an empty slice is scored too
    preds = [_det((TRUTH, 0.9)), _det((AWAY, 0.8), (TRUTH, 0.7)), _det()]
    s = detection_scores(preds, truths)
    for key in SENS_KEYS:
        assert s[key] == 1.0, key
    assert s["froc"] == 1.0
    assert s["ap@0.1"] == pytest.approx(1.0, abs=1e-9)
    assert (s["n"], s["n_boxes"], s["n_detections"]) == (3, 3, 3)
    assert isinstance(s["n"], int) and "intervals" not in s


def test_hand_built_froc_and_ap() -> None:
    # 4 slices, one truth box each. Detections by descending score over all slices:
    #   0.9 TP (s0), 0.8 FP (s0), 0.7 TP (s1), 0.6 FP (s1), 0.5 TP (s2), 0.4 FP (s2),
    #   0.3 FP (s3), 0.2 FP (s3); the truth box of s3 is never found.
    # Operating points (FP/slice, sensitivity) per threshold 0.9 .. 0.2:
    #   (0, .25) (.25, .25) (.25, .5) (.5, .5) (.5, .75) (.75, .75) (1, .75) (1.25, .75)
    # sensitivity@1fp: threshold 0.3 gives 4 FP / 4 slices = 1 FP/slice, 3 of 4 found = 0.75.
    # At 1/8: between (0, .25) and (.25, .25) -> .25; at 1/4 and 1/2 (reached exactly): the
    # highest sensitivity there, .5 and .75; at 2, 4, 8 (never reached): the highest, .75.
    # CPM = (.25 + .5 + .75 + 4 * .75) / 7 = 4.5 / 7.
    # AP: ranking TP FP TP FP TP FP FP FP, recall .25 .25 .5 .5 .75 .75 .75 .75, precision
    # made monotone 1 2/3 2/3 .6 .6 .5 3/7 3/8; of COCO's 101 recall points 0..1,
    # 26 (0-.25) take 1, 25 (.26-.5) take 2/3, 25 (.51-.75) take .6, 25 (>.75) take 0:
    # AP = (26 + 25 * 2/3 + 25 * .6) / 101 = 0.57096.
    truths = [_truth(TRUTH) for _ in range(4)]
    preds = [_det((HIT, 0.9), (AWAY, 0.8)), _det((HIT, 0.7), (AWAY, 0.6)),
             _det((HIT, 0.5), (AWAY, 0.4)), _det((AWAY, 0.3), (AWAY, 0.2))]
    s = detection_scores(preds, truths)
    expected = [0.25, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75]
    assert [s[k] for k in SENS_KEYS] == pytest.approx(expected)
    assert s["froc"] == pytest.approx(4.5 / 7)
    assert s["ap@0.1"] == pytest.approx((26 + 25 * 2 / 3 + 25 * 0.6) / 101, rel=1e-6)
    assert (s["n"], s["n_boxes"], s["n_detections"]) == (4, 4, 8)


def test_sensitivity_interpolates_between_operating_points() -> None:
    # 4 slices, 4 truths. Thresholds 0.9 .. 0.3 give (FP/slice, sensitivity):
    #   (0, .25) (.25, .25) (.25, .5) (.5, .5) (.75, .5) then at 0.4 a TP and two FPs at
    #   once: (1.25, .75), then (1.5, .75). 1 FP/slice lies between (.75, .5) and (1.25, .75):
    #   linear interpolation (MONAI compute_froc_score) gives .625, not the .5 of the last
    #   operating point below 1 FP/slice.
    truths = [_truth(TRUTH) for _ in range(4)]
    preds = [_det((HIT, 0.9), (AWAY, 0.8)), _det((HIT, 0.7), (AWAY, 0.6)),
             _det((AWAY, 0.5), (HIT, 0.4)), _det((AWAY, 0.4), (AWAY, 0.4), (AWAY, 0.3))]
    s = detection_scores(preds, truths)
    assert s["sensitivity@1fp"] == pytest.approx(0.625)
    assert s["sensitivity@2fp"] == pytest.approx(0.75)


def test_duplicate_on_found_truth_is_false_positive() -> None:
    # s0: the truth box found at 0.9 and again at 0.8; s1: found at 0.7.
    # The duplicate is an FP: ranking TP FP TP -> AP = (51 + 50 * 2/3) / 101, and the
    # second truth costs 1 FP / 2 slices: points (0, .5) (.5, .5) (.5, 1) -> @0.25fp = .5.
    truths = [_truth(TRUTH), _truth(TRUTH)]
    dup = detection_scores([_det((HIT, 0.9), (TRUTH, 0.8)), _det((HIT, 0.7))], truths, fps=(0.25,))
    assert dup["ap@0.1"] == pytest.approx((51 + 50 * 2 / 3) / 101, rel=1e-6)
    assert dup["sensitivity@0.25fp"] == pytest.approx(0.5)
    assert dup["n_detections"] == 3
    alone = detection_scores([_det((HIT, 0.9)), _det((HIT, 0.7))], truths, fps=(0.25,))
    assert alone["ap@0.1"] == pytest.approx(1.0, abs=1e-9)
    assert alone["sensitivity@0.25fp"] == 1.0


@pytest.mark.parametrize(("iou", "found"), [(0.1, False), (0.05, True)])
def test_iou_threshold_is_respected(iou: float, found: bool) -> None:
    # truth 10 x 10 = 100 px; the detection is its top 10 x 0.9 strip: IoU 9 / 100 = 0.09
    s = detection_scores([_det(([0, 0, 10, 0.9], 0.9))], [_truth([0, 0, 10, 10])], iou=iou)
    assert s["sensitivity@1fp"] == (1.0 if found else 0.0)
    assert s[f"ap@{iou:g}"] == pytest.approx(1.0 if found else 0.0, abs=1e-9)


def test_keys_follow_fps_and_iou() -> None:
    s = detection_scores([_det((HIT, 0.9))], [_truth(TRUTH)], iou=0.3, fps=(0.5, 3))
    assert {k for k in s if k.startswith("sensitivity@")} == {
        "sensitivity@0.5fp", "sensitivity@1fp", "sensitivity@2fp", "sensitivity@3fp",
        "sensitivity@4fp"}
    assert "ap@0.3" in s and "ap@0.1" not in s


def test_no_truth_gives_nan() -> None:
    s = detection_scores([_det((AWAY, 0.9)), _det()], [_truth(), _truth()], n_boot=20)
    assert all(math.isnan(s[k]) for k in [*SENS_KEYS, "froc", "ap@0.1"])
    assert (s["n"], s["n_boxes"], s["n_detections"]) == (2, 0, 1)
    assert all(math.isnan(v) for lo_hi in s["intervals"].values() for v in lo_hi)
    empty = detection_scores([], [])
    assert empty["n"] == 0 and math.isnan(empty["sensitivity@1fp"])


def test_bootstrap_intervals_contain_point_estimate() -> None:
    preds, truths = _random_case(60, seed=3)
    s = detection_scores(preds, truths, n_boot=200, seed=1)
    assert set(s["intervals"]) == {"ap@0.1", "sensitivity@1fp", "sensitivity@2fp",
                                   "sensitivity@4fp"}
    for key, (lo, hi) in s["intervals"].items():
        assert lo <= s[key] <= hi, key
        assert lo < hi, key  # 60 random slices: the resamples do differ
    again = detection_scores(preds, truths, n_boot=200, seed=1)
    assert again["intervals"] == s["intervals"]
    assert 0.0 < s["sensitivity@1fp"] < 1.0 and 0.0 < s["ap@0.1"] < 1.0


def test_froc_curve_equals_monai() -> None:
    rng = np.random.default_rng(0)
    tp = np.round(rng.random(30), 2)  # rounded: ties within and across TP and FP scores
    fp = np.round(rng.random(50), 2)
    fps, sens = froc_curve(tp, fp, n_truth=40, n_slices=20)
    # MONAI drops the lowest distinct score as a threshold: a -inf sentinel keeps every score
    ref_fps, ref_sens = compute_froc_curve_data(fp, np.append(tp, -np.inf), 40, 20)
    np.testing.assert_allclose(fps, ref_fps)
    np.testing.assert_allclose(sens, ref_sens)


def test_match_boxes_is_one_to_one_and_optimal() -> None:
    # IoU a0-b0 .8, a0-b1 .818, a1-b1 .667, a1-b0 .385. Greedy on the best pair
    # (a0-b1) would leave a1 unmatched at 0.5; the assignment keeps two pairs.
    a = np.array([[0, 0, 10, 10], [3, 0, 13, 10]], np.float32)
    b = np.array([[0, 0, 8, 10], [1, 0, 11, 10]], np.float32)
    ia, ib, v = match_boxes(a, b, 0.5)
    assert ia.tolist() == [0, 1] and ib.tolist() == [0, 1]
    np.testing.assert_allclose(v, [0.8, 8 / 12], rtol=1e-6)
    # three copies of one box against one: one pair only
    ia, ib, _ = match_boxes(np.repeat(a[:1], 3, axis=0), a[:1], 0.5)
    assert len(ia) == len(ib) == 1
    ia, ib, v = match_boxes(a, np.zeros((0, 4)), 0.1)
    assert len(ia) == len(ib) == len(v) == 0
    assert len(match_boxes(a[:1], np.array([[50, 50, 60, 60]]), 0.1)[0]) == 0


def test_boxes_agree_reasons() -> None:
    ref = _det(([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.7), ([0, 0, 100, 100], 0.5))
    assert boxes_agree(ref, ref) == ""
    reordered = _det(([0, 0, 100, 100], 0.5), ([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.7))
    assert boxes_agree(ref, reordered) == ""
    assert boxes_agree(ref, _det(([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.7))) == "2 boxes vs 3"
    shrunk = _det(([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.7), ([0, 0, 100, 95], 0.5))
    assert boxes_agree(ref, shrunk) == "box 2 IoU 0.95 < 0.99"
    rescored = _det(([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.7), ([0, 0, 100, 100], 0.504))
    assert boxes_agree(ref, rescored) == "box 2 score differs by 0.004"
    assert boxes_agree(ref, rescored, score_tol=0.01) == ""
    # two identical boxes: the pairing follows the scores, not the output order
    twins = _det(([0, 0, 10, 10], 0.9), ([0, 0, 10, 10], 0.3))
    assert boxes_agree(twins, _det(([0, 0, 10, 10], 0.3), ([0, 0, 10, 10], 0.9))) == ""


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SliceDetections(np.zeros((2, 3)), np.zeros(2)), "shape"),
    (lambda: SliceDetections(np.zeros((2, 4)), np.zeros(3)), "2 boxes but 3 scores"),
    (lambda: SliceTruth(np.array([[5, 0, 1, 4]])), "x1 < x0"),
    (lambda: detection_scores([_det()], []), "1 slices"),
    (lambda: detection_scores([_det()], [_truth()], iou=0), "iou"),
])
def test_bad_input_is_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
