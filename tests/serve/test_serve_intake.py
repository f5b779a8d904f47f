"""A hung destination delays only its own deliveries: studies keep being routed, other
destinations keep receiving, and the service's health names the destination that hangs or
fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medinfer.serve import delivery
from medinfer.serve.delivery import DeliveryError
from medinfer.serve.service import Service
from medinfer.serve.store import InstanceInfo, ResultFile, Store

TICK = 0.1


def dest(name: str, port: int) -> dict[str, object]:
    return {"name": name, "kind": "dimse", "host": "127.0.0.1", "port": port, "ae_title": "PACS"}


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.01)


def receive(store: Store, study_uid: str) -> int:
    """One MR instance of a new study (routed by make_config's ``mr`` rule once quiet)."""
    return store.add_instance(InstanceInfo(study_uid, f"{study_uid}.1", f"{study_uid}.1.1",
                                           modality="MR"), "/nonexistent.dcm", "dimse", "STORESCU")


def done_job(store: Store, study_uid: str, destinations: list[str]) -> None:
    """A finished job whose SEG waits to be sent to ``destinations``."""
    [job] = store.finalize_study(receive(store, study_uid), lambda info: ("mr", "/art"))
    leased = store.lease_job("w", 5, 3)
    assert leased is not None and leased.id == job
    seg = ResultFile("seg", f"/results/{study_uid}.dcm", "application/dicom", f"{study_uid}.9")
    assert store.complete_job(job, leased.token, [seg], {"seg": destinations}, {}, {})


class FakeSend:
    """Stands in for :func:`medinfer.serve.delivery.send`: ``hung`` destinations block until
    :meth:`release`, ``broken`` ones refuse to connect, the others succeed."""

    def __init__(self, hung: set[str] = frozenset(), broken: set[str] = frozenset()) -> None:
        self.hung, self.broken = hung, broken
        self.entered, self.released = threading.Event(), threading.Event()
        self.sent: list[tuple[str, str]] = []

    def __call__(self, dest, path: Path, calling_aet: str) -> None:
        if dest.name in self.hung:
            self.entered.set()
            assert self.released.wait(30), "never released"
        if dest.name in self.broken:
            raise DeliveryError(f"association with {dest.name} failed", retryable=True)
        self.sent.append((dest.name, str(path)))

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def service(make_config, store: Store) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(**kw: object) -> Service:
        svc = Service(make_config(workers=0, **kw), tick_seconds=TICK, store=store)
        svc.start_background()
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def test_a_hung_destination_does_not_delay_routing(service, store, clock, monkeypatch) -> None:
    send = FakeSend(hung={"pacs"})
    monkeypatch.setattr(delivery, "send", send)
    done_job(store, "1.1", ["pacs"])
    svc = service(destinations=[dest("pacs", 4242)])
    try:
        assert send.entered.wait(5), "the delivery was never tried"
        new = receive(store, "2.2")  # arrives while the PACS hangs
        clock.advance(svc.config.quiet_seconds)
        t0 = time.monotonic()
        wait_until(lambda: store.job_counts().get("queued"), 15 * TICK,
                   "the new study is routed while the delivery hangs")
        assert time.monotonic() - t0 < 15 * TICK
        with store.session() as s:
            from medinfer.serve.models import Job

            assert s.query(Job).filter_by(study_id=new).count() == 1
        assert send.sent == []  # still hung
    finally:
        send.release()
    wait_until(lambda: store.delivery_counts() == {"sent": 1}, 5, "the delivery completes")


def test_a_hung_destination_does_not_delay_another(service, store, monkeypatch) -> None:
    send = FakeSend(hung={"slow"})
    monkeypatch.setattr(delivery, "send", send)
    for uid in ("1.1", "1.2", "1.3"):
        done_job(store, uid, ["slow", "fast"])
    service(destinations=[dest("slow", 4242), dest("fast", 4243)], delivery_threads=2)
    try:
        wait_until(lambda: len(send.sent) == 3, 5, "the other destination gets all three")
        assert {name for name, _ in send.sent} == {"fast"}
    finally:
        send.release()
    wait_until(lambda: store.delivery_counts() == {"sent": 6}, 5, "the hung ones complete")


def test_health_names_a_hung_and_a_failing_destination(service, store, clock,
                                                       monkeypatch) -> None:
    send = FakeSend(hung={"slow"}, broken={"down"})
    monkeypatch.setattr(delivery, "send", send)
    done_job(store, "1.1", ["slow", "down", "fine"])
    svc = service(destinations=[dest("slow", 4242), dest("down", 4243), dest("fine", 4244)])
    try:
        assert send.entered.wait(5)
        wait_until(lambda: svc.destination_health()["down"].state == "failing", 5, "down fails")
        wait_until(lambda: svc.destination_health()["fine"].last_sent_at, 5, "fine is sent")
        clock.advance(60)  # the hung send has now been in flight for a minute
        health = svc.destination_health()
        assert health["slow"].state == "stalled" and health["slow"].in_flight == 1
        assert health["slow"].longest_send_seconds >= 60
        assert health["down"].consecutive_failures >= 1
        assert "association with down failed" in health["down"].last_error
        assert health["down"].pending == 1  # retried later, not given up
        assert (health["fine"].state, health["fine"].pending) == ("ok", 0)
        from fastapi.testclient import TestClient

        with TestClient(svc.app()) as client:
            body = client.get("/health").json()
        assert body["status"] == "degraded"
        assert body["destinations"]["slow"]["state"] == "stalled"
        assert body["destinations"]["down"]["state"] == "failing"
        assert body["destinations"]["fine"]["state"] == "ok"
    finally:
        send.release()
    wait_until(lambda: svc.destination_health()["slow"].state == "ok", 5, "slow recovers")


def test_what_piled_up_in_an_outage_goes_out_once_the_destination_answers(
        service, store, monkeypatch) -> None:
    send = FakeSend(broken={"pacs"})
    calls: list[str] = []
    monkeypatch.setattr(delivery, "send",
                        lambda d, p, a: calls.append(str(p)) or send(d, p, a))
    monkeypatch.setattr(delivery, "reachable", lambda d, timeout=5.0: d.name not in send.broken)
    for uid in ("1.1", "1.2", "1.3", "1.4", "1.5"):
        done_job(store, uid, ["pacs"])
    # a per-delivery backoff of 30 s: without the probe they would wait that long
    svc = service(destinations=[dest("pacs", 4242)], delivery_threads=2,
                  delivery_retry_seconds=30, delivery_probe_seconds=TICK)
    wait_until(lambda: svc.destination_health()["pacs"].state == "failing", 5, "PACS down")
    time.sleep(10 * TICK)
    tried = len(calls)
    assert 1 <= tried <= 2  # one failed send per lane, then only probes: no hammering
    send.broken = set()  # the PACS is back
    t0 = time.monotonic()
    wait_until(lambda: store.delivery_counts() == {"sent": 5}, 5, "all five go out")
    assert time.monotonic() - t0 < 3  # within a few probe periods, not after 30 s
    assert len(send.sent) == 5 and len(calls) == tried + 5
