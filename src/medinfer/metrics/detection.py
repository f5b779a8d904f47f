"""Detection metrics of a 2D lesion detector scored per slice: FROC sensitivities, CPM and AP.

Boxes are float arrays (n, 4) of ``x0, y0, x1, y1`` in pixels (MONAI's ``StandardMode``
for 2D boxes, corners excluded: width ``x1 - x0``).

What comes from MONAI and what is written here:

- IoU: ``monai.data.box_utils.box_iou`` (computed in float32).
- Matching: ``monai.apps.detection.metrics.matching.matching_batch`` (the COCO / nnDetection
  rule: detections of a slice in descending score order, ties in input order, each taking the
  still unmatched truth box of highest IoU with ``IoU >= iou``; a truth box is found at most
  once, so a second detection on an already found truth box is a false positive).
- AP: ``monai.apps.detection.metrics.coco.COCOMetric`` (101-point interpolated precision
  over all boxes of all slices, pycocotools' definition).
- Sensitivity at k false positives per slice: ``monai.metrics.compute_froc_score`` (linear
  interpolation between operating points, as CAMELYON16 and LUNA16 do).
- The FROC operating points are computed here (:func:`froc_curve`): MONAI's
  ``compute_froc_curve_data`` loops over every distinct score (quadratic, too slow to
  bootstrap tens of thousands of detections) and drops the lowest score as a threshold,
  which is only right when a missed target is coded as a probability 0 below all scores.
  :func:`froc_curve` returns the same points as MONAI's function fed a ``-inf`` sentinel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import compute_froc_score
from scipy.optimize import linear_sum_assignment

from medinfer.metrics.classification import percentile_interval

#: The seven false-positive rates per scan of LUNA16's CPM (here: per slice).
LUNA16_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Sensitivities always reported (and bootstrapped), whatever ``fps`` asks for.
REPORTED_FP_RATES = (1.0, 2.0, 4.0)


def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (n, 4) x0 y0 x1 y1, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: boxes hold NaN or infinite coordinates")
    if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
        raise ValueError(f"{what}: a box has x1 < x0 or y1 < y0")
    return arr


@dataclass(frozen=True)
class SliceDetections:
    """The detections of one slice.

    Args:
        boxes: (n, 4) float32 predicted boxes ``x0, y0, x1, y1`` in pixels (n may be 0).
        scores: (n,) float32 confidence of each box; higher means more certain.
    """

    boxes: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes, "detections")
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"detections: {len(boxes)} boxes but {len(scores)} scores")
        if not np.isfinite(scores).all():
            raise ValueError("detections: scores hold NaN or infinite values")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)


@dataclass(frozen=True)
class SliceTruth:
    """The truth boxes of one slice.

    Args:
        boxes: (m, 4) float32 truth boxes ``x0, y0, x1, y1`` in pixels (m may be 0).
    """

    boxes: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", _as_boxes(self.boxes, "truth"))


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) float64 IoU of two (n, 4) box arrays (MONAI ``box_iou``)."""
    a, b = _as_boxes(a, "boxes a"), _as_boxes(b, "boxes b")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return np.asarray(box_iou(a, b), dtype=np.float64)


def match_boxes(a: np.ndarray, b: np.ndarray,
                iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of two box sets that maximises the summed IoU (Hungarian).

    Pairs below ``iou`` are given weight 0 before ``scipy.optimize.linear_sum_assignment``
    so they never displace a valid pair, then dropped. Unlike greedy matching this finds
    two pairs where a greedy choice of the single best pair would leave one box unmatched.

    Args:
        a: (n, 4) boxes ``x0, y0, x1, y1``.
        b: (m, 4) boxes.
        iou: the least IoU of a kept pair, in [0, 1].

    Returns:
        ``(index_a, index_b, iou_values)``: int arrays of the matched rows of ``a`` and ``b``
        (sorted by ``index_a``) and their float64 IoU, all of one length ``<= min(n, m)``.

    Example:
        >>> ia, ib, v = match_boxes(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 9]]), 0.5)
        >>> ia.tolist(), ib.tolist(), round(float(v[0]), 2)
        ([0], [0], 0.9)
    """
    ious = _iou_matrix(a, b)
    rows, cols = linear_sum_assignment(np.where(ious >= iou, ious, 0.0), maximize=True)
    keep = ious[rows, cols] >= iou
    rows, cols = rows[keep], cols[keep]
    return rows.astype(np.intp), cols.astype(np.intp), ious[rows, cols]


def boxes_agree(ref: SliceDetections, cand: SliceDetections, min_iou: float = 0.99,
                score_tol: float = 1e-3) -> str:
    """Whether ``cand`` reproduces ``ref`` box for box, e.g. an exported network vs PyTorch.

    Boxes are paired one to one by :func:`match_boxes` (all pairs; among boxes of equal IoU
    the closer score wins), so a different output order is not a difference.

    Args:
        ref: the reference detections (n boxes).
        cand: the candidate detections.
        min_iou: least IoU of every pair.
        score_tol: largest absolute score difference of every pair.

    Returns:
        ``""`` when they agree, else the first reason, boxes numbered in ``ref``'s order:
        ``"3 boxes vs 4"`` (candidate count first), ``"box 2 IoU 0.95 < 0.99"``,
        ``"box 1 score differs by 0.004"``.
    """
    if len(cand.boxes) != len(ref.boxes):
        return f"{len(cand.boxes)} boxes vs {len(ref.boxes)}"
    if len(ref.boxes) == 0:
        return ""
    ious = _iou_matrix(ref.boxes, cand.boxes)
    dscore = np.abs(ref.scores[:, None].astype(np.float64) - cand.scores[None, :])
    # the score term only breaks (near) ties of IoU, e.g. two identical boxes
    rows, cols = linear_sum_assignment(ious - 1e-3 * np.minimum(dscore, 1.0), maximize=True)
    for i, j in zip(rows, cols):
        if ious[i, j] < min_iou:
            return f"box {i} IoU {ious[i, j]:.4g} < {min_iou:g}"
        if dscore[i, j] > score_tol:
            return f"box {i} score differs by {dscore[i, j]:.3g}"
    return ""


def froc_curve(tp_scores: np.ndarray, fp_scores: np.ndarray, n_truth: int,
               n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """FROC operating points: one per distinct score used as threshold, plus ``(0, 0)``.

    Same points as ``monai.metrics.compute_froc_curve_data(fp_scores, [-inf, *tp_scores],
    n_truth, n_slices)`` in O(N log N) instead of O(N^2).

    Args:
        tp_scores: (t,) scores of the true-positive detections (one per found truth box).
        fp_scores: (f,) scores of the false-positive detections.
        n_truth: number of truth boxes (found or not).
        n_slices: number of slices scored.

    Returns:
        ``(fps_per_slice, sensitivity)``, each (k + 1,) for k distinct scores, thresholds
        ascending (so FP rates descending), the last point ``(0, 0)``. Sensitivity is NaN
        when ``n_truth`` is 0.
    """
    tp = np.sort(np.asarray(tp_scores, np.float64))
    fp = np.sort(np.asarray(fp_scores, np.float64))
    thresholds = np.unique(np.concatenate([tp, fp]))
    tps = np.append(len(tp) - np.searchsorted(tp, thresholds, side="left"), 0)
    fps = np.append(len(fp) - np.searchsorted(fp, thresholds, side="left"), 0)
    sens = tps / n_truth if n_truth > 0 else np.full(len(tps), np.nan)
    return fps / max(n_slices, 1), sens


@dataclass(frozen=True)
class _Matched:
    """Matching of every slice, done once and reused by every bootstrap resample."""

    per_slice: list[dict[int, dict[str, np.ndarray]]]  # matching_batch output
    tp: list[np.ndarray]  # scores of each slice's true positives
    fp: list[np.ndarray]  # scores of each slice's false positives
    n_truth: np.ndarray  # (n,) truth boxes per slice
    max_det: int  # most detections on one slice (nothing is cut off)


def _match(preds: Sequence[SliceDetections], truths: Sequence[SliceTruth], iou: float) -> _Matched:
    max_det = max([1, *(len(p.scores) for p in preds)])
    per_slice = matching_batch(
        iou_fn=box_iou, iou_thresholds=[iou],
        pred_boxes=[p.boxes for p in preds], pred_scores=[p.scores for p in preds],
        pred_classes=[np.zeros(len(p.scores), np.int64) for p in preds],
        gt_boxes=[t.boxes for t in truths],
        gt_classes=[np.zeros(len(t.boxes), np.int64) for t in truths],
        max_detections=max_det)
    tp, fp = [], []
    for r in per_slice:
        if 0 in r:  # class 0; absent when the slice has neither boxes nor detections
            found = r[0]["dtMatches"][0].astype(bool)
            scores = np.asarray(r[0]["dtScores"], np.float64)
            tp.append(scores[found])
            fp.append(scores[~found])
        else:
            tp.append(np.zeros(0))
            fp.append(np.zeros(0))
    n_truth = np.array([len(t.boxes) for t in truths], dtype=np.int64)
    return _Matched(per_slice, tp, fp, n_truth, max_det)


def _average_precision(m: _Matched, idx: np.ndarray, iou: float) -> float:
    """COCO AP at ``iou`` over the slices ``idx`` (MONAI ``COCOMetric``); NaN without truth."""
    if m.n_truth[idx].sum() == 0:
        return float("nan")
    metric = COCOMetric(classes=["lesion"], iou_list=(iou,), iou_range=(iou, iou, 1.0),
                        max_detection=(m.max_det,), per_class=False, verbose=False)
    values, _ = metric([m.per_slice[i] for i in idx])
    return float(next(v for k, v in values.items() if k.startswith("AP_IoU_")))


def _sensitivities(m: _Matched, idx: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """Sensitivity at each FP rate per slice over the slices ``idx``; NaN without truth."""
    n_truth = int(m.n_truth[idx].sum())
    if n_truth == 0 or len(idx) == 0:
        return np.full(len(rates), np.nan)
    tp = np.concatenate([np.zeros(0), *(m.tp[i] for i in idx)])
    fp = np.concatenate([np.zeros(0), *(m.fp[i] for i in idx)])
    fps, sens = froc_curve(tp, fp, n_truth, len(idx))
    return np.array([float(compute_froc_score(fps, sens, (r,))) for r in rates])


def _rate_key(rate: float) -> str:
    return f"sensitivity@{float(rate):g}fp"


def detection_scores(preds: Sequence[SliceDetections], truths: Sequence[SliceTruth],
                     iou: float = 0.1, fps: Sequence[float] = LUNA16_FP_RATES,
                     n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """FROC sensitivities, the CPM and the AP of per-slice detections.

    Definitions (all slices pooled):

    - A detection is a true positive when the greedy matching (descending score, each truth
      box found at most once, ``IoU >= iou``, see the module docstring) pairs it with a truth
      box of its slice; every other detection is a false positive, including a second
      detection on an already found truth box.
    - False positives per slice = FP count / number of slices (slices without detections or
      truth count too).
    - The operating points are every distinct score used as threshold (detections with score
      ``>=`` it). ``sensitivity@kfp`` is the found fraction of all truth boxes, linearly
      interpolated between the operating points around k FP/slice (MONAI
      ``compute_froc_score``); at an FP rate reached exactly, the highest sensitivity at that
      rate; beyond the highest FP rate the detector reaches, its highest sensitivity.
    - ``froc`` is the CPM: the mean sensitivity at LUNA16's 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/slice,
      whatever ``fps`` holds (so it means the same in every report).
    - ``ap@<iou>`` is COCO's 101-point interpolated average precision over all detections.

    Args:
        preds: the detections of each slice.
        truths: the truth boxes of the same slices, in the same order.
        iou: least IoU of a true positive, in (0, 1].
        fps: FP rates per slice to report a sensitivity at; 1, 2 and 4 are always reported.
        n_boot: bootstrap resamples of the slices (with replacement) for 95% percentile
            intervals of AP and sensitivity at 1, 2, 4 FP/slice; 0 for none.
        seed: seed of the resampling.

    Returns:
        A flat dict: ``sensitivity@{f:g}fp`` for each rate (``sensitivity@0.125fp``,
        ``sensitivity@1fp``...), ``froc``, ``ap@{iou:g}`` (``ap@0.1``), ``n`` (slices),
        ``n_boxes`` (truth boxes), ``n_detections``, and with ``n_boot > 0``
        ``intervals``: ``{key: [low, high]}`` for the AP key and the three sensitivities.
        Without any truth box the sensitivities, ``froc`` and AP are NaN.

    Example:
        >>> t = [SliceTruth(np.array([[10, 10, 20, 20]]))]
        >>> p = [SliceDetections(np.array([[11, 10, 20, 21]]), np.array([0.9]))]
        >>> s = detection_scores(p, t)
        >>> s["sensitivity@1fp"], round(s["ap@0.1"], 3), s["n_detections"]
        (1.0, 1.0, 1)
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} slices of detections but {len(truths)} of truth")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must lie in (0, 1], got {iou}")
    if any(not (np.isfinite(f) and f > 0) for f in fps):
        raise ValueError(f"FP rates must be positive, got {list(fps)}")
    rates = sorted({float(f) for f in (*fps, *REPORTED_FP_RATES)})
    m = _match(preds, truths, iou)
    everything = np.arange(len(preds))
    sens = _sensitivities(m, everything, [*rates, *LUNA16_FP_RATES])
    ap_key = f"ap@{iou:g}"
    out: dict[str, Any] = {_rate_key(r): float(s) for r, s in zip(rates, sens)}
    out["froc"] = float(np.mean(sens[len(rates):]))
    out[ap_key] = _average_precision(m, everything, iou)
    out["n"] = len(preds)
    out["n_boxes"] = int(m.n_truth.sum())
    out["n_detections"] = int(sum(len(p.scores) for p in preds))
    if n_boot > 0:
        out["intervals"] = _bootstrap(m, iou, ap_key, n_boot, seed)
    return out


def _bootstrap(m: _Matched, iou: float, ap_key: str, n_boot: int,
               seed: int) -> dict[str, list[float]]:
    """Percentile 95% intervals of AP and sensitivity at 1, 2, 4 FP/slice, slices resampled."""
    n = len(m.n_truth)
    keys = [ap_key, *(_rate_key(r) for r in REPORTED_FP_RATES)]
    if n == 0:
        return {k: [float("nan"), float("nan")] for k in keys}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = np.array([[_average_precision(m, i, iou), *_sensitivities(m, i, REPORTED_FP_RATES)]
                     for i in idx])  # (n_boot, 4); NaN where a resample has no truth box
    return {k: list(percentile_interval(boot[:, j])) for j, k in enumerate(keys)}
