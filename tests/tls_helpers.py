"""A test certificate authority with server and client certificates, made with ``openssl``."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _leaf(folder: Path, name: str, extensions: str) -> None:
    """``name.pem`` and ``name.key``, signed by ``folder/ca.pem``."""
    ext = folder / f"{name}.ext"
    ext.write_text(extensions + "\nsubjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr",
             "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", folder / f"{name}.csr", "-CA", folder / "ca.pem",
             "-CAkey", folder / "ca.key", "-CAcreateserial", "-days", "1",
             "-out", folder / f"{name}.pem", "-extfile", ext)


def make_certs(folder: Path) -> Path:
    """``ca.pem``, ``server.pem/.key`` (for 127.0.0.1 and localhost), ``client.pem/.key`` in ``folder``."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", folder / "ca.key", "-out", folder / "ca.pem", "-days", "1",
             "-subj", "/CN=medinfer test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    _leaf(folder, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                            "extendedKeyUsage=serverAuth")
    _leaf(folder, "client", "extendedKeyUsage=clientAuth")
    return folder
