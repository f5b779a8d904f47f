"""The DICOM DIMSE front door: a pynetdicom AE answering C-ECHO and C-STORE.

Associations are accepted only from the calling AE titles in
``dicom.allowed_calling_aets`` (pynetdicom's ``require_calling_aet``; others are
rejected with "calling AE title not recognised"). Each C-STORE is answered only
after :meth:`Receiver.accept_dataset` wrote the instance (fsync) and recorded it,
so a success status means the instance survives a crash. pynetdicom runs each
association in its own thread.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medinfer.errors import InputError
from medinfer.serve.ingest import Receiver
from medinfer.serve.logs import hash_uid

__all__ = ["start_dimse"]

log = logging.getLogger(__name__)

_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


def _handle_echo(event: Any) -> int:
    log.info("C-ECHO", extra={"calling_aet": event.assoc.requestor.ae_title})
    return 0x0000


def _handle_store(event: Any, receiver: Receiver) -> int:
    calling = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        label = f"C-STORE from {calling} (sop {hash_uid(str(ds.get('SOPInstanceUID', '')))})"
        receiver.accept_dataset(ds, "dimse", calling, label)
    except InputError as exc:
        log.warning("C-STORE refused", extra={"calling_aet": calling, "reason": exc.reason})
        return _CANNOT_UNDERSTAND
    except Exception:  # disk full, database down ...: the sender must keep the instance
        log.exception("C-STORE failed", extra={"calling_aet": calling})
        return _OUT_OF_RESOURCES
    return 0x0000


def _handle_rejected(event: Any, receiver: Receiver) -> None:
    calling = event.assoc.requestor.ae_title
    log.warning("association rejected", extra={"calling_aet": calling})
    receiver.store.audit(f"ae:{calling}", "association-rejected", "dimse",
                         "calling AE title not allowed")


def start_dimse(receiver: Receiver) -> Any:
    """Start the SCP in background threads; returns the server (call ``.shutdown()``)."""
    cfg = receiver.config.dicom
    ae = AE(ae_title=cfg.ae_title)
    ae.require_calling_aet = list(cfg.allowed_calling_aets)
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_ECHO, _handle_echo),
                (evt.EVT_C_STORE, _handle_store, [receiver]),
                (evt.EVT_REJECTED, _handle_rejected, [receiver])]
    server = ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
    log.info("DICOM listening", extra={"ae_title": cfg.ae_title, "port": cfg.port})
    return server
