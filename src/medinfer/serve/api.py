"""The REST API, STOW-RS endpoint and metrics (FastAPI; OpenAPI at ``/docs`` and ``/openapi.json``).

Uploads: ``POST /api/v1/studies`` (DICOM files of one study, or one PNG/JPEG/NIfTI image)
and ``POST /api/v1/slides`` (one whole-slide image, streamed to storage:
:mod:`medinfer.serve.slides`); both answer 202 with the jobs created.

Every route but ``/health`` (and the web page's login form) needs an API token with
the right scope, the OpenAPI document and its page included (``read``); every
submission and every read of a job or result is written to the audit trail. Uploads
are read only once the token is checked. Ids and ``limit`` are validated (422), and
every response carries the headers of :class:`~medinfer.serve.asgi.SecurityHeaders`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from pydicom.dataset import Dataset
from sqlalchemy import select
from starlette.datastructures import UploadFile

from medinfer.errors import InputError
from medinfer.serve.asgi import AccessLog, BodySizeLimit, SecurityHeaders
from medinfer.serve.auth import Principal, require
from medinfer.serve.config import ServeConfig
from medinfer.serve.dimse import decodable_transfer_syntaxes
from medinfer.serve.ingest import Receiver, check_pixels, detect_format, read_dicom_bytes
from medinfer.serve.logs import redact
from medinfer.serve.metrics import render_metrics
from medinfer.serve.models import Delivery, Job, Result, Study
from medinfer.serve.slides import pick_slide_route, receive_slide
from medinfer.serve.store import JOB_STATES, MAX_ID, Store
from medinfer.serve.stow import boundary_of, split_multipart

__all__ = ["create_app"]

log = logging.getLogger(__name__)

Reader = Annotated[Principal, Depends(require("read"))]
Submitter = Annotated[Principal, Depends(require("submit"))]
Admin = Annotated[Principal, Depends(require("admin"))]
RowId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a row id (1 .. 2^63-1)")]
JobState = Literal[JOB_STATES]  # type: ignore[valid-type]

# What FastAPI would document for File()/Form() parameters; the endpoint reads the form
# itself, after the token check, so an unauthenticated upload is never read.
_UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "modality": {"type": "string", "default": ""}}}}}}
_SLIDE_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"},
        "route": {"type": "string", "default": ""}}}}}}


class ResultOut(BaseModel):
    id: int
    kind: str
    media_type: str
    url: str


class DeliveryOut(BaseModel):
    destination: str
    kind: str
    state: str
    attempts: int
    error: str


class JobOut(BaseModel):
    id: int
    study_id: int
    route: str
    state: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    seconds: dict[str, float]
    summary: dict[str, object]
    error: str
    results: list[ResultOut] = []
    deliveries: list[DeliveryOut] = []


class StudyOut(BaseModel):
    id: int
    source: str
    state: str
    note: str
    jobs: list[int]


class SubmitOut(BaseModel):
    study_id: int
    state: str
    jobs: list[int]
    note: str


class HealthOut(BaseModel):
    """``status`` is ``degraded`` when the database fails or a destination is not ``ok``;
    ``destinations``: per destination, how sending goes (state ok / failing / stalled,
    pending, in flight, last error) when the service runs its delivery lanes."""

    status: str
    database: str
    dicom: str
    jobs: dict[str, int]
    deliveries: dict[str, int]
    destinations: dict[str, dict[str, object]] = {}
    workers: dict[str, int] = {}  # the service's own: configured, ready (models warmed up)


class TokenIn(BaseModel):
    name: str
    scopes: list[str]


class TokenOut(BaseModel):
    name: str
    scopes: list[str]
    token: str


def _job_out(store: Store, job: Job, full: bool) -> JobOut:
    out = JobOut(id=job.id, study_id=job.study_id, route=job.route, state=job.state,
                 attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
                 finished_at=job.finished_at, seconds=job.seconds or {},
                 summary=job.summary or {}, error=redact(job.error))
    if full:
        with store.session() as s:
            results = list(s.scalars(select(Result).where(Result.job_id == job.id)))
            out.results = [ResultOut(id=r.id, kind=r.kind, media_type=r.media_type,
                                     url=f"/api/v1/results/{r.id}") for r in results]
            kinds = {r.id: r.kind for r in results}
            out.deliveries = [DeliveryOut(destination=d.destination, kind=kinds[d.result_id],
                                          state=d.state, attempts=d.attempts, error=d.error)
                              for d in s.scalars(select(Delivery).where(
                                  Delivery.result_id.in_(kinds)))]
    return out


def _study_out(store: Store, study_id: int) -> StudyOut:
    with store.session() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise HTTPException(404, f"no study {study_id}")
        jobs = list(s.scalars(select(Job.id).where(Job.study_id == study_id)))
        return StudyOut(id=study.id, source=study.source, state=study.state, note=study.note,
                        jobs=jobs)


def create_app(config: ServeConfig, store: Store, receiver: Receiver | None = None,
               dicom_status: str = "disabled") -> FastAPI:
    """The service's ASGI app (REST + STOW-RS + metrics + web page).

    Args:
        config: the service config.
        store: the job store.
        receiver: stores uploads (built from ``config``/``store`` when None).
        dicom_status: shown by ``/health`` (e.g. ``"MEDINFER@11112"``).
    """
    from medinfer.serve.dicomweb import router as dicomweb_router
    from medinfer.serve.web import CSP
    from medinfer.serve.web import router as web_router

    receiver = receiver or Receiver(config, store)
    app = FastAPI(title="medinfer serve", version="1",
                  description="DICOM-native inference: submit studies, follow jobs, "
                              "download DICOM SEG / SR / Secondary Capture results.",
                  docs_url=None, redoc_url=None, openapi_url=None)  # served below, with a token
    app.state.store, app.state.config, app.state.receiver = store, config, receiver

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Reader) -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(who: Reader) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="medinfer serve API")

    @app.get("/health", response_model=HealthOut, tags=["service"])
    def health() -> HealthOut:
        """Service health (no token needed)."""
        try:
            jobs, deliveries, db = store.job_counts(), store.delivery_counts(), "ok"
        except Exception as exc:  # the database is what health is about
            jobs, deliveries, db = {}, {}, f"error: {type(exc).__name__}"
        health_of = getattr(app.state, "destination_health", None)
        destinations = {name: {**asdict(h), "last_error": redact(h.last_error)}
                        for name, h in (health_of() if health_of else {}).items()}
        ok = db == "ok" and all(d["state"] == "ok" for d in destinations.values())
        readiness = getattr(app.state, "worker_readiness", None)
        return HealthOut(status="ok" if ok else "degraded", database=db, dicom=dicom_status,
                         jobs=jobs, deliveries=deliveries, destinations=destinations,
                         workers=readiness() if readiness else {})

    @app.post("/api/v1/studies", response_model=SubmitOut, status_code=202, tags=["jobs"],
              openapi_extra={"requestBody": _UPLOAD_BODY})
    async def submit(who: Submitter, request: Request) -> SubmitOut:
        """Submit one study: DICOM files of one study, or one PNG/JPEG/NIfTI image.

        ``multipart/form-data`` with one ``files`` part per file and an optional
        ``modality``. The study is routed at once; the answer names the jobs created (none
        when no routing rule matched: ``state`` is then ``unrouted`` and ``note`` says why).
        """
        payloads, modality = await _read_upload(request)
        try:
            study_id = await asyncio.to_thread(_accept_upload, receiver, payloads, who.name,
                                               modality)
        except InputError as exc:
            store.audit(who.name, "submit-refused", "", redact(str(exc)))  # admins read it
            raise HTTPException(400, str(exc)) from exc
        jobs = await asyncio.to_thread(receiver.close_study, study_id)
        store.audit(who.name, "submit", f"study:{study_id}", f"{len(payloads)} files, jobs {jobs}")
        study = _study_out(store, study_id)
        return SubmitOut(study_id=study_id, state=study.state, jobs=jobs, note=study.note)

    @app.post("/api/v1/slides", response_model=SubmitOut, status_code=202, tags=["jobs"],
              openapi_extra={"requestBody": _SLIDE_BODY})
    async def submit_slide(who: Submitter, request: Request) -> SubmitOut:
        """Submit one whole-slide image (.svs, .ndpi, .tif, ...) to a route taking slides.

        ``multipart/form-data`` with one ``file`` part and an optional ``route`` naming a
        route whose ``match.formats`` names ``slide`` (default: the first such route whose
        rule matches). The file streams to storage (at most ``http.max_slide_upload_mb``)
        and is opened by the slide reader before the answer: 400 naming the file when it
        is not a slide or is damaged. The job writes a heat-map PNG, the cells as GeoJSON
        and the JSON summary (``GET /api/v1/jobs/{id}``); none is DICOM, none is sent to a
        PACS.
        """
        pick_slide_route(config.routes, "")  # 422 before any byte when no route takes slides
        part = None
        try:
            upload = await receive_slide(request, receiver.slides,
                                         lambda name: pick_slide_route(config.routes, name))
            part = upload.path
            route = pick_slide_route(config.routes, upload.route)
            study_id = await asyncio.to_thread(receiver.accept_slide, upload.path, upload.name,
                                               who.name)
        except InputError as exc:
            store.audit(who.name, "submit-refused", "", redact(str(exc)))
            raise HTTPException(400, str(exc)) from exc
        finally:
            if part is not None:
                part.unlink(missing_ok=True)  # moved into place unless refused
        jobs = await asyncio.to_thread(receiver.close_study, study_id, route)
        store.audit(who.name, "submit-slide", f"study:{study_id}",
                    f"{upload.size} bytes, route {route.name if route else '(first match)'}, "
                    f"jobs {jobs}")
        study = _study_out(store, study_id)
        return SubmitOut(study_id=study_id, state=study.state, jobs=jobs, note=study.note)

    @app.post("/dicom-web/studies", tags=["dicomweb"])
    async def stow(who: Submitter, request: Request) -> JSONResponse:
        """STOW-RS: ``multipart/related; type="application/dicom"``, one instance per part.

        Instances join their study like DIMSE ones: it is routed after ``quiet_seconds``.
        Answers 200 (all stored), 202 (some failed) or 409 (none stored) with the
        PS3.18 store-instances response (Referenced/Failed SOP Sequence).
        """
        ctype = request.headers.get("content-type", "")
        boundary = boundary_of(ctype)
        if not ctype.lower().startswith("multipart/related") or boundary is None:
            raise HTTPException(415, 'expected multipart/related; type="application/dicom"')
        body = await request.body()
        try:
            parts = split_multipart(body, boundary)
        except ValueError as exc:
            raise HTTPException(400, f"malformed multipart body: {exc}") from exc
        stored, failed = await asyncio.to_thread(_accept_stow, receiver, parts, who.name)
        store.audit(who.name, "stow", "", f"{len(stored)} stored, {len(failed)} failed")
        status = 200 if not failed else (202 if stored else 409)
        payload: dict[str, object] = {"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [uid]}} for uid in stored]}}
        if failed:
            payload["00081198"] = {"vr": "SQ", "Value": [
                {"00081197": {"vr": "US", "Value": [0xC000]},
                 "00081196": {"vr": "LT", "Value": [reason]}} for reason in failed]}
        return JSONResponse(payload, status_code=status, media_type="application/dicom+json")

    @app.get("/api/v1/jobs", response_model=list[JobOut], tags=["jobs"])
    def list_jobs(who: Reader, state: JobState | None = None,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[JobOut]:
        """Most recent jobs first (at most ``limit``, 1..1000), optionally of one state."""
        with store.session() as s:
            q = select(Job).order_by(Job.id.desc()).limit(limit)
            if state:
                q = q.where(Job.state == state)
            return [_job_out(store, j, full=False) for j in s.scalars(q)]

    @app.get("/api/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
    def get_job(who: Reader, job_id: RowId) -> JobOut:
        """A job's state, timings, error, results and deliveries."""
        with store.session() as s:
            job = s.get(Job, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        store.audit(who.name, "read-job", f"job:{job_id}")
        return _job_out(store, job, full=True)

    @app.get("/api/v1/studies/{study_id}", response_model=StudyOut, tags=["jobs"])
    def get_study(who: Reader, study_id: RowId) -> StudyOut:
        """A received study: state (receiving/complete/unrouted), routing note and jobs."""
        store.audit(who.name, "read-study", f"study:{study_id}")
        return _study_out(store, study_id)

    @app.get("/api/v1/results/{result_id}", tags=["jobs"],
             responses={200: {"content": {"application/dicom": {}, "image/png": {},
                                          "application/json": {}}}})
    def get_result(who: Reader, result_id: RowId) -> FileResponse:
        """Download one result file (DICOM SEG/SR/SC, overlay PNG, mask, JSON)."""
        with store.session() as s:
            r = s.get(Result, result_id)
        if r is None or not Path(r.path).is_file():
            raise HTTPException(404, f"no result {result_id}")
        store.audit(who.name, "read-result", f"result:{result_id}", r.kind)
        return FileResponse(r.path, media_type=r.media_type, filename=Path(r.path).name)

    @app.post("/api/v1/tokens", response_model=TokenOut, status_code=201, tags=["admin"])
    def create_token(who: Admin, body: TokenIn) -> TokenOut:
        """Create an API token (shown once; only its hash is stored)."""
        try:
            token = store.create_token(body.name, body.scopes)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        store.audit(who.name, "create-token", f"token:{body.name}", " ".join(body.scopes))
        return TokenOut(name=body.name, scopes=sorted(set(body.scopes)), token=token)

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics(who: Reader) -> Response:
        """Prometheus metrics: queue depth, jobs by state, failures, latency histogram."""
        return Response(render_metrics(store), media_type="text/plain; version=0.0.4")

    app.include_router(web_router)
    app.include_router(dicomweb_router)  # QIDO-RS / WADO-RS of the results
    app.add_middleware(BodySizeLimit, max_bytes=config.max_upload_bytes,
                       paths={"/api/v1/slides": config.max_slide_upload_bytes})
    app.add_middleware(AccessLog)
    # Outermost, so that the size limit's own 413 answers carry the headers too.
    app.add_middleware(SecurityHeaders, policies={"/ui": CSP, "/docs": "frame-ancestors 'none'"})
    return app


async def _read_upload(request: Request) -> tuple[list[tuple[str, bytes]], str]:
    """The ``files`` parts (name, bytes) and the ``modality`` field of a submission.

    A body over the size limit ends in 413 (raised while it streams); a malformed
    multipart body in 400.
    """
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "expected multipart/form-data with one or more 'files' parts")
    async with request.form() as form:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(422, "no 'files' part in the form")
        payloads = [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
        modality = form.get("modality")
    return payloads, modality if isinstance(modality, str) else ""


def _check_transfer_syntax(ds: Dataset, name: str) -> None:
    """Refuse, by name, an instance whose transfer syntax has no decoder installed here
    (rather than letting the pixel check call it truncated or damaged)."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid and "PixelData" in ds and str(uid) not in decodable_transfer_syntaxes():
        raise InputError(name, f"transfer syntax {uid.name} ({uid}) is not supported: "
                               "no pixel data decoder for it is installed")


def _accept_upload(receiver: Receiver, payloads: list[tuple[str, bytes]], sender: str,
                   modality: str) -> int:
    """Store an upload's files; returns the study id. Raises InputError naming a bad file."""
    if not payloads:
        raise InputError("upload", "no files")
    formats = [detect_format(data) for _, data in payloads]
    for (name, _), fmt in zip(payloads, formats):
        if fmt == "unknown":
            raise InputError(name, "not a DICOM, PNG, JPEG or NIfTI file")
    if set(formats) != {"dicom"}:
        if len(payloads) != 1:
            raise InputError(payloads[0][0], "submit one PNG/JPEG/NIfTI image per request")
        (name, data), fmt = payloads[0], formats[0]
        return receiver.accept_image_bytes(data, fmt, sender, name, modality)
    datasets = []
    for name, data in payloads:  # validate every file before storing any
        datasets.append((name, read_dicom_bytes(data, name, receiver.limits)))
        _check_transfer_syntax(datasets[-1][1], name)
    studies = {str(ds.get("StudyInstanceUID", "")) for _, ds in datasets}
    if len(studies) != 1:
        raise InputError(payloads[0][0], f"files belong to {len(studies)} studies; submit one")
    for name, ds in datasets:
        check_pixels(ds, name, receiver.limits)
    ids = {receiver.accept_dataset(ds, "upload", sender, name) for name, ds in datasets}
    return ids.pop()


def _accept_stow(receiver: Receiver, parts: list[tuple[dict[str, str], bytes]],
                 sender: str) -> tuple[list[str], list[str]]:
    """Store each STOW part; returns (stored SOP UIDs, failure reasons)."""
    stored, failed = [], []
    for i, (headers, data) in enumerate(parts):
        ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if ctype != "application/dicom":
            failed.append(f"part {i}: unsupported Content-Type {ctype!r}")
            continue
        try:
            ds = read_dicom_bytes(data, f"part {i}", receiver.limits)
            _check_transfer_syntax(ds, f"part {i}")
            receiver.accept_dataset(ds, "stow", sender, f"part {i}")
            stored.append(str(ds.SOPInstanceUID))
        except InputError as exc:
            failed.append(str(exc))
    return stored, failed
