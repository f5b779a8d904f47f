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

from sqlalchemy import (
    Engine,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from medinfer.serve.logs import redact
from medinfer.serve.models import (
    ADDED_COLUMNS,
    ApiToken,
    AuditEvent,
    Base,
    Delivery,
    Instance,
    Job,
    Result,
    Study,
    WebSession,
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
    "TokenInfo",
    "hash_token",
]

SCOPES = ("read", "submit", "admin")
JOB_STATES = ("queued", "running", "done", "failed", "superseded")
# Row ids are SQL BIGINT / SQLite INTEGER: a larger number cannot even be looked up (the
# driver raises OverflowError), so callers validate ids against this before querying.
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class TokenInfo:
    """An API token as listed: never its secret. Times are UNIX seconds."""

    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked: bool


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
    paths: tuple[str, ...] = ()  # the stored files (a rule on the series' structure reads their headers)


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
    study_uid: str = ""  # DICOM results: the object's Study/Series/SOP Class UIDs
    series_uid: str = ""
    sop_class_uid: str = ""


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
        self._add_missing_columns()
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.clock = clock

    def _add_missing_columns(self) -> None:
        """Bring a database of an older version up to date (idempotent): ``create_all``
        creates missing tables only, so columns added since are added here."""
        have = {t: {c["name"] for c in inspect(self.engine).get_columns(t)}
                for t in {t for t, _, _ in ADDED_COLUMNS}}
        with self.engine.begin() as conn:
            for table, column, sql_type in ADDED_COLUMNS:
                if column not in have[table]:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
            for table in have:  # and the indexes on them
                for index in Base.metadata.tables[table].indexes:
                    index.create(conn, checkfirst=True)

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    # ---- receiving ---------------------------------------------------------------------
    def add_instance(self, info: InstanceInfo, path: str | Path, source: str, sender: str,
                     digest: str = "", late_seconds: float = 0.0) -> int:
        """Record a stored file in its study: the one receiving it, else (a late instance)
        the last closed one of the same StudyInstanceUID, source and sender whose last
        instance arrived at most ``late_seconds`` ago, else a new one.

        Membership is decided here, from the database alone, so instances received before
        and after a restart join one study. A SOP instance received twice keeps one row:
        with the same ``digest`` (SHA-256 of the file) it changes nothing; with another one
        (or none) the newer file counts as new content (``received_at``). New content
        reopens a closed study (``receiving``), so it is routed again after the quiet time.

        Returns:
            The study id.
        """
        now = self.clock()
        with self.session() as s, s.begin():
            same = (Study.study_uid == info.study_uid) & (Study.source == source) \
                & (Study.sender == sender)
            study = s.scalars(select(Study).where(same, Study.state == "receiving")
                              .limit(1)).first()
            if study is None and late_seconds > 0:
                study = s.scalars(select(Study).where(
                    same, Study.state.in_(("complete", "unrouted")),
                    Study.last_received >= now - late_seconds)
                    .order_by(Study.id.desc()).limit(1)).first()
            if study is None:
                study = Study(study_uid=info.study_uid, source=source, sender=sender,
                              state="receiving", first_received=now, last_received=now)
                s.add(study)
                s.flush()
            study.last_received = now  # a re-send in progress keeps the late window open
            old = s.scalars(select(Instance).where(Instance.study_id == study.id,
                                                   Instance.sop_uid == info.sop_uid)).first()
            if old is not None and digest and old.digest == digest:
                return study.id
            study.state = "receiving"
            if old is not None:
                old.path, old.received_at, old.digest = str(path), now, digest
            else:
                s.add(Instance(study_id=study.id, path=str(path), received_at=now,
                               **{k: getattr(info, k) for k in (
                                   "series_uid", "sop_uid", "sop_class_uid", "modality",
                                   "body_part", "series_description", "format")},
                               digest=digest))
            return study.id

    def quiet_studies(self, quiet_seconds: float) -> list[int]:
        """Receiving studies to which nothing arrived for ``quiet_seconds``."""
        limit = self.clock() - quiet_seconds
        with self.session() as s:
            return list(s.scalars(select(Study.id).where(
                Study.state == "receiving", Study.last_received <= limit)))

    def finalize_study(self, study_id: int,
                       route: Callable[[SeriesInfo], tuple[str, str] | tuple[str, str, int]
                                       | None],
                       hold_seconds: float = 0.0) -> list[int]:
        """Close a receiving study: route each new or changed series and queue one job each.

        A series is changed when an instance of it got new content after its latest job
        was created (a late instance rejoined the study, :meth:`add_instance`). Its queued
        or running jobs become ``superseded`` (a running attempt then cannot complete:
        :meth:`complete_job` needs ``state='running'`` and its lease token, and both are
        gone), the pending deliveries of its earlier jobs become ``superseded`` (never
        sent), and the new job records the latest earlier one in ``supersedes``. An
        unchanged series keeps its job: one result set per version of a series.

        Args:
            route: ``SeriesInfo -> (route name, artifact dir[, priority])`` or None when no
                rule matches.
            hold_seconds: the new jobs' results are delivered no sooner than this long
                after the study's last instance (``hold_results``).

        Returns:
            The ids of the jobs created ([] when the study was already closed, unrouted or
            unchanged).
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
            for inst in s.scalars(select(Instance).where(Instance.study_id == study_id)
                                  .order_by(Instance.id)):
                series[inst.series_uid].append(inst)
            earlier: dict[str, list[Job]] = defaultdict(list)
            for old in s.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id)):
                earlier[old.series_uid].append(old)
            jobs, unrouted = [], []
            for uid, members in sorted(series.items()):
                prior = earlier.get(uid, [])
                if prior and max(i.received_at for i in members) <= prior[-1].created_at:
                    continue
                self._supersede(s, prior, now)
                first = members[0]
                info = SeriesInfo(uid, first.modality, first.body_part, first.series_description,
                                  first.sop_class_uid, first.format, len(members),
                                  tuple(i.path for i in members))
                target = route(info)
                if target is None:
                    unrouted.append(f"{first.modality or '?'} series ({len(members)} instances)")
                    continue
                job = Job(study_id=study_id, series_uid=uid, route=target[0],
                          artifact=target[1], state="queued", created_at=now, seconds={},
                          summary={}, supersedes=prior[-1].id if prior else None,
                          priority=target[2] if len(target) > 2 else 0,
                          deliver_after=study.last_received + hold_seconds)
                s.add(job)
                jobs.append(job)
            study.state = "complete" if jobs or earlier else "unrouted"
            study.completed_at = now
            study.note = ("no routing rule matched: " + "; ".join(unrouted)) if unrouted else ""
            s.flush()
            return [j.id for j in jobs]

    @staticmethod
    def _supersede(s: Session, prior: list[Job], now: float) -> None:
        """End a changed series' earlier jobs: queued or running ones, and the deliveries
        not yet sent of any of them (in the caller's transaction)."""
        if not prior:
            return
        ids = [j.id for j in prior]
        s.execute(update(Job).where(Job.id.in_(ids), Job.state.in_(("queued", "running")))
                  .values(state="superseded", lease_token=None, lease_expires=None,
                          finished_at=now, error="series changed (late instances)"))
        results = select(Result.id).where(Result.job_id.in_(ids))
        s.execute(update(Delivery).where(Delivery.result_id.in_(results),
                                         Delivery.state == "pending")
                  .values(state="superseded", error="series changed (late instances)"))

    # ---- leasing -----------------------------------------------------------------------
    def lease_job(self, owner: str, lease_seconds: float, max_attempts: int) -> LeasedJob | None:
        """Atomically take the oldest queued job of the highest priority, or a running one
        whose lease expired.

        A job whose lease expired after ``max_attempts`` attempts is marked failed instead.
        """
        for _ in range(20):  # lost races are retried with the next candidate
            now = self.clock()
            leasable = or_(Job.state == "queued",
                           (Job.state == "running") & (Job.lease_expires < now))
            with self.session() as s, s.begin():
                # PostgreSQL: a candidate another node is leasing now is skipped, not waited
                # for (SQLite ignores FOR UPDATE: its writers are serialized anyway)
                cand = s.scalars(select(Job).where(leasable)
                                 .order_by(Job.priority.desc(), Job.id).limit(1)
                                 .with_for_update(skip_locked=True)).first()
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
                             sop_uid=r.sop_uid, study_uid=r.study_uid, series_uid=r.series_uid,
                             sop_class_uid=r.sop_class_uid)
                s.add(row)
                s.flush()
                for dest in destinations.get(r.kind, []):
                    s.add(Delivery(result_id=row.id, destination=dest, state="pending",
                                   attempts=0, next_attempt_at=max(now, job.deliver_after or 0)))
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

    def claim_delivery(self, destination: str, owner: str,
                       lease_seconds: float) -> tuple[int, str, str] | None:
        """Take the oldest due, unclaimed pending delivery to ``destination`` for
        ``lease_seconds``: no other sender (another lane, another service process on this
        database) takes it before :meth:`mark_delivery` or the lease's end.

        The same compare-and-set as :meth:`lease_job` (PostgreSQL skips rows another
        node is claiming). A claim outlives a sender that died while sending: the
        delivery is sent again after ``lease_seconds`` (at-least-once).

        Returns:
            (delivery id, result kind, result path), or None when nothing is due.
        """
        for _ in range(20):
            now = self.clock()
            claimable = ((Delivery.destination == destination) & (Delivery.state == "pending")
                         & (Delivery.next_attempt_at <= now)
                         & or_(Delivery.lease_expires.is_(None), Delivery.lease_expires < now))
            with self.session() as s, s.begin():
                cand = s.scalars(select(Delivery.id).where(claimable).order_by(Delivery.id)
                                 .limit(1).with_for_update(skip_locked=True)).first()
                if cand is None:
                    return None
                won = s.execute(update(Delivery).where(Delivery.id == cand, claimable).values(
                    lease_owner=owner, lease_expires=now + lease_seconds)).rowcount
                if won != 1:
                    continue
                kind, path = s.execute(select(Result.kind, Result.path).join(
                    Delivery, Delivery.result_id == Result.id).where(Delivery.id == cand)).one()
                return cand, kind, path
        return None

    def retry_deliveries_now(self, destination: str) -> int:
        """End the retry delay of every pending delivery to ``destination`` (it is
        reachable again); how many."""
        now = self.clock()
        with self.session() as s, s.begin():
            return s.execute(update(Delivery).where(
                Delivery.destination == destination, Delivery.state == "pending",
                Delivery.next_attempt_at > now).values(next_attempt_at=now)).rowcount

    def delivery_claim_owners(self) -> list[str]:
        """Who holds an unexpired claim on a pending delivery (:meth:`claim_delivery`)."""
        with self.session() as s:
            return list(s.scalars(select(Delivery.lease_owner).distinct().where(
                Delivery.state == "pending", Delivery.lease_owner.is_not(None),
                Delivery.lease_expires >= self.clock())))

    def release_delivery_claims(self, owners: list[str]) -> int:
        """End the claims ``owners`` hold on pending deliveries (a stopped or dead
        sender's), so they are sent without waiting for the claims to expire; how many."""
        with self.session() as s, s.begin():
            return s.execute(update(Delivery).where(
                Delivery.state == "pending", Delivery.lease_owner.in_(owners))
                .values(lease_owner=None, lease_expires=None)).rowcount

    def mark_delivery(self, delivery_id: int, ok: bool, error: str = "",
                      retry_after: float | None = None) -> None:
        """Record one delivery attempt: sent, retry later (``retry_after`` s) or failed;
        the claim on it ends (:meth:`claim_delivery`)."""
        now = self.clock()
        with self.session() as s, s.begin():
            d = s.get(Delivery, delivery_id)
            if d is None:
                return
            d.attempts += 1
            d.error = error[:2000]
            d.lease_owner, d.lease_expires = None, None
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

    def create_token(self, name: str, scopes: Iterable[str],
                     expires_days: float | None = None) -> str:
        """Make a new API token; the plain value is returned once and never stored.

        Args:
            name: who or what uses it.
            scopes: among :data:`SCOPES`.
            expires_days: refused after this many days (``None``: never expires).
        """
        scopes = sorted(set(scopes))
        bad = [x for x in scopes if x not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"scopes must be among {SCOPES}, got {scopes}")
        if expires_days is not None and not expires_days > 0:
            raise ValueError(f"expires_days must be positive, got {expires_days}")
        token, now = secrets.token_urlsafe(32), self.clock()
        with self.session() as s, s.begin():
            s.add(ApiToken(name=name, token_hash=hash_token(token), scopes=" ".join(scopes),
                           created_at=now, expires_at=None if expires_days is None
                           else now + expires_days * 86400.0))
        return token

    def _valid_token(self, s: Session, where: object) -> ApiToken | None:
        """The unrevoked, unexpired token matching ``where``; records its use (at most
        once a minute, so that reads do not each write)."""
        now = self.clock()
        row = s.scalars(select(ApiToken).where(
            where, ApiToken.revoked.is_(False),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now))).first()
        if row is not None and (row.last_used_at is None or now - row.last_used_at > 60):
            s.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        return row

    def check_token(self, token: str) -> tuple[str, frozenset[str]] | None:
        """(token name, scopes) of a valid (unrevoked, unexpired) token, else None."""
        with self.session() as s, s.begin():
            row = self._valid_token(s, ApiToken.token_hash == hash_token(token))
            return (row.name, frozenset(row.scopes.split())) if row else None

    def list_tokens(self) -> list[TokenInfo]:
        """Every token, oldest first, without its secret (nor its hash)."""
        with self.session() as s:
            return [TokenInfo(t.name, tuple(t.scopes.split()), t.created_at, t.expires_at,
                              t.last_used_at, t.revoked)
                    for t in s.scalars(select(ApiToken).order_by(ApiToken.id))]

    def revoke_token(self, name: str) -> int:
        """Revoke every active token named ``name`` and end its web sessions; returns how
        many were revoked."""
        with self.session() as s, s.begin():
            ids = list(s.scalars(select(ApiToken.id).where(ApiToken.name == name,
                                                           ApiToken.revoked.is_(False))))
            if ids:
                s.execute(update(ApiToken).where(ApiToken.id.in_(ids)).values(revoked=True))
                s.execute(delete(WebSession).where(WebSession.token_id.in_(ids)))
            return len(ids)

    def create_web_session(self, token: str, seconds: float) -> str | None:
        """A new web session id for a valid ``token`` (``None`` if it is not), valid for
        ``seconds`` at most and never past the token's expiry. Only its hash is stored."""
        sid, now = secrets.token_urlsafe(32), self.clock()
        with self.session() as s, s.begin():
            row = self._valid_token(s, ApiToken.token_hash == hash_token(token))
            if row is None:
                return None
            s.execute(delete(WebSession).where(WebSession.expires_at <= now))
            end = now + seconds if row.expires_at is None else min(now + seconds, row.expires_at)
            s.add(WebSession(session_hash=hash_token(sid), token_id=row.id, created_at=now,
                             expires_at=end))
        return sid

    def check_web_session(self, sid: str) -> tuple[str, frozenset[str]] | None:
        """(token name, scopes) of an unexpired session whose token is valid, else None."""
        with self.session() as s, s.begin():
            web = s.scalars(select(WebSession).where(
                WebSession.session_hash == hash_token(sid),
                WebSession.expires_at > self.clock())).first()
            row = self._valid_token(s, ApiToken.id == web.token_id) if web else None
            return (row.name, frozenset(row.scopes.split())) if row else None

    def end_web_session(self, sid: str) -> None:
        """Forget a web session (logout); unknown ids are ignored."""
        with self.session() as s, s.begin():
            s.execute(delete(WebSession).where(WebSession.session_hash == hash_token(sid)))

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
