"""REST API through the in-process client: auth, uploads, STOW-RS, jobs, results, limits, metrics."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from pydicom import dcmread
from serve_helpers import FindingsPredictor, ThresholdPredictor, make_series, to_bytes

from medinfer.serve.api import create_app
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import AuditEvent, Instance
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker


@pytest.fixture
def service(make_config, store):
    def build(**kw: object):
        cfg = make_config(**kw)
        receiver = Receiver(cfg, store)
        client = TestClient(create_app(cfg, store, receiver))
        tokens = {s: store.create_token(f"{s}-user", [s]) for s in ("read", "submit", "admin")}
        worker = Worker(cfg, store, "test-worker", lambda art: ThresholdPredictor())
        return client, tokens, worker, receiver

    return build


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def png_bytes(size: int = 32) -> bytes:
    arr = np.zeros((size, size, 3), np.uint8)
    arr[8:24, 8:24] = 220
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def stow_body(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return body, {"Content-Type": ctype}


def test_health_needs_no_token_but_everything_else_does(service) -> None:
    client, tokens, *_ = service()
    assert client.get("/health").json()["status"] == "ok"
    for method, url in [("get", "/api/v1/jobs"), ("get", "/api/v1/jobs/1"), ("get", "/metrics"),
                        ("get", "/api/v1/results/1"), ("post", "/api/v1/studies"),
                        ("post", "/dicom-web/studies"), ("get", "/ui/")]:
        r = getattr(client, method)(url)
        assert r.status_code == 401, (url, r.status_code)
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v1/jobs", headers=auth("not-a-token")).status_code == 401
    r = client.post("/api/v1/studies", headers=auth(tokens["read"]),
                    files={"files": ("a.png", png_bytes(), "image/png")})
    assert r.status_code == 403 and "submit" in r.json()["detail"]
    assert client.get("/api/v1/jobs", headers=auth(tokens["admin"])).status_code == 200


def test_png_upload_runs_to_results_with_audit(service, store: Store) -> None:
    client, tokens, worker, _ = service()
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("polyp.png", png_bytes(), "image/png")})
    assert r.status_code == 202, r.text
    [job_id] = r.json()["jobs"]
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["read"])).json()["state"] == "queued"
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(tokens["read"])).json()
    assert job["state"] == "done" and job["attempts"] == 1
    assert job["summary"]["segments"] == {"lesion": 16 * 16}
    assert {"read", "predict", "write", "total"} <= set(job["seconds"])
    kinds = {res["kind"]: res["url"] for res in job["results"]}
    assert set(kinds) == {"overlay", "mask", "json"}  # no DICOM source: no SEG/SC
    mask = client.get(kinds["mask"], headers=auth(tokens["read"]))
    assert mask.headers["content-type"] == "image/png"
    assert (np.asarray(PILImage.open(io.BytesIO(mask.content))) > 0).sum() == 16 * 16
    listed = client.get("/api/v1/jobs?state=done", headers=auth(tokens["read"])).json()
    assert [j["id"] for j in listed] == [job_id]
    with store.session() as s:
        actions = [(a.actor, a.action) for a in s.query(AuditEvent).order_by(AuditEvent.id)]
    assert ("submit-user", "submit") in actions
    assert ("read-user", "read-job") in actions and ("read-user", "read-result") in actions


def test_dicom_upload_makes_seg_and_sc_referencing_the_series(service) -> None:
    client, tokens, worker, _ = service()
    series = make_series(3)
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom")) for i, ds in enumerate(series)]
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]), files=files)
    assert r.status_code == 202, r.text
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    assert job["state"] == "done", job["error"]
    urls = {res["kind"]: res["url"] for res in job["results"]}
    assert set(urls) == {"seg", "sc", "overlay", "json"}
    seg = dcmread(io.BytesIO(client.get(urls["seg"], headers=auth(tokens["read"])).content))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == series[0].StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "lesion"
    sc = dcmread(io.BytesIO(client.get(urls["sc"], headers=auth(tokens["read"])).content))
    assert sc.SamplesPerPixel == 3 and sc.StudyInstanceUID == series[0].StudyInstanceUID


def test_classification_results_are_sr_and_json(service, make_config, store) -> None:
    client, tokens, _, _ = service()
    cfg = make_config()
    worker = Worker(cfg, store, "w", lambda art: FindingsPredictor())
    series = make_series(1, size=32, modality="DX")
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("cxr.dcm", to_bytes(series[0]), "application/dicom")})
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    assert job["state"] == "done", job["error"]
    assert job["summary"]["findings"] == ["Effusion"]
    urls = {res["kind"]: res["url"] for res in job["results"]}
    sr = dcmread(io.BytesIO(client.get(urls["sr"], headers=auth(tokens["read"])).content))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == series[0].SeriesInstanceUID
    text = json.loads(client.get(urls["json"], headers=auth(tokens["read"])).content)
    assert text["scores"] == {"Effusion": 0.8, "Mass": 0.1}


def test_bad_uploads_get_clear_errors(service, store: Store) -> None:
    client, tokens, *_ = service()
    h = auth(tokens["submit"])
    r = client.post("/api/v1/studies", headers=h,
                    files={"files": ("notes.txt", b"hello, not an image", "text/plain")})
    assert r.status_code == 400 and "notes.txt: not a DICOM, PNG, JPEG or NIfTI file" in r.text
    good = to_bytes(make_series(1, size=64)[0])
    r = client.post("/api/v1/studies", headers=h,
                    files={"files": ("cut.dcm", good[: len(good) - 3000], "application/dicom")})
    assert r.status_code == 400 and "cut.dcm" in r.text
    r = client.post("/api/v1/studies", headers=h,
                    files={"files": ("broken.png", png_bytes()[:60], "image/png")})
    assert r.status_code == 400 and "broken.png" in r.text
    with store.session() as s:  # nothing from refused uploads was recorded
        assert s.query(Instance).count() == 0


def test_oversized_uploads_are_refused_with_413(service, store: Store) -> None:
    client, tokens, *_ = service(http={"max_upload_mb": 0.01})
    big = b"\0" * 20000
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("big.dcm", big, "application/dicom")})
    assert r.status_code == 413 and "larger than 10485 bytes" in r.text

    def chunks():
        for _ in range(10):
            yield b"x" * 2000

    _, headers = stow_body([b""])
    r = client.post("/dicom-web/studies", headers={**auth(tokens["submit"]), **headers},
                    content=chunks())
    assert r.status_code == 413
    with store.session() as s:
        assert s.query(Instance).count() == 0


def test_stow_rs_stores_instances_and_routes_after_quiet_time(service, clock) -> None:
    client, tokens, worker, receiver = service()
    series = make_series(3)
    body, headers = stow_body([to_bytes(ds) for ds in series] + [b"garbage"])
    r = client.post("/dicom-web/studies", headers={**auth(tokens["submit"]), **headers},
                    content=body)
    assert r.status_code == 202  # some stored, one failed
    stored = [v["00081155"]["Value"][0] for v in r.json()["00081199"]["Value"]]
    assert stored == [ds.SOPInstanceUID for ds in series]
    assert "part 3: not a readable DICOM file" in r.json()["00081198"]["Value"][0]["00081196"]["Value"][0]
    assert receiver.close_quiet_studies() == []  # not quiet yet
    clock.advance(0.35)  # past quiet_seconds (0.3)
    [job] = receiver.close_quiet_studies()
    assert worker.run_once()
    assert client.get(f"/api/v1/jobs/{job}", headers=auth(tokens["read"])).json()["state"] == "done"
    r = client.post("/dicom-web/studies", headers={**auth(tokens["submit"]),
                                                  "Content-Type": "application/json"}, content=b"{}")
    assert r.status_code == 415


def test_inconsistent_geometry_fails_the_job_with_the_reason(service) -> None:
    client, tokens, worker, _ = service()
    series = make_series(3, sizes=[16, 16, 20])
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom")) for i, ds in enumerate(series)]
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]), files=files)
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    assert job["state"] == "failed" and job["attempts"] == 1  # input errors are not retried
    assert "image size 20x20 (rows x cols) differs from 16x16" in job["error"]
    assert job["results"] == []


def test_unrouted_study_is_reported_not_dropped(service) -> None:
    client, tokens, *_ = service()
    ct = make_series(1, modality="CT")[0]
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("ct.dcm", to_bytes(ct), "application/dicom")})
    assert r.status_code == 202
    assert r.json()["state"] == "unrouted" and r.json()["jobs"] == []
    assert "no routing rule matched: CT series (1 instances)" in r.json()["note"]
    study = client.get(f"/api/v1/studies/{r.json()['study_id']}", headers=auth(tokens["read"]))
    assert study.json()["state"] == "unrouted"


def test_deprecated_deidentify_keeps_the_stored_study(service, store: Store) -> None:
    # De-identification is of what leaves (per destination, tests/serve/test_serve_deid.py):
    # the stored instance keeps the patient, so results join the source study in the PACS.
    client, tokens, *_ = service(deidentify=True)
    ds = make_series(1)[0]
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("a.dcm", to_bytes(ds), "application/dicom")})
    assert r.status_code == 202
    with store.session() as s:
        path = s.query(Instance).one().path
    stored = dcmread(path)
    assert stored.PatientID == ds.PatientID and stored.StudyInstanceUID == ds.StudyInstanceUID
    assert "PatientIdentityRemoved" not in stored


def test_logs_and_paths_carry_no_uids(service, store: Store, caplog) -> None:
    client, tokens, worker, _ = service()
    caplog.set_level(logging.DEBUG, logger="medinfer")
    series = make_series(2)
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom")) for i, ds in enumerate(series)]
    client.post("/api/v1/studies", headers=auth(tokens["submit"]), files=files)
    worker.run_once()
    uids = {series[0].StudyInstanceUID, series[0].SeriesInstanceUID} | {d.SOPInstanceUID for d in series}
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert caplog.records and not any(uid in text for uid in uids)
    with store.session() as s:
        assert not any(uid in i.path for i in s.query(Instance) for uid in uids)


def test_metrics_and_openapi(service) -> None:
    client, tokens, worker, _ = service()
    client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                files={"files": ("a.png", png_bytes(), "image/png")})
    client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                files={"files": ("b.png", png_bytes(), "image/png")})
    worker.run_once()
    text = client.get("/metrics", headers=auth(tokens["read"])).text
    assert "medinfer_queue_depth 1.0" in text
    assert 'medinfer_jobs{state="done"} 1.0' in text
    assert "medinfer_job_seconds_count 1.0" in text
    assert "medinfer_job_failures_total 0.0" in text
    spec = client.get("/openapi.json", headers=auth(tokens["read"])).json()  # behind a token
    assert {"/health", "/api/v1/studies", "/dicom-web/studies", "/api/v1/jobs/{job_id}",
            "/api/v1/results/{result_id}", "/metrics"} <= set(spec["paths"])


def test_admin_creates_tokens(service) -> None:
    client, tokens, *_ = service()
    r = client.post("/api/v1/tokens", headers=auth(tokens["admin"]),
                    json={"name": "pacs-bot", "scopes": ["submit"]})
    assert r.status_code == 201
    assert client.post("/api/v1/tokens", headers=auth(tokens["submit"]),
                       json={"name": "x", "scopes": ["admin"]}).status_code == 403
    new = r.json()["token"]
    assert client.get("/api/v1/jobs", headers=auth(new)).status_code == 403  # submit only


def test_sources_without_type2_patient_attributes_still_get_a_seg(service) -> None:
    client, tokens, worker, _ = service()
    ds = make_series(1)[0]
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
        delattr(ds, keyword)
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("a.dcm", to_bytes(ds), "application/dicom")})
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    assert job["state"] == "done", job["error"]
    assert {"seg", "sc"} <= {res["kind"] for res in job["results"]}


def test_nifti_upload_gets_a_nifti_mask(service, tmp_path) -> None:
    import nibabel as nib

    client, tokens, worker, _ = service(routes=[
        {"name": "vol", "artifact": str(tmp_path / "art"), "match": {"formats": ["nifti"]}}])
    vol = np.zeros((12, 10, 6), np.int16)
    vol[3:9, 3:7, 1:5] = 300
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.0, 1.0])), path)
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]),
                    files={"files": ("vol.nii.gz", path.read_bytes(), "application/gzip")})
    assert r.status_code == 202, r.text
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    assert job["state"] == "done", job["error"]
    url = {res["kind"]: res["url"] for res in job["results"]}["mask"]
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(client.get(url, headers=auth(tokens["read"])).content)
    mask = np.asarray(nib.load(out).dataobj)
    assert mask.shape == (12, 10, 6) and int(mask.sum()) == 6 * 4 * 4


def test_labelmap_seg_when_configured(service) -> None:  # noqa: ANN001
    client, tokens, worker, _ = service(seg_type="labelmap")
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom"))
             for i, ds in enumerate(make_series(2))]
    r = client.post("/api/v1/studies", headers=auth(tokens["submit"]), files=files)
    assert worker.run_once()
    job = client.get(f"/api/v1/jobs/{r.json()['jobs'][0]}", headers=auth(tokens["read"])).json()
    url = {res["kind"]: res["url"] for res in job["results"]}["seg"]
    seg = dcmread(io.BytesIO(client.get(url, headers=auth(tokens["read"])).content))
    assert seg.SegmentationType == "LABELMAP"
