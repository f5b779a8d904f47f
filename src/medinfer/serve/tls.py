"""TLS for the front doors and for DIMSE destinations: config sections and ``ssl`` contexts.

Certificate paths in the YAML file are relative to the file, like the other paths there
(:meth:`medinfer.serve.config.ServeConfig.resolved`); :func:`check_tls_files` then loads
each one, so a missing or unreadable file fails at startup with its name.

Example::

    http:
      tls: {cert: certs/server.pem, key: certs/server.key}
    dicom:
      tls: {cert: certs/server.pem, key: certs/server.key, ca: certs/ca.pem,
            require_client_cert: true}
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from medinfer.errors import InputError

__all__ = ["ClientTls", "DicomTls", "HttpTls", "check_tls_files", "client_context",
           "resolve_paths", "server_context"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpTls(_Strict):
    """HTTPS for the REST/STOW-RS/web front door.

    Attributes:
        cert: PEM certificate chain (server certificate first).
        key: PEM private key of that certificate (unencrypted).
    """

    cert: Path
    key: Path


class DicomTls(HttpTls):
    """DICOM TLS for the DIMSE front door (TLS 1.2 or later).

    Attributes:
        ca: PEM bundle of the CAs that sign client certificates.
        require_client_cert: refuse a connection without a client certificate signed
            by ``ca`` (mutual TLS).
    """

    ca: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_clients(self) -> DicomTls:
        if self.require_client_cert and self.ca is None:
            raise ValueError("require_client_cert needs ca (the CA of the client certificates)")
        return self


class ClientTls(_Strict):
    """TLS when medinfer sends to a DIMSE destination.

    Attributes:
        ca: PEM bundle that signs the destination's certificate; None: the system's CAs.
        cert: PEM client certificate, for a destination that requires one.
        key: its private key.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


def _absolute(p: Path | None, base: Path) -> Path | None:
    return p if p is None or p.is_absolute() else (base / p).resolve()


def resolve_paths(tls: HttpTls | ClientTls, base: Path) -> HttpTls | ClientTls:
    """A copy with its relative paths made absolute against ``base``."""
    fields = {k: _absolute(v, base) for k, v in tls.model_dump().items() if isinstance(v, Path)}
    return tls.model_copy(update=fields)


def _load(ctx: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> None:
    # Each file is checked apart first, so the error names the one at fault.
    for path, what in ((cert, "certificate"), (key, "private key"), (ca, "CA bundle")):
        if path is not None and not path.is_file():
            raise InputError(path, f"TLS {what}: no such file")
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, ValueError) as exc:
            raise InputError(ca, f"TLS CA bundle does not load: {exc}") from exc
    if cert is not None and key is not None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except ssl.SSLError as exc:
            raise InputError(cert, f"TLS certificate or its key {key} does not load: "
                                   f"{exc}") from exc


def server_context(tls: HttpTls | DicomTls) -> ssl.SSLContext:
    """A server-side context (TLS >= 1.2) with the certificate; with client verification
    against ``ca`` when ``require_client_cert``.

    Raises:
        InputError: a file is missing or does not load (the message names it).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = tls.ca if isinstance(tls, DicomTls) else None
    _load(ctx, tls.cert, tls.key, ca)
    if isinstance(tls, DicomTls) and tls.require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """A client-side context (TLS >= 1.2, host name checked) trusting ``ca`` (or the
    system's CAs), presenting ``cert`` when given.

    Raises:
        InputError: a file is missing or does not load (the message names it).
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca is None:
        _load(ctx, tls.cert, tls.key, None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load(ctx, tls.cert, tls.key, tls.ca)
    return ctx


def check_tls_files(tls: HttpTls | DicomTls | ClientTls) -> None:
    """Load every file of ``tls`` once; raises :class:`InputError` naming the first bad one."""
    if isinstance(tls, ClientTls):
        client_context(tls)
    else:
        server_context(tls)
