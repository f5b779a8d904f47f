"""The settings of one perfusion analysis: a validated object, passed explicitly.

Every threshold a clinician or physicist may want to change lives here, with the value
the literature uses by default; the analysis records the settings it ran with in its
JSON (``method``), so a result can always be traced to them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PerfusionConfig(BaseModel):
    """How maps and lesions are computed.

    Attributes:
        method: ``osvd`` (block-circulant SVD with a per-voxel threshold chosen by the
            oscillation index, Wu et al. 2003; delay-insensitive) or ``bcsvd``
            (block-circulant SVD with one fixed threshold, delay-insensitive).
        svd_threshold: ``bcsvd``: singular values below this fraction of the largest are
            dropped (truncated SVD); ``osvd``: the largest threshold tried.
        osvd_thresholds: ``osvd``: the thresholds tried, fractions of the largest singular value.
        oscillation_index: ``osvd``: the largest oscillation index a voxel's residue function
            may have (Wu et al. 2003 used 0.095 at their sampling).
        bias_correction: correct CBF and Tmax for what the truncation does to an exponential
            residue function at each voxel's threshold and transit time
            (:class:`~medinfer.perfusion.deconvolution.BiasTable`).
        kh: haematocrit correction (1 - Hct large vessels) / (1 - Hct small vessels).
        rho: brain tissue density, g/ml.
        smoothing_mm: in-plane Gaussian sigma applied to tissue curves (not to the arterial
            search) before deconvolution; 0 turns it off.
        head_hu: baseline HU range of soft tissue and blood searched for arteries and veins
            (excludes air and bone).
        brain_hu: baseline HU range of brain parenchyma (excludes CSF below, bone above).
        vessel_peak_hu: a voxel whose tissue curve rises more than this is a vessel, not brain.
        vessel_cbv: a voxel with a larger CBV (ml/100 g) is a vessel, not brain.
        aif_voxels / vof_voxels: how many voxels are averaged into the AIF / VOF.
        venous_correction: scale the AIF so its area equals the VOF's (corrects the
            arterial partial volume; needs a VOF).
        tail_extrapolation: extend tissue curves truncated by the end of the acquisition
            with an exponential fitted to their last frames (CBV of long transit times).
        core_rcbf: core = CBF below this fraction of the normal hemisphere's CBF.
        penumbra_tmax: hypoperfused (penumbra) = Tmax above this, seconds.
        core_within_hypoperfusion / core_min_tmax: count low-CBF voxels as core only where
            Tmax also exceeds ``core_min_tmax`` seconds (an acute core lies in hypoperfused
            tissue; without it, chronic infarcts and CSF partial volume count as core).
        min_component_ml: lesion islands smaller than this (ml) are dropped.
        defuse3_core_ml / defuse3_ratio / defuse3_mismatch_ml: DEFUSE-3 eligibility: core
            below, mismatch ratio at least, mismatch volume at least.
        backend: ``torch`` (batched on all voxels at once) or ``numpy`` (the reference).
        chunk_voxels: voxels deconvolved at once (bounds memory).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["osvd", "bcsvd"] = "osvd"
    svd_threshold: float = Field(0.2, gt=0, lt=1)
    osvd_thresholds: tuple[float, ...] = (0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4)
    oscillation_index: float = Field(0.095, gt=0)
    bias_correction: bool = True
    kh: float = Field(0.73, gt=0)
    rho: float = Field(1.04, gt=0)
    smoothing_mm: float = Field(3.0, ge=0)
    head_hu: tuple[float, float] = (-50.0, 150.0)
    brain_hu: tuple[float, float] = (15.0, 65.0)
    vessel_peak_hu: float = Field(60.0, gt=0)
    vessel_cbv: float = Field(20.0, gt=0)
    aif_voxels: int = Field(6, ge=1)
    vof_voxels: int = Field(6, ge=1)
    venous_correction: bool = True
    tail_extrapolation: bool = True
    core_rcbf: float = Field(0.30, gt=0, lt=1)
    penumbra_tmax: float = Field(6.0, gt=0)
    core_within_hypoperfusion: bool = True
    core_min_tmax: float = Field(4.0, ge=0)
    min_component_ml: float = Field(0.3, ge=0)
    defuse3_core_ml: float = 70.0
    defuse3_ratio: float = 1.8
    defuse3_mismatch_ml: float = 15.0
    backend: Literal["torch", "numpy"] = "torch"
    chunk_voxels: int = Field(1 << 14, ge=1024)
