"""Arterial input (AIF) and venous output (VOF): automatic selection or a given mask.

Automatic: among head voxels (baseline HU in soft-tissue/blood range: no air, no bone),
the candidates are those with the highest enhancement (top ``1 %``, at least 40 HU). The
arterial voxels are the candidates that peak earliest (within one frame of the earliest
quarter) with the highest peak over width; the venous voxels peak later than the artery and
have the largest area. Both are recorded voxel by voxel, so a reader can check them and,
when the automatic choice fails, give ``--aif-mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medinfer.errors import InputError

__all__ = ["VascularCurve", "check_vessels", "from_mask", "select_arterial", "select_venous"]

_MIN_PEAK_HU = 40.0
_CANDIDATE_FRACTION = 0.01


@dataclass(frozen=True)
class VascularCurve:
    """An averaged vessel curve and where it came from.

    Attributes:
        curve: ``(T,)`` enhancement (HU above baseline).
        voxels: ``(n, 3)`` array indices (row, column, slice) averaged.
        source: ``auto`` or ``mask``.
        peak: peak enhancement, HU; peak_time: its time, seconds.
    """

    curve: np.ndarray
    voxels: np.ndarray
    source: str
    peak: float
    peak_time: float

    @classmethod
    def of(cls, conc: np.ndarray, index: np.ndarray, shape: tuple[int, ...], times: np.ndarray,
           source: str) -> VascularCurve:
        """Average ``conc`` (``(T, N)`` flat voxels) over flat ``index`` of a ``shape`` grid."""
        curve = conc[:, index].mean(axis=1)
        voxels = np.stack(np.unravel_index(index, shape), axis=1)
        p = int(np.argmax(curve))
        return cls(curve, voxels, source, float(curve[p]), float(times[p]))

    def area(self, dt: float) -> float:
        return float(self.curve.sum() * dt)

    def record(self, affine: np.ndarray | None = None) -> dict[str, object]:
        """JSON-ready: voxels (and their world positions with ``affine``), peak, time."""
        out: dict[str, object] = {"source": self.source, "voxels": self.voxels.tolist(),
                                  "peak_hu": round(self.peak, 2), "peak_time_s": round(self.peak_time, 3)}
        if affine is not None:
            world = (affine[:3, :3] @ self.voxels.T + affine[:3, 3:4]).T
            out["world_mm"] = np.round(world, 2).tolist()
        return out


def _candidates(conc: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Flat indices of the most enhancing head voxels."""
    peaks = conc.max(axis=0)
    inside = np.flatnonzero(head.ravel())
    if inside.size == 0:
        return inside
    cut = max(_MIN_PEAK_HU, float(np.quantile(peaks[inside], 1 - _CANDIDATE_FRACTION)))
    return inside[peaks[inside] >= cut]


def select_arterial(conc: np.ndarray, head: np.ndarray, times: np.ndarray, n: int,
                    source: str = "<series>") -> VascularCurve:
    """The automatic AIF.

    Args:
        conc: ``(T, *grid)`` enhancement, HU.
        head: ``grid`` bool, where vessels are searched.
        times: ``(T,)`` seconds.
        n: voxels averaged.
        source: the series, named in the error.

    Raises:
        InputError: no voxel enhances enough to be an artery (no bolus in the series).
    """
    flat = conc.reshape(len(conc), -1)
    cand = _candidates(flat, head)
    if cand.size == 0:
        raise InputError(source, f"no voxel enhances by {_MIN_PEAK_HU:.0f} HU or more: no contrast "
                                 "bolus found; give the arterial voxels with --aif-mask")
    curves = flat[:, cand]
    ttp = np.argmax(curves, axis=0)
    early = ttp <= np.quantile(ttp, 0.25) + 1
    peak = curves.max(axis=0)
    width = (curves >= 0.5 * peak).sum(axis=0)
    score = np.where(early, peak / np.maximum(width, 1), -np.inf)
    best = cand[np.argsort(-score, kind="stable")[:min(n, int(early.sum()))]]
    return VascularCurve.of(flat, best, head.shape, times, "auto")


def select_venous(conc: np.ndarray, head: np.ndarray, times: np.ndarray, n: int,
                  aif: VascularCurve) -> VascularCurve | None:
    """The automatic VOF: candidates peaking at least one frame after the AIF, largest
    area first; None when there is none."""
    flat = conc.reshape(len(conc), -1)
    cand = _candidates(flat, head)
    if cand.size == 0:
        return None
    curves = flat[:, cand]
    aif_frame = int(np.argmax(aif.curve))
    late = np.argmax(curves, axis=0) > aif_frame
    if not late.any():
        return None
    area = np.where(late, curves.sum(axis=0), -np.inf)
    best = cand[np.argsort(-area, kind="stable")[:min(n, int(late.sum()))]]
    return VascularCurve.of(flat, best, head.shape, times, "auto")


def from_mask(conc: np.ndarray, mask: np.ndarray, times: np.ndarray, path: str) -> VascularCurve:
    """The AIF averaged over a given mask (``grid`` shaped, non-zero = arterial voxel).

    Raises:
        InputError: naming ``path``, when the mask's shape differs from the series' or it
            selects no voxel.
    """
    grid = conc.shape[1:]
    if mask.shape != grid:
        raise InputError(path, f"AIF mask has shape {mask.shape}, the series' grid is {grid}")
    index = np.flatnonzero(mask.ravel())
    if index.size == 0:
        raise InputError(path, "AIF mask selects no voxel")
    return VascularCurve.of(conc.reshape(len(conc), -1), index, grid, times, "mask")


_WEAK_AIF_HU = 100.0


def check_vessels(aif: VascularCurve, vof: VascularCurve | None, times: np.ndarray) -> list[str]:
    """Plain-language warnings about the vessel curves a reader should see before trusting
    the maps: an AIF that peaks no earlier than the VOF (the automatic choice may be a vein),
    a weak or truncated AIF, no VOF (no partial-volume correction)."""
    out = []
    if aif.peak_time >= float(times[-1]):
        out.append("the AIF peaks on the last frame: the bolus is cut off by the end of the acquisition")
    if aif.peak < _WEAK_AIF_HU:
        out.append(f"the AIF rises only {aif.peak:.0f} HU: a weak bolus or heavy partial volume; "
                   "the maps are less reliable")
    if vof is None:
        out.append("no venous output peaking after the AIF: the AIF is not corrected for partial "
                   "volume (CBF and CBV may read high), or the AIF itself is a vein; check the AIF "
                   "voxels or give --aif-mask")
    elif aif.peak_time >= vof.peak_time:
        out.append(f"the AIF peaks at {aif.peak_time:.1f} s, not before the VOF ({vof.peak_time:.1f} s): "
                   "the automatic choice may be a vein; check the AIF voxels or give --aif-mask")
    return out
