"""DICOMweb retrieval of results (QIDO-RS, WADO-RS): what is served, searching at each level,
paging, streaming the stored bytes back, metadata without pixels, tokens, bad UIDs, Accept."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from serve_helpers import ThresholdPredictor, make_series, to_bytes
from sqlalchemy import select

from medinfer.io.derived import write_sc, write_seg, write_sr
from medinfer.serve import dicomweb
from medinfer.serve.api import create_app
from medinfer.serve.ingest import Receiver
from medinfer.serve.logs import hash_uid
from medinfer.serve.models import AuditEvent, Job
from medinfer.serve.store import InstanceInfo, ResultFile, Store
from medinfer.serve.stow import boundary_of, split_multipart
from medinfer.serve.worker import Worker, result_file

MULTIPART = 'multipart/related; type="application/dicom"'
SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Written:
    """One study as the service holds it: its sources and its job's result files."""

    sources: list[Dataset]
    files: dict[str, Path]  # kind -> file
    job_id: int

    @property
    def study(self) -> str:
        return str(self.sources[0].StudyInstanceUID)

    def uid(self, kind: str, keyword: str) -> str:
        return str(dcmread(self.files[kind], stop_before_pixels=True).get(keyword))


def _receive(store: Store, sources: list[Dataset], folder: Path, late: float = 0.0) -> int:
    study = 0
    for ds in sources:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        info = InstanceInfo(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                            str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.Modality))
        study = store.add_instance(info, path, "stow", "modality", late_seconds=late)
    return study


def _results(sources: list[Dataset], out: Path) -> list[ResultFile]:
    """What a segmentation worker writes: SEG, SR, SC and a JSON summary."""
    mask = np.zeros((16, 16, len(sources)), np.uint8)
    mask[4:8, 4:8, 1] = 1
    seg = write_seg(sources, mask, {1: "lesion"}, out / "seg.dcm", "algo", "v1")
    sr = write_sr(sources, {"mass": 0.7}, {"mass": 0.5}, out / "sr.dcm", "algo", "v1")
    sc = write_sc(sources[1], np.zeros((16, 16, 3), np.uint8), out / "sc.dcm", "algo")
    (out / "summary.json").write_text("{}")
    return [*(result_file(k, p, "application/dicom", u) for k, (p, u) in
              (("seg", seg), ("sr", sr), ("sc", sc))),
            result_file("json", out / "summary.json", "application/json", "")]


def _run_job(store: Store, study_id: int, sources: list[Dataset], out: Path) -> int:
    assert store.finalize_study(study_id, lambda info: ("mr", "art"))
    job = store.lease_job("test", 60, 3)
    assert job is not None
    assert store.complete_job(job.id, job.token, _results(sources, out), {}, {}, {})
    return job.id


@pytest.fixture
def served(store: Store, tmp_path: Path) -> list[Written]:
    """Two studies, each with one done job (SEG + SR + SC + JSON)."""
    out = []
    for n in (2, 3):
        sources = make_series(n, 16)
        folder = tmp_path / f"results-{n}"
        job = _run_job(store, _receive(store, sources, tmp_path), sources, folder)
        out.append(Written(sources, {k: folder / f"{k}.dcm" for k in ("seg", "sr", "sc")}, job))
    return out


@pytest.fixture
def client(make_config, store: Store) -> TestClient:
    cfg = make_config()
    return TestClient(create_app(cfg, store, Receiver(cfg, store)))


@pytest.fixture
def read(store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {store.create_token('viewer', ['read'])}"}


def _value(item: dict, tag: str) -> object:
    return item[tag]["Value"][0]


def _values(items: list[dict], tag: str) -> list[object]:
    return sorted(str(_value(i, tag)) for i in items)


def _parts(response) -> list[tuple[dict[str, str], bytes]]:
    boundary = boundary_of(response.headers["content-type"])
    assert boundary is not None
    return [(h, bytes(p)) for h, p in split_multipart(response.content, boundary)]


def test_worker_records_the_result_objects_uids(served: list[Written], tmp_path: Path) -> None:
    w = served[0]
    seg = result_file("seg", w.files["seg"], "application/dicom", "")
    assert (seg.study_uid, seg.series_uid, seg.sop_class_uid) == (
        w.study, w.uid("seg", "SeriesInstanceUID"), SEG)
    assert seg.sop_uid == w.uid("seg", "SOPInstanceUID")
    assert seg.series_uid != str(w.sources[0].SeriesInstanceUID)  # its own series
    other = result_file("json", tmp_path / "x.json", "application/json", "")
    assert (other.study_uid, other.series_uid, other.sop_class_uid) == ("", "", "")


def test_study_search_counts_served_results_only(client, read, served) -> None:
    r = client.get("/dicom-web/studies", headers=read)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    items = r.json()
    assert _values(items, "0020000D") == sorted(w.study for w in served)
    for item in items:  # SEG + SR + SC, one series each; the JSON summary and sources not
        assert (_value(item, "00201206"), _value(item, "00201208")) == (3, 3)
        assert item["00080061"]["Value"] == sorted({"SEG", "SR", str(dcmread(
            served[0].files["sc"]).Modality)})
        assert (_value(item, "00080020"), _value(item, "00080050")) == ("20240101", "A1")
        assert _value(item, "00081190").endswith(f"/dicom-web/studies/{_value(item, '0020000D')}")


@pytest.mark.parametrize("key", ["StudyInstanceUID", "0020000D", "0020000d"])
def test_study_search_by_uid_in_keyword_or_tag_form(client, read, served, key) -> None:
    items = client.get("/dicom-web/studies", params={key: served[1].study}, headers=read).json()
    assert _values(items, "0020000D") == [served[1].study]
    both = client.get("/dicom-web/studies", headers=read,
                      params={key: f"{served[0].study},{served[1].study}"}).json()
    assert len(both) == 2


def test_search_by_modality_and_empty_answers_204(client, read, served) -> None:
    seg = client.get("/dicom-web/studies", params={"ModalitiesInStudy": "SEG"}, headers=read)
    assert len(seg.json()) == 2
    series = client.get("/dicom-web/series", params={"Modality": "SR"}, headers=read).json()
    assert _values(series, "0020000E") == sorted(w.uid("sr", "SeriesInstanceUID") for w in served)
    for params in ({"Modality": ""}, {"StudyInstanceUID": ""}):  # universal matching
        assert len(client.get("/dicom-web/studies", params=params, headers=read).json()) == 2
    for params in ({"Modality": "CT"}, {"StudyInstanceUID": "1.2.3.4"}):
        r = client.get("/dicom-web/studies", params=params, headers=read)
        assert r.status_code == 204 and r.content == b""


def test_series_search_in_a_study_and_across_studies(client, read, served) -> None:
    w = served[0]
    items = client.get(f"/dicom-web/studies/{w.study}/series", headers=read).json()
    assert _values(items, "0020000E") == sorted(w.uid(k, "SeriesInstanceUID") for k in w.files)
    seg = next(i for i in items if _value(i, "00080060") == "SEG")
    assert _value(seg, "00200011") == int(w.uid("seg", "SeriesNumber"))
    assert _value(seg, "00201209") == 1 and "0008103E" in seg
    assert "00080020" not in seg  # study attributes only when not searching in one study
    everywhere = client.get("/dicom-web/series", headers=read).json()
    assert len(everywhere) == 6 and all("00080020" in i for i in everywhere)
    one = client.get(f"/dicom-web/studies/{w.study}/series", headers=read,
                     params={"SeriesInstanceUID": w.uid("sr", "SeriesInstanceUID")}).json()
    assert [_value(i, "00080060") for i in one] == ["SR"]


def test_instance_search_at_every_scope(client, read, served) -> None:
    w = served[1]
    series = w.uid("seg", "SeriesInstanceUID")
    (seg,) = client.get(f"/dicom-web/studies/{w.study}/series/{series}/instances",
                        headers=read).json()
    assert (_value(seg, "00080016"), _value(seg, "00080018")) == (SEG, w.uid("seg", "SOPInstanceUID"))
    assert _value(seg, "00081190").endswith(f"/series/{series}/instances/{_value(seg, '00080018')}")
    in_study = client.get(f"/dicom-web/studies/{w.study}/instances", headers=read).json()
    assert _values(in_study, "00080016") == sorted([SEG, SR, SC])
    assert all("00080060" in i for i in in_study)  # with series attributes
    sop = w.uid("sr", "SOPInstanceUID")
    (sr,) = client.get("/dicom-web/instances", params={"00080018": sop}, headers=read).json()
    assert _value(sr, "0020000D") == w.study and "00080020" in sr  # with study attributes
    source = str(w.sources[0].SOPInstanceUID)  # received instances are not served
    assert client.get("/dicom-web/instances", params={"SOPInstanceUID": source},
                      headers=read).status_code == 204


def test_limit_and_offset_page_through_results(client, read, served) -> None:
    everything = _values(client.get("/dicom-web/instances", headers=read).json(), "00080018")
    assert len(everything) == 6
    pages = [client.get("/dicom-web/instances", params={"limit": 4, "offset": o},
                        headers=read).json() for o in (0, 4)]
    assert [len(p) for p in pages] == [4, 2]
    assert sorted(_values(pages[0], "00080018") + _values(pages[1], "00080018")) == everything
    studies = client.get("/dicom-web/studies", params={"limit": 1, "offset": 1}, headers=read)
    assert len(studies.json()) == 1
    assert client.get("/dicom-web/series", params={"offset": 6}, headers=read).status_code == 204


@pytest.mark.parametrize("params", [{"limit": -1}, {"offset": -1}, {"limit": 0},
                                    {"limit": "many"}])
def test_bad_paging_is_refused(client, read, served, params) -> None:
    assert client.get("/dicom-web/studies", params=params, headers=read).status_code == 422


def test_unsupported_keys_are_ignored_and_named(client, read, served) -> None:
    r = client.get("/dicom-web/studies", params={"PatientName": "Doe*"}, headers=read)
    assert r.status_code == 200 and len(r.json()) == 2
    assert "PatientName" in r.headers["warning"] and "Doe" not in r.headers["warning"]


def _urls(w: Written) -> list[str]:
    series, sop = w.uid("seg", "SeriesInstanceUID"), w.uid("seg", "SOPInstanceUID")
    base = f"/dicom-web/studies/{w.study}"
    return ["/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
            f"{base}/series", f"{base}/instances", f"{base}/series/{series}/instances", base,
            f"{base}/metadata", f"{base}/series/{series}", f"{base}/series/{series}/metadata",
            f"{base}/series/{series}/instances/{sop}",
            f"{base}/series/{series}/instances/{sop}/metadata"]


def test_every_route_needs_the_read_scope(client, store, served) -> None:
    submit = {"Authorization": f"Bearer {store.create_token('pacs', ['submit'])}"}
    admin = {"Authorization": f"Bearer {store.create_token('root', ['admin'])}"}
    for url in _urls(served[0]):
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401, url
        assert client.get(url, headers=submit).status_code == 403, url
        assert client.get(url, headers=admin).status_code == 200, url


@pytest.mark.parametrize("bad", ["1.02.3", "abc", "1..2", "1.2.", "1." * 32 + "1"])
def test_bad_uids_are_refused_with_400(client, read, served, bad) -> None:
    w = served[0]
    series = w.uid("seg", "SeriesInstanceUID")
    for url in (f"/dicom-web/studies/{bad}", f"/dicom-web/studies/{bad}/series",
                f"/dicom-web/studies/{w.study}/series/{bad}/metadata",
                f"/dicom-web/studies/{w.study}/series/{series}/instances/{bad}"):
        r = client.get(url, headers=read)
        assert r.status_code == 400 and bad not in r.text, url
    r = client.get("/dicom-web/instances", params={"SOPInstanceUID": bad}, headers=read)
    assert r.status_code == 400


def test_unknown_uids_are_404(client, read, served) -> None:
    w = served[0]
    series = w.uid("seg", "SeriesInstanceUID")
    source_sop = str(w.sources[0].SOPInstanceUID)
    for url in ("/dicom-web/studies/1.2.3", "/dicom-web/studies/1.2.3/metadata",
                f"/dicom-web/studies/{w.study}/series/1.2.3",
                f"/dicom-web/studies/{w.study}/series/{w.sources[0].SeriesInstanceUID}",
                f"/dicom-web/studies/{w.study}/series/{series}/instances/{source_sop}",
                f"/dicom-web/studies/{served[1].study}/series/{series}"):
        assert client.get(url, headers=read).status_code == 404, url


def test_study_retrieval_streams_the_stored_files(client, read, served, store) -> None:
    w = served[0]
    r = client.get(f"/dicom-web/studies/{w.study}", headers=read)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = _parts(r)
    assert sorted(p for _, p in parts) == sorted(f.read_bytes() for f in w.files.values())
    assert all(h["content-type"].startswith("application/dicom") for h, _ in parts)
    with store.session() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "wado-retrieve")).all()
    assert event.target == f"study:{hash_uid(w.study)}" and w.study not in event.detail
    assert event.actor == "viewer"


def test_series_and_instance_retrieval(client, read, served) -> None:
    w = served[1]
    series, sop = w.uid("sc", "SeriesInstanceUID"), w.uid("sc", "SOPInstanceUID")
    base = f"/dicom-web/studies/{w.study}/series/{series}"
    for url in (base, f"{base}/instances/{sop}"):
        (part,) = _parts(client.get(url, headers=read))
        assert part[1] == w.files["sc"].read_bytes()


@pytest.mark.parametrize("accept", ["*/*", MULTIPART, f"{MULTIPART}; transfer-syntax=*",
                                    f"{MULTIPART}; transfer-syntax=1.2.840.10008.1.2.1",
                                    f"image/jpeg, {MULTIPART}", "multipart/related"])
def test_supported_accept_headers(client, read, served, accept) -> None:
    w = served[0]
    assert dcmread(w.files["seg"]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    series = w.uid("seg", "SeriesInstanceUID")
    r = client.get(f"/dicom-web/studies/{w.study}/series/{series}",
                   headers={**read, "Accept": accept})
    assert r.status_code == 200 and len(_parts(r)) == 1


@pytest.mark.parametrize(("suffix", "accept"), [
    ("", 'multipart/related; type="image/jpeg"'),
    ("", "application/zip"),
    ("", f"{MULTIPART}; transfer-syntax=1.2.840.10008.1.2.4.50"),
    ("", f"{MULTIPART}; q=0"),
    ("", "application/dicom"),
    ("/metadata", 'multipart/related; type="application/dicom+xml"'),
])
def test_unsupported_accept_is_406(client, read, served, suffix, accept) -> None:
    url = f"/dicom-web/studies/{served[0].study}{suffix}"
    assert client.get(url, headers={**read, "Accept": accept}).status_code == 406


def test_metadata_has_the_headers_without_pixel_data(client, read, served) -> None:
    w = served[0]
    r = client.get(f"/dicom-web/studies/{w.study}/metadata", headers=read)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/dicom+json")
    items = r.json()
    assert _values(items, "00080018") == sorted(w.uid(k, "SOPInstanceUID") for k in w.files)
    assert all("7FE00010" not in i for i in items)
    assert "7FE00010" in dcmread(w.files["seg"])  # the stored SEG has pixels
    seg = next(i for i in items if _value(i, "00080016") == SEG)
    assert "00620002" in seg  # the SEG's segment sequence comes along
    sop = w.uid("sr", "SOPInstanceUID")
    series = w.uid("sr", "SeriesInstanceUID")
    (sr,) = client.get(f"/dicom-web/studies/{w.study}/series/{series}/instances/{sop}/metadata",
                       headers=read).json()
    assert _value(sr, "00080018") == sop and "0040A730" in sr  # the SR's content


def test_only_done_jobs_and_not_superseded_ones_are_served(client, read, store, clock,
                                                           tmp_path) -> None:
    sources = make_series(3, 16)
    study_id = _receive(store, sources[:2], tmp_path)
    assert store.finalize_study(study_id, lambda info: ("mr", "art"))
    job = store.lease_job("test", 60, 3)
    assert job is not None  # running, not done: nothing served yet
    assert client.get("/dicom-web/studies", headers=read).status_code == 204
    first = _results(sources[:2], tmp_path / "first")
    assert store.complete_job(job.id, job.token, first, {}, {}, {})
    (item,) = client.get("/dicom-web/instances", params={"Modality": "SEG"}, headers=read).json()
    assert _value(item, "00080018") == first[0].sop_uid
    clock.advance(1)
    _receive(store, sources[2:], tmp_path, late=60)  # a late slice: the series changed
    new = _run_job(store, study_id, sources, tmp_path / "second")
    with store.session() as s:
        assert s.get(Job, new).supersedes == job.id
    items = client.get("/dicom-web/instances", params={"Modality": "SEG"}, headers=read).json()
    assert [_value(i, "00080018") for i in items] != [first[0].sop_uid] and len(items) == 1
    assert client.get(f"/dicom-web/studies/{sources[0].StudyInstanceUID}/series/"
                      f"{first[0].series_uid}", headers=read).status_code == 404


def test_searches_are_audited_without_uids(client, read, served, store) -> None:
    client.get("/dicom-web/instances", params={"StudyInstanceUID": served[0].study}, headers=read)
    with store.session() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "qido-search")).all()
    assert (event.actor, event.target, event.detail) == ("viewer", "dicom-web:instances",
                                                          "3 results")


def test_non_dicom_results_and_missing_files_are_not_served(client, read, store,
                                                            tmp_path) -> None:
    sources = make_series(2, 16)
    study = str(sources[0].StudyInstanceUID)
    assert store.finalize_study(_receive(store, sources, tmp_path), lambda info: ("mr", "a"))
    job = store.lease_job("test", 60, 3)
    png = tmp_path / "overlay.png"
    png.write_bytes(b"\x89PNG")
    seg = _results(sources, tmp_path / "r")[0]
    rows = [ResultFile("overlay", str(png), "image/png", "1.2.3.4", study, "1.2.3", SC), seg]
    assert job is not None and store.complete_job(job.id, job.token, rows, {}, {}, {})
    (item,) = client.get("/dicom-web/instances", headers=read).json()
    assert _value(item, "00080016") == SEG  # the PNG is not served, though it names the study
    Path(seg.path).unlink()
    assert client.get(f"/dicom-web/studies/{study}", headers=read).status_code == 404


def test_a_search_without_limit_is_capped_and_says_so(client, read, served, monkeypatch) -> None:
    monkeypatch.setattr(dicomweb, "MAX_RESULTS", 4)
    r = client.get("/dicom-web/instances", headers=read)
    assert len(r.json()) == 4 and "additional results" in r.headers["warning"]
    r = client.get("/dicom-web/instances", params={"limit": 6}, headers=read)
    assert len(r.json()) == 6 and "warning" not in r.headers


def test_results_of_a_worker_are_found_and_fetched(client, read, store, make_config) -> None:
    series = make_series(3)
    submit = {"Authorization": f"Bearer {store.create_token('pacs', ['submit'])}"}
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom"))
             for i, ds in enumerate(series)]
    assert client.post("/api/v1/studies", headers=submit, files=files).status_code == 202
    study = str(series[0].StudyInstanceUID)
    assert client.get("/dicom-web/studies", headers=read).status_code == 204  # queued
    assert Worker(make_config(), store, "w", lambda art: ThresholdPredictor()).run_once()
    items = client.get(f"/dicom-web/studies/{study}/instances", headers=read).json()
    assert _values(items, "00080016") == sorted([SEG, SC])  # not the overlay PNG or the JSON
    assert all(_value(i, "0020000E") != series[0].SeriesInstanceUID for i in items)
    parts = _parts(client.get(f"/dicom-web/studies/{study}", headers=read))
    assert sorted(dcmread(io.BytesIO(p)).SOPInstanceUID for _, p in parts) \
        == _values(items, "00080018")
