"""Integration with a real PACS: dcmtk storescu -> medinfer -> DICOM SEG in Orthanc (DIMSE and STOW-RS)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from orthanc import Orthanc, orthanc_binary
from serve_helpers import MR_SERIES, free_port, make_artifact

from medinfer.serve.config import ServeConfig
from medinfer.serve.models import Delivery
from medinfer.serve.service import Service
from medinfer.serve.worker import Worker

pytestmark = [
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


def wait_for(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_storescu_to_medinfer_to_orthanc_seg(tmp_path: Path, orthanc: Orthanc) -> None:
    if not MR_SERIES.is_dir():
        pytest.skip(f"staged data not available: {MR_SERIES}")
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
    service = Service(cfg, tick_seconds=0.1)
    service.start_background()
    stop = threading.Event()
    worker = Worker(cfg, service.store, "in-test")

    def work() -> None:
        while not stop.is_set():
            if not worker.run_once():
                time.sleep(0.1)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
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
        stop.set()
        thread.join(30)
        service.stop()
