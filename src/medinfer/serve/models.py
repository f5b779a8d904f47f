"""The job store's tables (SQLAlchemy 2.x declarative ORM).

Times are UNIX seconds (float) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ADDED_COLUMNS", "ApiToken", "AuditEvent", "Base", "Delivery", "Instance", "Job",
           "Result", "Study", "WebSession"]


class Base(DeclarativeBase):
    pass


class Study(Base):
    """A study (or one REST upload) as received.

    ``state``: ``receiving`` (instances may still arrive) -> ``complete`` (routed,
    jobs created) or ``unrouted`` (no rule matched; kept, recorded, no job).
    """

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(16))  # dimse | stow | upload
    sender: Mapped[str] = mapped_column(String(128), default="")  # calling AE or token name
    state: Mapped[str] = mapped_column(String(16), default="receiving", index=True)
    first_received: Mapped[float] = mapped_column(Float)
    last_received: Mapped[float] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class Instance(Base):
    """One stored file (a DICOM instance, or an uploaded PNG/JPEG/NIfTI image or whole
    slide: ``format`` ``slide``)."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(128))
    sop_uid: Mapped[str] = mapped_column(String(128))
    sop_class_uid: Mapped[str] = mapped_column(String(128), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    format: Mapped[str] = mapped_column(String(16), default="dicom")
    path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)  # when this content first arrived
    digest: Mapped[str] = mapped_column(String(64), default="")  # SHA-256 of the file
    __table_args__ = (Index("ix_instances_study_sop", "study_id", "sop_uid", unique=True),)


class Job(Base):
    """Inference of one series with one routed model.

    ``state``: queued -> running -> done | failed (running -> queued again when the
    attempt fails and attempts remain; a running job whose lease expired is
    leasable again). ``lease_token`` identifies the attempt that may complete it.
    A queued or running job whose series changed after routing (late instances) becomes
    ``superseded``; the new job names it in ``supersedes``. ``deliver_after``: its results
    are not delivered before this time (``hold_results``).
    """

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(128))
    artifact: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[dict] = mapped_column(JSON, default=dict)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    supersedes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    deliver_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # the route's; higher first


#: Columns added after the first release: (table, column, SQL type). ``Store`` adds the
#: missing ones to an older database (``create_all`` creates only missing tables).
ADDED_COLUMNS = (("instances", "digest", "VARCHAR(64) DEFAULT ''"),
                 ("jobs", "supersedes", "INTEGER"),
                 ("jobs", "deliver_after", "FLOAT"),
                 ("tokens", "expires_at", "FLOAT"),
                 ("tokens", "last_used_at", "FLOAT"),
                 ("results", "study_uid", "VARCHAR(128) DEFAULT ''"),
                 ("results", "series_uid", "VARCHAR(128) DEFAULT ''"),
                 ("results", "sop_class_uid", "VARCHAR(128) DEFAULT ''"),
                 ("deliveries", "lease_owner", "VARCHAR(128)"),
                 ("deliveries", "lease_expires", "FLOAT"),
                 ("jobs", "priority", "INTEGER DEFAULT 0"))


class Result(Base):
    """One file a job produced: ``kind`` seg | sr | sc | pm | json | mask | overlay, or
    (a slide) heatmap | geojson."""

    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    media_type: Mapped[str] = mapped_column(String(64))
    sop_uid: Mapped[str] = mapped_column(String(128), default="")
    # DICOM results only (what QIDO-RS answers from): the result object's own UIDs
    study_uid: Mapped[str] = mapped_column(String(128), default="", index=True)
    series_uid: Mapped[str] = mapped_column(String(128), default="")
    sop_class_uid: Mapped[str] = mapped_column(String(128), default="")


class Delivery(Base):
    """Sending one result to one destination: pending -> sent | failed, or pending ->
    superseded when its job's series changed before it was sent.

    A sender (a delivery lane of any service process on this database) claims a pending
    delivery by setting ``lease_owner`` and ``lease_expires``; no other sender takes it
    before the lease ends (:meth:`~medinfer.serve.store.Store.claim_delivery`).
    """

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditEvent(Base):
    """Who did what to which object (no patient-identifying values)."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class ApiToken(Base):
    """An API token; only its SHA-256 is stored. Refused once revoked or past
    ``expires_at`` (``None``: never expires)."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))  # space separated
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(default=False)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class WebSession(Base):
    """A web page login: the browser holds a random session id (only its SHA-256 is
    stored), never the API token; valid while unexpired and its token is valid."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
