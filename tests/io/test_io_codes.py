"""Standard codes of segments and findings (:mod:`medinfer.io.codes`): values straight
from pydicom's dictionary, private fallbacks within the SH limit, normalised lookup,
overrides that win, and the SEG/SR writers carrying the codes."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medinfer.data.synthetic import mr_series
from medinfer.io.codes import (
    HIPPOCAMPUS_DECATHLON,
    PRIVATE_SCHEME,
    SegmentCodes,
    finding_code,
    normalize,
    private_value,
    segment_codes,
)
from medinfer.io.derived import write_seg, write_sr

MODELS = Path(__file__).resolve().parents[2] / "models"
LESION = codes.SCT.MorphologicallyAbnormalStructure
ANATOMY = codes.SCT.AnatomicalStructure


def _same(a: Code, b: Code) -> bool:
    return (a.value, a.scheme_designator, a.meaning) == (b.value, b.scheme_designator, b.meaning)


@pytest.mark.parametrize(("name", "category", "kind", "modifier", "region"), [
    ("polyp", LESION, codes.SCT.PolypOfColon, None, codes.SCT.Colon),
    ("tumour", LESION, codes.SCT.Neoplasm, None, None),
    ("Brain Tumor", LESION, codes.SCT.Neoplasm, None, codes.SCT.Brain),
    ("necrosis", LESION, codes.SCT.Necrosis, None, None),
    ("oedema", LESION, codes.SCT.Edema, None, None),
    ("lesion", LESION, codes.SCT.Lesion, None, None),
    ("liver", ANATOMY, codes.SCT.Liver, None, None),
    ("liver tumour", LESION, codes.SCT.Neoplasm, None, codes.SCT.Liver),
    ("hippocampus anterior", ANATOMY, codes.SCT.Hippocampus, codes.SCT.Anterior, None),
    ("posterior hippocampus", ANATOMY, codes.SCT.Hippocampus, codes.SCT.Posterior, None),
])
def test_segment_codes_are_pydicoms_own(name: str, category: Code, kind: Code,
                                        modifier: Code | None, region: Code | None) -> None:
    got = segment_codes(name)
    assert _same(got.category, category) and _same(got.type, kind)
    assert got.type.scheme_designator == "SCT"
    assert (got.modifier is None) == (modifier is None)
    assert modifier is None or _same(got.modifier, modifier)
    assert (got.region is None) == (region is None)
    assert region is None or _same(got.region, region)


@pytest.mark.parametrize(("name", "concept"), [
    ("Cardiomegaly", codes.SCT.Cardiomegaly),
    ("Effusion", codes.SCT.PleuralEffusion),
    ("Infiltration", codes.DCM.Infiltrate),
    ("Mass", codes.SCT.Mass),
    ("Nodule", codes.SCT.Nodule),
    ("Pneumothorax", codes.SCT.Pneumothorax),
    ("Edema", codes.SCT.PulmonaryEdema),
    ("Fibrosis", codes.SCT.Fibrosis),
    ("No Finding", codes.SCT.Normal),
    ("polyp", codes.SCT.PolypOfColon),  # a finding named like a segment: the segment's type
])
def test_finding_codes_are_pydicoms_own(name: str, concept: Code) -> None:
    assert _same(finding_code(name), concept)


def test_every_shipped_model_name_is_coded_standard_or_private() -> None:
    """Each segment and class name of models/*/artifact.json gets a code; the shipped
    segment names and most chest X-ray findings get a standard one (the Bethesda cell
    classes of the cytology models have no verified SNOMED CT mapping here: private codes)."""
    names: dict[str, list[str]] = {"segments": [], "classes": [], "chest": []}
    for path in sorted(MODELS.glob("*/artifact.json")):
        art = json.loads(path.read_text())
        names["segments"] += list(art.get("segments", {}).values())
        names["classes"] += list(art.get("classes", []))
        if path.parent.name.startswith("cxr-"):
            names["chest"] += list(art.get("classes", []))
    if not names["segments"] and not names["classes"]:
        pytest.skip("no model artifacts in this checkout")
    for name in names["segments"]:
        assert segment_codes(name).type.scheme_designator == "SCT", name
    findings = [finding_code(c) for c in names["classes"]]
    standard = [c for c in findings if c.scheme_designator != PRIVATE_SCHEME]
    assert all(c.scheme_designator in ("SCT", "DCM") for c in standard)
    chest = [finding_code(c) for c in names["chest"]]
    assert chest and sum(c.scheme_designator != PRIVATE_SCHEME for c in chest) >= len(chest) // 2


@pytest.mark.parametrize("name", ["Pneumonia", "Pleural_Thickening", "Hernia", "foreground",
                                  "x" * 80, "enhancing tumour"])
def test_unknown_names_fall_back_to_a_private_code_of_at_most_16_chars(name: str) -> None:
    segment, finding = segment_codes(name), finding_code(name)
    for code in (segment.type, finding):
        assert code.scheme_designator == PRIVATE_SCHEME
        assert 0 < len(code.value) <= 16 and "\\" not in code.value
        assert len(code.meaning) <= 64
    assert _same(segment.category, LESION)


def test_private_values_differ_for_long_names_with_one_beginning() -> None:
    a, b = private_value("right lower lobe consolidation"), private_value("right lower lobe nodule x")
    assert a != b and len(a) == len(b) == 16
    assert private_value("Pleural_Thickening") == private_value("pleural thickening")
    with pytest.raises(ValueError, match="empty"):
        private_value(" _ ")


@pytest.mark.parametrize("spelling", ["Hippocampus_Anterior", "HIPPOCAMPUS-ANTERIOR",
                                      "  hippocampus   anterior ", "hippocampus__-anterior"])
def test_lookup_is_case_and_separator_insensitive(spelling: str) -> None:
    assert normalize(spelling) == "hippocampus anterior"
    assert segment_codes(spelling) == segment_codes("hippocampus anterior")
    assert segment_codes(spelling).type.scheme_designator == "SCT"
    assert _same(finding_code("PLEURAL_effusion"), codes.SCT.PleuralEffusion)


def test_overrides_win_over_the_table() -> None:
    mine = SegmentCodes(ANATOMY, codes.SCT.Colon)
    assert segment_codes("Polyp", {"POLYP": mine}) == mine
    assert segment_codes("polyp") != mine  # the table itself is unchanged
    assert _same(finding_code("mass", {"Mass": codes.SCT.Tumor}), codes.SCT.Tumor)
    assert segment_codes("Anterior").type.scheme_designator == PRIVATE_SCHEME
    assert _same(segment_codes("Anterior", HIPPOCAMPUS_DECATHLON).type, codes.SCT.Hippocampus)


def test_background_is_no_segment() -> None:
    with pytest.raises(ValueError, match="background"):
        segment_codes("Background")


def _mask(n: int) -> np.ndarray:
    mask = np.zeros((16, 16, n), np.uint8)
    mask[4:8, 4:8, 1] = 1
    mask[9:12, 9:12, 2] = 2
    return mask


def test_seg_carries_standard_codes_modifiers_and_private_fallbacks(tmp_path: Path) -> None:
    sources = mr_series(3, 16)
    path, _ = write_seg(sources, _mask(3), {1: "Tumour", 2: "blob"}, tmp_path / "seg.dcm",
                        "algo", "v1")
    tumour, blob = pydicom.dcmread(path).SegmentSequence
    kind = tumour.SegmentedPropertyTypeCodeSequence[0]
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", codes.SCT.Neoplasm.value)
    category = tumour.SegmentedPropertyCategoryCodeSequence[0]
    assert category.CodeValue == LESION.value
    other = blob.SegmentedPropertyTypeCodeSequence[0]
    assert other.CodingSchemeDesignator == PRIVATE_SCHEME and other.CodeValue == "BLOB"

    path, _ = write_seg(sources, _mask(3), {1: "Anterior", 2: "Posterior"},
                        tmp_path / "hippo.dcm", "algo", "v1", codes=HIPPOCAMPUS_DECATHLON)
    seg = hd.seg.segread(path)
    for number, side in ((1, codes.SCT.Anterior), (2, codes.SCT.Posterior)):
        item = seg.SegmentSequence[number - 1].SegmentedPropertyTypeCodeSequence[0]
        assert item.CodeValue == codes.SCT.Hippocampus.value
        assert item.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == side.value
        assert seg.get_segment_description(number).segmented_property_category == ANATOMY


def _coded_items(items: pydicom.Sequence) -> list[tuple[str, str, str]]:
    """(concept name value, scheme, concept value) of every CODE item, depth first."""
    out = []
    for item in items:
        if item.ValueType == "CODE":
            name, value = item.ConceptNameCodeSequence[0], item.ConceptCodeSequence[0]
            out.append((name.CodeValue, name.CodingSchemeDesignator, value.CodeValue))
        if "ContentSequence" in item:
            out += _coded_items(item.ContentSequence)
    return out


def test_sr_names_findings_by_standard_concepts(tmp_path: Path) -> None:
    sources = mr_series(3, 16)
    path, _ = write_sr(sources, {"Pneumothorax": 0.9, "Hernia": 0.1}, {"Pneumothorax": 0.5},
                       tmp_path / "sr.dcm", "algo", "v1")
    items = _coded_items(pydicom.dcmread(path).ContentSequence)
    finding = codes.DCM.Finding.value
    found = {value for name, _, value in items if name == finding}
    assert found == {codes.SCT.Pneumothorax.value, "HERNIA"}
    evaluations = {(name, scheme): value for name, scheme, value in items}
    assert evaluations[(codes.SCT.Pneumothorax.value, "SCT")] == codes.SCT.Present.value
    assert evaluations[("HERNIA", PRIVATE_SCHEME)] == codes.SCT.Absent.value
    procedure = codes.DCM.ProcedureReported.value
    assert (procedure, "DCM", codes.SCT.ImagingProcedure.value) in items


def test_sr_codes_override_wins(tmp_path: Path) -> None:
    sources = mr_series(2, 16)
    path, _ = write_sr(sources, {"Pneumonia": 0.8}, {}, tmp_path / "sr.dcm", "algo", "v1",
                       codes={"pneumonia": codes.SCT.Lesion})
    items = _coded_items(pydicom.dcmread(path).ContentSequence)
    assert (codes.DCM.Finding.value, "DCM", codes.SCT.Lesion.value) in items
    assert not any(scheme == PRIVATE_SCHEME for _, scheme, _ in items)
