"""Ischaemic core, hypoperfusion (penumbra), mismatch and DEFUSE-3 eligibility.

The brain's circulation is left-right symmetric, so the hemisphere opposite the
hypoperfusion is the normal reference (the eStroke / RAPID approach):

- the midline of each slice is the brain mask's centre along the patient's left-right
  axis; the affected side is the one holding more Tmax above the threshold;
- core = CBF below ``core_rcbf`` (30 %) of the median CBF of the normal hemisphere's
  brain voxels that are not hypoperfused; by default only where the tissue is also
  hypoperfused (Tmax above ``core_min_tmax``): low flow with an on-time bolus is old
  infarct, CSF partial volume or noise, not the acute core (``core_within_hypoperfusion``);
- penumbra = Tmax above ``penumbra_tmax`` (6 s): the hypoperfused tissue, core included
  (RAPID's "Tmax > 6 s volume");
- mismatch volume = penumbra - core volumes, mismatch ratio = penumbra / core volumes;
- DEFUSE-3: core < 70 ml, mismatch ratio >= 1.8 and mismatch volume >= 15 ml.

Holes in both masks are filled slice by slice (within the brain) and islands smaller than
``min_component_ml`` dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medinfer.perfusion.config import PerfusionConfig

__all__ = ["Lesions", "find_lesions", "left_right"]


@dataclass(frozen=True, eq=False)
class Lesions:
    """Lesion masks (``(rows, cols, slices)`` bool) and volumes.

    Attributes:
        core, penumbra: masks (penumbra includes the core where Tmax is high there too).
        affected: ``left`` or ``right`` (patient side), or ``none`` without hypoperfusion.
        reference_cbf: the normal hemisphere's median CBF, ml/100 g/min.
        core_ml, penumbra_ml, mismatch_ml: volumes, ml; mismatch_ratio: None without core.
        defuse3_eligible: the three DEFUSE-3 imaging criteria met.
    """

    core: np.ndarray
    penumbra: np.ndarray
    affected: str
    reference_cbf: float
    core_ml: float
    penumbra_ml: float
    mismatch_ml: float
    mismatch_ratio: float | None
    defuse3_eligible: bool

    def labels(self) -> np.ndarray:
        """uint8 label map: 1 = core, 2 = hypoperfused tissue outside the core (mismatch)."""
        out = np.zeros(self.core.shape, np.uint8)
        out[self.penumbra] = 2
        out[self.core] = 1
        return out

    def summary(self) -> dict[str, object]:
        """The JSON keys of ``medinfer perfusion`` (a contract)."""
        ratio = None if self.mismatch_ratio is None else round(self.mismatch_ratio, 3)
        return {"core_ml": round(self.core_ml, 2), "penumbra_ml": round(self.penumbra_ml, 2),
                "mismatch_ml": round(self.mismatch_ml, 2), "mismatch_ratio": ratio,
                "defuse3_eligible": self.defuse3_eligible, "affected_side": self.affected,
                "reference_cbf": round(self.reference_cbf, 2)}


def left_right(brain: np.ndarray, affine: np.ndarray, frame: str = "LPS") -> np.ndarray:
    """Signed distance (mm) of every voxel from its slice's midline along the patient's
    left-right axis: positive = patient left. ``affine`` maps (row, col, slice) indices to
    world mm in ``frame`` (LPS for DICOM: +x is left; RAS for NIfTI: +x is right)."""
    idx = np.indices(brain.shape).reshape(3, -1).astype(np.float64)
    x = (affine[0, :3] @ idx + affine[0, 3]).reshape(brain.shape)
    if frame == "RAS":
        x = -x
    mid = np.array([np.median(x[..., k][brain[..., k]]) if brain[..., k].any() else 0.0
                    for k in range(brain.shape[2])])
    return x - mid[None, None, :]


def _clean(mask: np.ndarray, min_voxels: int, brain: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice (inside the brain: noise lifts single voxels of a low-flow
    region over the threshold) and islands under ``min_voxels`` dropped."""
    if not mask.any():
        return mask
    filled = np.stack([ndimage.binary_fill_holes(mask[..., k]) for k in range(mask.shape[2])], axis=2)
    mask = filled & brain
    if min_voxels <= 1:
        return mask
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def find_lesions(cbf: np.ndarray, tmax: np.ndarray, brain: np.ndarray, side: np.ndarray,
                 voxel_ml: float, config: PerfusionConfig = PerfusionConfig()) -> Lesions:
    """Core, penumbra and volumes from CBF and Tmax maps.

    Args:
        cbf, tmax: maps ``(rows, cols, slices)`` (ml/100 g/min, s).
        brain: bool, the voxels analysed.
        side: :func:`left_right` of the grid (positive = patient left).
        voxel_ml: one voxel's volume, ml.
        config: thresholds and DEFUSE-3 criteria.
    """
    min_voxels = int(np.ceil(config.min_component_ml / voxel_ml)) if voxel_ml > 0 else 0
    penumbra = _clean(brain & (tmax > config.penumbra_tmax), min_voxels, brain)
    left, right = brain & (side > 0), brain & (side < 0)
    n_left, n_right = int((penumbra & left).sum()), int((penumbra & right).sum())
    affected = "none" if n_left == n_right == 0 else ("left" if n_left > n_right else "right")
    normal = right if affected == "left" else left
    reference = normal & ~penumbra
    if not reference.any():
        reference = brain & ~penumbra if (brain & ~penumbra).any() else brain
    ref_cbf = float(np.median(cbf[reference]))
    low = brain & (cbf < config.core_rcbf * ref_cbf)
    if config.core_within_hypoperfusion:
        low &= tmax > config.core_min_tmax
    core = _clean(low, min_voxels, brain)
    core_ml, pen_ml = float(core.sum() * voxel_ml), float(penumbra.sum() * voxel_ml)
    mismatch = max(pen_ml - core_ml, 0.0)
    ratio = pen_ml / core_ml if core_ml > 0 else None
    eligible = (core_ml < config.defuse3_core_ml and mismatch >= config.defuse3_mismatch_ml
                and (ratio is None or ratio >= config.defuse3_ratio))
    return Lesions(core, penumbra, affected, ref_cbf, core_ml, pen_ml, mismatch, ratio, eligible)
