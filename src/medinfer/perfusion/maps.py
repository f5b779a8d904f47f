"""From a 4D CT perfusion series to CBF, CBV, MTT, Tmax and TTP maps.

``compute_maps``: bolus arrival from the arterial curve (so the baseline is the pre-bolus
frames found in the data) -> enhancement (HU above baseline, proportional to iodine) ->
AIF (automatic or a mask) and VOF, the AIF scaled to the VOF's area (arterial partial
volume) -> in-plane smoothing of tissue curves inside the brain -> brain mask (no skull,
air, CSF or vessels) -> deconvolution (:mod:`~medinfer.perfusion.deconvolution`) ->
maps in the input's grid. Units: CBF ml/100 g/min, CBV ml/100 g, MTT, Tmax, TTP seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from medinfer.errors import InputError
from medinfer.io import Image
from medinfer.perfusion.aif import VascularCurve, from_mask, select_arterial, select_venous
from medinfer.perfusion.config import PerfusionConfig
from medinfer.perfusion.curves import area_with_tail, bolus_arrival, enhancement, peak_times
from medinfer.perfusion.deconvolution import aif_basis, bias_table, deconvolve, thresholds_tried

__all__ = ["MAP_NAMES", "PerfusionMaps", "compute_maps", "frame_times"]

MAP_NAMES = ("cbf", "cbv", "mtt", "tmax", "ttp")
_UNIFORM_TOL = 0.02  # a frame interval may differ this much (relative) from the median


@dataclass(frozen=True, eq=False)
class PerfusionMaps:
    """Maps in the input's grid ``(rows, cols, slices)`` (0 outside the brain).

    Attributes:
        cbf, cbv, mtt, tmax, ttp: float32 maps (see the module docstring for units).
        brain: bool mask of the voxels analysed.
        baseline: float32 pre-bolus mean, HU.
        aif, vof: the vessel curves (the AIF as measured, before venous scaling).
        aif_scale: the factor the AIF was scaled by (VOF area / AIF area; 1 without).
        times: ``(T,)`` frame times, seconds; arrival: last pre-bolus frame.
        threshold: float32 map of the SVD threshold used per voxel.
        seconds: wall time per step.
    """

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    tmax: np.ndarray
    ttp: np.ndarray
    brain: np.ndarray
    baseline: np.ndarray
    aif: VascularCurve
    vof: VascularCurve | None
    aif_scale: float
    times: np.ndarray
    arrival: int
    threshold: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A map by name (one of :data:`MAP_NAMES`)."""
        return getattr(self, name)


def frame_times(image: Image) -> np.ndarray:
    """The image's frame times (``meta["frame_times"]``, one per channel), checked uniform.

    Raises:
        InputError: naming the image's source, when times are missing, do not match the
            frames, or are not evenly spaced.
    """
    src = image.source or "<series>"
    times = np.asarray(image.meta.get("frame_times") or [], float)
    if times.size != image.array.shape[0]:
        raise InputError(src, f"{image.array.shape[0]} frames but {times.size} frame times")
    if times.size < 4:
        raise InputError(src, f"only {times.size} frames: too few for perfusion")
    steps = np.diff(times)
    dt = float(np.median(steps))
    if dt <= 0 or np.abs(steps - dt).max() > _UNIFORM_TOL * dt:
        raise InputError(src, f"frame times are not evenly spaced ({steps.min():.3f}..{steps.max():.3f} s); "
                              "resample the series when reading it")
    return times


def _smooth(conc: np.ndarray, weight: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    """In-plane Gaussian smoothing of ``conc`` (``(T, R, C, S)``) inside ``weight``
    (normalized convolution: tissue outside does not bleed in)."""
    if max(sigma_px) <= 0:
        return conc
    sig = (sigma_px[0], sigma_px[1], 0.0)
    w = weight.astype(np.float32)
    norm = ndimage.gaussian_filter(w, sig, truncate=3.0)
    out = np.empty_like(conc)
    for t in range(len(conc)):
        out[t] = ndimage.gaussian_filter(conc[t] * w, sig, truncate=3.0)
    return np.where(norm > 1e-3, out / np.maximum(norm, 1e-3), 0.0).astype(np.float32)


def _vessel_mask(peak: np.ndarray, config: PerfusionConfig) -> np.ndarray:
    """Voxels whose unsmoothed enhancement peak is a vessel's, dilated by one voxel in-plane
    (smoothing would dilute a small artery below the threshold and spread it into tissue)."""
    return ndimage.binary_dilation(peak > config.vessel_peak_hu, structure=np.ones((3, 3, 1), bool))


def _brain(baseline: np.ndarray, vessel: np.ndarray, config: PerfusionConfig) -> np.ndarray:
    """Parenchyma: baseline HU in the brain range, no vessel, small islands opened away."""
    lo, hi = config.brain_hu
    tissue = (baseline > lo) & (baseline < hi)
    return ndimage.binary_opening(tissue & ~vessel, structure=np.ones((3, 3, 1), bool))


def _vessels(image: Image, hu: np.ndarray, times: np.ndarray, config: PerfusionConfig,
             aif_mask: np.ndarray | None, aif_mask_path: str
             ) -> tuple[VascularCurve, VascularCurve | None, int, np.ndarray, np.ndarray]:
    """(AIF, VOF, arrival frame, baseline, enhancement) of the series."""
    src = str(image.source or "<series>")
    lo, hi = config.head_hu
    prelim = hu - hu[0]
    head0 = (hu[0] > lo) & (hu[0] < hi)
    if aif_mask is not None:
        first = from_mask(prelim, aif_mask, times, aif_mask_path)
    else:
        first = select_arterial(prelim, head0, times, config.aif_voxels, src)
    arrival = bolus_arrival(first.curve)
    baseline, conc = enhancement(hu, arrival)
    index = np.ravel_multi_index(tuple(first.voxels.T), hu.shape[1:])
    aif = VascularCurve.of(conc.reshape(len(conc), -1), index, hu.shape[1:], times, first.source)
    head = (baseline > lo) & (baseline < hi)
    vof = select_venous(conc, head, times, config.vof_voxels, aif) if config.venous_correction else None
    return aif, vof, arrival, baseline, conc


def compute_maps(image: Image, config: PerfusionConfig = PerfusionConfig(),
                 aif_mask: np.ndarray | None = None, aif_mask_path: str = "") -> PerfusionMaps:
    """Perfusion maps of a 4D series.

    Args:
        image: ``(T, rows, cols, slices)`` HU, ``meta["frame_times"]`` in seconds, evenly
            spaced (:func:`medinfer.io.perfusion.read_perfusion`).
        config: the analysis settings.
        aif_mask: ``(rows, cols, slices)`` arterial voxels overriding the automatic choice.
        aif_mask_path: the mask's file, named in errors.

    Raises:
        InputError: naming the series (or the mask): no bolus, uneven or missing times,
            no brain found.
    """
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = clock[-1] - clock[-2]

    if image.ndim_spatial != 3:
        raise InputError(image.source or "<series>", "perfusion needs a 4D series (time x 3D)")
    times = frame_times(image)
    dt = float(np.median(np.diff(times)))
    hu = np.asarray(image.array, np.float32)
    aif, vof, arrival, baseline, conc = _vessels(image, hu, times, config, aif_mask, aif_mask_path)
    scale = 1.0
    if vof is not None and aif.area(dt) > 0:
        scale = max(1.0, vof.area(dt) / aif.area(dt))
    lap("vessels")
    lo, hi = config.brain_hu
    sigma = tuple(config.smoothing_mm / float(s) for s in image.spacing[:2])
    vessel = _vessel_mask(conc.max(axis=0), config)
    tissue = _smooth(conc, (baseline > lo) & (baseline < hi) & ~vessel, sigma)
    brain = _brain(baseline, vessel, config)
    if not brain.any():
        raise InputError(image.source or "<series>", f"no brain voxel (baseline {lo:.0f}..{hi:.0f} HU "
                                                     "without vessels) found")
    lap("smooth")
    curves = tissue[:, brain].T.astype(np.float64)  # (N, T)
    arterial = aif.curve.astype(np.float64) * scale
    basis = aif_basis(arterial, dt)
    d = deconvolve(curves, basis, config.method, config.svd_threshold,
                   config.osvd_thresholds, config.oscillation_index, config.backend,
                   config.chunk_voxels)
    lap("deconvolve")
    factor = config.kh / config.rho
    cbf = factor * d.peak * 6000.0
    cbv = factor * area_with_tail(curves, dt, config.tail_extrapolation) / max(arterial.sum() * dt, 1e-9) * 100.0
    tmax = d.tmax
    if config.bias_correction:
        tried = thresholds_tried(config.method, config.svd_threshold, config.osvd_thresholds)
        table = bias_table(basis, arterial, tried)
        cbf, tmax = table.correct(cbf, cbv, tmax, d.threshold)
    keep = cbv <= config.vessel_cbv
    brain[brain] = keep
    values = {"cbf": cbf, "cbv": cbv, "mtt": np.where(cbf > 0, 60.0 * cbv / np.maximum(cbf, 1e-9), 0.0),
              "tmax": tmax, "ttp": peak_times(curves, times), "threshold": d.threshold}
    grids = {k: _to_grid(v[keep], brain) for k, v in values.items()}
    lap("maps")
    return PerfusionMaps(**{k: grids[k] for k in MAP_NAMES}, brain=brain, baseline=baseline,
                         aif=aif, vof=vof, aif_scale=float(scale), times=times, arrival=arrival,
                         threshold=grids["threshold"], seconds=seconds)


def _to_grid(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, np.float32)
    out[mask] = values
    return out
