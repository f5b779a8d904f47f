"""Sending results to destinations: C-STORE SCU (pynetdicom) or STOW-RS (httpx), with retries.

A delivery that fails stays ``pending`` and is retried with exponential backoff
(``delivery_retry_seconds`` doubling up to ``delivery_retry_max_seconds``) for as long
as the destination is unreachable; only a destination that answers and refuses the
object (a C-STORE failure status, an HTTP 4xx) marks it ``failed``. Delivery is
at-least-once: a crash between sending and recording re-sends the same SOP instance,
which a PACS stores once.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from pydicom import dcmread

from medinfer.serve.config import DestinationConfig, ServeConfig
from medinfer.serve.store import Store

__all__ = ["DeliveryError", "deliver_due", "send"]

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """Sending failed; ``retryable`` says whether trying again later may succeed."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def send_dimse(dest: DestinationConfig, path: Path, calling_aet: str) -> None:
    """C-STORE one file to ``dest``; raises :class:`DeliveryError` on any failure."""
    from pynetdicom import AE

    ds = dcmread(path)
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise DeliveryError(f"association with {dest.ae_title}@{dest.host}:{dest.port} failed",
                            retryable=True)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == -1:
        raise DeliveryError("no C-STORE response (connection lost)", retryable=True)
    if code not in (0x0000, 0xB000, 0xB006, 0xB007):
        raise DeliveryError(f"C-STORE refused with status 0x{code:04X}", retryable=False)


def send_stow(dest: DestinationConfig, path: Path) -> None:
    """POST one file to a STOW-RS endpoint as multipart/related; application/dicom."""
    import httpx

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    try:
        r = httpx.post(dest.url or "", content=body, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"STOW-RS to {dest.url} failed: {exc}", retryable=True) from exc
    if r.status_code >= 500 or r.status_code in (408, 429):
        raise DeliveryError(f"STOW-RS answered {r.status_code}", retryable=True)
    if r.status_code >= 400:
        raise DeliveryError(f"STOW-RS refused: {r.status_code} {r.text[:200]}", retryable=False)


def send(dest: DestinationConfig, path: Path, calling_aet: str) -> None:
    """Send one result file to one destination."""
    if dest.kind == "dimse":
        send_dimse(dest, path, calling_aet)
    else:
        send_stow(dest, path)


def deliver_due(config: ServeConfig, store: Store) -> int:
    """Try every pending delivery whose retry time has come; returns how many were sent."""
    dests = {d.name: d for d in config.destinations}
    sent = 0
    for delivery_id, name, kind, path in store.due_deliveries():
        dest = dests.get(name)
        if dest is None:
            store.mark_delivery(delivery_id, ok=False, error=f"destination {name!r} not configured")
            continue
        try:
            send(dest, Path(path), config.dicom.calling_ae_title)
        except DeliveryError as exc:
            attempts = _attempts(store, delivery_id)
            delay = min(config.delivery_retry_seconds * 2 ** attempts,
                        config.delivery_retry_max_seconds)
            store.mark_delivery(delivery_id, ok=False, error=str(exc),
                                retry_after=delay if exc.retryable else None)
            log.warning("delivery failed", extra={"delivery": delivery_id, "destination": name,
                                                  "kind": kind, "error": str(exc),
                                                  "retry_in_s": delay if exc.retryable else None})
            continue
        store.mark_delivery(delivery_id, ok=True)
        log.info("delivered", extra={"delivery": delivery_id, "destination": name, "kind": kind})
        sent += 1
    return sent


def _attempts(store: Store, delivery_id: int) -> int:
    from medinfer.serve.models import Delivery

    with store.session() as s:
        d = s.get(Delivery, delivery_id)
        return d.attempts if d else 0
