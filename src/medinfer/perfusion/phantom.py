"""A digital CT perfusion phantom with known truth (a library function, so tests, the
benchmark and users make the same one).

Layout of every axial slice (patient coordinates, LPS: column index grows to the patient's
left, row index to posterior): skull ring, brain, a CSF ventricle on the midline, one small artery per
hemisphere drawn with partial volume (no pixel is fully inside it), the superior sagittal
sinus (a vein) at the back. The patient's right hemisphere holds a grid of tissue blocks
spanning CBF 10-70 ml/100 g/min and MTT 4-16 s; the tracer delay grows from 0 s in the
first slice to ``max_delay`` s in the last (the delay-insensitivity test). The patient's
left hemisphere holds, in the middle slices, an ischaemic lesion: a core (CBF 8,
delay 8 s) inside hypoperfused tissue (CBF 22, delay 8 s). Everything else is normal
tissue (CBF 50, CBV 4).

Tissue curves follow the indicator-dilution model ``C(t) = rho/kh * CBF * (AIF(. - delay) *
R)(t)`` with an exponential residue function ``R(t) = exp(-t / MTT)``, computed on a 0.05 s
grid and sampled at the frame times (not the analysis' own discretisation); the AIF is a
gamma variate with a recirculation bump, the venous curve the AIF delayed and dispersed
with the same area. Gaussian noise of ``noise_hu`` is added to every voxel and frame.

True Tmax is the delay; true core and penumbra come from the same rules
(:func:`~medinfer.perfusion.lesions.find_lesions`) applied to the true maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy import ndimage

from medinfer.io import Image
from medinfer.io.perfusion import write_perfusion_series
from medinfer.perfusion.config import PerfusionConfig
from medinfer.perfusion.lesions import Lesions, find_lesions, left_right

__all__ = ["BLOCK_CBF", "BLOCK_MTT", "Phantom", "PhantomConfig", "PhantomTruth", "make_phantom"]

BLOCK_CBF = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)
BLOCK_MTT = (4.0, 8.0, 12.0, 16.0)
NORMAL = (50.0, 4.0)            # CBF, CBV of normal tissue
CORE = (8.0, 1.2, 8.0)          # CBF, CBV, delay
HYPOPERFUSED = (22.0, 3.5, 8.0)
_HU = {"air": -1000.0, "bone": 1100.0, "brain": 35.0, "csf": 8.0, "blood": 42.0}
_FINE = 0.05  # s, the forward model's time step


class PhantomConfig(BaseModel):
    """Size, timing and noise of the phantom.

    Attributes:
        size: rows = columns; fov_mm: field of view (pixel = fov / size); slices and
        slice_mm: slice count and thickness; frames and dt: time points and interval (s);
        max_delay: tracer delay of the last slice, s; noise_hu: noise sigma, HU;
        aif_peak_hu: arterial peak enhancement; seed: noise seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = 128
    fov_mm: float = 230.0
    slices: int = 8
    slice_mm: float = 5.0
    frames: int = 40
    dt: float = 1.5
    max_delay: float = 3.0
    noise_hu: float = 1.5
    aif_peak_hu: float = 350.0
    seed: int = 0


@dataclass(frozen=True, eq=False)
class PhantomTruth:
    """True maps ``(rows, cols, slices)`` and regions.

    Attributes:
        cbf, cbv, mtt, tmax: true values in tissue (0 elsewhere); ``tmax`` is the delay.
        tissue: bool, brain tissue (no CSF, skull or vessel pixels, vessels dilated by one).
        block: int, block number + 1 in the block grid (0 elsewhere); blocks are listed in
            :attr:`blocks` as (CBF, MTT).
        lesions: the true core, penumbra and volumes.
        aif, vof: true arterial / venous enhancement ``(T,)``.
    """

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    tmax: np.ndarray
    tissue: np.ndarray
    block: np.ndarray
    blocks: list[tuple[float, float]]
    lesions: Lesions
    aif: np.ndarray
    vof: np.ndarray


@dataclass(frozen=True, eq=False)
class Phantom:
    """The series (``image``: ``(T, rows, cols, slices)`` HU, LPS, frame times in meta)
    and its truth."""

    image: Image
    truth: PhantomTruth
    config: PhantomConfig


def _gamma(t: np.ndarray, t0: float, alpha: float, beta: float) -> np.ndarray:
    """Gamma variate with peak 1 at ``t0 + alpha * beta``."""
    s = np.clip(t - t0, 0.0, None) / (alpha * beta)
    return np.where(t > t0, s ** alpha * np.exp(alpha * (1 - s)), 0.0)


def arterial_curve(t: np.ndarray, peak: float) -> np.ndarray:
    """The phantom's AIF: a bolus arriving at 5 s plus a 12 % recirculation bump."""
    return peak * (_gamma(t, 5.0, 3.0, 1.5) + 0.12 * _gamma(t, 15.0, 3.0, 3.0))


def _tissue_curve(aif_fine: np.ndarray, cbf: float, cbv: float, delay: float,
                  times: np.ndarray, factor: float) -> np.ndarray:
    """Tissue enhancement at ``times`` (HU) for the indicator-dilution model."""
    tf = np.arange(len(aif_fine)) * _FINE
    mtt = 60.0 * cbv / cbf
    residue = np.exp(-tf / mtt)
    shifted = np.interp(tf - delay, tf, aif_fine, left=0.0)
    conv = np.convolve(shifted, residue)[:len(tf)] * _FINE
    return np.interp(times, tf, factor * cbf / 6000.0 * conv)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float) -> np.ndarray:
    return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0


def _coverage(n: int, cu: float, cv: float, radius_px: float, sub: int = 8) -> np.ndarray:
    """Fraction of each pixel inside a disc (super-sampled ``sub`` x ``sub``)."""
    c = (np.arange(n * sub) + 0.5) / sub - 0.5
    rows, cols = np.meshgrid(c, c, indexing="ij")
    centre = ((cv + 1) * n / 2 - 0.5, (cu + 1) * n / 2 - 0.5)
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius_px ** 2
    return inside.reshape(n, sub, n, sub).mean(axis=(1, 3))


def _layout(n: int) -> dict[str, np.ndarray]:
    """Boolean regions of one slice, ``(n, n)``; u = patient right (-1) to left (+1)."""
    c = (np.arange(n) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")
    head, brain = _ellipse(u, v, 0, 0, 0.82, 0.94), _ellipse(u, v, 0, 0, 0.74, 0.86)
    csf = _ellipse(u, v, 0.0, -0.05, 0.045, 0.16)
    block = np.zeros((n, n), int)
    for i, _cbf in enumerate(BLOCK_CBF):
        for j, _mtt in enumerate(BLOCK_MTT):
            r0, c0 = -0.60 + i * 0.172, -0.54 + j * 0.118
            inside = (v >= r0) & (v < r0 + 0.158) & (u >= c0) & (u < c0 + 0.104)
            block[inside & brain] = 1 + i * len(BLOCK_MTT) + j
    core = _ellipse(u, v, 0.32, -0.1, 0.12, 0.2) & brain
    hypo = _ellipse(u, v, 0.30, -0.1, 0.22, 0.42) & brain & ~csf
    return {"u": u, "v": v, "head": head, "brain": brain & ~csf, "csf": csf & brain,
            "block": block, "core": core, "hypo": hypo}


def _vessels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(arterial partial-volume fraction, venous fraction) per pixel, ``(n, n)``."""
    radius = 0.75 * n / 128
    art = np.maximum(_coverage(n, -0.08, -0.74, radius), _coverage(n, 0.08, -0.74, radius))
    vein = _coverage(n, 0.0, 0.80, 2.6 * n / 128)
    return np.minimum(art, 0.7), vein


def make_phantom(config: PhantomConfig = PhantomConfig(),
                 analysis: PerfusionConfig = PerfusionConfig()) -> Phantom:
    """Build the phantom series and its truth (see the module docstring).

    ``analysis`` supplies kh, rho and the lesion rules the truth's core and penumbra use.
    """
    n, s, frames = config.size, config.slices, config.frames
    times = np.arange(frames) * config.dt
    tf = np.arange(int(np.ceil((times[-1] + 1) / _FINE)) + 1) * _FINE
    aif_fine = arterial_curve(tf, config.aif_peak_hu)
    factor = analysis.rho / analysis.kh
    lay = _layout(n)
    art, vein = _vessels(n)
    shape = (n, n, s)
    truth = {k: np.zeros(shape, np.float32) for k in ("cbf", "cbv", "tmax")}
    hu = np.empty((frames, *shape), np.float32)
    cache: dict[tuple[float, float, float], np.ndarray] = {}

    def curve(cbf: float, cbv: float, delay: float) -> np.ndarray:
        key = (cbf, cbv, round(delay, 4))
        if key not in cache:
            cache[key] = _tissue_curve(aif_fine, cbf, cbv, delay, times, factor)
        return cache[key]

    aif_t = np.interp(times, tf, aif_fine)
    vof_fine = np.convolve(np.interp(tf - 3.0, tf, aif_fine, left=0.0), np.exp(-tf / 3.0))[:len(tf)] * _FINE / 3.0
    vof_t = np.interp(times, tf, vof_fine)
    lesion_slices = range(s // 4, s - s // 4) if s >= 4 else range(s)
    for k in range(s):
        delay = config.max_delay * k / max(s - 1, 1)
        values = _slice_values(lay, k in lesion_slices, delay)
        enh = np.zeros((frames, n, n), np.float32)
        for (cbf, cbv, d), where in values.items():
            enh[:, where] = curve(cbf, cbv, d)[:, None]
            truth["cbf"][where, k], truth["cbv"][where, k], truth["tmax"][where, k] = cbf, cbv, d
        base = np.where(lay["head"], _HU["bone"], _HU["air"])
        base = np.where(lay["brain"], _HU["brain"], base)
        base = np.where(lay["csf"], _HU["csf"], base)
        frame = base[None] + enh
        frame = (1 - art) * frame + art * (_HU["blood"] + aif_t[:, None, None])
        frame = (1 - vein) * frame + vein * (_HU["blood"] + vof_t[:, None, None])
        hu[:, :, :, k] = frame
    rng = np.random.default_rng(config.seed)
    hu += rng.normal(0.0, config.noise_hu, hu.shape).astype(np.float32)
    return _assemble(config, analysis, hu, times, truth, lay, art, vein, aif_t, vof_t)


def _slice_values(lay: dict[str, np.ndarray], lesion: bool, delay: float
                  ) -> dict[tuple[float, float, float], np.ndarray]:
    """(CBF, CBV, delay) -> pixels of one slice holding that tissue."""
    tissue = lay["brain"].copy()
    out: dict[tuple[float, float, float], np.ndarray] = {}
    taken = np.zeros_like(tissue)
    if lesion:
        out[CORE] = lay["core"]
        out[HYPOPERFUSED] = lay["hypo"] & ~lay["core"]
        taken |= lay["hypo"]
    for b in range(1, len(BLOCK_CBF) * len(BLOCK_MTT) + 1):
        where = lay["block"] == b
        if where.any():
            cbf, mtt = BLOCK_CBF[(b - 1) // len(BLOCK_MTT)], BLOCK_MTT[(b - 1) % len(BLOCK_MTT)]
            out[(cbf, cbf * mtt / 60.0, delay)] = where & ~taken
            taken |= where
    out[(NORMAL[0], NORMAL[1], delay)] = tissue & ~taken
    return out


def _assemble(config: PhantomConfig, analysis: PerfusionConfig, hu: np.ndarray, times: np.ndarray,
              truth: dict[str, np.ndarray], lay: dict[str, np.ndarray], art: np.ndarray,
              vein: np.ndarray, aif_t: np.ndarray, vof_t: np.ndarray) -> Phantom:
    n, s = config.size, config.slices
    px = config.fov_mm / n
    spacing = (px, px, config.slice_mm)
    origin = (-config.fov_mm / 2 + px / 2, -config.fov_mm / 2 + px / 2, 0.0)
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image = Image(hu, spacing, origin, direction, None,
                  {"format": "phantom", "frame": "LPS", "modality": "CT",
                   "frame_times": [float(t) for t in times], "time_source": "phantom"})
    vessel = np.repeat(((art > 0) | (vein > 0))[:, :, None], s, axis=2)
    vessel = ndimage.binary_dilation(vessel, structure=np.ones((3, 3, 1), bool))
    tissue = np.repeat(lay["brain"][:, :, None], s, axis=2) & ~vessel
    for key in truth:
        truth[key][~tissue] = 0.0
    cbf, cbv = truth["cbf"], truth["cbv"]
    mtt = np.where(cbf > 0, 60.0 * cbv / np.maximum(cbf, 1e-9), 0.0).astype(np.float32)
    affine = image.affine
    side = left_right(tissue, affine, "LPS")
    lesions = find_lesions(cbf, truth["tmax"], tissue, side, float(np.prod(spacing)) / 1000.0, analysis)
    blocks = [(c, m) for c in BLOCK_CBF for m in BLOCK_MTT]
    block = np.repeat(lay["block"][:, :, None], s, axis=2) * tissue
    return Phantom(image, PhantomTruth(cbf, cbv, mtt, truth["tmax"], tissue, block, blocks, lesions,
                                       aif_t, vof_t), config)


def write_phantom(phantom: Phantom, folder: str | Path, time_attribute: str = "AcquisitionTime") -> Path:
    """Write ``folder/series/`` (the 4D DICOM series, one file per slice and time point) and
    ``folder/truth.npz`` (cbf, cbv, mtt, tmax, tissue, block, core, penumbra), the layout
    ``medinfer evaluate`` reads for a perfusion artifact. Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img, t = phantom.image, phantom.truth
    write_perfusion_series(img.array, img.meta["frame_times"], folder / "series", spacing=img.spacing,
                           origin=img.origin, time_attribute=time_attribute)
    np.savez_compressed(folder / "truth.npz", cbf=t.cbf, cbv=t.cbv, mtt=t.mtt, tmax=t.tmax, tissue=t.tissue,
                        block=t.block, core=t.lesions.core, penumbra=t.lesions.penumbra)
    return folder
