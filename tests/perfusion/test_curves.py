"""Time curves: bolus arrival, baseline and enhancement, area with the truncated tail."""

from __future__ import annotations

import numpy as np
import pytest

from medinfer.perfusion.curves import area_with_tail, bolus_arrival, enhancement, peak_times
from medinfer.perfusion.phantom import arterial_curve


def test_arrival_of_a_curve_rising_at_frame_one_is_zero() -> None:
    assert bolus_arrival(np.array([0.0, 50.0, 100.0, 60.0, 30.0, 10.0])) == 0


@pytest.mark.parametrize("baseline", [0.0, 40.0])
def test_arrival_of_a_late_bolus_is_the_last_frame_before_the_rise(baseline: float) -> None:
    rise = np.array([30.0, 80.0, 100.0, 70.0, 40.0, 20.0, 10.0, 5.0])
    noise = np.random.default_rng(0).normal(0.0, 1.0, 10)  # well under 10 % of the rise
    curve = np.concatenate([baseline + noise, baseline + rise])
    assert bolus_arrival(curve) == 9


def test_arrival_of_the_phantom_aif() -> None:
    """The phantom's bolus arrives at 5 s: sampled every 1.5 s, frame 3 (4.5 s) is the last
    one before it."""
    times = np.arange(40) * 1.5
    assert bolus_arrival(arterial_curve(times, 350.0)) == 3
    assert bolus_arrival(arterial_curve(times + 1.5, 350.0)) == 2  # one frame earlier


@pytest.mark.parametrize("curve", [np.full(10, 5.0), np.linspace(100.0, 0.0, 10), np.zeros(10)],
                         ids=["flat", "peak-at-0", "zero"])
def test_arrival_without_a_rise_is_zero(curve: np.ndarray) -> None:
    assert bolus_arrival(curve) == 0


def test_enhancement_subtracts_the_mean_of_the_pre_bolus_frames() -> None:
    frames = np.random.default_rng(0).normal(40.0, 5.0, (12, 3, 4, 2))
    for arrival in (0, 3):
        base, enh = enhancement(frames, arrival)
        np.testing.assert_allclose(base, frames[:arrival + 1].mean(axis=0))
        np.testing.assert_allclose(enh, frames - base[None])
        np.testing.assert_allclose(enh[:arrival + 1].mean(axis=0), 0.0, atol=1e-12)
    assert base.shape == (3, 4, 2) and enh.shape == frames.shape


def test_peak_times() -> None:
    conc = np.array([[0.0, 1.0, 3.0, 2.0], [5.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(peak_times(conc, np.array([0.0, 2.0, 4.0, 6.0])), [4.0, 0.0])


def _truncated(tau: float, frames: int = 18, dt: float = 1.0) -> np.ndarray:
    """Linear rise to 1 at 2 s, then exp(-(t - 2) / tau), cut at the last frame. Analytic
    area over all time: 1 + tau."""
    t = np.arange(frames) * dt
    return np.where(t < 2.0, t / 2.0, np.exp(-(t - 2.0) / tau))


@pytest.mark.parametrize("tau", [6.0, 8.0, 12.0])
def test_area_extrapolates_a_truncated_exponential_tail(tau: float) -> None:
    curve = _truncated(tau)[None]
    analytic = 1.0 + tau
    cut = area_with_tail(curve, 1.0, extrapolate=False)[0]
    full = area_with_tail(curve, 1.0)[0]
    assert cut / analytic - 1 < -0.03  # the truncation loses more than the tolerance ...
    assert full == pytest.approx(analytic, rel=0.03)  # ... the extrapolation gets it back


def test_area_of_a_curve_back_at_baseline_is_unchanged() -> None:
    curve = np.zeros((2, 30))
    curve[0, 3:10] = [2.0, 6.0, 9.0, 7.0, 4.0, 2.0, 1.0]
    curve[1, 3:8] = [5.0, 4.0, 3.0, 2.0, 1.0]
    np.testing.assert_array_equal(area_with_tail(curve, 1.5), curve.sum(axis=1) * 1.5)


def test_area_does_not_extrapolate_a_rising_or_short_curve() -> None:
    rising = np.linspace(0.0, 10.0, 30)[None]
    np.testing.assert_allclose(area_with_tail(rising, 2.0), rising.sum() * 2.0)
    short = _truncated(8.0, frames=9)[None]  # fewer than 2 x tail_frames
    np.testing.assert_allclose(area_with_tail(short, 1.0), short.sum())


def test_area_extension_is_capped_at_the_measured_area() -> None:
    slow = _truncated(1000.0)[None]  # a nearly flat tail would extrapolate to ~1000
    np.testing.assert_allclose(area_with_tail(slow, 1.0), 2 * slow.sum())
