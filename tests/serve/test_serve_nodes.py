"""Several service nodes on one database: every job is run once and every result is sent
once, whichever process takes it (job leases and delivery claims, SKIP LOCKED on
PostgreSQL); on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from pynetdicom import AE, AllStoragePresentationContexts, evt
from serve_helpers import FixedClock as Clock
from serve_helpers import free_port, make_series, queue_jobs

from medinfer.serve.models import Delivery
from medinfer.serve.store import ResultFile, Store


def node(url: str, name: str, out: mp.Queue) -> None:
    """One service node's worker loop (its own process and connection pool)."""
    store = Store(url)
    got = []
    while (job := store.lease_job(name, 30, 3)) is not None:
        got.append(job.id)
        time.sleep(0.005)  # some work, so the nodes overlap
        assert store.complete_job(job.id, job.token, [], {}, {}, {})
    store.close()
    out.put((name, got))


def test_nodes_in_separate_processes_lease_each_job_exactly_once(db_url: str) -> None:
    store = Store(db_url)
    jobs = queue_jobs(store, 60)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=node, args=(db_url, f"node{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    taken = [j for ids in got.values() for j in ids]
    assert sorted(taken) == jobs  # every job once: none twice, none left
    assert store.job_counts() == {"done": 60}
    assert sum(1 for ids in got.values() if ids) >= 2  # the nodes really shared the queue
    store.close()


def done_with_results(store: Store, files: list[Path], destination: str = "pacs") -> None:
    """One done job per file, its result (a SEG) pending delivery to ``destination``."""
    for path, job_id in zip(files, queue_jobs(store, len(files), tag="5.6"), strict=True):
        job = store.lease_job("w", 30, 3)
        assert job is not None and job.id == job_id
        result = ResultFile("seg", str(path), "application/dicom", path.stem)
        assert store.complete_job(job.id, job.token, [result], {"seg": [destination]}, {}, {})


def test_a_claimed_delivery_is_taken_by_no_one_else_until_its_claim_ends(db_url: str,
                                                                        tmp_path: Path) -> None:
    clock = Clock()
    store = Store(db_url, clock=clock)
    done_with_results(store, [tmp_path / "a.dcm", tmp_path / "b.dcm"])
    first = store.claim_delivery("pacs", "a:1:lanes", lease_seconds=10)
    second = store.claim_delivery("pacs", "b:2:lanes", lease_seconds=10)
    assert first is not None and second is not None and first[0] != second[0]
    assert first[1:] == ("seg", str(tmp_path / "a.dcm"))
    assert store.claim_delivery("pacs", "b:2:lanes", 10) is None  # both claimed
    assert store.claim_delivery("other", "b:2:lanes", 10) is None  # per destination
    assert sorted(store.delivery_claim_owners()) == ["a:1:lanes", "b:2:lanes"]
    clock.t += 11  # the first sender died: its claim expires, another sender takes it over
    again = store.claim_delivery("pacs", "b:2:lanes", 10)
    assert again is not None
    store.mark_delivery(again[0], ok=True)  # sent; the claim ends with the attempt
    clock.t += 11
    last = store.claim_delivery("pacs", "c:3:lanes", 10)
    assert last is not None and last[0] != again[0]  # a sent delivery is not claimed again
    assert store.release_delivery_claims(["c:3:lanes"]) == 1  # a stopping sender's claims
    assert store.claim_delivery("pacs", "d:4:lanes", 10) == last
    store.close()


class CountingPacs:
    """A C-STORE SCP that takes ``delay`` s per instance and counts who sent what."""

    def __init__(self, port: int, delay: float) -> None:
        self.port, self.delay = port, delay
        self.received: list[tuple[str, str]] = []  # (SOPInstanceUID, calling AE)
        self._lock = threading.Lock()
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        time.sleep(self.delay)
        with self._lock:
            self.received.append((event.dataset.SOPInstanceUID,
                                  event.assoc.requestor.ae_title.strip()))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def service_config(tmp_path: Path, name: str, url: str, pacs_port: int) -> Path:
    raw = {"storage": str(tmp_path / name), "database_url": url, "workers": 0,
           "log_format": "text", "http": {"port": free_port()},
           "dicom": {"calling_ae_title": name.upper()},
           "delivery_threads": 4, "delivery_retry_seconds": 0.2,
           "destinations": [{"name": "pacs", "kind": "dimse", "host": "127.0.0.1",
                             "port": pacs_port, "ae_title": "PACS", "results": ["seg"]}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow  # two `medinfer serve` processes
def test_two_service_processes_on_one_postgres_send_each_result_once(pg_url: str,
                                                                    tmp_path: Path) -> None:
    files = []
    for i, ds in enumerate(make_series(40, size=16)):
        files.append(tmp_path / f"r{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    pacs = CountingPacs(free_port(), delay=0.05)
    configs = [service_config(tmp_path, n, pg_url, pacs.port) for n in ("nodea", "nodeb")]
    medinfer = Path(sys.executable).parent / "medinfer"
    procs = [subprocess.Popen([str(medinfer), "serve", "--config", str(c)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in configs]
    store = Store(pg_url)
    try:
        for c in configs:  # both up before any result exists: they race for every one
            port = yaml.safe_load(c.read_text())["http"]["port"]
            deadline = time.time() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline, "service did not start"
                time.sleep(0.1)
        done_with_results(store, files)
        deadline = time.time() + 60
        while store.delivery_counts() != {"sent": 40} and time.time() < deadline:
            time.sleep(0.1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
        pacs.stop()
    assert store.delivery_counts() == {"sent": 40}
    sent_twice = [uid for uid, n in Counter(uid for uid, _ in pacs.received).items() if n > 1]
    assert sent_twice == [] and len(pacs.received) == 40
    senders = Counter(ae for _, ae in pacs.received)
    assert set(senders) == {"NODEA", "NODEB"}, senders  # both services were sending
    with store.session() as s:
        assert {d.attempts for d in s.query(Delivery)} == {1}
    store.close()
