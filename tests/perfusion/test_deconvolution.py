"""Deconvolution (bcSVD, oSVD) against the OSIPI DSC digital reference object and on
synthetic curves: backends, oscillation index, delay insensitivity and the truncation-bias
table."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from shared_data import SHARED_DATA, require

from medinfer.perfusion.config import PerfusionConfig
from medinfer.perfusion.curves import area_with_tail
from medinfer.perfusion.deconvolution import (
    BiasTable,
    aif_basis,
    bias_table,
    deconvolve,
    oscillation_index,
    thresholds_tried,
)
from medinfer.perfusion.phantom import arterial_curve

DRO = SHARED_DATA / "perfusion-reference" / "osipi-dsc-dro" / "dsc_data.csv"
OSVD = {"method": "osvd", "threshold": 0.2, "osvd_thresholds": PerfusionConfig().osvd_thresholds,
        "max_oscillation": 0.095}
BCSVD = {"method": "bcsvd", "threshold": 0.2}
METHODS = {"osvd": OSVD, "bcsvd": BCSVD}


@dataclass(frozen=True)
class DroRow:
    """One row of the DRO: curves ``(161,)``, truth (CBV ml/100 ml, CBF ml/100 ml/min), tr (s)."""

    label: str
    tissue: np.ndarray
    aif: np.ndarray
    cbv: float
    cbf: float
    tr: float


def _read_dro(path: Path) -> list[DroRow]:
    with path.open(newline="") as f:
        return [DroRow(r["label"], np.array(r["C_tis"].split(), float),
                       np.array(r["C_aif"].split(), float), float(r["cbv"]), float(r["cbf"]),
                       float(r["tr"])) for r in csv.DictReader(f)]


# Read at import time so that rows parametrize the tests (ids from the label); without the
# data the parameter sets are empty and test_dro_is_present skips (or fails under CI=true).
ROWS = _read_dro(DRO) if DRO.exists() else []


def _id(row: DroRow) -> str:
    return row.label.removeprefix("test_CNR200_").removesuffix("_delay0_dispersion0")


def _cbf(row: DroRow, method: str) -> float:
    """CBF (ml/100 ml/min) of one DRO row; kh = rho = 1 for this DRO."""
    d = deconvolve(row.tissue[None], aif_basis(row.aif, row.tr), **METHODS[method])
    return float(d.peak[0] * 6000.0)


def _within_osipi_cbf(est: float, true: float) -> bool:
    return abs(est - true) <= 15.0 + 0.1 * true


def test_dro_is_present() -> None:
    require(DRO, "OSIPI DSC DRO")
    assert len(ROWS) == 14
    assert all(len(r.tissue) == len(r.aif) == 161 and r.tr == pytest.approx(1.243) for r in ROWS)


# bcSVD at threshold 0.2 without the bias correction underestimates the highest flow
# (MTT 3.4 s, under 3 frames): 43.4 for a true 70, outside the tolerance of 22.
_BCSVD_TOO_LOW = {"test_CNR200_CBV4_CBF70_delay0_dispersion0"}


def _cbf_cases() -> list:
    cases = []
    for method in METHODS:
        for row in ROWS:
            marks = ()
            if method == "bcsvd" and row.label in _BCSVD_TOO_LOW:
                marks = pytest.mark.xfail(
                    strict=True, reason="uncorrected bcSVD (0.2) gives 43.4 for CBF 70")
            cases.append(pytest.param(row, method, id=f"{method}-{_id(row)}", marks=marks))
    return cases


@pytest.mark.parametrize(("row", "method"), _cbf_cases())
def test_dro_cbf_within_osipi_tolerance(row: DroRow, method: str) -> None:
    est = _cbf(row, method)
    assert _within_osipi_cbf(est, row.cbf), f"CBF {est:.2f}, true {row.cbf}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_dro_bcsvd_bias_corrected_cbf_within_osipi_tolerance(row: DroRow) -> None:
    """The correction compute_maps applies brings bcSVD's high flows back within tolerance
    (CBF 70: 43.4 -> 82.3)."""
    basis = aif_basis(row.aif, row.tr)
    d = deconvolve(row.tissue[None], basis, **BCSVD)
    cbv = np.array([100.0 * row.tissue.sum() / row.aif.sum()])
    table = bias_table(basis, row.aif, thresholds_tried("bcsvd", 0.2, ()))
    cbf, _ = table.correct(d.peak * 6000.0, cbv, d.tmax, d.threshold)
    assert _within_osipi_cbf(float(cbf[0]), row.cbf), f"corrected CBF {cbf[0]:.2f}, true {row.cbf}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_dro_cbv_within_osipi_tolerance(row: DroRow) -> None:
    plain = 100.0 * row.tissue.sum() / row.aif.sum()
    # the package's area (tail extrapolated where still falling) must agree as well
    with_tail = 100.0 * area_with_tail(row.tissue[None], row.tr)[0] / (row.aif.sum() * row.tr)
    for cbv in (plain, with_tail):
        assert abs(cbv - row.cbv) <= 1.0 + 0.1 * row.cbv, f"CBV {cbv:.3f}, true {row.cbv}"


def test_dro_osvd_closer_to_truth_than_bcsvd() -> None:
    """Mean absolute relative CBF error over the 14 rows: oSVD 0.110, bcSVD 0.238 (measured)."""
    require(DRO, "OSIPI DSC DRO")
    err = {m: np.mean([abs(_cbf(r, m) - r.cbf) / r.cbf for r in ROWS]) for m in METHODS}
    assert err["osvd"] < err["bcsvd"]
    assert err["osvd"] < 0.15


@pytest.mark.parametrize("method", list(METHODS))
def test_dro_delay_changes_tmax_not_cbf(method: str) -> None:
    """Block-circulant deconvolution: a 3-frame delay shifts the residue, not its height."""
    require(DRO, "OSIPI DSC DRO")
    tissue = np.stack([r.tissue for r in ROWS])
    delayed = np.zeros_like(tissue)
    delayed[:, 3:] = tissue[:, :-3]
    tr = ROWS[0].tr
    basis = aif_basis(ROWS[0].aif, tr)
    assert all(np.array_equal(r.aif, ROWS[0].aif) for r in ROWS)
    d0 = deconvolve(tissue, basis, **METHODS[method])
    d3 = deconvolve(delayed, basis, **METHODS[method])
    np.testing.assert_allclose(d3.peak, d0.peak, rtol=0.05)
    np.testing.assert_allclose(d3.tmax - d0.tmax, 3 * tr, atol=tr)


# ---- synthetic curves (no data needed) ----

DT, FRAMES = 1.5, 40
TIMES = np.arange(FRAMES) * DT
AIF = arterial_curve(TIMES, 350.0)


def _exp_tissue(cbf: float, mtt: float, delay: float = 0.0, fine: int = 10) -> np.ndarray:
    """Tissue enhancement for CBF (ml/100 g/min, kh = rho = 1) and ``R = exp(-t / MTT)``,
    made as :func:`bias_table` makes its curves: the sampled AIF, linear between samples,
    convolved on a ``fine`` x finer grid and sampled at the frames."""
    t_fine = np.arange(FRAMES * fine) * (DT / fine)
    a_fine = np.interp(t_fine - delay, TIMES, AIF, left=0.0)
    conv = np.convolve(a_fine, np.exp(-t_fine / mtt))[:len(t_fine)] * (DT / fine)
    return cbf / 6000.0 * conv[::fine]


@pytest.fixture(scope="module")
def noisy_curves() -> np.ndarray:
    """500 curves: CBF 10-70, MTT 2-16 s, delay 0-4 s, 1 HU Gaussian noise (seed 0)."""
    rng = np.random.default_rng(0)
    n = 500
    clean = np.stack([_exp_tissue(c, m, d) for c, m, d in zip(
        rng.uniform(10, 70, n), rng.uniform(2, 16, n), rng.uniform(0, 4, n))])
    return clean + rng.normal(0.0, 1.0, clean.shape)


@pytest.mark.parametrize("method", list(METHODS))
def test_numpy_and_torch_backends_agree(noisy_curves: np.ndarray, method: str) -> None:
    pytest.importorskip("torch")
    basis = aif_basis(AIF, DT)
    ref = deconvolve(noisy_curves, basis, backend="numpy", **METHODS[method])
    fast = deconvolve(noisy_curves, basis, backend="torch", **METHODS[method])
    chunked = deconvolve(noisy_curves, basis, backend="torch", chunk=128, **METHODS[method])
    if method == "osvd":  # the comparison means something only if voxels chose different thresholds
        assert len(np.unique(ref.threshold)) >= 3
    for other in (fast, chunked):
        np.testing.assert_array_equal(other.threshold, ref.threshold)
        np.testing.assert_allclose(other.peak, ref.peak, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(other.tmax, ref.tmax, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(other.oscillation, ref.oscillation, rtol=1e-9, atol=1e-15)


def test_oscillation_index_values() -> None:
    length = 80
    t = np.arange(length, dtype=float)
    ramp_up, ramp_down = 0.1 + 0.01 * t, 2.0 - 0.02 * t  # zero second difference
    smooth = np.exp(-t / 10.0)
    noisy = smooth + np.random.default_rng(1).normal(0.0, 0.02, length)
    spike = np.zeros(length)
    spike[1] = 1.0  # second differences -2 and 1: (2 + 1) / (L * 1)
    oi = oscillation_index(np.stack([ramp_up, ramp_down, smooth, noisy, spike, np.zeros(length)]))
    assert oi[0] < 1e-12 and oi[1] < 1e-12
    assert 0 < oi[2] < 0.01  # sum of |e"| over L: about 0.1 / 80
    assert oi[3] > 10 * oi[2]
    assert oi[4] == pytest.approx(3.0 / length)
    assert np.isinf(oi[5])


def test_deconvolve_rejects_wrong_frame_count() -> None:
    with pytest.raises(ValueError, match="40 frames"):
        deconvolve(np.zeros((3, 39)), aif_basis(AIF, DT))


@pytest.fixture(scope="module")
def table() -> BiasTable:
    return bias_table(aif_basis(AIF, DT), AIF, [0.1, 0.2, 0.3])


def test_bias_table_ratio_below_one_and_rising_with_mtt(table: BiasTable) -> None:
    assert table.ratio.shape == (3, len(table.mtt))
    assert np.all(table.ratio < 1.0) and np.all(table.ratio > 0.0)
    assert np.all(np.diff(table.ratio, axis=1) > 0)  # short transit times lose most
    assert np.all(table.delay >= 0) and np.all(np.diff(table.delay, axis=1) > 0)
    i = 1  # threshold 0.2 at MTT 4 s loses about half the flow at 1.5 s sampling
    assert np.interp(4.0, table.mtt, table.ratio[i]) < 0.7


def test_bias_table_correction_recovers_exponential_tissue(table: BiasTable) -> None:
    true_cbf, mtt = 50.0, 4.0
    curve = _exp_tissue(true_cbf, mtt)
    basis = aif_basis(AIF, DT)
    d = deconvolve(curve[None], basis, **BCSVD)
    raw = d.peak * 6000.0
    cbv = 100.0 * area_with_tail(curve[None], DT) / (AIF.sum() * DT)
    assert cbv[0] == pytest.approx(true_cbf * mtt / 60.0, rel=0.03)
    cbf, tmax = table.correct(raw, cbv, d.tmax, d.threshold)
    assert abs(raw[0] / true_cbf - 1) > 0.3  # uncorrected: about -47 %
    assert cbf[0] == pytest.approx(true_cbf, rel=0.05)
    assert d.tmax[0] > 1.5 and tmax[0] < 0.5  # the truncation's Tmax shift (true 0) removed too


def test_bias_table_correction_leaves_other_voxels(table: BiasTable) -> None:
    cbf, cbv, tmax = np.array([30.0, 30.0, 0.0]), np.full(3, 4.0), np.full(3, 2.0)
    out_cbf, out_tmax = table.correct(cbf, cbv, tmax, np.array([0.25, 0.2, 0.2]))
    # threshold not in the table, zero CBF: unchanged; the in-table voxel moves up
    assert out_cbf[0] == 30.0 and out_tmax[0] == 2.0 and out_cbf[2] == 0.0
    assert out_cbf[1] > 30.0 and out_tmax[1] < 2.0
