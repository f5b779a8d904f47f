"""The job store: every state change of the service goes through here, in one transaction each.

Leasing is a compare-and-set: a worker picks a candidate job, then
``UPDATE jobs SET state='running', lease_token=:new ... WHERE id=:id AND (state='queued'
OR (state='running' AND lease_expires < :now))`` and owns the job only when that
updated exactly one row. Completion is
``UPDATE ... SET state='done' WHERE id=:id AND lease_token=:mine AND state='running'``
in the same transaction as the result rows, so an attempt whose lease was taken over
(its worker stalled or died) can never complete the job a second time. This works on
SQLite (writers are serialized) and PostgreSQL (row-level compare-and-set).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from medinfer.serve.logs import redact
from medinfer.serve.models import (
    ApiToken,
    AuditEvent,
    Base,
    Delivery,
    Instance,
    Job,
    Result,
    Study,
)

__all__ = [
    "JOB_STATES",
    "MAX_ID",
    "SCOPES",
    "InstanceInfo",
    "LeasedJob",
    "ResultFile",
    "SeriesInfo",
    "Store",
    "hash_token",
]

SCOPES = ("read", "submit", "admin")
JOB_STATES = ("queued", "running", "done", "failed")
# Row ids are SQL BIGINT / SQLite INTEGER: a larger number cannot even be looked up (the
# driver raises OverflowError), so callers validate ids against this before querying.
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class InstanceInfo:
    """What the router and the worker need to know about one stored file."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    format: str = "dicom"


@dataclass(frozen=True)
class SeriesInfo:
    """Routing attributes of one received series (taken from its first instance)."""

    series_uid: str
    modality: str
    body_part: str
    series_description: str
    sop_class_uid: str
    format: str
    num_instances: int


@dataclass(frozen=True)
class LeasedJob:
    """A job a worker holds; ``token`` must be presented to complete it."""

    id: int
    token: str
    study_id: int
    study_uid: str
    series_uid: str
    route: str
    artifact: str
    attempts: int
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, format)


@dataclass(frozen=True)
class ResultFile:
    """A file a job wrote, to be recorded (and delivered when it is DICOM)."""

    kind: str
    path: str
    media_type: str
    sop_uid: str = ""


def hash_token(token: str) -> str:
    """SHA-256 hex of an API token (tokens are 256-bit random, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Store:
    """Typed operations over the service database.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.db`` or ``postgresql+psycopg://...``).
        clock: time source (tests pass a fake one to expire leases instantly).
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"timeout": 30,
                                                                   "check_same_thread": False})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.clock = clock

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    # ---- receiving ---------------------------------------------------------------------
    def add_instance(self, info: InstanceInfo, path: str | Path, source: str, sender: str) -> int:
        """Record a stored file in the study now receiving it (created if needed).

        A SOP instance received twice in one receiving study keeps one row (the newer file).
        Returns the study id.
        """
        now = self.clock()
        with self.session() as s, s.begin():
            study = s.scalars(select(Study).where(
                Study.study_uid == info.study_uid, Study.state == "receiving",
                Study.source == source, Study.sender == sender).limit(1)).first()
            if study is None:
                study = Study(study_uid=info.study_uid, source=source, sender=sender,
                              state="receiving", first_received=now, last_received=now)
                s.add(study)
                s.flush()
            study.last_received = now
            old = s.scalars(select(Instance).where(Instance.study_id == study.id,
                                                   Instance.sop_uid == info.sop_uid)).first()
            if old is not None:
                old.path, old.received_at = str(path), now
            else:
                s.add(Instance(study_id=study.id, path=str(path), received_at=now,
                               **{k: getattr(info, k) for k in (
                                   "series_uid", "sop_uid", "sop_class_uid", "modality",
                                   "body_part", "series_description", "format")}))
            return study.id

    def quiet_studies(self, quiet_seconds: float) -> list[int]:
        """Receiving studies to which nothing arrived for ``quiet_seconds``."""
        limit = self.clock() - quiet_seconds
        with self.session() as s:
            return list(s.scalars(select(Study.id).where(
                Study.state == "receiving", Study.last_received <= limit)))

    def finalize_study(self, study_id: int,
                       route: Callable[[SeriesInfo], tuple[str, str] | None]) -> list[int]:
        """Close a receiving study: route each series and queue one job per routed series.

        Args:
            route: ``SeriesInfo -> (route name, artifact dir)`` or None when no rule matches.

        Returns:
            The ids of the jobs created ([] when the study was already closed or unrouted).
        """
        now = self.clock()
        with self.session() as s, s.begin():
            closed = s.execute(update(Study).where(Study.id == study_id,
                                                   Study.state == "receiving")
                               .values(state="closing")).rowcount
            if closed != 1:
                return []
            study = s.get(Study, study_id)
            assert study is not None
            series: dict[str, list[Instance]] = defaultdict(list)
            for inst in s.scalars(select(Instance).where(Instance.study_id == study_id)):
                series[inst.series_uid].append(inst)
            jobs, unrouted = [], []
            for uid, members in sorted(series.items()):
                first = members[0]
                info = SeriesInfo(uid, first.modality, first.body_part, first.series_description,
                                  first.sop_class_uid, first.format, len(members))
                target = route(info)
                if target is None:
                    unrouted.append(f"{first.modality or '?'} series ({len(members)} instances)")
                    continue
                job = Job(study_id=study_id, series_uid=uid, route=target[0],
                          artifact=target[1], state="queued", created_at=now, seconds={},
                          summary={})
                s.add(job)
                jobs.append(job)
            study.state = "complete" if jobs else "unrouted"
            study.completed_at = now
            study.note = ("no routing rule matched: " + "; ".join(unrouted)) if unrouted else ""
            s.flush()
            return [j.id for j in jobs]

    # ---- leasing -----------------------------------------------------------------------
    def lease_job(self, owner: str, lease_seconds: float, max_attempts: int) -> LeasedJob | None:
        """Atomically take the oldest queued job, or a running one whose lease expired.

        A job whose lease expired after ``max_attempts`` attempts is marked failed instead.
        """
        for _ in range(20):  # lost races are retried with the next candidate
            now = self.clock()
            leasable = or_(Job.state == "queued",
                           (Job.state == "running") & (Job.lease_expires < now))
            with self.session() as s, s.begin():
                cand = s.scalars(select(Job).where(leasable).order_by(Job.id).limit(1)).first()
                if cand is None:
                    return None
                if cand.state == "running" and cand.attempts >= max_attempts:
                    s.execute(update(Job).where(Job.id == cand.id, leasable).values(
                        state="failed", finished_at=now, lease_token=None,
                        error=cand.error or f"worker lost {cand.attempts} times (lease expired)"))
                    continue
                token, attempts = secrets.token_hex(16), cand.attempts + 1
                won = s.execute(update(Job).where(Job.id == cand.id, leasable).values(
                    state="running", lease_owner=owner, lease_token=token,
                    lease_expires=now + lease_seconds, attempts=Job.attempts + 1,
                    started_at=func.coalesce(Job.started_at, now))).rowcount
                if won != 1:
                    continue
                study = s.get(Study, cand.study_id)
                files = [(i.path, i.format) for i in s.scalars(
                    select(Instance).where(Instance.study_id == cand.study_id,
                                           Instance.series_uid == cand.series_uid)
                    .order_by(Instance.id))]
                return LeasedJob(cand.id, token, cand.study_id, study.study_uid if study else "",
                                 cand.series_uid, cand.route, cand.artifact, attempts, files)
        return None

    def renew_lease(self, job_id: int, token: str, lease_seconds: float) -> bool:
        """Extend a held lease; False when it was lost."""
        with self.session() as s, s.begin():
            return s.execute(update(Job).where(
                Job.id == job_id, Job.lease_token == token, Job.state == "running")
                .values(lease_expires=self.clock() + lease_seconds)).rowcount == 1

    def complete_job(self, job_id: int, token: str, results: Iterable[ResultFile],
                     destinations: dict[str, list[str]], seconds: dict[str, float],
                     summary: dict[str, object]) -> bool:
        """Mark the job done and record its results and deliveries, if the lease is still held.

        Args:
            destinations: result kind -> destination names to deliver it to.

        Returns:
            False (and nothing recorded) when another attempt owns the job now.
        """
        now = self.clock()
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            if job is None:
                return False
            total = now - (s.get(Study, job.study_id).completed_at or job.created_at)
            won = s.execute(update(Job).where(
                Job.id == job_id, Job.lease_token == token, Job.state == "running").values(
                state="done", finished_at=now, lease_expires=None, error="",
                seconds={**seconds, "total": round(total, 4)}, summary=summary)).rowcount
            if won != 1:
                return False
            for r in results:
                row = Result(job_id=job_id, kind=r.kind, path=r.path, media_type=r.media_type,
                             sop_uid=r.sop_uid)
                s.add(row)
                s.flush()
                for dest in destinations.get(r.kind, []):
                    s.add(Delivery(result_id=row.id, destination=dest, state="pending",
                                   attempts=0, next_attempt_at=now))
            return True

    def fail_attempt(self, job_id: int, token: str, error: str, max_attempts: int,
                     retryable: bool) -> str | None:
        """End a held attempt with an error: requeue it, or fail the job for good.

        Args:
            error: ``class: message`` (:func:`~medinfer.serve.logs.describe_failure`); it is
                redacted once more (:func:`~medinfer.serve.logs.redact`) before it is
                stored, since the API and the web page show it to every read token.

        Returns:
            The new state (``queued`` | ``failed``), or None when the lease was lost.
        """
        now = self.clock()
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            if job is None:
                return None
            state = "queued" if retryable and job.attempts < max_attempts else "failed"
            won = s.execute(update(Job).where(
                Job.id == job_id, Job.lease_token == token, Job.state == "running").values(
                state=state, error=redact(error)[:2000], lease_token=None, lease_expires=None,
                finished_at=now if state == "failed" else None)).rowcount
            return state if won == 1 else None

    # ---- deliveries --------------------------------------------------------------------
    def due_deliveries(self, limit: int = 50) -> list[tuple[int, str, str, str]]:
        """Pending deliveries whose retry time has come: (id, destination, kind, path)."""
        with self.session() as s:
            rows = s.execute(select(Delivery.id, Delivery.destination, Result.kind, Result.path)
                             .join(Result, Result.id == Delivery.result_id)
                             .where(Delivery.state == "pending",
                                    Delivery.next_attempt_at <= self.clock())
                             .order_by(Delivery.id).limit(limit))
            return [tuple(r) for r in rows]  # type: ignore[misc]

    def mark_delivery(self, delivery_id: int, ok: bool, error: str = "",
                      retry_after: float | None = None) -> None:
        """Record one delivery attempt: sent, retry later (``retry_after`` s) or failed."""
        now = self.clock()
        with self.session() as s, s.begin():
            d = s.get(Delivery, delivery_id)
            if d is None:
                return
            d.attempts += 1
            d.error = error[:2000]
            if ok:
                d.state, d.sent_at = "sent", now
            elif retry_after is None:
                d.state = "failed"
            else:
                d.next_attempt_at = now + retry_after

    # ---- audit and tokens --------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str = "", detail: str = "") -> None:
        with self.session() as s, s.begin():
            s.add(AuditEvent(at=self.clock(), actor=actor, action=action, target=target,
                             detail=detail))

    def create_token(self, name: str, scopes: Iterable[str]) -> str:
        """Make a new API token; the plain value is returned once and never stored."""
        scopes = sorted(set(scopes))
        bad = [x for x in scopes if x not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"scopes must be among {SCOPES}, got {scopes}")
        token = secrets.token_urlsafe(32)
        with self.session() as s, s.begin():
            s.add(ApiToken(name=name, token_hash=hash_token(token), scopes=" ".join(scopes),
                           created_at=self.clock()))
        return token

    def check_token(self, token: str) -> tuple[str, frozenset[str]] | None:
        """(token name, scopes) of a valid token, else None."""
        with self.session() as s:
            row = s.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token),
                                                   ApiToken.revoked.is_(False))).first()
            return (row.name, frozenset(row.scopes.split())) if row else None

    # ---- queries -----------------------------------------------------------------------
    def job_counts(self) -> dict[str, int]:
        """Number of jobs per state."""
        with self.session() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state))
            return {st: n for st, n in rows}

    def delivery_counts(self) -> dict[str, int]:
        with self.session() as s:
            return {st: n for st, n in s.execute(
                select(Delivery.state, func.count()).group_by(Delivery.state))}

    def job_totals(self) -> list[float]:
        """End-to-end seconds (study complete -> results stored) of every done job."""
        with self.session() as s:
            return [float(j.seconds.get("total", 0.0)) for j in s.scalars(
                select(Job).where(Job.state == "done"))]
