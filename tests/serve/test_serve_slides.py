"""Whole-slide images through the service (S7): ``POST /api/v1/slides`` streams one slide to
storage, a route taking slides sends it to a tiny cytology model, and the heat-map, the
cells' GeoJSON and the JSON summary come back as the job's results, none sent to a PACS.
A file that is not a slide, a damaged slide, a bad route and an upload without a token are
refused (naming the file) and leave nothing behind."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cytology_helpers import tiny_slides, train_tiny_cytology
from fastapi.testclient import TestClient
from orthanc_pacs import start_service, wait_for
from PIL import Image as PILImage
from serve_helpers import free_port

from medinfer.data.slide_sets import read_slide_folder
from medinfer.serve.api import create_app
from medinfer.serve.config import MatchRule, ServeConfig
from medinfer.serve.models import AuditEvent, Instance, Job, Study
from medinfer.serve.routing import matches
from medinfer.serve.store import SeriesInfo

pytest.importorskip("openslide")

SLIDE_LIMIT = 1024 * 1024  # http.max_slide_upload_mb: 1 (the tiny slides are ~130 kB)


@pytest.fixture(scope="module")
def slides(shared_path: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    crops = shared_path("cervical-cytology-cric")
    return tiny_slides(tmp_path_factory.mktemp("cyto") / "slides", crops)


@pytest.fixture(scope="module")
def live(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The running service (intake, deliveries, one worker) with the tiny cytology model on
    a route taking slides, behind a catch-all route that must never get one, and a PACS
    destination that must never get a slide's results; its client and tokens."""
    root = tmp_path_factory.mktemp("slide-service")
    art = train_tiny_cytology(slides, root / "model", epochs=1)
    cfg = ServeConfig.model_validate({
        "storage": root / "storage", "quiet_seconds": 0.3, "workers": 0, "log_format": "text",
        "http": {"max_upload_mb": 0.05, "max_slide_upload_mb": SLIDE_LIMIT / 2 ** 20},
        "routes": [{"name": "anything", "artifact": str(root / "no-model")},
                   {"name": "cytology", "artifact": str(art.root),
                    "match": {"formats": ["slide"]}}],
        "destinations": [{"name": "pacs", "kind": "dimse", "host": "127.0.0.1",
                          "port": free_port(), "ae_title": "PACS"}]})
    service, shutdown = start_service(cfg)
    tokens = {s: service.store.create_token(f"{s}-user", [s]) for s in ("read", "submit")}
    try:
        yield service, TestClient(service.app()), tokens
    finally:
        shutdown()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def multipart_chunks(name: str, data: bytes, fields: dict[str, str] | None = None,
                     chunk: int = 16384,
                     boundary: str = "sl1de") -> tuple[list[bytes], dict[str, str]]:
    """A ``multipart/form-data`` body cut into ``chunk``-byte pieces (as a network delivers it)."""
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                    f'{v}\r\n'.encode() for k, v in (fields or {}).items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return ([body[i:i + chunk] for i in range(0, len(body), chunk)],
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def post_in_chunks(app, chunks: list[bytes], headers: dict[str, str]) -> httpx.Response:
    """POST /api/v1/slides with a chunked body the app receives piece by piece (no
    Content-Length: the size limit counts the pieces as they stream)."""
    async def go() -> httpx.Response:
        async def body():
            for c in chunks:
                yield c

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://medinfer") as c:
            return await c.post("/api/v1/slides", content=body(), headers=headers)

    return asyncio.run(go())


def finished_job(client: TestClient, token: str, job_id: int) -> dict:
    def check() -> dict | None:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(token)).json()
        return job if job["state"] in ("done", "failed") else None

    return wait_for(check, 60, f"slide job {job_id}")


def kept(service) -> tuple[dict[str, int], set[str]]:
    """Rows of studies, instances and jobs, and the files under incoming/slides."""
    with service.store.session() as s:
        rows = {t.__name__: s.query(t).count() for t in (Study, Instance, Job)}
    folder = service.receiver.slides
    return rows, {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_a_slide_runs_through_the_cytology_model_to_downloadable_results(live, slides) -> None:
    service, client, tokens = live
    case = next(c for c in read_slide_folder(slides / "test") if c.label == 1)
    r = client.post("/api/v1/slides", headers=auth(tokens["submit"]), data={"route": "cytology"},
                    files={"file": ("Patient Doe 17.tif", case.path.read_bytes(), "image/tiff")})
    assert r.status_code == 202, r.text
    [job_id] = r.json()["jobs"]
    assert r.json()["state"] == "complete"
    job = finished_job(client, tokens["read"], job_id)
    assert job["state"] == "done", job["error"]
    assert job["route"] == "cytology" and job["deliveries"] == []
    results = {x["kind"]: x for x in job["results"]}
    assert {k: x["media_type"] for k, x in results.items()} == {
        "heatmap": "image/png", "geojson": "application/geo+json", "json": "application/json"}

    summary = client.get(results["json"]["url"], headers=auth(tokens["read"])).json()
    assert {"slide_score", "abnormal", "tiles", "cells"} <= set(summary)
    assert summary["task"] == "cytology" and summary["job"] == job_id
    assert 0.0 <= summary["slide_score"] <= 1.0 and isinstance(summary["abnormal"], bool)
    assert summary["tiles"] > 0 and isinstance(summary["cells"], list)
    assert "Doe" not in summary["slide"]  # stored under a hashed name, never the client's
    assert job["summary"]["slide_score"] == summary["slide_score"]

    geo = client.get(results["geojson"]["url"], headers=auth(tokens["read"]))
    assert geo.status_code == 200 and geo.headers["content-type"].startswith("application/geo+json")
    collection = geo.json()
    assert collection["type"] == "FeatureCollection"
    assert len(collection["features"]) == len(summary["cells"])
    heat = client.get(results["heatmap"]["url"], headers=auth(tokens["read"]))
    assert PILImage.open(io.BytesIO(heat.content)).size[0] > 0
    assert service.store.delivery_counts() == {}  # not DICOM: nothing for the PACS

    with service.store.session() as s:
        actions = [e.action for e in s.query(AuditEvent).filter(AuditEvent.actor == "submit-user")]
    assert "submit-slide" in actions


def test_a_slide_streamed_in_pieces_goes_to_the_first_route_taking_slides(live, slides) -> None:
    service, client, tokens = live
    case = next(c for c in read_slide_folder(slides / "test") if c.label == 0)
    chunks, headers = multipart_chunks("normal.tif", case.path.read_bytes())
    assert len(chunks) > 4
    r = post_in_chunks(client.app, chunks, {**headers, **auth(tokens["submit"])})
    assert r.status_code == 202, r.text
    [job_id] = r.json()["jobs"]
    job = finished_job(client, tokens["read"], job_id)
    assert job["state"] == "done" and job["route"] == "cytology", job["error"]  # not the catch-all
    stored = list(service.receiver.slides.iterdir())
    assert stored and all(p.suffix == ".tif" and not p.name.startswith(".part-") for p in stored)
    with service.store.session() as s:
        [path] = [i.path for i in s.query(Instance).join(Job, Job.study_id == Instance.study_id)
                  .filter(Job.id == job_id)]
    assert Path(path).read_bytes() == case.path.read_bytes()


def test_refused_uploads_name_the_file_and_keep_nothing(live, slides: Path) -> None:
    service, client, tokens = live
    before = kept(service)
    data = read_slide_folder(slides / "test")[0].path.read_bytes()
    png = io.BytesIO()
    PILImage.new("RGB", (8, 8)).save(png, format="PNG")
    submit = auth(tokens["submit"])

    def post(name: str, content: bytes, headers: dict[str, str] = submit, **data_fields: str):
        return client.post("/api/v1/slides", headers=headers, data=data_fields,
                           files={"file": (name, content, "application/octet-stream")})

    for name, content, reason in [("notes.txt", b"not a slide", "not a whole-slide image"),
                                  ("cut.tif", data[: len(data) // 3], "damaged"),
                                  ("picture.svs", png.getvalue(), "not a whole-slide image"),
                                  ("empty.ndpi", b"", "empty file"),
                                  ("case.mrxs", b"index", "several files")]:
        r = post(name, content)
        detail = r.json()["detail"]
        assert r.status_code == 400 and name in detail and reason in detail, r.text
    assert post("a.tif", data, headers={}).status_code == 401
    assert post("a.tif", data, headers=auth(tokens["read"])).status_code == 403
    for route in ("brain", "anything"):  # unknown, and a route that does not take slides
        r = post("a.tif", data, route=route)
        assert r.status_code == 422 and repr(route) in r.json()["detail"]
    r = client.post("/api/v1/slides", headers=submit,
                    files={"files": ("a.tif", data, "image/tiff")})
    assert r.status_code == 422 and "'files'" in r.json()["detail"]
    r = client.post("/api/v1/slides", headers=submit, data={"route": "cytology"})
    assert r.status_code == 415  # a urlencoded form
    r = post_in_chunks(client.app, [b'--b\r\nContent-Disposition: form-data; name="route"\r\n\r\n'
                                    b'cytology\r\n--b--\r\n'],
                       {"Content-Type": "multipart/form-data; boundary=b", **submit})
    assert r.status_code == 422 and "no 'file' part" in r.json()["detail"]
    assert post("big.tif", b"\0" * (SLIDE_LIMIT + 1)).status_code == 413  # declared length
    chunks, headers = multipart_chunks("big.tif", b"\0" * (SLIDE_LIMIT + 300_000))
    r = post_in_chunks(client.app, chunks, {**headers, **submit})  # counted while it streams
    assert r.status_code == 413 and str(SLIDE_LIMIT) in r.text
    chunks, headers = multipart_chunks("half.tif", data)
    r = post_in_chunks(client.app, chunks[:-2], {**headers, **submit})  # no closing boundary
    assert r.status_code == 400 and "malformed" in r.text
    r = client.post("/api/v1/studies", headers=submit,
                    files={"files": ("a.dcm", data, "application/dicom")})
    assert r.status_code == 413  # every other request keeps http.max_upload_mb
    assert kept(service) == before
    with service.store.session() as s:
        refused = [e.detail for e in s.query(AuditEvent)
                   .filter(AuditEvent.action == "submit-refused")]
    assert any("cut.tif" in d for d in refused)


def test_no_route_taking_slides_refuses_before_reading(make_config, store) -> None:
    cfg = make_config()  # MR, DX and PNG routes only
    client = TestClient(create_app(cfg, store))
    token = store.create_token("submitter", ["submit"])
    r = client.post("/api/v1/slides", headers=auth(token),
                    files={"file": ("a.tif", b"x", "image/tiff")})
    assert r.status_code == 422 and "formats: [slide]" in r.json()["detail"]
    assert not (cfg.storage / "incoming" / "slides").exists()


def test_only_rules_naming_slide_take_slides() -> None:
    slide = SeriesInfo("1.2", "SM", "", "", "", "slide", 1)
    assert not matches(MatchRule(), slide) and not matches(MatchRule(modality=["SM"]), slide)
    assert matches(MatchRule(formats=["slide"]), slide)
    assert matches(MatchRule(), SeriesInfo("1.3", "XC", "", "", "", "png", 1))
