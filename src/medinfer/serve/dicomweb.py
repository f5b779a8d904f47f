"""DICOMweb retrieval of the service's results: QIDO-RS search and WADO-RS retrieve (PS3.18).

Served are the DICOM results (SEG, SR, Secondary Capture) of jobs that are ``done`` and
that no later job superseded (a job whose ``supersedes`` names it); never the received
source instances. Every route needs a token with the ``read`` scope and is written to the
audit trail (UIDs hashed, no patient values).

Searches answer ``application/dicom+json`` (the PS3.18 JSON model), or 204 No Content
when nothing matches (PS3.18 10.6.3.3). UID keys take one or more UIDs (``,`` or ``\\``
between them); ``Modality``, ``AccessionNumber`` and ``PatientID`` match exactly; other keys
are ignored and named in a ``Warning`` header. Study and series results count every
served instance of the study or series that has a match. Retrieval streams the stored
files, one ``multipart/related; type="application/dicom"`` part each, as stored;
``/metadata`` answers their headers without bulk pixel data.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

import pydicom
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select

from medinfer.serve.config import RESULT_KINDS
from medinfer.serve.auth import Principal, require
from medinfer.serve.logs import hash_uid
from medinfer.serve.models import Job, Result
from medinfer.serve.store import Store

__all__ = ["SERVED_KINDS", "ServedInstance", "find_served", "router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
Reader = Annotated[Principal, Depends(require("read"))]
Limit = Annotated[int | None, Query(ge=1, le=1000, description="at most this many results")]
Offset = Annotated[int, Query(ge=0, description="skip this many results")]

SERVED_KINDS = RESULT_KINDS
MAX_RESULTS = 1000  # a search without ``limit`` answers at most this many (and says so)
DICOM_JSON = "application/dicom+json"
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CHUNK = 1 << 20  # bytes read from a file at a time while streaming it
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
VALUE_KEYS = ("Modality", "AccessionNumber", "PatientID")
_CONTROL = ("limit", "offset", "includefield", "fuzzymatching")
STUDY_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
              "StudyDescription", "ReferringPhysicianName", "PatientName", "PatientID",
              "PatientBirthDate", "PatientSex")
SERIES_TAGS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "SeriesDate", "SeriesTime")
INSTANCE_TAGS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                 "NumberOfFrames", "ContentDate", "ContentTime")


@dataclass(frozen=True)
class ServedInstance:
    """One result instance DICOMweb serves: its UIDs (as recorded by the worker) and file."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    path: str


def check_uid(uid: str) -> str:
    """``uid`` if it is a DICOM UID (digits and dots, no leading zeros, at most 64 chars).

    Raises:
        HTTPException: 400 otherwise (the value is not echoed).
    """
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise HTTPException(400, "not a valid DICOM UID (digits and dots, at most 64 characters)")
    return uid


def find_served(store: Store, studies: set[str] | None = None, series: set[str] | None = None,
                sops: set[str] | None = None) -> list[ServedInstance]:
    """The served result instances, optionally only those with these UIDs (None: any).

    Returns:
        Instances ordered by study, series and result id.
    """
    superseded = select(Job.supersedes).where(Job.supersedes.is_not(None))
    q = (select(Result).join(Job, Job.id == Result.job_id)
         .where(Job.state == "done", Result.kind.in_(SERVED_KINDS), Result.study_uid != "",
                Job.id.not_in(superseded))
         .order_by(Result.study_uid, Result.series_uid, Result.id))
    for column, uids in ((Result.study_uid, studies), (Result.series_uid, series),
                         (Result.sop_uid, sops)):
        if uids is not None:
            q = q.where(column.in_(sorted(uids)))
    with store.session() as s:
        return [ServedInstance(r.study_uid, r.series_uid, r.sop_uid, r.sop_class_uid, r.path)
                for r in s.scalars(q)]


@functools.lru_cache(maxsize=4096)
def _read_header(path: str, mtime_ns: int) -> Dataset:
    """The search attributes of one file (cached: result files are written once)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True,
                         specific_tags=[*STUDY_TAGS, *SERIES_TAGS, *INSTANCE_TAGS])
    for _ in ds:  # decode every element now, so that request threads only ever read it
        pass
    return ds


def header(inst: ServedInstance) -> Dataset | None:
    """The instance's search attributes (do not modify), or None when its file is gone or
    unreadable (logged without the path's UIDs)."""
    try:
        return _read_header(inst.path, os.stat(inst.path).st_mtime_ns)
    except (OSError, InvalidDicomError) as exc:
        log.warning("result file unreadable", extra={"error": type(exc).__name__,
                                                     "sop": hash_uid(inst.sop_uid)})
        return None


# ---- QIDO-RS ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Search:
    """A search's matching keys: UID sets (None: any) and exact values of header keys."""

    uids: dict[str, set[str]]
    values: dict[str, set[str]]
    ignored: tuple[str, ...]

    def matches(self, ds: Dataset | None) -> bool:
        """Whether an instance's header has every matched value."""
        if not self.values:
            return True
        return ds is not None and all(str(ds.get(k, "")) in v for k, v in self.values.items())


def _keyword(key: str) -> str:
    """A query key (``StudyInstanceUID`` or its tag ``0020000D``) as a keyword."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or key
    return key


def parse_search(request: Request, scope: dict[str, str]) -> Search:
    """The request's matching keys, with the path's UIDs (``scope``) as UID keys too.

    Raises:
        HTTPException: 400 for a UID key with an invalid UID.
    """
    uids = {k: {v} for k, v in scope.items()}
    values: dict[str, set[str]] = {}
    ignored = []
    for key, raw in request.query_params.multi_items():
        name = _keyword(key)
        given = {v.strip() for v in re.split(r"[,\\]", raw) if v.strip()}
        if name in UID_KEYS + VALUE_KEYS + ("ModalitiesInStudy",) and not given:
            continue  # an empty value matches everything (universal matching)
        if name in UID_KEYS:
            given = {check_uid(u) for u in given}
            uids[name] = uids[name] & given if name in uids else given
        elif name == "ModalitiesInStudy" or name in VALUE_KEYS:
            values.setdefault("Modality" if name == "ModalitiesInStudy" else name,
                              set()).update(given)
        elif key not in _CONTROL:
            ignored.append(name if re.fullmatch(r"[A-Za-z0-9]{1,64}", name) else "?")
    return Search(uids, values, tuple(dict.fromkeys(ignored)))


def _candidates(store: Store, search: Search) -> list[tuple[ServedInstance, Dataset | None]]:
    """Served instances matching every key, each with its header (None if not needed)."""
    found = find_served(store, search.uids.get("StudyInstanceUID"),
                        search.uids.get("SeriesInstanceUID"), search.uids.get("SOPInstanceUID"))
    pairs = [(i, header(i) if search.values else None) for i in found]
    return [(i, ds) for i, ds in pairs if search.matches(ds)]


def _copy(out: Dataset, ds: Dataset | None, keywords: tuple[str, ...]) -> None:
    """Copy ``keywords`` present in ``ds`` into ``out`` (with their VRs; copies of the
    elements, so that setting one in ``out`` leaves the cached header as it is)."""
    for kw in keywords:
        if ds is not None and kw in ds:
            out[kw] = copy.copy(ds[kw])


def _url(request: Request, *uids: str) -> str:
    levels = ("studies", "series", "instances")
    path = "/".join(f"{level}/{uid}" for level, uid in zip(levels, uids))
    return f"{str(request.base_url).rstrip('/')}{router.prefix}/{path}"


def study_json(request: Request, members: list[ServedInstance]) -> Dataset:
    """Study-level attributes of one study's served instances (``members``, not empty)."""
    headers = [header(i) for i in members]
    out = Dataset()
    _copy(out, next((h for h in headers if h is not None), None), STUDY_TAGS)
    out.StudyInstanceUID = members[0].study_uid
    out.ModalitiesInStudy = sorted({str(h.get("Modality", "")) for h in headers if h} - {""})
    out.NumberOfStudyRelatedSeries = len({i.series_uid for i in members})
    out.NumberOfStudyRelatedInstances = len(members)
    out.RetrieveURL = _url(request, members[0].study_uid)
    return out


def series_json(request: Request, members: list[ServedInstance], with_study: bool) -> Dataset:
    """Series-level attributes of one series' served instances (and its study's)."""
    out = study_json(request, members) if with_study else Dataset()
    _copy(out, header(members[0]), SERIES_TAGS)
    out.StudyInstanceUID = members[0].study_uid
    out.SeriesInstanceUID = members[0].series_uid
    out.NumberOfSeriesRelatedInstances = len(members)
    out.RetrieveURL = _url(request, members[0].study_uid, members[0].series_uid)
    return out


def instance_json(request: Request, inst: ServedInstance, ds: Dataset | None,
                  with_series: bool, with_study: bool) -> Dataset:
    """Instance-level attributes of one instance (and its series' and study's)."""
    out = (series_json(request, [inst], with_study) if with_series
           else study_json(request, [inst]) if with_study else Dataset())
    for name in ("NumberOfSeriesRelatedInstances", "NumberOfStudyRelatedInstances",
                 "NumberOfStudyRelatedSeries", "ModalitiesInStudy"):
        if name in out:  # those counted this one instance only, not its series or study
            del out[name]
    _copy(out, ds, INSTANCE_TAGS)
    out.StudyInstanceUID, out.SeriesInstanceUID = inst.study_uid, inst.series_uid
    out.SOPClassUID = inst.sop_class_uid or (ds.get("SOPClassUID", "") if ds else "")
    out.SOPInstanceUID = inst.sop_uid
    out.RetrieveURL = _url(request, inst.study_uid, inst.series_uid, inst.sop_uid)
    return out


def _answer(who: Principal, store: Store, level: str, items: list[Dataset], more: bool,
            ignored: tuple[str, ...]) -> Response:
    """The search response: 200 with the JSON array, or 204; Warning headers as needed."""
    store.audit(who.name, "qido-search", f"dicom-web:{level}", f"{len(items)} results")
    warnings = []
    if ignored:
        warnings.append('299 medinfer "The following attributes were not supported for '
                        f'matching: {", ".join(ignored)}"')
    if more:
        warnings.append('299 medinfer "There are additional results that can be requested"')
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    if not items:
        return Response(status_code=204, headers=headers)
    return JSONResponse([dict(sorted(d.to_json_dict().items())) for d in items],
                        media_type=DICOM_JSON, headers=headers)


def _page(groups: list[list[ServedInstance]], limit: int | None,
          offset: int) -> tuple[list[list[ServedInstance]], bool]:
    """``groups[offset:offset+limit]`` and whether more remain beyond a default limit."""
    end = offset + (limit or MAX_RESULTS)
    return groups[offset:end], limit is None and len(groups) > end


def _groups(insts: list[ServedInstance],
            key: Callable[[ServedInstance], tuple[str, ...]]) -> list[list[ServedInstance]]:
    out: dict[tuple[str, ...], list[ServedInstance]] = {}
    for i in insts:
        out.setdefault(key(i), []).append(i)
    return list(out.values())


def search_studies(request: Request, who: Principal, limit: int | None, offset: int) -> Response:
    store: Store = request.app.state.store
    search = parse_search(request, {})
    matched = {i.study_uid for i, _ in _candidates(store, search)}
    groups, more = _page(_groups(find_served(store, matched) if matched else [],
                                 lambda i: (i.study_uid,)), limit, offset)
    return _answer(who, store, "studies", [study_json(request, g) for g in groups], more,
                   search.ignored)


def search_series(request: Request, who: Principal, scope: dict[str, str], limit: int | None,
                  offset: int) -> Response:
    store: Store = request.app.state.store
    search = parse_search(request, scope)
    matched = {i.series_uid for i, _ in _candidates(store, search)}
    members = find_served(store, series=matched) if matched else []
    groups, more = _page(_groups(members, lambda i: (i.study_uid, i.series_uid)), limit, offset)
    items = [series_json(request, g, with_study=not scope) for g in groups]
    return _answer(who, store, "series", items, more, search.ignored)


def search_instances(request: Request, who: Principal, scope: dict[str, str],
                     limit: int | None, offset: int) -> Response:
    store: Store = request.app.state.store
    search = parse_search(request, scope)
    found = _candidates(store, search)
    end = offset + (limit or MAX_RESULTS)
    items = [instance_json(request, i, ds if ds is not None else header(i),
                           with_series="SeriesInstanceUID" not in scope,
                           with_study=not scope) for i, ds in found[offset:end]]
    return _answer(who, store, "instances", items, limit is None and len(found) > end,
                   search.ignored)


@router.get("/studies", summary="QIDO-RS: search for studies")
def qido_studies(request: Request, who: Reader, limit: Limit = None, offset: Offset = 0) -> Response:
    """Studies with served results (study attributes, counts, ModalitiesInStudy)."""
    return search_studies(request, who, limit, offset)


@router.get("/series", summary="QIDO-RS: search for series")
def qido_all_series(request: Request, who: Reader, limit: Limit = None,
                    offset: Offset = 0) -> Response:
    """Result series of every study (with their study's attributes)."""
    return search_series(request, who, {}, limit, offset)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for a study's series")
def qido_series(request: Request, who: Reader, study: str, limit: Limit = None,
                offset: Offset = 0) -> Response:
    """Result series of one study."""
    return search_series(request, who, {"StudyInstanceUID": check_uid(study)}, limit, offset)


@router.get("/instances", summary="QIDO-RS: search for instances")
def qido_all_instances(request: Request, who: Reader, limit: Limit = None,
                       offset: Offset = 0) -> Response:
    """Result instances of every study (with their series' and study's attributes)."""
    return search_instances(request, who, {}, limit, offset)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for a study's instances")
def qido_study_instances(request: Request, who: Reader, study: str, limit: Limit = None,
                         offset: Offset = 0) -> Response:
    """Result instances of one study (with their series' attributes)."""
    return search_instances(request, who, {"StudyInstanceUID": check_uid(study)}, limit, offset)


@router.get("/studies/{study}/series/{series}/instances",
            summary="QIDO-RS: search for a series' instances")
def qido_series_instances(request: Request, who: Reader, study: str, series: str,
                          limit: Limit = None, offset: Offset = 0) -> Response:
    """Result instances of one series."""
    scope = {"StudyInstanceUID": check_uid(study), "SeriesInstanceUID": check_uid(series)}
    return search_instances(request, who, scope, limit, offset)


# ---- WADO-RS ---------------------------------------------------------------------------
def _media_ranges(accept: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(media range, lower-cased parameters) of an Accept header, q=0 ones left out."""
    for item in (accept or "*/*").split(","):
        kind, *params = [p.strip() for p in item.split(";")]
        values = {}
        for p in params:
            name, _, value = p.partition("=")
            values[name.strip().lower()] = value.strip().strip('"')
        if values.get("q", "1").strip() not in ("0", "0.0", "0.00", "0.000"):
            yield kind.lower(), values


def dicom_syntax(accept: str, stored: set[str]) -> None:
    """Check that ``accept`` takes ``multipart/related; type="application/dicom"`` of files
    in the ``stored`` transfer syntaxes (``transfer-syntax`` absent or ``*``: as stored).

    Raises:
        HTTPException: 406 when it does not.
    """
    for kind, params in _media_ranges(accept):
        if kind in ("*/*", "multipart/*"):
            return
        if kind == "multipart/related" and params.get("type", "application/dicom").lower() \
                in ("application/dicom", "*/*", "application/*"):
            syntax = params.get("transfer-syntax", "*")
            if syntax == "*" or stored <= {syntax}:
                return
    raise HTTPException(406, 'only multipart/related; type="application/dicom" (as stored, '
                             "transfer-syntax=*) is available")


def metadata_accepted(accept: str) -> None:
    """Raise 406 unless ``accept`` takes ``application/dicom+json``."""
    if not any(k in ("*/*", "application/*", DICOM_JSON, "application/json")
               for k, _ in _media_ranges(accept)):
        raise HTTPException(406, "only application/dicom+json metadata is available")


def _to_retrieve(store: Store, study: str, series: str | None, sop: str | None,
                 ) -> list[ServedInstance]:
    """The served instances under the path's UIDs whose files exist; 404 when none."""
    found = [i for i in find_served(store, {check_uid(study)},
                                    {check_uid(series)} if series else None,
                                    {check_uid(sop)} if sop else None)
             if os.path.isfile(i.path)]
    if not found:
        raise HTTPException(404, "no such study, series or instance among the served results")
    return found


def stream_parts(paths: list[str], syntaxes: list[str], boundary: str) -> Iterator[bytes]:
    """A ``multipart/related`` body of the files, read ``_CHUNK`` bytes at a time."""
    for path, syntax in zip(paths, syntaxes):
        ctype = "application/dicom" + (f'; transfer-syntax={syntax}' if syntax else "")
        yield f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def retrieve(request: Request, who: Principal, study: str, series: str | None = None,
             sop: str | None = None) -> StreamingResponse:
    """WADO-RS: the served instances under the path, streamed as stored."""
    store: Store = request.app.state.store
    found = _to_retrieve(store, study, series, sop)
    syntaxes = []
    for inst in found:
        ds = header(inst)
        meta = getattr(ds, "file_meta", None)
        syntaxes.append(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    dicom_syntax(request.headers.get("accept", ""), set(syntaxes) - {""})
    store.audit(who.name, "wado-retrieve", f"study:{hash_uid(study)}",
                f"{len(found)} instances")
    boundary = secrets.token_hex(16)
    return StreamingResponse(
        stream_parts([i.path for i in found], syntaxes, boundary),
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def metadata(request: Request, who: Principal, study: str, series: str | None = None,
             sop: str | None = None) -> JSONResponse:
    """WADO-RS metadata: every served instance's header without bulk pixel data."""
    store: Store = request.app.state.store
    found = _to_retrieve(store, study, series, sop)
    metadata_accepted(request.headers.get("accept", ""))
    out = []
    for inst in found:
        ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
        for tag in [e.tag for e in ds if e.tag.group == 0x7FE0]:
            del ds[tag]  # Float/Double Float Pixel Data, should a reader have kept them
        out.append(ds.to_json_dict())
    store.audit(who.name, "wado-retrieve", f"study:{hash_uid(study)}",
                f"metadata of {len(found)} instances")
    return JSONResponse(out, media_type=DICOM_JSON)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study's results",
            response_class=StreamingResponse)
def wado_study(request: Request, who: Reader, study: str) -> StreamingResponse:
    """Every served result instance of the study (``multipart/related``)."""
    return retrieve(request, who, study)


@router.get("/studies/{study}/metadata", summary="WADO-RS: a study's metadata")
def wado_study_metadata(request: Request, who: Reader, study: str) -> JSONResponse:
    """Headers of the study's served result instances (``application/dicom+json``)."""
    return metadata(request, who, study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a result series",
            response_class=StreamingResponse)
def wado_series(request: Request, who: Reader, study: str, series: str) -> StreamingResponse:
    """Every served instance of the series (``multipart/related``)."""
    return retrieve(request, who, study, series)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: a series' metadata")
def wado_series_metadata(request: Request, who: Reader, study: str, series: str) -> JSONResponse:
    """Headers of the series' served instances (``application/dicom+json``)."""
    return metadata(request, who, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}",
            summary="WADO-RS: retrieve a result instance", response_class=StreamingResponse)
def wado_instance(request: Request, who: Reader, study: str, series: str,
                  sop: str) -> StreamingResponse:
    """One served instance (``multipart/related``, one part)."""
    return retrieve(request, who, study, series, sop)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata",
            summary="WADO-RS: an instance's metadata")
def wado_instance_metadata(request: Request, who: Reader, study: str, series: str,
                           sop: str) -> JSONResponse:
    """The instance's header (``application/dicom+json``, a one-element array)."""
    return metadata(request, who, study, series, sop)
