"""DICOM front door (pynetdicom SCU in the test) and delivery to a PACS that goes down and comes back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]
from serve_helpers import ThresholdPredictor, free_port, make_series

from medinfer.serve.delivery import deliver_due
from medinfer.serve.dimse import start_dimse
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import AuditEvent, Delivery, Instance, Study
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker


@pytest.fixture
def scp(make_config, store: Store):
    cfg = make_config(dicom={"port": free_port(), "allowed_calling_aets": ["MODALITY"]})
    receiver = Receiver(cfg, store)
    server = start_dimse(receiver)
    yield cfg, receiver
    server.shutdown()


def associate(port: int, calling: str, contexts=(Verification, MRImageStorage)):
    ae = AE(ae_title=calling)
    for cx in contexts:
        ae.add_requested_context(cx)
    return ae.associate("127.0.0.1", port, ae_title="MEDINFER")


def test_echo_and_store_then_quiet_time_closes_the_study(scp, store: Store, clock) -> None:
    cfg, receiver = scp
    assoc = associate(cfg.dicom.port, "MODALITY")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    series = make_series(3)
    for ds in series:
        assert assoc.send_c_store(ds).Status == 0x0000
        # success means written and recorded already (before the association ends)
        with store.session() as s:
            assert s.query(Instance).filter_by(sop_uid=ds.SOPInstanceUID).one()
    assoc.release()
    with store.session() as s:
        paths = [Path(i.path) for i in s.query(Instance)]
    assert len(paths) == 3 and all(dcmread(p).Modality == "MR" for p in paths)
    assert receiver.close_quiet_studies() == []
    clock.advance(cfg.quiet_seconds + 0.05)
    assert len(receiver.close_quiet_studies()) == 1
    with store.session() as s:
        study = s.query(Study).one()
        assert (study.state, study.source, study.sender) == ("complete", "dimse", "MODALITY")
        audit = s.query(AuditEvent).filter_by(action="receive").one()
        assert (audit.actor, audit.target) == ("ae:MODALITY", f"study:{study.id}")


def _audit_event(store: Store, action: str) -> AuditEvent | None:
    with store.session() as s:
        return s.query(AuditEvent).filter_by(action=action).one_or_none()


def test_unknown_calling_ae_is_rejected_and_audited(scp, store: Store) -> None:
    cfg, _ = scp
    assoc = associate(cfg.dicom.port, "INTRUDER")
    assert assoc.is_rejected and not assoc.is_established
    deadline = time.time() + 5  # the server thread records the rejection
    while (event := _audit_event(store, "association-rejected")) is None and time.time() < deadline:
        time.sleep(0.01)
    with store.session() as s:
        assert s.query(Instance).count() == 0
    assert event is not None and event.actor == "ae:INTRUDER"


def test_undecodable_instance_is_refused_with_a_failure_status(scp, store: Store) -> None:
    cfg, _ = scp
    ds = make_series(1, size=32)[0]
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    assoc = associate(cfg.dicom.port, "MODALITY")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000
    with store.session() as s:
        assert s.query(Instance).count() == 0


class FakePacs:
    """A pynetdicom C-STORE SCP that keeps what it receives; can be started and stopped."""

    def __init__(self, port: int) -> None:
        self.port, self.received, self.server = port, [], None

    def start(self) -> None:
        ae = AE(ae_title="PACS")
        ae.supported_contexts = __import__("pynetdicom").AllStoragePresentationContexts
        handler = (evt.EVT_C_STORE, lambda e: self.received.append(e.dataset) or 0x0000)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[handler])

    def stop(self) -> None:
        self.server.shutdown()


def test_destination_down_keeps_results_pending_and_resends_later(make_config, store) -> None:
    port = free_port()
    cfg = make_config(destinations=[{"name": "pacs", "kind": "dimse", "host": "127.0.0.1",
                                     "port": port, "ae_title": "PACS", "results": ["seg"]}],
                      delivery_retry_seconds=0.1)
    receiver = Receiver(cfg, store)
    series = make_series(2)
    for ds in series:
        study = receiver.accept_dataset(ds, "dimse", "MODALITY")
    receiver.close_study(study)
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()
    assert deliver_due(cfg, store) == 0  # PACS down
    with store.session() as s:
        d = s.query(Delivery).one()
        assert d.state == "pending" and d.attempts == 1 and "association" in d.error
    pacs = FakePacs(port)
    pacs.start()
    try:
        deadline = time.time() + 5
        while deliver_due(cfg, store) == 0 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pacs.stop()
    with store.session() as s:
        d = s.query(Delivery).one()
        assert d.state == "sent" and d.attempts == 2
    [seg] = pacs.received
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert deliver_due(cfg, store) == 0  # sent once, not again


def test_concurrent_associations_store_everything(scp, store: Store, clock) -> None:
    cfg, receiver = scp
    studies = [make_series(4) for _ in range(4)]

    def send(series) -> None:
        assoc = associate(cfg.dicom.port, "MODALITY")
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()

    threads = [threading.Thread(target=send, args=(s,)) for s in studies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    clock.advance(cfg.quiet_seconds + 0.05)
    assert len(receiver.close_quiet_studies()) == 4
    with store.session() as s:
        assert s.query(Instance).count() == 16


def test_service_restart_loses_nothing_received(make_config) -> None:  # noqa: ANN001
    from medinfer.serve.service import Service

    dicom = {"port": free_port(), "allowed_calling_aets": ["MODALITY"]}
    # a quiet time the first service cannot reach however slow the machine, so it surely
    # stops with the study still open; the restarted one (same storage) closes it at once
    first = Service(make_config(quiet_seconds=600.0, workers=0, dicom=dicom), tick_seconds=0.05)
    cfg = make_config(quiet_seconds=0.5, workers=0, dicom=dicom)
    first.start_background()
    assoc = associate(cfg.dicom.port, "MODALITY")
    series = make_series(3)
    assert all(assoc.send_c_store(ds).Status == 0 for ds in series)
    assoc.release()
    first.stop()  # stopped before the study's quiet time ended: nothing routed yet
    check = Store(cfg.db_url)
    assert check.job_counts() == {}
    second = Service(cfg, tick_seconds=0.05)
    second.start_background()
    try:
        deadline = time.time() + 10
        while not check.job_counts() and time.time() < deadline:
            time.sleep(0.05)
        assert check.job_counts() == {"queued": 1}  # the new instance closed the old study
        assert Worker(cfg, check, "w", lambda a: ThresholdPredictor()).run_once()
        with check.session() as s:
            assert s.query(Instance).count() == 3
            assert s.query(Study).one().state == "complete"
    finally:
        second.stop()
        check.close()
    assert check.job_counts() == {"done": 1}
