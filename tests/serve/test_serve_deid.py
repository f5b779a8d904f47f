"""De-identified copies for outside destinations; the clinical PACS gets the stored results."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from serve_helpers import ThresholdPredictor, make_series

from medinfer.serve import delivery
from medinfer.serve.config import ServeConfig, load_config
from medinfer.serve.delivery import deliver_due
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import AuditEvent, Result
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "ReferencedSOPInstanceUID", "FrameOfReferenceUID")


def dest(name: str, **kw: object) -> dict[str, object]:
    return {"name": name, "kind": "dimse", "host": "127.0.0.1", "port": 104,
            "ae_title": "PACS", "results": ["seg", "sc"], **kw}


class CaptureSend:
    """Stands in for :func:`medinfer.serve.delivery.send`: keeps what each destination got."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Path, Dataset]] = []

    def __call__(self, dest, path: Path, calling_aet: str) -> None:
        self.sent.append((dest.name, Path(path), dcmread(path)))

    def to(self, name: str) -> list[Dataset]:
        return [ds for n, _, ds in self.sent if n == name]


def uids(ds: Dataset) -> set[str]:
    """Every instance, series, study and referenced SOP instance UID, in sequences too."""
    found: set[str] = set()

    def visit(d: Dataset, elem) -> None:
        if elem.keyword in UID_KEYWORDS and elem.value:
            found.add(str(elem.value))

    ds.walk(visit)
    return found


def deliver(make_config, store: Store, monkeypatch, **kw: object) -> tuple[CaptureSend, list]:
    """One MR study through a worker to a clinical ``pacs`` and an outside ``research``."""
    cfg = make_config(destinations=[dest("pacs"), dest("research", deidentify=True)], **kw)
    capture = CaptureSend()
    monkeypatch.setattr(delivery, "send", capture)
    receiver = Receiver(cfg, store)
    series = make_series(3)
    for ds in series:
        ds.BurnedInAnnotation = "NO"  # else the SC overlay cannot claim identity removed
        study = receiver.accept_dataset(ds, "dimse", "MODALITY")
    receiver.close_study(study)
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()
    assert deliver_due(cfg, store) == 4  # SEG and SC to each destination
    return capture, series


def test_clinical_copy_is_the_stored_result_in_the_source_study(make_config, store,
                                                                monkeypatch) -> None:
    capture, series = deliver(make_config, store, monkeypatch)
    src = series[0]
    with store.session() as s:
        stored = {r.path for r in s.query(Result).filter(Result.kind.in_(["seg", "sc"]))}
    clinical = capture.to("pacs")
    assert {str(p) for n, p, _ in capture.sent if n == "pacs"} == stored
    assert {ds.Modality for ds in clinical} == {"SEG", "OT"}
    for ds in clinical:
        assert ds.PatientName == src.PatientName and ds.PatientID == src.PatientID
        assert ds.StudyInstanceUID == src.StudyInstanceUID


def test_outside_copy_has_no_source_identifiers(make_config, store, monkeypatch) -> None:
    with store.session() as s:
        assert s.query(Result).count() == 0
    capture, series = deliver(make_config, store, monkeypatch)
    src = series[0]
    source_uids = set().union(*(uids(ds) for ds in series)) | set().union(
        *(uids(ds) for ds in capture.to("pacs")))
    outside = capture.to("research")
    assert len(outside) == 2
    for ds in outside:
        assert str(ds.PatientName) != str(src.PatientName) and ds.PatientID != src.PatientID
        assert ds.get("PatientBirthDate", "") != src.PatientBirthDate
        assert not uids(ds) & source_uids, "a source UID left the hospital"
        assert ds.PatientIdentityRemoved == "YES"
        assert "DICOGNITO" in str(ds.DeidentificationMethod)
        raw = next(p for _, p, d in capture.sent if d is ds).name
        assert raw.startswith("deid-")  # a copy, never the stored file
    seg = next(ds for ds in outside if ds.Modality == "SEG")
    refs = {str(item.ReferencedSOPInstanceUID) for fg in seg.PerFrameFunctionalGroupsSequence
            for d in fg.DerivationImageSequence for item in d.SourceImageSequence}
    assert refs and not refs & {str(ds.SOPInstanceUID) for ds in series}
    assert len({str(ds.StudyInstanceUID) for ds in outside}) == 1  # SEG and SC share the study
    assert len({str(ds.PatientID) for ds in outside}) == 1


def test_stored_results_are_unchanged_and_sends_audited(make_config, store, monkeypatch) -> None:
    before: dict[str, str] = {}

    def digest_then(orig):
        def call(dest, path, calling_aet):
            if dest.name == "pacs":
                before[str(path)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            return orig(dest, path, calling_aet)
        return call

    capture = CaptureSend()
    monkeypatch.setattr(delivery, "send", digest_then(capture))
    receiver = Receiver(make_config(destinations=[dest("pacs"), dest("research", deidentify=True)]),
                        store)
    series = make_series(2)
    for ds in series:
        study = receiver.accept_dataset(ds, "dimse", "MODALITY")
    receiver.close_study(study)
    cfg = make_config(destinations=[dest("pacs"), dest("research", deidentify=True)])
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()
    assert deliver_due(cfg, store) == 4
    for path, digest in before.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
        assert dcmread(path).PatientID == series[0].PatientID
    with store.session() as s:
        events = s.query(AuditEvent).filter(AuditEvent.action == "send-deidentified").all()
    assert len(events) == 2 and all("destination=research" in e.detail for e in events)
    text = " ".join(e.detail + e.target for e in events)
    assert str(series[0].PatientID) not in text and series[0].StudyInstanceUID not in text
    assert (cfg.storage / "deid.key").stat().st_mode & 0o077 == 0


def test_pseudonyms_are_stable_across_sends(make_config, store, monkeypatch) -> None:
    capture, _ = deliver(make_config, store, monkeypatch)
    [first_seg] = [ds for ds in capture.to("research") if ds.Modality == "SEG"]
    with store.session() as s:
        path = s.query(Result).filter(Result.kind == "seg").one().path
    with delivery.deidentified_copy(Path(path), delivery.load_key(make_config().storage)) as p:
        again = dcmread(p)
    assert again.StudyInstanceUID == first_seg.StudyInstanceUID
    assert again.SOPInstanceUID == first_seg.SOPInstanceUID


def test_overlay_of_unknown_burned_in_text_claims_nothing(make_config, store,
                                                           monkeypatch) -> None:
    cfg = make_config(destinations=[dest("research", deidentify=True)])
    capture = CaptureSend()
    monkeypatch.setattr(delivery, "send", capture)
    receiver = Receiver(cfg, store)
    for ds in make_series(2):  # no BurnedInAnnotation: the SC may carry burned-in text
        study = receiver.accept_dataset(ds, "dimse", "MODALITY")
    receiver.close_study(study)
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()
    assert deliver_due(cfg, store) == 2
    claims = {ds.Modality: ds.get("PatientIdentityRemoved") for ds in capture.to("research")}
    assert claims == {"SEG": "YES", "OT": None}


@pytest.mark.parametrize("top_level", [True, False])
def test_deprecated_top_level_key_sets_every_destination(tmp_path, top_level) -> None:
    cfg = ServeConfig.model_validate({"deidentify": top_level,
                                      "destinations": [dest("pacs"), dest("web")]})
    assert [d.deidentify for d in cfg.destinations] == [top_level, top_level]
    path = tmp_path / "serve.yaml"
    path.write_text("deidentify: true\ndestinations:\n  - {name: p, kind: stow, url: http://x}\n")
    assert load_config(path).destinations[0].deidentify
