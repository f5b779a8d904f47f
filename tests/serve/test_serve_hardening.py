"""Front-door hardening: decodable transfer syntaxes only, auth before the body, validated
ids and limits, the called AE title, 413 for streamed uploads, security headers, docs
behind a token."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000MC,
    ExplicitVRLittleEndian,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from serve_helpers import free_port, make_series, to_bytes

from medinfer.data.synthetic import dicom_slice, write_dicom
from medinfer.serve.api import create_app
from medinfer.serve.dimse import decodable_transfer_syntaxes, start_dimse
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import AuditEvent, Instance
from medinfer.serve.store import Store
from medinfer.serve.web import CSP

DCMCJPEG = shutil.which("dcmcjpeg")


@pytest.fixture
def api(make_config, store: Store):
    cfg = make_config(http={"max_upload_mb": 0.01})
    app = create_app(cfg, store, Receiver(cfg, store))
    tokens = {s: store.create_token(f"{s}-user", [s]) for s in ("read", "submit")}
    return app, TestClient(app, raise_server_exceptions=False), tokens


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---- transfer syntaxes -----------------------------------------------------------------
def twelve_bit_slice() -> Dataset:
    """A 12-bit MR slice (values 0..4095) with patient and study modules."""
    pixels = (np.arange(32 * 32).reshape(32, 32) * 4 % 4096).astype(np.uint16)
    ds = dicom_slice(pixels, study_uid=generate_uid())
    ds.BitsStored, ds.HighBit = 12, 11
    return ds


@pytest.fixture
def scp(make_config, store: Store):
    def start(**kw: object):
        cfg = make_config(dicom={"port": free_port(), "allowed_calling_aets": ["MODALITY"]})
        receiver = Receiver(cfg, store)
        servers.append(start_dimse(receiver, **kw))
        return cfg

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()


def associate(port: int, called: str = "MEDINFER", syntaxes: list[str] | None = None):
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, syntaxes or [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_jpeg_lossless_and_12_bit_jpeg_are_decodable() -> None:
    syntaxes = decodable_transfer_syntaxes()
    assert {JPEGLossless, JPEGLosslessSV1, JPEGExtended12Bit} <= set(syntaxes)
    assert JPEG2000MC not in syntaxes  # pydicom has no decoder for it at all


@pytest.mark.skipif(DCMCJPEG is None, reason="dcmtk's dcmcjpeg not installed")
@pytest.mark.parametrize("option, syntax", [("+el", JPEGLossless), ("+e1", JPEGLosslessSV1),
                                            ("+ee", JPEGExtended12Bit)])
def test_jpeg_lossless_and_12_bit_instances_are_stored_over_dimse(
        scp, store: Store, tmp_path: Path, option: str, syntax: str) -> None:
    cfg = scp()
    source = twelve_bit_slice()
    plain = write_dicom(source, tmp_path / "plain.dcm")
    subprocess.run([DCMCJPEG, option, str(plain), str(tmp_path / "jpeg.dcm")], check=True)
    ds = dcmread(tmp_path / "jpeg.dcm")
    assert ds.file_meta.TransferSyntaxUID == syntax
    assoc = associate(cfg.dicom.port, syntaxes=[syntax])
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    with store.session() as s:
        stored = dcmread(s.query(Instance).one().path)
    tolerance = 0 if syntax != JPEGExtended12Bit else 8  # lossy
    diff = stored.pixel_array.astype(int) - source.pixel_array.astype(int)
    assert np.abs(diff).max() <= tolerance


def test_undecodable_transfer_syntax_is_refused_at_association(scp) -> None:
    cfg = scp()
    assoc = associate(cfg.dicom.port, syntaxes=[JPEG2000MC])
    # The association may stand for other contexts; this one is refused.
    assert not assoc.is_established or not assoc.accepted_contexts
    if assoc.is_established:
        assoc.release()


def test_undecodable_transfer_syntax_upload_is_named_not_called_damaged(api) -> None:
    _, client, tokens = api
    ds = make_series(1)[0]
    ds.file_meta.TransferSyntaxUID = JPEG2000MC
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("mc.dcm", to_bytes(ds), "application/dicom")})
    assert r.status_code == 400
    assert "mc.dcm: transfer syntax JPEG 2000 Part 2" in r.json()["detail"]
    assert "not supported" in r.json()["detail"] and "damaged" not in r.json()["detail"]


# ---- the called AE title ---------------------------------------------------------------
def test_association_to_another_called_ae_is_rejected_and_audited(scp, store: Store) -> None:
    cfg = scp()
    assoc = associate(cfg.dicom.port, called="SOMEONE_ELSE")
    assert assoc.is_rejected
    for _ in range(500):  # the server thread records the rejection
        with store.session() as s:
            event = s.query(AuditEvent).filter_by(action="association-rejected").one_or_none()
        if event is not None:
            break
        time.sleep(0.01)
    assert event is not None and "called AE title 'SOMEONE_ELSE'" in event.detail
    assoc = associate(cfg.dicom.port, called="MEDINFER")
    assert assoc.is_established
    assoc.release()


def test_called_ae_check_can_be_turned_off(scp) -> None:
    cfg = scp(require_called_aet=False)
    assoc = associate(cfg.dicom.port, called="ANY_TITLE")
    assert assoc.is_established
    assoc.release()


# ---- REST ------------------------------------------------------------------------------
def _call(app, method: str, path: str, headers: dict[str, str], body: bytes):
    """Call the ASGI app directly; returns (status, how many body messages it received)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    received, status = [], []

    async def receive():
        received.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1), "headers": [(k.lower().encode(), v.encode())
                                                     for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return status[0], len(received)


def test_upload_body_is_not_read_before_the_token_is_checked(api) -> None:
    app, _, tokens = api
    body = (b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\nnot really\r\n--xx--\r\n")
    headers = {"content-type": "multipart/form-data; boundary=xx",
               "content-length": str(len(body))}
    for path in ("/api/v1/studies", "/dicom-web/studies"):
        status, reads = _call(app, "POST", path, headers, body)
        assert (status, reads) == (401, 0), path
        status, reads = _call(app, "POST", path, {**headers, **auth(tokens["read"])}, body)
        assert (status, reads) == (403, 0), path


@pytest.mark.parametrize("path", ["/api/v1/jobs/{}", "/api/v1/studies/{}", "/api/v1/results/{}",
                                  "/ui/jobs/{}"])
def test_ids_out_of_range_are_refused_not_a_server_error(api, path: str) -> None:
    _, client, tokens = api
    for value in (2**63, 2**64 + 5, 10**30):
        r = client.get(path.format(value), headers=auth(tokens["read"]))
        assert r.status_code in (404, 422), (value, r.status_code)
    assert client.get(path.format(2**63 - 1), headers=auth(tokens["read"])).status_code == 404


@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=1001", "limit=x",
                                   "state=nonsense"])
def test_job_list_parameters_are_validated(api, query: str) -> None:
    _, client, tokens = api
    assert client.get(f"/api/v1/jobs?{query}", headers=auth(tokens["read"])).status_code == 422


def test_limit_limits(api, store: Store) -> None:
    _, client, tokens = api
    receiver = client.app.state.receiver
    for _ in range(3):
        study = receiver.accept_dataset(make_series(1)[0], "dimse", "MODALITY")
        receiver.close_study(study)
    jobs = client.get("/api/v1/jobs?limit=2&state=queued", headers=auth(tokens["read"])).json()
    assert len(jobs) == 2


def test_oversized_streamed_upload_gets_413(api, store: Store) -> None:
    _, client, tokens = api
    boundary = "xx"

    def chunks():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
               f"filename=\"big.dcm\"\r\nContent-Type: application/dicom\r\n\r\n").encode()
        for _ in range(10):
            yield b"x" * 2000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/api/v1/studies", content=chunks(),
                    headers={**auth(tokens["submit"]),
                             "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "larger than 10485 bytes" in r.text
    with store.session() as s:
        assert s.query(Instance).count() == 0


def test_security_headers_on_api_and_web_responses(api) -> None:
    _, client, tokens = api
    for url, headers in [("/health", {}), ("/api/v1/jobs", auth(tokens["read"])),
                         ("/api/v1/jobs", {}), ("/ui/login", {})]:
        r = client.get(url, headers=headers)
        assert r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["x-frame-options"] == "DENY", url
        assert r.headers["referrer-policy"] == "no-referrer", url
        assert r.headers["cache-control"] == "no-store", url
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], url
    assert client.get("/api/v1/jobs").headers["content-security-policy"].startswith(
        "default-src 'none'")
    page = client.get("/ui/login")
    assert page.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "script-src" not in CSP  # no script runs at all
    assert "'sha256-" in CSP  # the templates' style block, by hash


def test_openapi_docs_need_a_read_token(api) -> None:
    _, client, tokens = api
    for url in ("/docs", "/openapi.json"):
        assert client.get(url).status_code == 401, url
    assert client.get("/redoc").status_code == 404
    assert "swagger-ui" in client.get("/docs", headers=auth(tokens["read"])).text
    spec = client.get("/openapi.json", headers=auth(tokens["read"])).json()
    body = spec["paths"]["/api/v1/studies"]["post"]["requestBody"]["content"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    assert not any(p.startswith("/ui") for p in spec["paths"])


@pytest.mark.slow  # a live uvicorn server and a headless browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_the_web_page_keeps_its_style_under_the_policy(make_config, store: Store) -> None:
    import threading

    import uvicorn

    sync_api = pytest.importorskip("playwright.sync_api")
    app = create_app(make_config(), store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                console: list[str] = []
                page.on("console", lambda m: console.append(m.text))
                page.goto(f"http://127.0.0.1:{port}/ui/login")
                margin = page.evaluate("getComputedStyle(document.body).margin")
                assert margin == "24px"  # 1.5rem: the style block ran
                assert not [m for m in console if "Content Security Policy" in m], console
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
