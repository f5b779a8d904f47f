"""TLS from the config: HTTPS for ``medinfer serve``, DICOM TLS (and mutual TLS) on the DIMSE
port, a clear error for a missing certificate file. Certificates: a throwaway CA made with
the ``openssl`` command in ``tmp_path``."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from serve_helpers import free_port
from tls_helpers import make_certs

from medinfer.data.synthetic import write_mr_series
from medinfer.errors import InputError
from medinfer.serve.config import DestinationConfig, load_config
from medinfer.serve.delivery import DeliveryError, send_dimse
from medinfer.serve.dimse import start_dimse
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import Instance
from medinfer.serve.store import Store


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ca.pem``, ``server.pem/.key`` (for 127.0.0.1 and localhost), ``client.pem/.key``."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def _client_context(certs: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))
    return ctx


# starts `medinfer serve` without workers (~2 s)
def test_https_front_door_answers_over_tls_only(tmp_path: Path, certs: Path) -> None:
    port = free_port()
    (tmp_path / "certs").symlink_to(certs)
    config = tmp_path / "serve.yaml"  # relative certificate paths: against the config's folder
    config.write_text(yaml.safe_dump({
        "storage": "storage", "workers": 0, "log_format": "text",
        "http": {"port": port, "tls": {"cert": "certs/server.pem", "key": "certs/server.key"}}}))
    medinfer = Path(sys.executable).parent / "medinfer"
    with open(tmp_path / "service.log", "wb") as log:
        proc = subprocess.Popen([str(medinfer), "serve", "--config", str(config)], stdout=log,
                                stderr=subprocess.STDOUT)
    trusted = _client_context(certs, with_cert=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted,
                                     timeout=1)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
                time.sleep(0.1)
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"https://127.0.0.1:{port}/health", verify=ssl.create_default_context(),
                      timeout=5)
    finally:
        proc.terminate()
        proc.wait(15)


def _echo(port: int, tls: tuple[ssl.SSLContext, str] | None) -> bool:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDINFER", tls_args=tls)
    if not assoc.is_established:
        return False
    try:
        return bool(assoc.send_c_echo().Status == 0)
    finally:
        assoc.release()


@pytest.mark.parametrize("require_client_cert", [False, True], ids=["tls", "mutual-tls"])
def test_dicom_tls(make_config, store: Store, certs: Path, require_client_cert: bool) -> None:
    tls = {"cert": certs / "server.pem", "key": certs / "server.key", "ca": certs / "ca.pem",
           "require_client_cert": require_client_cert}
    cfg = make_config(dicom={"port": free_port(), "allowed_calling_aets": ["MODALITY"],
                             "tls": tls})
    server = start_dimse(Receiver(cfg, store))
    port = cfg.dicom.port
    assert port is not None
    try:
        assert _echo(port, (_client_context(certs, with_cert=True), "localhost"))
        assert not _echo(port, None)  # plain DICOM on the TLS port
        anonymous = _echo(port, (_client_context(certs, with_cert=False), "localhost"))
        assert anonymous is not require_client_cert
    finally:
        server.shutdown()


def test_delivery_to_a_dimse_destination_over_mutual_tls(make_config, store: Store,
                                                          tmp_path: Path, certs: Path) -> None:
    cfg = make_config(dicom={"port": free_port(), "allowed_calling_aets": ["MEDINFER"],
                             "tls": {"cert": certs / "server.pem", "key": certs / "server.key",
                                     "ca": certs / "ca.pem", "require_client_cert": True}})
    server = start_dimse(Receiver(cfg, store))
    path = write_mr_series(tmp_path / "results", n=1) / "IM0001.dcm"
    dest = {"name": "pacs", "kind": "dimse", "host": "localhost", "port": cfg.dicom.port,
            "ae_title": "MEDINFER"}
    try:
        send_dimse(DestinationConfig.model_validate({**dest, "tls": {
            "ca": certs / "ca.pem", "cert": certs / "client.pem", "key": certs / "client.key"}}),
            path, "MEDINFER")
        with store.session() as s:
            assert s.query(Instance).count() == 1
        with pytest.raises(DeliveryError, match="association"):  # no client certificate
            send_dimse(DestinationConfig.model_validate({**dest, "tls": {"ca": certs / "ca.pem"}}),
                       path, "MEDINFER")
    finally:
        server.shutdown()


@pytest.mark.parametrize("section", ["http", "dicom"])
def test_missing_certificate_file_is_named(tmp_path: Path, certs: Path, section: str) -> None:
    tls = {"cert": "missing.pem", "key": str(certs / "server.key")}
    raw: dict[str, object] = {"storage": "storage", section: {"tls": tls}}
    if section == "dicom":
        raw["dicom"] = {"port": free_port(), "allowed_calling_aets": ["A"], "tls": tls}
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError) as info:
        load_config(config)
    assert info.value.path == tmp_path / "missing.pem"
    assert "no such file" in str(info.value) and str(config) in str(info.value)


def test_certificate_that_does_not_load_is_named(tmp_path: Path, certs: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"http": {"tls": {"cert": "bad.pem",
                                                       "key": str(certs / "server.key")}}}))
    with pytest.raises(InputError, match="does not load") as info:
        load_config(config)
    assert info.value.path == tmp_path / "bad.pem"


def test_mutual_tls_needs_a_ca(tmp_path: Path, certs: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"dicom": {"tls": {
        "cert": str(certs / "server.pem"), "key": str(certs / "server.key"),
        "require_client_cert": True}}}))
    with pytest.raises(InputError, match="require_client_cert needs ca"):
        load_config(config)
