"""Complete series only, one result set per series version: late instances rejoin their
closed study and supersede its job, identical re-sends change nothing, a restart in the
middle of a transfer makes one study (all on the store's fake clock, no sleeps)."""

from __future__ import annotations

import sqlite3

import numpy as np
from serve_helpers import ThresholdPredictor
from sqlalchemy import select

from medinfer.data.synthetic import mr_series
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import Delivery, Job, Result, Study
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker

PACS = [{"name": "pacs", "kind": "stow", "url": "http://127.0.0.1:9/dicom-web/studies"}]


def setup(make_config, clock, **kw):
    cfg = make_config(destinations=PACS, **kw)
    store = Store(cfg.db_url, clock=clock)
    return cfg, store, Receiver(cfg, store)


def send(receiver: Receiver, slices) -> int:
    ids = {receiver.accept_dataset(ds.copy(), "dimse", "STORESCU") for ds in slices}
    assert len(ids) == 1
    return ids.pop()


def close(receiver: Receiver, clock) -> list[int]:
    clock.advance(receiver.config.quiet_seconds + 0.1)
    return receiver.close_quiet_studies()


def run(cfg, store) -> bool:
    return Worker(cfg, store, "w", predictor_factory=lambda a: ThresholdPredictor()).run_once()


def job(store: Store, job_id: int) -> Job:
    with store.session() as s:
        return s.get(Job, job_id)


def pending_jobs(store: Store) -> set[int]:
    """Jobs whose results wait to be delivered (whatever their retry time)."""
    with store.session() as s:
        return set(s.scalars(select(Result.job_id).join(Delivery, Delivery.result_id == Result.id)
                             .where(Delivery.state == "pending")))


def test_late_instances_rejoin_the_study_and_supersede_its_queued_job(make_config, clock) -> None:
    cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(4)
    study = send(receiver, slices[:2])
    [first] = close(receiver, clock)
    assert send(receiver, slices[2:]) == study  # rejoins, not a new study
    assert receiver.close_quiet_studies() == []  # quiet counted from the last instance
    [second] = close(receiver, clock)
    assert job(store, first).state == "superseded"
    assert job(store, second).supersedes == first
    assert run(cfg, store) and not run(cfg, store)  # only the full series runs
    assert job(store, second).state == "done"
    with store.session() as s:
        assert s.query(Study).count() == 1
        assert s.query(Result).filter_by(job_id=first).count() == 0
    assert pending_jobs(store) == {second}
    store.close()


def test_running_attempt_of_a_superseded_job_cannot_complete(make_config, clock) -> None:
    _cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(4)
    send(receiver, slices[:2])
    [first] = close(receiver, clock)
    leased = store.lease_job("w0", 60, 3)
    assert leased is not None and leased.id == first and len(leased.files) == 2
    send(receiver, slices[2:])
    [second] = close(receiver, clock)
    assert not store.renew_lease(first, leased.token, 60)
    assert not store.complete_job(first, leased.token, [], {"seg": ["pacs"]}, {}, {})
    assert job(store, first).state == "superseded"
    again = store.lease_job("w1", 60, 3)
    assert again is not None and again.id == second and len(again.files) == 4
    store.close()


def test_late_instances_after_delivery_make_one_new_result_set(make_config, clock) -> None:
    cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(4)
    send(receiver, slices[:2])
    [first] = close(receiver, clock)
    assert run(cfg, store)
    for d_id, *_ in store.due_deliveries():
        store.mark_delivery(d_id, ok=True)  # the partial result already reached the PACS
    send(receiver, slices[2:])
    [second] = close(receiver, clock)
    assert job(store, first).state == "done" and job(store, second).supersedes == first
    assert run(cfg, store)
    assert pending_jobs(store) == {second}
    assert close(receiver, clock) == [] and not run(cfg, store)  # delivered once
    store.close()


def test_undelivered_results_of_a_partial_series_are_never_sent(make_config, clock) -> None:
    cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(4)
    send(receiver, slices[:2])
    [first] = close(receiver, clock)
    assert run(cfg, store) and pending_jobs(store) == {first}
    send(receiver, slices[2:])
    [second] = close(receiver, clock)
    assert pending_jobs(store) == set()  # the partial result's deliveries are superseded
    assert run(cfg, store) and pending_jobs(store) == {second}
    store.close()


def test_hold_results_delivers_only_after_the_late_window(make_config, clock) -> None:
    cfg, store, receiver = setup(make_config, clock, hold_results=True, late_seconds=30)
    send(receiver, mr_series(3))
    close(receiver, clock)
    assert run(cfg, store)
    assert store.due_deliveries() == []
    clock.advance(30)
    assert store.due_deliveries()
    store.close()


def test_instances_after_the_late_window_start_a_new_study(make_config, clock) -> None:
    _cfg, store, receiver = setup(make_config, clock, late_seconds=10)
    slices = mr_series(4)
    study = send(receiver, slices[:2])
    close(receiver, clock)
    clock.advance(10)
    assert send(receiver, slices[2:]) != study
    store.close()


def test_identical_resend_makes_no_second_job_or_delivery(make_config, clock) -> None:
    cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(3)
    study = send(receiver, slices)
    assert len(close(receiver, clock)) == 1
    assert run(cfg, store)
    delivered = len(store.due_deliveries())
    assert send(receiver, slices) == study
    assert close(receiver, clock) == []
    with store.session() as s:
        assert s.get(Study, study).state == "complete"
        assert s.query(Job).count() == 1 and s.query(Delivery).count() == delivered
    store.close()


def test_changed_instance_with_the_same_uid_replaces_it(make_config, clock) -> None:
    _cfg, store, receiver = setup(make_config, clock)
    slices = mr_series(3)
    send(receiver, slices)
    [first] = close(receiver, clock)
    changed = slices[1].copy()
    px = changed.pixel_array.copy()
    px[0, 0] = 999
    changed.PixelData = np.ascontiguousarray(px).tobytes()
    send(receiver, [changed])
    [second] = close(receiver, clock)
    assert job(store, first).state == "superseded" and job(store, second).supersedes == first
    leased = store.lease_job("w", 60, 3)
    assert leased.id == second and len(leased.files) == 3  # replaced, not added
    store.close()


def test_restart_in_the_middle_of_a_transfer_makes_one_study(make_config, clock) -> None:
    cfg = make_config(destinations=PACS)
    slices = mr_series(4)
    before = Store(cfg.db_url, clock=clock)
    study = send(Receiver(cfg, before), slices[:2])
    before.close()
    clock.advance(cfg.quiet_seconds + 5)  # the service is down longer than the quiet time
    store = Store(cfg.db_url, clock=clock)
    receiver = Receiver(cfg, store)
    [partial] = receiver.close_quiet_studies()  # the first intake tick after the restart
    assert send(receiver, slices[2:]) == study
    assert receiver.close_quiet_studies() == []
    [full] = close(receiver, clock)
    assert job(store, partial).state == "superseded" and job(store, full).supersedes == partial
    assert len(store.lease_job("w", 60, 3).files) == 4
    store.close()


def test_restart_quiet_time_counts_from_the_last_instance(make_config, clock) -> None:
    cfg = make_config()
    slices = mr_series(4)
    before = Store(cfg.db_url, clock=clock)
    study = send(Receiver(cfg, before), slices[:2])
    before.close()
    store = Store(cfg.db_url, clock=clock)
    receiver = Receiver(cfg, store)
    assert send(receiver, slices[2:]) == study
    clock.advance(cfg.quiet_seconds / 2)
    assert receiver.close_quiet_studies() == []
    [only] = close(receiver, clock)
    assert len(store.lease_job("w", 60, 3).files) == 4 and job(store, only).supersedes is None
    store.close()


def test_database_of_an_older_version_opens(make_config) -> None:
    cfg = make_config()
    Store(cfg.db_url).close()
    db = cfg.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:  # the columns this version added are missing there
        conn.execute("ALTER TABLE instances DROP COLUMN digest")
        conn.execute("ALTER TABLE jobs DROP COLUMN supersedes")
        conn.execute("ALTER TABLE jobs DROP COLUMN deliver_after")
    for _ in range(2):  # idempotent
        store = Store(cfg.db_url)
        receiver = Receiver(cfg, store)
        send(receiver, mr_series(2))
        assert receiver.close_study(receiver.store.quiet_studies(-1)[0])
        store.close()
