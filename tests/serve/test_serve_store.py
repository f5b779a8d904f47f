"""Job store: leases are exclusive, expired leases are taken over, completion happens once;
each on SQLite and on a real PostgreSQL server (``db_url``)."""

from __future__ import annotations

import threading

import pytest
from serve_helpers import FixedClock as Clock
from serve_helpers import queue_jobs

from medinfer.serve.store import InstanceInfo, ResultFile, Store


@pytest.fixture
def clocked(db_url: str) -> tuple[Store, Clock]:
    clock = Clock()
    s = Store(db_url, clock=clock)
    yield s, clock
    s.close()


@pytest.fixture
def store(db_url: str) -> Store:  # this module's store: on both databases
    s = Store(db_url)
    yield s
    s.close()


def test_instances_join_the_receiving_study_until_it_is_closed(store: Store) -> None:
    a = store.add_instance(InstanceInfo("9.1", "9.1.1", "9.1.1.1", modality="MR"), "/a", "dimse", "X")
    b = store.add_instance(InstanceInfo("9.1", "9.1.2", "9.1.2.1", modality="SR"), "/b", "dimse", "X")
    again = store.add_instance(InstanceInfo("9.1", "9.1.1", "9.1.1.1"), "/a2", "dimse", "X")
    assert a == b == again
    jobs = store.finalize_study(a, lambda s: ("mr", "/art") if s.modality == "MR" else None)
    assert len(jobs) == 1  # one routed series; the SR series is noted, not dropped silently
    assert store.finalize_study(a, lambda s: ("mr", "/art")) == []  # closing twice is a no-op
    later = store.add_instance(InstanceInfo("9.1", "9.1.3", "9.1.3.1"), "/c", "dimse", "X")
    assert later != a
    from medinfer.serve.models import Study

    with store.session() as s:
        study = s.get(Study, a)
        assert study.state == "complete" and "no routing rule matched: SR series" in study.note


def test_a_study_no_rule_matches_is_recorded_as_unrouted(store: Store) -> None:
    study = store.add_instance(InstanceInfo("7.1", "7.1.1", "7.1.1.1", modality="CT"), "/a",
                               "dimse", "X")
    assert store.finalize_study(study, lambda s: None) == []
    from medinfer.serve.models import Study

    with store.session() as s:
        assert s.get(Study, study).state == "unrouted"


def test_concurrent_workers_lease_each_job_exactly_once(store: Store) -> None:
    jobs = queue_jobs(store, 12)
    got: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (job := store.lease_job(name, 30, 3)) is not None:
            with lock:
                got.append(job.id)
            assert store.complete_job(job.id, job.token, [], {}, {}, {})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == jobs
    assert store.job_counts() == {"done": 12}


def test_dead_workers_job_is_taken_over_and_completes_once(clocked) -> None:
    store, clock = clocked
    [job_id] = queue_jobs(store, 1)
    dead = store.lease_job("dead", lease_seconds=10, max_attempts=3)
    assert store.lease_job("other", 10, 3) is None  # lease held: nobody else gets it
    clock.t += 11  # the dead worker never renewed
    alive = store.lease_job("alive", 10, 3)
    assert alive is not None and alive.id == job_id and alive.attempts == 2
    assert not store.renew_lease(job_id, dead.token, 10)
    result = ResultFile("seg", "/r/seg.dcm", "application/dicom", "1.2.3")
    assert store.complete_job(job_id, alive.token, [result], {"seg": ["pacs"]}, {}, {})
    # the stalled first attempt wakes up and tries to finish: refused, nothing recorded twice
    assert not store.complete_job(job_id, dead.token, [result], {"seg": ["pacs"]}, {}, {})
    assert store.fail_attempt(job_id, dead.token, "late", 3, retryable=True) is None
    assert store.job_counts() == {"done": 1}
    assert store.delivery_counts() == {"pending": 1}


def test_lost_too_often_fails_and_errors_requeue_until_max_attempts(clocked) -> None:
    store, clock = clocked
    a, b = queue_jobs(store, 2)
    for _ in range(2):
        assert store.lease_job("w", 10, 2).id == a
        clock.t += 11
    first = store.lease_job("w", 10, 2)  # job a: lost twice -> failed; job b is leased
    assert first.id == b
    assert store.fail_attempt(b, first.token, "RuntimeError: boom", 2, retryable=True) == "queued"
    second = store.lease_job("w", 10, 2)
    assert store.fail_attempt(b, second.token, "RuntimeError: boom", 2, retryable=True) == "failed"
    from medinfer.serve.models import Job

    with store.session() as s:
        assert "worker lost 2 times" in s.get(Job, a).error
        assert s.get(Job, b).attempts == 2
    assert store.job_counts() == {"failed": 2}


def test_input_errors_fail_at_once(store: Store) -> None:
    [job_id] = queue_jobs(store, 1)
    job = store.lease_job("w", 10, 3)
    assert store.fail_attempt(job_id, job.token, "InputError: bad", 3, retryable=False) == "failed"


def test_restart_resumes_queued_work(db_url: str) -> None:
    url = db_url
    first = Store(url)
    jobs = queue_jobs(first, 3)
    first.lease_job("w", 30, 3)
    first.close()
    second = Store(url)  # the service restarted
    resumed = second.lease_job("w2", 30, 3)
    assert resumed is not None and resumed.id == jobs[1]
    assert second.job_counts() == {"running": 2, "queued": 1}
    second.close()


def test_tokens_are_stored_hashed_with_scopes(store: Store) -> None:
    token = store.create_token("alice", ["read", "submit"])
    assert store.check_token(token) == ("alice", frozenset({"read", "submit"}))
    assert store.check_token(token + "x") is None
    with pytest.raises(ValueError, match="scopes"):
        store.create_token("bob", ["root"])
    from medinfer.serve.models import ApiToken

    with store.session() as s:
        assert all(token not in (t.token_hash, t.name) for t in s.query(ApiToken))


def test_a_database_of_an_older_version_gains_the_new_columns(db_url: str) -> None:
    from sqlalchemy import inspect, text

    from medinfer.serve.models import ADDED_COLUMNS

    Store(db_url).close()
    first = Store(db_url)
    with first.engine.begin() as conn:  # as the first release made it
        for index in inspect(first.engine).get_indexes("results"):
            if "study_uid" in index["column_names"]:
                conn.execute(text(f"DROP INDEX {index['name']}"))
        for table, column, _ in ADDED_COLUMNS:
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    first.close()
    for _ in range(2):  # idempotent
        store = Store(db_url)
        queue_jobs(store, 1)
        job = store.lease_job("w", 30, 3)
        result = ResultFile("seg", "/r.dcm", "application/dicom", "1.9", study_uid="1.8")
        assert store.complete_job(job.id, job.token, [result], {"seg": ["pacs"]}, {}, {})
        assert store.claim_delivery("pacs", "h:1:lanes", 10) is not None
        store.close()
    have = inspect(Store(db_url).engine)
    for table, column, _ in ADDED_COLUMNS:
        assert column in {c["name"] for c in have.get_columns(table)}, (table, column)
    assert any("study_uid" in i["column_names"] for i in have.get_indexes("results"))


def test_higher_priority_jobs_are_leased_first_then_the_oldest(store: Store) -> None:
    routes = {"MR": ("mr", "/mr", 0), "ES": ("endo", "/endo", 10)}
    order = []
    for i, modality in enumerate(["MR", "MR", "ES", "MR", "ES"]):
        info = InstanceInfo(f"3.{i}", f"3.{i}.1", f"3.{i}.1.1", modality=modality)
        study = store.add_instance(info, f"/x/{i}.dcm", "dimse", "AE")
        order += store.finalize_study(study, lambda s: routes[s.modality])
    leased = []
    while (job := store.lease_job("w", 30, 3)) is not None:
        leased.append((job.route, job.id))
    assert leased == [("endo", order[2]), ("endo", order[4]),
                      ("mr", order[0]), ("mr", order[1]), ("mr", order[3])]
