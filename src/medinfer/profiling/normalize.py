"""Per-plate robust normalisation against DMSO, feature selection, treatment profiles.

Rule of the feature selection (:func:`select_features`), applied to the raw wells:

1. Position features are dropped: every name with ``_Location_`` (centres of mass and
   maxima of intensity) or ``_AreaShape_Center_`` in it. A cell's position in the field of
   view says nothing about its phenotype.
2. Near-constant features are dropped: those whose DMSO robust scale (1.4826 x MAD of the
   plate's DMSO wells) is at most ``rel_tol`` x (1 + |DMSO median|) on at least half of
   the plates, i.e. on a typical plate the controls show no spread to normalise by.

:func:`normalize_per_plate` then maps each feature of each well to
``(x - median_DMSO(plate)) / max(1.4826 * MAD_DMSO(plate), floor)`` where ``floor`` is
``floor_frac`` x the median of that feature's DMSO scale over all plates, so a plate whose
few DMSO wells happen to agree closely cannot blow a feature up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medinfer.profiling.profiles import CONTROL, WellProfiles

__all__ = ["MAD_TO_SD", "TreatmentProfiles", "dmso_stats", "is_position_feature",
           "normalize_per_plate", "prepare_treatments", "select_features", "treatment_profiles"]

MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class TreatmentProfiles:
    """One profile per treatment (compound + concentration); arrays have one entry each.

    Attributes:
        features: ``(n_treatments, n_features)`` median of the treatment's normalised wells.
        feature_names: the feature names.
        compound: compound names.
        concentration: concentrations in µM.
        moa: MoA labels.
        batches: the set of batches (weeks) the treatment's wells lie in.
        n_wells: how many wells each profile is the median of.
    """

    features: np.ndarray
    feature_names: tuple[str, ...]
    compound: np.ndarray
    concentration: np.ndarray
    moa: np.ndarray
    batches: tuple[frozenset[str], ...]
    n_wells: np.ndarray

    @property
    def n_treatments(self) -> int:
        return int(self.features.shape[0])


def is_position_feature(name: str) -> bool:
    """Whether a CellProfiler feature is a position in the image (dropped)."""
    return "_Location_" in name or "_AreaShape_Center_" in name


def dmso_stats(wells: WellProfiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-plate DMSO median and robust scale.

    Returns:
        ``(plates, median, scale)``: the sorted plate names ``(n_plates,)`` and two
        ``(n_plates, n_features)`` arrays: the DMSO median and 1.4826 x MAD (unfloored).

    Raises:
        ValueError: a plate without DMSO wells.
    """
    plates = np.unique(wells.plate)
    med = np.empty((len(plates), wells.features.shape[1]))
    scale = np.empty_like(med)
    for i, p in enumerate(plates):
        ctrl = wells.features[(wells.plate == p) & wells.is_control]
        if len(ctrl) == 0:
            raise ValueError(f"plate {p} has no {CONTROL} wells to normalise against")
        med[i] = np.median(ctrl, axis=0)
        scale[i] = MAD_TO_SD * np.median(np.abs(ctrl - med[i]), axis=0)
    return plates, med, scale


def select_features(wells: WellProfiles, rel_tol: float = 1e-6) -> WellProfiles:
    """Drop position and near-constant features (rule in the module docstring)."""
    _, med, scale = dmso_stats(wells)
    flat = np.mean(scale <= rel_tol * (1.0 + np.abs(med)), axis=0) >= 0.5
    keep = [j for j, n in enumerate(wells.feature_names) if not is_position_feature(n) and not flat[j]]
    return wells.with_features(wells.features[:, keep], tuple(wells.feature_names[j] for j in keep))


def normalize_per_plate(wells: WellProfiles, floor_frac: float = 0.1) -> WellProfiles:
    """Robust z-scores of every well against its plate's DMSO wells (module docstring).

    Args:
        wells: raw (or selected) well profiles; every plate needs DMSO wells.
        floor_frac: the scale floor as a fraction of the feature's median DMSO scale over
            plates (an absolute 1e-12 below that).

    Returns:
        The same wells with normalised features; each plate's DMSO median becomes 0.
    """
    plates, med, scale = dmso_stats(wells)
    floor = np.maximum(floor_frac * np.median(scale, axis=0), 1e-12)
    out = np.empty_like(wells.features)
    for i, p in enumerate(plates):
        rows = wells.plate == p
        out[rows] = (wells.features[rows] - med[i]) / np.maximum(scale[i], floor)
    return wells.with_features(out, wells.feature_names)


def treatment_profiles(wells: WellProfiles) -> TreatmentProfiles:
    """Median of each annotated treatment's wells; DMSO and unannotated wells are left out.

    Treatments are ordered by (MoA, compound, concentration).
    """
    use = ~wells.is_control & (wells.moa != "")
    keys = sorted({(m, c, x) for m, c, x in zip(wells.moa[use], wells.compound[use],
                                                 wells.concentration[use])})
    feats, batches, counts = [], [], []
    for m, c, x in keys:
        rows = use & (wells.compound == c) & (wells.concentration == x)
        feats.append(np.median(wells.features[rows], axis=0))
        batches.append(frozenset(wells.batch[rows].tolist()))
        counts.append(int(rows.sum()))
    return TreatmentProfiles(
        features=np.array(feats).reshape(len(keys), wells.features.shape[1]),
        feature_names=wells.feature_names,
        compound=np.array([k[1] for k in keys]), concentration=np.array([k[2] for k in keys]),
        moa=np.array([k[0] for k in keys]), batches=tuple(batches), n_wells=np.array(counts))


def prepare_treatments(wells: WellProfiles) -> TreatmentProfiles:
    """The whole chain: select features, normalise per plate, treatment medians."""
    return treatment_profiles(normalize_per_plate(select_features(wells)))
