"""Standard codes for the segments, findings, measurements and parametric map quantities
that medinfer's models name.

A DICOM SEG segment is identified by a *segmented property category* and *type* (plus an
optional type modifier and anatomic region); a finding in an SR by its *concept name*.
Viewers (OHIF, 3D Slicer, PACS) colour and group segments by these codes, and analytics
match findings by them, so a name a model uses is mapped here to the standard's own code
where one exists. Every standard value is taken from pydicom's code dictionaries
(``pydicom.sr.codedict.codes``), never typed by hand.

Lookup rules:

* Names are compared after :func:`normalize`: case-insensitive, with runs of spaces,
  underscores and hyphens read as one space (``"Pleural_Thickening"`` =
  ``"pleural thickening"``).
* A caller's ``overrides`` mapping (keys normalised the same way) wins over the table.
* A segment name unknown to the table gets a private type (scheme ``99MEDINFER``, value
  from :func:`private_value`) under the category *Morphologically abnormal structure*:
  medinfer's segmentation models delineate lesions unless they say otherwise (an organ
  model passes its codes in ``overrides`` or adds its names to the table).
* A finding name unknown to the finding table is looked up as a segment type (a model
  may classify ``"polyp"`` or ``"lesion"``), and otherwise gets a private code.
* ``"background"`` is no segment: :func:`segment_codes` refuses it.
* A measurement or evaluation name unknown to its table (:func:`measurement_code`) gets a
  private code; a perfusion quantity unknown to :data:`PERFUSION_QUANTITIES` is refused
  (:func:`quantity_codes`): its unit could not be checked.

Example:
    >>> segment_codes("Polyp").type.value
    '68496003'
    >>> finding_code("Effusion").meaning
    'Pleural effusion'
    >>> finding_code("Hernia").scheme_designator
    '99MEDINFER'
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "HIPPOCAMPUS_DECATHLON",
    "PERFUSION_QUANTITIES",
    "PRIVATE_SCHEME",
    "QuantityCodes",
    "SegmentCodes",
    "finding_code",
    "is_private",
    "measurement_code",
    "normalize",
    "private_code",
    "private_value",
    "quantity_codes",
    "segment_codes",
]

PRIVATE_SCHEME = "99MEDINFER"
_T = TypeVar("_T")
_SH_MAX = 16  # Code Value is an SH: at most 16 characters
_LO_MAX = 64  # Code Meaning is an LO: at most 64 characters


@dataclass(frozen=True)
class SegmentCodes:
    """The codes of one SEG segment (Segment Description Macro, PS3.3 C.8.20.2).

    Attributes:
        category: Segmented Property Category (CID 7150), e.g. *Anatomical structure*.
        type: Segmented Property Type (CID 7151), e.g. *Hippocampus*.
        modifier: Segmented Property Type Modifier, e.g. *Anterior*; ``None`` when none.
        region: Anatomic Region of the segment, e.g. *Brain* for a brain tumour; ``None``
            when the type says it or the site is unknown.
    """

    category: Code
    type: Code
    modifier: Code | None = None
    region: Code | None = None


def normalize(name: str) -> str:
    """Lookup key of ``name``: lower case, stripped, runs of spaces/``_``/``-`` as one space."""
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def private_value(name: str) -> str:
    """Private code value of ``name`` (at most 16 characters, the SH limit).

    The normalised name upper-cased, with every run of other characters than ``A-Z0-9``
    as ``-`` (``"Enhancing tumour"`` -> ``"ENHANCING-TUMOUR"``); a longer one is cut to 11
    characters plus ``-`` and four hex digits of the SHA-1 of the normalised name
    (``"Pleural_Thickening"`` -> ``"PLEURAL-THI-923E"``), so long names with the same
    beginning stay apart and every spelling of a name gets the same value.

    Raises:
        ValueError: the name is empty once normalised.
    """
    key = normalize(name)
    if not key:
        raise ValueError(f"cannot code an empty name {name!r}")
    value = re.sub(r"[^A-Z0-9]+", "-", key.upper()).strip("-") or "X"
    if len(value) <= _SH_MAX:
        return value
    digest = hashlib.sha1(key.encode()).hexdigest()[:4].upper()
    return f"{value[:_SH_MAX - 5]}-{digest}"


def private_code(name: str) -> Code:
    """The private (``99MEDINFER``) code of a name no standard code is known for."""
    return Code(private_value(name), PRIVATE_SCHEME, name.strip()[:_LO_MAX] or name)


def is_private(code: Code) -> bool:
    """Whether ``code`` is one of medinfer's private codes."""
    return code.scheme_designator == PRIVATE_SCHEME


_LESION = codes.SCT.MorphologicallyAbnormalStructure
_ANATOMY = codes.SCT.AnatomicalStructure


def _lesion(kind: Code, region: Code | None = None) -> SegmentCodes:
    return SegmentCodes(_LESION, kind, region=region)


def _organ(kind: Code, modifier: Code | None = None) -> SegmentCodes:
    return SegmentCodes(_ANATOMY, kind, modifier=modifier)


def _private_lesion(name: str, region: Code | None = None) -> SegmentCodes:
    return SegmentCodes(_LESION, private_code(name), region=region)


# Segment names -> codes. Polyp: pydicom has no plain "Polyp" morphology, so the Kvasir-SEG
# (colonoscopy) polyp is "Polyp of colon" (CID 6201) in the colon. BraTS sub-regions that
# pydicom has no concept for (enhancing tumour, tumour core) keep private types.
_SEGMENTS: dict[str, SegmentCodes] = {
    "polyp": _lesion(codes.SCT.PolypOfColon, codes.SCT.Colon),
    "colon polyp": _lesion(codes.SCT.PolypOfColon, codes.SCT.Colon),
    "polyp of colon": _lesion(codes.SCT.PolypOfColon, codes.SCT.Colon),
    "lesion": _lesion(codes.SCT.Lesion),
    "tumour": _lesion(codes.SCT.Neoplasm),
    "tumor": _lesion(codes.SCT.Neoplasm),
    "neoplasm": _lesion(codes.SCT.Neoplasm),
    "whole tumour": _lesion(codes.SCT.Neoplasm),
    "whole tumor": _lesion(codes.SCT.Neoplasm),
    "brain tumour": _lesion(codes.SCT.Neoplasm, codes.SCT.Brain),
    "brain tumor": _lesion(codes.SCT.Neoplasm, codes.SCT.Brain),
    "glioblastoma": _lesion(codes.SCT.Glioblastoma, codes.SCT.Brain),
    "necrosis": _lesion(codes.SCT.Necrosis),
    "necrotic core": _lesion(codes.SCT.Necrosis),
    "edema": _lesion(codes.SCT.Edema),
    "oedema": _lesion(codes.SCT.Edema),
    "peritumoral edema": _lesion(codes.SCT.Edema),
    "peritumoural oedema": _lesion(codes.SCT.Edema),
    "enhancing tumour": _private_lesion("enhancing tumour"),
    "enhancing tumor": _private_lesion("enhancing tumour"),
    "tumour core": _private_lesion("tumour core"),
    "tumor core": _private_lesion("tumour core"),
    # CT perfusion (SNOMED CT concepts pydicom's dictionary lacks: Infarct 55641003 and
    # Ischemia 52674009, both morphologic abnormalities)
    "ischemic core": _lesion(Code("55641003", "SCT", "Infarct"), codes.SCT.Brain),
    "ischaemic core": _lesion(Code("55641003", "SCT", "Infarct"), codes.SCT.Brain),
    "hypoperfused tissue outside the core": _lesion(Code("52674009", "SCT", "Ischemia"), codes.SCT.Brain),
    "liver tumour": _lesion(codes.SCT.Neoplasm, codes.SCT.Liver),
    "liver tumor": _lesion(codes.SCT.Neoplasm, codes.SCT.Liver),
    "nodule": _lesion(codes.SCT.Nodule),
    "mass": _lesion(codes.SCT.Mass),
    "cyst": _lesion(codes.SCT.Cyst),
    "liver": _organ(codes.SCT.Liver),
    "brain": _organ(codes.SCT.Brain),
    "lung": _organ(codes.SCT.Lung),
    "heart": _organ(codes.SCT.Heart),
    "kidney": _organ(codes.SCT.Kidney),
    "spleen": _organ(codes.SCT.Spleen),
    "pancreas": _organ(codes.SCT.Pancreas),
    "prostate": _organ(codes.SCT.Prostate),
    "colon": _organ(codes.SCT.Colon),
    "hippocampus": _organ(codes.SCT.Hippocampus),
    "hippocampus anterior": _organ(codes.SCT.Hippocampus, codes.SCT.Anterior),
    "anterior hippocampus": _organ(codes.SCT.Hippocampus, codes.SCT.Anterior),
    "hippocampus posterior": _organ(codes.SCT.Hippocampus, codes.SCT.Posterior),
    "posterior hippocampus": _organ(codes.SCT.Hippocampus, codes.SCT.Posterior),
}

# Medical Segmentation Decathlon Task04 names its labels "Anterior" and "Posterior" (of
# the hippocampus). Bare "anterior" says nothing about the structure, so it is not in
# the table: a hippocampus model passes this mapping as ``overrides``.
HIPPOCAMPUS_DECATHLON: Mapping[str, SegmentCodes] = {
    "anterior": _SEGMENTS["hippocampus anterior"],
    "posterior": _SEGMENTS["hippocampus posterior"],
}

_NOT_SEGMENTS = frozenset({"background"})

# Classification findings -> concept names. The ChestX-ray14 names of the chest X-ray
# model: "Effusion" and "Edema" are pleural effusion and pulmonary oedema there;
# "Infiltration" is DICOM's chest finding "Infiltrate" (CID 6102). Atelectasis,
# Pneumonia, Consolidation, Emphysema, Pleural_Thickening and Hernia have no concept in
# pydicom's dictionary (only narrower ones: plate-like atelectasis, mediastinal
# emphysema) and keep private codes.
_FINDINGS: dict[str, Code] = {
    "cardiomegaly": codes.SCT.Cardiomegaly,
    "effusion": codes.SCT.PleuralEffusion,
    "pleural effusion": codes.SCT.PleuralEffusion,
    "infiltration": codes.DCM.Infiltrate,
    "infiltrate": codes.DCM.Infiltrate,
    "mass": codes.SCT.Mass,
    "nodule": codes.SCT.Nodule,
    "pneumothorax": codes.SCT.Pneumothorax,
    "edema": codes.SCT.PulmonaryEdema,
    "oedema": codes.SCT.PulmonaryEdema,
    "pulmonary edema": codes.SCT.PulmonaryEdema,
    "fibrosis": codes.SCT.Fibrosis,
    "normal": codes.SCT.Normal,
    "no finding": codes.SCT.Normal,
    "no findings": codes.SCT.Normal,
}


def _override(name: str, overrides: Mapping[str, _T] | None) -> _T | None:
    """The caller's entry for ``name`` in ``overrides`` (keys compared normalised)."""
    key = normalize(name)
    for given, value in (overrides or {}).items():
        if normalize(given) == key:
            return value
    return None


def segment_codes(name: str, overrides: Mapping[str, SegmentCodes] | None = None
                  ) -> SegmentCodes:
    """The codes of the segment ``name`` (a model's label name).

    Args:
        name: segment label, e.g. ``"tumour"``, ``"Hippocampus_Anterior"``.
        overrides: name -> codes that win over the table (names normalised alike), e.g.
            :data:`HIPPOCAMPUS_DECATHLON`.

    Returns:
        Standard codes where known; else a private type under *Morphologically
        abnormal structure*.

    Raises:
        ValueError: ``name`` is empty or names the background (and is not overridden).
    """
    found = _override(name, overrides)
    if found is None:
        found = _SEGMENTS.get(normalize(name))
    if found is not None:
        return found
    if normalize(name) in _NOT_SEGMENTS:
        raise ValueError(f"{name!r} is the background, not a segment")
    return _private_lesion(name)


def finding_code(name: str, overrides: Mapping[str, Code] | None = None) -> Code:
    """The concept name of the classification finding ``name`` (a model's class name).

    Args:
        name: class name, e.g. ``"Pneumothorax"``, ``"Pleural_Thickening"``.
        overrides: name -> concept that wins over the table (names normalised alike).

    Returns:
        A pydicom :class:`~pydicom.sr.coding.Code` (highdicom takes it wherever it takes a
        ``CodedConcept``): the standard concept where known, else a private one.
    """
    found = _override(name, overrides)
    if found is None:
        found = _FINDINGS.get(normalize(name))
    if found is not None:
        return found
    segment = _SEGMENTS.get(normalize(name))  # a finding may be a segment's kind (polyp)
    if segment is not None and segment.modifier is None and not is_private(segment.type):
        return segment.type
    return private_code(name)


# Measurement and qualitative evaluation names (SR, TID 300 / TID 1500) -> concept names.
# "Volume" and "Volume Ratio" are CID 7469 (Generic Intensity and Size Measurement); a
# bare "ratio" is SNOMED CT's "Ratio" property, as unspecific as the name. DCM
# "Eligibility" (126075) is a clinical-trial time point (CID 6146), not "eligible for a
# treatment", so "eligible" keeps a private code. "Long axis" and "Short axis" are the
# SNOMED CT qualifiers of CID 7470 (Linear Measurements), not DCM codes: a lesion's
# longest diameter and the one across it (here the sides of a detection box).
_MEASUREMENTS: dict[str, Code] = {
    "volume": codes.SCT.Volume,
    "volume ratio": codes.DCM.VolumeRatio,
    "mismatch ratio": codes.DCM.VolumeRatio,
    "ratio": codes.SCT.Ratio,
    "probability": codes.DCM.Probability,
    "long axis": codes.SCT.LongAxis,
    "short axis": codes.SCT.ShortAxis,
}


def measurement_code(name: str, overrides: Mapping[str, Code] | None = None) -> Code:
    """The concept name of a measurement or qualitative evaluation ``name`` in an SR.

    Args:
        name: e.g. ``"volume"``, ``"volume ratio"``, ``"eligible"``.
        overrides: name -> concept that wins over the table (names normalised alike).

    Returns:
        The standard concept where known (*Volume* is SCT 118565006), else a private one.
    """
    found = _override(name, overrides)
    if found is None:
        found = _MEASUREMENTS.get(normalize(name))
    return found if found is not None else private_code(name)


@dataclass(frozen=True)
class QuantityCodes:
    """What the values of a parametric map are (Real World Value Mapping, PS3.3 C.7.6.16.2.11).

    Attributes:
        concept: Quantity Definition, from CID 4108 *Perfusion Model Parameter*.
        unit: UCUM unit of the values, the one CID 4108 gives the concept.
        label: LUT Label (at most 16 characters), e.g. ``"CBF"``.
        explanation: LUT Explanation, e.g. ``"Cerebral blood flow"``.
    """

    concept: Code
    unit: Code
    label: str
    explanation: str


_SECOND = codes.UCUM.Second

# CT/MR perfusion maps. PS3.16 2019a retired the brain-specific concepts (DCM 113055
# Regional Cerebral Blood Flow, 113056 Regional Cerebral Blood Volume) from CID 4108 in
# favour of "Absolute Regional Blood Flow/Volume"; CID 4108 gives each concept its UCUM
# unit (``ml/(100.g)/min`` is UCUM's spelling of "ml/100g/min").
PERFUSION_QUANTITIES: Mapping[str, QuantityCodes] = {
    "cbf": QuantityCodes(codes.DCM.AbsoluteRegionalBloodFlow,
                         Code("ml/(100.g)/min", "UCUM", "ml per 100 g per minute"),
                         "CBF", "Cerebral blood flow"),
    "cbv": QuantityCodes(codes.DCM.AbsoluteRegionalBloodVolume,
                         Code("ml/(100.g)", "UCUM", "ml per 100 g"),
                         "CBV", "Cerebral blood volume"),
    "mtt": QuantityCodes(codes.DCM.MeanTransitTime, _SECOND, "MTT", "Mean transit time"),
    "tmax": QuantityCodes(codes.DCM.Tmax, _SECOND, "Tmax",
                          "Time to the maximum of the residue function"),
    "ttp": QuantityCodes(codes.DCM.TimeToPeak, _SECOND, "TTP", "Time to peak"),
}

# Common spellings of the units that are not UCUM ("100g" is no UCUM term) -> UCUM.
_UNIT_SPELLINGS = {"ml/100g/min": "ml/(100.g)/min", "ml/100g": "ml/(100.g)"}


def _unit_key(unit: str) -> str:
    """``unit`` in UCUM's spelling (UCUM is case-sensitive, but ``mL`` = ``ml``)."""
    key = unit.replace(" ", "").replace("mL", "ml")
    return _UNIT_SPELLINGS.get(key, key)


def quantity_codes(name: str, unit: str | None = None) -> QuantityCodes:
    """The codes of the perfusion quantity ``name`` (``cbf``, ``cbv``, ``mtt``, ``tmax``, ``ttp``).

    Args:
        name: quantity, any case (``"CBF"``, ``"Tmax"``).
        unit: the unit the caller's values are in, as a check: the quantity's UCUM code
            or a common spelling of it (``"ml/100g/min"``, ``"mL/(100.g)/min"``, ``"s"``);
            ``None`` takes the quantity's unit.

    Returns:
        The quantity's concept and UCUM unit (always the standard spelling).

    Raises:
        ValueError: an unknown quantity, or a unit that is not the quantity's (convert
            the values first: a map in ms is not relabelled).
    """
    found = PERFUSION_QUANTITIES.get(normalize(name))
    if found is None:
        raise ValueError(f"unknown perfusion quantity {name!r}; known: "
                         f"{', '.join(PERFUSION_QUANTITIES)}")
    if unit is not None and _unit_key(unit) != _unit_key(found.unit.value):
        raise ValueError(f"{name} is written in {found.unit.value!r}, not {unit!r}")
    return found
