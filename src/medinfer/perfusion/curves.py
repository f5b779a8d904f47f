"""Time curves: bolus arrival, baseline, enhancement, peak time and area (with the
acquisition's truncated tail extrapolated)."""

from __future__ import annotations

import numpy as np

__all__ = ["area_with_tail", "bolus_arrival", "enhancement", "peak_times"]


def bolus_arrival(curve: np.ndarray, rise: float = 0.1) -> int:
    """The last frame before ``curve`` (an arterial curve, ``(T,)``) starts to rise.

    Searching back from the peak, the first frame whose value is within ``rise`` of the
    curve's rise (peak minus the minimum before the peak) above that minimum. Nothing
    assumes a late bolus: a curve rising from frame 1 gives 0 (one baseline frame).

    Returns:
        the index ``a``; frames ``0..a`` are the pre-bolus baseline.
    """
    p = int(np.argmax(curve))
    if p == 0:
        return 0
    low = float(curve[:p + 1].min())
    level = low + rise * (float(curve[p]) - low)
    below = np.flatnonzero(curve[:p] <= level)
    return int(below[-1]) if below.size else 0


def enhancement(frames: np.ndarray, arrival: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and enhancement of ``frames`` (``(T, ...)`` HU).

    Returns:
        (baseline ``(...)`` = mean of frames ``0..arrival``, enhancement ``(T, ...)`` =
        frames minus the baseline; for CT the enhancement in HU is proportional to the
        iodine concentration, so it is the concentration curve up to a constant that
        cancels between tissue and artery).
    """
    base = frames[:arrival + 1].mean(axis=0)
    return base, frames - base


def peak_times(conc: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Time to peak of ``conc`` (``(N, T)``), seconds from the first frame."""
    return np.asarray(times)[np.argmax(conc, axis=1)]


def area_with_tail(conc: np.ndarray, dt: float, extrapolate: bool = True,
                   tail_frames: int = 5) -> np.ndarray:
    """Area under each curve of ``conc`` (``(N, T)``), in concentration x seconds.

    With ``extrapolate``, a curve still falling at the end of the acquisition (its last
    ``tail_frames`` decreasing on a log-linear fit, after its peak) gets the area of an
    exponential continuing that fit: the tissue curve of a long transit time is cut off
    by the end of a CT perfusion acquisition, and its CBV would be underestimated.
    """
    area = conc.sum(axis=1) * dt
    if not extrapolate or conc.shape[1] < 2 * tail_frames:
        return area
    tail = np.clip(conc[:, -tail_frames:], 1e-6, None)
    t = np.arange(tail_frames) * dt
    slope = np.polyfit(t, np.log(tail).T, 1)[0]  # (N,) per-second log slope
    peak_before = np.argmax(conc, axis=1) < conc.shape[1] - tail_frames
    falling = (slope < 0) & peak_before & (conc[:, -1] > 0)
    rate = np.where(falling, -slope, 1.0)
    extra = np.where(falling, conc[:, -1] / rate, 0.0)
    # a flat-ish tail would extrapolate to a huge area: cap the extension at the measured area
    return area + np.minimum(extra, area)
