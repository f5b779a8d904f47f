"""Bounded memory at the front doors: inputs over ``limits`` are refused from their headers
(C-STORE failure status, REST 400, STOW-RS failed instance) with the size and the limit,
nothing already accepted is lost, and STOW-RS parts are parsed in place."""

from __future__ import annotations

import io
import logging
import zlib
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from peak_memory import Peak
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]
from serve_helpers import free_port, make_series, to_bytes

from medinfer.data.oversized import png_header, rle_dicom, write_deflated_dicom, write_nifti_header
from medinfer.errors import InputError
from medinfer.io.dicom import file_meta_end
from medinfer.io.limits import ReadLimits
from medinfer.serve.api import create_app
from medinfer.serve.config import LimitsConfig, load_config
from medinfer.serve.dimse import start_dimse
from medinfer.serve.ingest import (
    Receiver,
    check_dimse_dataset,
    check_pixels,
    read_dicom_bytes,
)
from medinfer.serve.models import Instance, Study
from medinfer.serve.store import Store
from medinfer.serve.stow import split_multipart


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored_sops(store: Store) -> set[str]:
    with store.session() as s:
        return {i.sop_uid for i in s.query(Instance)}


def incoming_files(receiver: Receiver) -> list[Path]:
    return [p for p in receiver.incoming.rglob("*") if p.is_file()] \
        if receiver.incoming.exists() else []


# -- configuration -----------------------------------------------------------------------------


def test_limits_config_defaults_and_yaml(tmp_path: Path) -> None:
    limits = LimitsConfig().read_limits()
    assert limits == ReadLimits()  # the service's defaults are the readers' defaults
    assert (limits.max_pixels, limits.max_voxels) == (64 * 2 ** 20, 512 ** 3)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"storage": "s", "limits": {
        "max_pixels": 1000, "max_decoded_mb": 1.5, "max_frames": None}}))
    cfg = load_config(path)
    assert cfg.limits.read_limits() == ReadLimits(max_pixels=1000, max_voxels=512 ** 3,
                                                  max_frames=None, max_bytes=1572864)
    path.write_text(yaml.safe_dump({"limits": {"max_pixels": 0}}))
    with pytest.raises(InputError, match="limits.max_pixels"):
        load_config(path)
    path.write_text(yaml.safe_dump({"limits": {"max_pixel": 5}}))
    with pytest.raises(InputError, match="max_pixel"):
        load_config(path)


def test_example_config_documents_the_limits() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "serve.example.yaml"
    assert load_config(example).limits == LimitsConfig()
    assert all(k in example.read_text() for k in LimitsConfig.model_fields)


# -- DICOM: C-STORE, check_pixels ----------------------------------------------------------------


@pytest.fixture
def scp(make_config, store: Store):
    cfg = make_config(dicom={"port": free_port(), "allowed_calling_aets": ["MODALITY"]})
    receiver = Receiver(cfg, store)
    server = start_dimse(receiver)
    yield cfg, receiver
    server.shutdown()


def test_rle_cstore_of_16384_squared_is_refused_and_the_study_keeps_the_rest(
        scp, store: Store, caplog, clock) -> None:
    """The reported case: 4 MB of RLE announcing 16384 x 16384 pixels (256 MiB decoded)."""
    cfg, receiver = scp
    study = generate_uid()
    good = make_series(1, study_uid=study)[0]
    bomb = rle_dicom(16384, 16384, study_uid=study, series_uid=generate_uid())
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [RLELossless])
    assoc = ae.associate("127.0.0.1", cfg.dicom.port, ae_title="MEDINFER")
    assert assoc.is_established
    with caplog.at_level(logging.WARNING, logger="medinfer.serve.dimse"):
        assert assoc.send_c_store(good).Status == 0x0000
        status = assoc.send_c_store(bomb).Status
    assoc.release()
    assert status == 0xC000  # a failure status: the sender keeps the instance
    reasons = " ".join(str(getattr(r, "reason", "")) for r in caplog.records)
    assert "16384 x 16384 pixels (268435456) exceed max_pixels 67108864" in reasons
    assert stored_sops(store) == {good.SOPInstanceUID}  # what was accepted stays
    clock.advance(cfg.quiet_seconds + 0.05)
    assert len(receiver.close_quiet_studies()) == 1  # and is processed


def test_check_pixels_refuses_from_the_header_before_decoding() -> None:
    bomb = rle_dicom(16384, 16384)
    with Peak() as peak, pytest.raises(InputError, match="exceed max_pixels 67108864"):
        check_pixels(bomb, "bomb.dcm")  # the default config's limits
    assert peak.bytes < 16 * 2 ** 20
    with pytest.raises(InputError, match="max_pixels 100"):
        check_pixels(make_series(1)[0], "small.dcm", ReadLimits(max_pixels=100))
    check_pixels(rle_dicom(64, 64), "ok.dcm", None)  # no limits: decoded, accepted


def test_configured_limits_apply_to_accept_dataset(make_config, store: Store) -> None:
    receiver = Receiver(make_config(limits={"max_pixels": 100}), store)
    with pytest.raises(InputError, match=r"16 x 16 pixels \(256\) exceed max_pixels 100"):
        receiver.accept_dataset(make_series(1, 16)[0], "dimse", "MODALITY", "slice")
    assert not stored_sops(store) and not incoming_files(receiver)
    Receiver(make_config(), store).accept_dataset(make_series(1, 16)[0], "dimse", "MODALITY")


def test_deflated_bytes_are_refused_before_pydicom_inflates_them(tmp_path: Path) -> None:
    data = write_deflated_dicom(tmp_path / "d.dcm", 16384, 16384).read_bytes()
    with Peak() as peak, pytest.raises(InputError, match="16384 x 16384 pixels"):
        read_dicom_bytes(data, "deflated.dcm")
    assert peak.bytes < 32 * 2 ** 20  # pydicom alone would hold 512 MiB inflated
    small = write_deflated_dicom(tmp_path / "s.dcm", 8, 8).read_bytes()
    assert read_dicom_bytes(small, "small.dcm").Rows == 8


def test_check_dimse_dataset_on_the_encoded_dataset(tmp_path: Path) -> None:
    """What dimse.py can call on ``event.request.DataSet`` before ``event.dataset``."""
    data = write_deflated_dicom(tmp_path / "d.dcm", 16384, 16384).read_bytes()
    raw = io.BytesIO(data[file_meta_end(data)[1]:])  # the dataset as it arrives, no meta
    with pytest.raises(InputError, match="max_pixels"):
        check_dimse_dataset(raw, "1.2.840.10008.1.2.1.99", "C-STORE from X")
    assert raw.tell() == 0
    check_dimse_dataset(raw, "1.2.840.10008.1.2.1", "C-STORE from X")  # not deflated: no-op
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw.read(1024))  # still readable


# -- REST uploads ----------------------------------------------------------------------------


@pytest.fixture
def client(make_config, store: Store):
    cfg = make_config(routes=[{"name": "all", "artifact": "/nonexistent",
                               "match": {"formats": ["png", "jpeg", "nifti", "dicom"]}}])
    receiver = Receiver(cfg, store)
    token = store.create_token("submitter", ["submit"])
    return TestClient(create_app(cfg, store, receiver)), auth(token), receiver


def upload(client: TestClient, headers: dict[str, str], *files: tuple[str, bytes]):
    return client.post("/api/v1/studies", headers=headers,
                       files=[("files", (name, data, "application/octet-stream"))
                              for name, data in files])


@pytest.mark.parametrize(("name", "make", "message"), [
    ("big.png", lambda tmp: png_header(13000, 13000),
     "13000 x 13000 pixels (169000000) exceed max_pixels 67108864"),
    ("zeros.nii.gz", lambda tmp: write_nifti_header(tmp / "z.nii.gz", (1000,) * 3).read_bytes(),
     "1000 x 1000 x 1000 voxels (1000000000) exceed max_voxels 134217728"),
    ("rle.dcm", lambda tmp: to_bytes(rle_dicom(16384, 16384)),
     "16384 x 16384 pixels (268435456) exceed max_pixels 67108864"),
    ("deflated.dcm", lambda tmp: write_deflated_dicom(tmp / "d.dcm", 16384, 16384).read_bytes(),
     "16384 x 16384 pixels (268435456) exceed max_pixels 67108864"),
])
def test_rest_upload_over_the_limit_is_a_400(client, store: Store, tmp_path: Path, name: str,
                                              make, message: str) -> None:
    http, headers, receiver = client
    r = upload(http, headers, (name, make(tmp_path)))
    assert r.status_code == 400, r.text
    assert name in r.json()["detail"] and message in r.json()["detail"]
    assert not stored_sops(store) and not incoming_files(receiver)


def test_rest_dicom_upload_with_one_file_over_the_limit_stores_none(client, store) -> None:
    http, headers, receiver = client
    study = generate_uid()
    good = make_series(2, study_uid=study)
    bomb = rle_dicom(16384, 16384, study_uid=study)
    r = upload(http, headers, ("a.dcm", to_bytes(good[0])), ("b.dcm", to_bytes(good[1])),
               ("bomb.dcm", to_bytes(bomb)))
    assert r.status_code == 400 and "bomb.dcm" in r.json()["detail"]
    assert not stored_sops(store) and not incoming_files(receiver)


def test_nifti_upload_is_checked_without_decoding_the_volume(client, store, tmp_path,
                                                             monkeypatch) -> None:
    from medinfer.io import readers

    def no_decoding(*args, **kwargs):
        raise AssertionError("the API process decoded the volume")

    monkeypatch.setattr(readers, "_load_nifti", no_decoding)
    http, headers, _ = client
    good = write_nifti_header(tmp_path / "v.nii.gz", (40, 30, 20), data_bytes=40 * 30 * 20)
    r = upload(http, headers, ("v.nii.gz", good.read_bytes()))
    assert r.status_code == 202, r.text
    truncated = write_nifti_header(tmp_path / "t.nii.gz", (40, 30, 20), data_bytes=1000)
    r = upload(http, headers, ("t.nii.gz", truncated.read_bytes()))
    assert r.status_code == 400 and "t.nii.gz" in r.text and "truncated" in r.text
    with store.session() as s:
        assert s.query(Study).count() == 1


# -- STOW-RS -----------------------------------------------------------------------------------


def stow_body(parts: list[bytes], boundary: str = "b0undary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p
                    + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; '
                                  f"boundary={boundary}"}


def test_stow_part_over_the_limit_fails_alone(client, store: Store, tmp_path: Path) -> None:
    http, headers, _ = client
    study = generate_uid()
    good = make_series(1, study_uid=study)[0]
    deflated = write_deflated_dicom(tmp_path / "d.dcm", 16384, 16384, study_uid=study)
    body, ctype = stow_body([to_bytes(good), to_bytes(rle_dicom(16384, 16384, study_uid=study)),
                             deflated.read_bytes()])
    r = http.post("/dicom-web/studies", content=body, headers={**headers, **ctype})
    assert r.status_code == 202, r.text  # some stored, some failed (PS3.18)
    reasons = [item["00081196"]["Value"][0] for item in r.json()["00081198"]["Value"]]
    assert len(reasons) == 2
    assert all("16384 x 16384 pixels (268435456) exceed max_pixels" in x for x in reasons)
    assert reasons[0].startswith("part 1") and reasons[1].startswith("part 2")
    assert stored_sops(store) == {good.SOPInstanceUID}


def test_stow_parts_are_parsed_in_place(make_config, store: Store) -> None:
    """Splitting costs no copy of the body; storing holds about two copies of one part."""
    receiver = Receiver(make_config(), store)
    series = make_series(6, 1024)  # 2 MiB per part
    parts = [to_bytes(ds) for ds in series]
    body, _ = stow_body(parts)
    part = max(len(p) for p in parts)
    del parts
    with Peak() as split_peak:
        split = split_multipart(body, "b0undary")
    with Peak() as peak:
        for i, (_, data) in enumerate(split):  # as the STOW-RS endpoint stores them
            ds = read_dicom_bytes(data, f"part {i}")
            receiver.accept_dataset(ds, "stow", "tester", f"part {i}")
    assert [bytes(p[1][:132])[128:] for p in split] == [b"DICM"] * 6
    assert split_peak.bytes < 64 * 1024  # views, not copies (bytes.split copied the body)
    assert peak.bytes < 3 * part < len(body) / 2  # before: about 2.5 x the body
    assert len(stored_sops(store)) == 6


def test_stow_body_spooled_to_a_file_is_split_without_reading_it(tmp_path: Path) -> None:
    """How the endpoint can keep the body out of memory: spool it to a file, mmap it."""
    import mmap

    series = make_series(3, 64)
    body, _ = stow_body([to_bytes(ds) for ds in series])
    spooled = tmp_path / "body"
    spooled.write_bytes(body)
    with spooled.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        parts = split_multipart(mm, "b0undary")
        uids = [read_dicom_bytes(data, f"part {i}").SOPInstanceUID
                for i, (_, data) in enumerate(parts)]
        assert [bytes(p) for _, p in parts] == [bytes(p) for _, p in split_multipart(body,
                                                                                   "b0undary")]
        for _, view in parts:
            view.release()  # before the mmap closes
    assert uids == [ds.SOPInstanceUID for ds in series]
