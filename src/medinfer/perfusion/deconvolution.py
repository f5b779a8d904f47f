"""Deconvolution of tissue curves by the arterial input: block-circulant SVD (bcSVD) and
oscillation-index SVD (oSVD).

The tissue curve is the arterial curve convolved with the flow-scaled residue function
``k(t) = (rho / kh) * CBF * R(t)``: ``c = D k`` with ``D`` the arterial curve's convolution
matrix. Zero-padding both curves to ``L = 2T`` samples and making ``D`` circulant (Wu et al.,
MRM 2003, doi:10.1002/mrm.10522) makes the result insensitive to a delay between the
artery and the tissue: a delay shifts ``k`` instead of distorting it. ``D`` is inverted by
its SVD with the small singular values dropped (truncated SVD); oSVD chooses, per voxel, the
smallest threshold whose residue function oscillates less than a set oscillation index.

Two implementations give the same answer: :func:`deconvolve` with ``backend="numpy"`` (the
reference: each threshold computed from scratch) and ``backend="torch"`` (all voxels of a
chunk at once, each threshold adding its singular components to the previous one). Both
work in float64 so their thresholded masks agree voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import circulant

__all__ = ["AifBasis", "BiasTable", "Deconvolution", "aif_basis", "bias_table", "deconvolve",
           "oscillation_index", "thresholds_tried"]


@dataclass(frozen=True)
class AifBasis:
    """The SVD of the arterial curve's block-circulant convolution matrix.

    Attributes:
        u, s, vt: ``D = u @ diag(s) @ vt``, ``(L, L)``, ``(L,)``, ``(L, L)``; ``L = 2T``.
        dt: frame interval, seconds.
        frames: ``T``, the number of acquired frames.
    """

    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    dt: float
    frames: int

    def rank(self, threshold: float) -> int:
        """Singular values kept at ``threshold`` (a fraction of the largest), at least 1."""
        return max(1, int(np.count_nonzero(self.s >= threshold * self.s[0])))


@dataclass(frozen=True)
class Deconvolution:
    """Per-voxel results.

    Attributes:
        peak: ``(N,)`` maximum of the flow-scaled residue function ``k``, 1/s
            (CBF = kh / rho * peak, in ml/g/s).
        tmax: ``(N,)`` time of that maximum, seconds (sub-frame, by a parabola through the
            peak and its neighbours; a peak in the padded half is a negative delay, set to 0).
        threshold: ``(N,)`` the truncation threshold used (fraction of the largest singular value).
        oscillation: ``(N,)`` the oscillation index of the residue function kept.
    """

    peak: np.ndarray
    tmax: np.ndarray
    threshold: np.ndarray
    oscillation: np.ndarray


def aif_basis(aif: np.ndarray, dt: float) -> AifBasis:
    """SVD of the block-circulant convolution matrix of ``aif`` (``(T,)`` concentration).

    Both curves are taken as linear between samples (Wu et al. 2003, eq. 3), so an entry
    is ``dt * (a[m-1] + 4 a[m] + a[m+1]) / 6`` rather than ``dt * a[m]``: the rectangle
    rule's error, large when the transit time is a few frames, is gone.
    """
    t = len(aif)
    padded = np.zeros(2 * t)
    padded[:t] = aif
    weighted = (np.roll(padded, 1) + 4 * padded + np.roll(padded, -1)) / 6.0
    u, s, vt = np.linalg.svd(dt * circulant(weighted))
    return AifBasis(u, s, vt, float(dt), t)


def oscillation_index(k: np.ndarray) -> np.ndarray:
    """Wu et al.'s oscillation index of residue functions ``k`` (``(N, L)``): the summed
    absolute second difference over ``L`` times the maximum (inf for a curve that never
    rises above 0: no residue to judge)."""
    second = np.abs(k[:, 2:] - 2 * k[:, 1:-1] + k[:, :-2]).sum(axis=1)
    peak = k.max(axis=1)
    return np.where(peak > 0, second / (k.shape[1] * np.maximum(peak, 1e-30)), np.inf)


def thresholds_tried(method: str, threshold: float, osvd: Sequence[float]) -> list[float]:
    """Thresholds tried, largest first (fewest singular values first)."""
    if method == "bcsvd":
        return [threshold]
    return sorted({float(p) for p in osvd if p <= threshold} | {threshold}, reverse=True)


def _peak_time(k: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """(max, time of max in s) of each row of ``k`` with a parabolic sub-frame refinement;
    indices in the padded half (negative delays) give time 0."""
    n, length = k.shape
    i = np.argmax(k, axis=1)
    rows = np.arange(n)
    y0, y1, y2 = k[rows, (i - 1) % length], k[rows, i], k[rows, (i + 1) % length]
    denom = y0 - 2 * y1 + y2
    shift = np.where(denom < 0, 0.5 * (y0 - y2) / np.where(denom < 0, denom, -1.0), 0.0)
    shift = np.clip(shift, -0.5, 0.5)
    peak = y1 - 0.25 * (y0 - y2) * shift
    pos = i + shift
    pos = np.where(pos > length / 2, pos - length, pos)
    return peak, np.maximum(pos, 0.0) * dt


def deconvolve(conc: np.ndarray, basis: AifBasis, method: str = "osvd", threshold: float = 0.2,
               osvd_thresholds: Sequence[float] = (), max_oscillation: float = 0.095,
               backend: str = "numpy", chunk: int = 1 << 14) -> Deconvolution:
    """Deconvolve tissue curves by the arterial basis.

    Args:
        conc: ``(N, T)`` tissue concentration curves (HU enhancement for CT).
        basis: :func:`aif_basis` of the arterial curve (same frames).
        method: ``osvd`` or ``bcsvd`` (see :class:`~medinfer.perfusion.config.PerfusionConfig`).
        threshold: ``bcsvd``: the threshold; ``osvd``: the largest one tried.
        osvd_thresholds: ``osvd``: the thresholds tried.
        max_oscillation: ``osvd``: the oscillation index a residue function may reach.
        backend: ``numpy`` (reference) or ``torch`` (batched, incremental).
        chunk: voxels per batch (memory: about ``chunk * 2T * 8 * 4`` bytes).

    Returns:
        :class:`Deconvolution`; a voxel no threshold brings under ``max_oscillation`` keeps
        the largest threshold's result.
    """
    if conc.ndim != 2 or conc.shape[1] != basis.frames:
        raise ValueError(f"curves of shape {conc.shape} do not match {basis.frames} frames")
    thresholds = thresholds_tried(method, threshold, osvd_thresholds)
    ranks = [basis.rank(p) for p in thresholds]
    run = _chunk_torch if backend == "torch" else _chunk_numpy
    parts = [run(conc[i:i + chunk], basis, thresholds, ranks, max_oscillation)
             for i in range(0, len(conc), chunk)]
    if not parts:
        empty = np.zeros(0)
        return Deconvolution(empty, empty, empty, empty)
    return Deconvolution(*(np.concatenate([p[j] for p in parts]) for j in range(4)))


def _padded(conc: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros((len(conc), length))
    out[:, :conc.shape[1]] = conc
    return out


def _chunk_numpy(conc: np.ndarray, basis: AifBasis, thresholds: list[float], ranks: list[int],
                 max_oscillation: float) -> tuple[np.ndarray, ...]:
    """The reference: every threshold's residue computed from scratch."""
    coef = (_padded(conc, 2 * basis.frames) @ basis.u) / basis.s  # (n, L)
    best = kept = osc = None
    for p, r in zip(thresholds, ranks):
        k = coef[:, :r] @ basis.vt[:r]
        oi = oscillation_index(k)
        if best is None:  # the largest threshold is the fallback
            best, kept, osc = k, np.full(len(k), p), oi
            continue
        ok = oi <= max_oscillation
        best, kept, osc = np.where(ok[:, None], k, best), np.where(ok, p, kept), np.where(ok, oi, osc)
    peak, tmax = _peak_time(best, basis.dt)
    return peak, tmax, kept, osc


def _chunk_torch(conc: np.ndarray, basis: AifBasis, thresholds: list[float], ranks: list[int],
                 max_oscillation: float) -> tuple[np.ndarray, ...]:
    """Batched: one projection; each smaller threshold adds its singular components to the
    running residue and only the oscillation index is kept; the chosen residue of every
    voxel is then built once, from its own number of components."""
    import torch

    u, s, vt = (torch.from_numpy(a) for a in (basis.u, basis.s, basis.vt))
    n, t = conc.shape
    c = torch.zeros(n, 2 * t, dtype=torch.float64)
    c[:, :t] = torch.from_numpy(np.ascontiguousarray(conc, dtype=np.float64))
    coef = (c @ u) / s
    # the second difference is linear in k: carried along by the same components
    w = vt[:, 2:] - 2 * vt[:, 1:-1] + vt[:, :-2]
    k = coef[:, :ranks[0]] @ vt[:ranks[0]]
    d2 = coef[:, :ranks[0]] @ w[:ranks[0]]
    osc = _oi_torch(k, d2)
    chosen = torch.zeros(n, dtype=torch.long)  # index into thresholds
    prev = ranks[0]
    for i, r in enumerate(ranks[1:], start=1):
        if r > prev:
            k += coef[:, prev:r] @ vt[prev:r]
            d2 += coef[:, prev:r] @ w[prev:r]
            prev = r
        oi = _oi_torch(k, d2)
        ok = oi <= max_oscillation
        chosen[ok] = i
        osc = torch.where(ok, oi, osc)
    rank = torch.tensor(ranks)[chosen]
    keep = torch.arange(coef.shape[1])[None, :] < rank[:, None]
    best = (coef * keep) @ vt
    peak, tmax = _peak_time(best.numpy(), basis.dt)
    return peak, tmax, np.asarray(thresholds)[chosen.numpy()], osc.numpy()


def _oi_torch(k, d2):  # noqa: ANN001, ANN202 - torch stays a lazy import
    """:func:`oscillation_index` from the residues ``k`` and their second differences ``d2``."""
    import torch

    peak = k.amax(dim=1)
    return torch.where(peak > 0, d2.abs().sum(dim=1) / (k.shape[1] * peak.clamp_min(1e-30)),
                       torch.full_like(peak, float("inf")))


@dataclass(frozen=True)
class BiasTable:
    """What the truncation does to an exponential residue function, per threshold.

    For tissue with ``R(t) = exp(-t / MTT)`` and no delay, deconvolved by the same basis
    and threshold: ``ratio[p, m]`` = estimated / true peak (CBF) and ``delay[p, m]`` =
    estimated Tmax (s, the true one is 0), at ``mtt[m]`` seconds.
    """

    thresholds: np.ndarray
    mtt: np.ndarray
    ratio: np.ndarray
    delay: np.ndarray

    def correct(self, cbf: np.ndarray, cbv: np.ndarray, tmax: np.ndarray, threshold: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(CBF, Tmax) corrected for the truncation bias at each voxel's threshold.

        The transit time is solved per voxel: the MTT at which a tissue with this CBV
        (``CBF = 60 CBV / MTT``) would be estimated at the measured CBF, i.e. where
        ``60 CBV / MTT * ratio(MTT)`` crosses it (searched on the table's MTT grid, which
        clips it to 1..40 s); the corrected CBF is ``60 CBV / MTT`` and Tmax loses the
        delay the truncation adds at that MTT.
        """
        cbf_c, tmax_c = cbf.astype(np.float64).copy(), tmax.astype(np.float64).copy()
        for i, p in enumerate(self.thresholds):
            sel = np.isclose(threshold, p) & (cbf > 0) & (cbv > 0)
            if not sel.any():
                continue
            est, vol = cbf[sel].astype(np.float64), cbv[sel].astype(np.float64)
            mtt = self._solve_mtt(est, vol, self.ratio[i])
            cbf_c[sel] = 60.0 * vol / mtt
            tmax_c[sel] = np.maximum(tmax[sel] - np.interp(mtt, self.mtt, self.delay[i]), 0.0)
        return cbf_c, tmax_c

    def _solve_mtt(self, est: np.ndarray, vol: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Per voxel, the MTT on the grid where the expected estimate crosses ``est``
        (linear between grid points; the expected estimate falls as MTT grows)."""
        expected = 60.0 * vol[:, None] / self.mtt[None, :] * ratio[None, :]  # (n, M), falling
        above = (expected > est[:, None]).sum(axis=1)  # grid points still above the estimate
        j = np.clip(above, 1, len(self.mtt) - 1)
        rows = np.arange(len(est))
        hi, lo = expected[rows, j - 1], expected[rows, j]
        w = np.clip((hi - est) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
        return self.mtt[j - 1] + w * (self.mtt[j] - self.mtt[j - 1])


def bias_table(basis: AifBasis, aif: np.ndarray, thresholds: Sequence[float],
               mtt: np.ndarray = np.geomspace(1.0, 40.0, 48), fine: int = 10) -> BiasTable:
    """:class:`BiasTable` of ``basis`` at ``thresholds``: noise-free tissue curves with
    exponential residues, made by convolving ``aif`` (the sampled arterial curve, ``(T,)``,
    linear between samples) with the continuous residue on a ``fine`` x finer grid and
    sampling at the frames, then deconvolved through the same SVD."""
    t_fine = np.arange(basis.frames * fine) * (basis.dt / fine)
    a_fine = np.interp(t_fine, np.arange(basis.frames) * basis.dt, aif)
    curves = np.empty((len(mtt), basis.frames))
    for m, tau in enumerate(mtt):
        conv = np.convolve(a_fine, np.exp(-t_fine / tau))[:len(t_fine)] * (basis.dt / fine)
        curves[m] = conv[::fine]
    coef = (_padded(curves, 2 * basis.frames) @ basis.u) / basis.s
    ratio = np.empty((len(thresholds), len(mtt)))
    delay = np.empty_like(ratio)
    for i, p in enumerate(thresholds):
        r = basis.rank(p)
        peak, when = _peak_time(coef[:, :r] @ basis.vt[:r], basis.dt)
        ratio[i], delay[i] = peak, when
    return BiasTable(np.asarray(thresholds, float), mtt, ratio, delay)
