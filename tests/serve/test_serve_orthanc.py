"""Integration with a real PACS: dcmtk storescu -> medinfer -> DICOM SEG in Orthanc (DIMSE and STOW-RS)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from orthanc_pacs import Orthanc, orthanc_binary, start_service, wait_for
from serve_helpers import MR_SERIES, free_port, make_artifact
from shared_data import require

from medinfer.serve.config import ServeConfig
from medinfer.serve.models import Delivery
from medinfer.serve.worker import Worker

pytestmark = [
    pytest.mark.slow,  # a real Orthanc PACS and dcmtk processes
    pytest.mark.skipif(orthanc_binary() is None,
                       reason="Orthanc not installed (apt-get install orthanc orthanc-dicomweb)"),
    pytest.mark.skipif(shutil.which("storescu") is None or shutil.which("echoscu") is None,
                       reason="dcmtk not installed (apt-get install dcmtk)"),
]


@pytest.fixture
def orthanc(tmp_path: Path):
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    pacs.start()
    yield pacs
    pacs.stop()




def test_storescu_to_medinfer_to_orthanc_seg(tmp_path: Path, orthanc: Orthanc) -> None:
    require(MR_SERIES)
    artifact = make_artifact(tmp_path / "brain-test", dims=3)
    dicom_port = free_port()
    cfg = ServeConfig.model_validate({
        "storage": tmp_path / "storage", "quiet_seconds": 0.5, "workers": 0, "log_format": "text",
        "dicom": {"port": dicom_port, "allowed_calling_aets": ["STORESCU", "ECHOSCU"]},
        "routes": [{"name": "brain", "artifact": str(artifact), "match": {"modality": ["MR"]}}],
        "destinations": [
            {"name": "orthanc-dimse", "kind": "dimse", "host": "127.0.0.1",
             "port": orthanc.dicom_port, "ae_title": orthanc.ae_title, "results": ["seg", "sc"]},
            {"name": "orthanc-stow", "kind": "stow", "url": f"{orthanc.url}/dicom-web/studies",
             "results": ["seg"]},
        ],
    })
    service, shutdown = start_service(cfg)
    try:
        echo = subprocess.run(["echoscu", "-aet", "ECHOSCU", "-aec", "MEDINFER", "127.0.0.1",
                               str(dicom_port)], capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        files = sorted(str(p) for p in MR_SERIES.iterdir())
        sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "MEDINFER", "127.0.0.1",
                               str(dicom_port), *files], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        refused = subprocess.run(["storescu", "-aet", "STRANGER", "-aec", "MEDINFER", "127.0.0.1",
                                  str(dicom_port), files[0]], capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr

        def delivered() -> bool:
            counts = service.store.delivery_counts()
            return counts.get("sent", 0) == 3
        wait_for(delivered, 90, "3 deliveries sent")
        segs = orthanc.find(Modality="SEG")
        assert len(segs) == 1  # the same SEG arrived by DIMSE and STOW-RS: stored once
        tags = orthanc.get(f"/instances/{segs[0]['ID']}/tags?simplify")
        from pydicom import dcmread

        source = dcmread(files[0], stop_before_pixels=True)
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"
        assert tags["StudyInstanceUID"] == source.StudyInstanceUID
        assert tags["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == source.SeriesInstanceUID
        assert tags["SegmentSequence"][0]["SegmentLabel"] == "tumour"
        assert int(tags["NumberOfFrames"]) >= 1
        assert len(orthanc.get("/instances")) == 2  # the SEG and the Secondary Capture overlay
        with service.store.session() as s:
            assert {d.destination for d in s.query(Delivery)} == {"orthanc-dimse", "orthanc-stow"}
    finally:
        shutdown()


def test_pacs_down_then_back_gets_the_classification_sr(tmp_path: Path) -> None:
    """Results wait (pending, retried with backoff) while the PACS is down and arrive once
    it is up; the SR references the source series."""
    from pydicom import dcmread

    from medinfer.serve.delivery import deliver_due
    from medinfer.serve.ingest import Receiver
    from medinfer.serve.store import Store
    from serve_helpers import make_series

    artifact = make_artifact(tmp_path / "cxr-test", dims=2, task="classification")
    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    cfg = ServeConfig.model_validate({
        "storage": tmp_path / "storage", "log_format": "text", "delivery_retry_seconds": 0.2,
        "delivery_retry_max_seconds": 0.5,
        "routes": [{"name": "cxr", "artifact": str(artifact), "match": {"modality": ["DX"]}}],
        "destinations": [{"name": "orthanc", "kind": "dimse", "host": "127.0.0.1",
                          "port": pacs.dicom_port, "ae_title": pacs.ae_title,
                          "results": ["sr"]}]})
    store = Store(cfg.db_url)
    receiver = Receiver(cfg, store)
    source = make_series(1, size=64, modality="DX")[0]
    receiver.close_study(receiver.accept_dataset(source, "dimse", "MODALITY"))
    assert Worker(cfg, store, "w").run_once()
    for _ in range(3):  # PACS down: every attempt fails, the delivery stays pending
        deliver_due(cfg, store)
        time.sleep(0.25)
    with store.session() as s:
        d = s.query(Delivery).one()
        assert d.state == "pending" and d.attempts >= 2
    pacs.start()
    try:
        wait_for(lambda: deliver_due(cfg, store) or store.delivery_counts().get("sent"), 20,
                 "the SR delivered")
        [sr] = pacs.find(Modality="SR")
        tags = pacs.get(f"/instances/{sr['ID']}/tags?simplify")
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.33"
        evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
        assert evidence["ReferencedSeriesSequence"][0]["SeriesInstanceUID"] == \
            source.SeriesInstanceUID
        assert tags["StudyInstanceUID"] == source.StudyInstanceUID
        with store.session() as s:
            path = s.query(Delivery).one().result_id
        from medinfer.serve.models import Result

        with store.session() as s:
            stored = dcmread(s.get(Result, path).path)
        groups = [item for item in stored.ContentSequence
                  if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements"]
        assert len(groups[0].ContentSequence) == 3  # one measurement group per finding
    finally:
        pacs.stop()
        store.close()
