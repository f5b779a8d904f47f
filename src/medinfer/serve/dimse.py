"""The DICOM DIMSE front door: a pynetdicom AE answering C-ECHO and C-STORE.

Associations are accepted only from the calling AE titles in
``dicom.allowed_calling_aets`` (pynetdicom's ``require_calling_aet``; others are
rejected with "calling AE title not recognised") and only when they call this AE's
title (``require_called_aet``; "called AE title not recognised"), unless
``dicom.require_called_aet`` is false. Presentation contexts are accepted only in the
transfer syntaxes whose pixel data pydicom can decode here
(:func:`decodable_transfer_syntaxes`), so a sender falls back to another syntax at
association instead of having every instance refused. Each C-STORE is answered only
after :meth:`Receiver.accept_dataset` wrote the instance (fsync) and recorded it,
so a success status means the instance survives a crash. pynetdicom runs each
association in its own thread. With ``dicom.tls`` the port speaks DICOM TLS only
(TLS >= 1.2; with ``require_client_cert``, only to clients whose certificate ``ca`` signed):
:func:`medinfer.serve.tls.server_context`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from pydicom.uid import UID, JPEGExtended12Bit
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medinfer.errors import InputError
from medinfer.serve.ingest import Receiver, check_dimse_dataset
from medinfer.serve.logs import hash_uid
from medinfer.serve.tls import server_context

__all__ = ["decodable_transfer_syntaxes", "start_dimse"]

log = logging.getLogger(__name__)

_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


# Pillow decodes 8-bit JPEG Extended only and pydicom's GDCM plugin refuses 12-bit JPEG;
# 12-bit samples, the reason the syntax is used, need libjpeg (the jpeg-extended extra).
_JPEG_12_BIT_PLUGINS = {"pylibjpeg"}


@functools.cache
def decodable_transfer_syntaxes() -> tuple[str, ...]:
    """The transfer syntaxes (of pynetdicom's list) whose pixel data pydicom decodes with
    the plugins installed here: the uncompressed ones, and each compressed one with an
    available decoder (JPEG Lossless: GDCM or ``pylibjpeg-libjpeg``; 12-bit JPEG Extended:
    ``pylibjpeg-libjpeg`` only).
    """
    from pydicom.pixels import get_decoder

    out = []
    for uid in map(UID, ALL_TRANSFER_SYNTAXES):
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:  # no decoder exists for it (video, JPIP ...)
            continue
        plugins = set(decoder.available_plugins)
        if not decoder.is_available or (uid == JPEGExtended12Bit
                                        and not plugins & _JPEG_12_BIT_PLUGINS):
            continue
        out.append(str(uid))
    return tuple(out)


def _handle_echo(event: Any) -> int:
    log.info("C-ECHO", extra={"calling_aet": event.assoc.requestor.ae_title})
    return 0x0000


def _handle_store(event: Any, receiver: Receiver) -> int:
    calling = event.assoc.requestor.ae_title
    try:
        # a Deflated dataset is checked while still encoded: event.dataset inflates it whole
        check_dimse_dataset(event.request.DataSet, event.context.transfer_syntax,
                            f"C-STORE from {calling}", receiver.limits)
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
    ae = event.assoc.ae
    calling = event.assoc.requestor.ae_title
    called = str(getattr(event.assoc.requestor.primitive, "called_ae_title", "")).strip()
    if ae.require_calling_aet and calling not in ae.require_calling_aet:
        reason = "calling AE title not allowed"
    elif ae.require_called_aet and called != ae.ae_title:
        reason = f"called AE title {called!r} is not {ae.ae_title!r}"
    else:
        reason = "too many associations"
    log.warning("association rejected", extra={"calling_aet": calling, "reason": reason})
    receiver.store.audit(f"ae:{calling}", "association-rejected", "dimse", reason)


def start_dimse(receiver: Receiver, require_called_aet: bool | None = None) -> Any:
    """Start the SCP in background threads; returns the server (call ``.shutdown()``).

    Args:
        receiver: stores what arrives (its config's ``dicom`` section sets the AE).
        require_called_aet: refuse associations that call another AE title; None takes
            ``dicom.require_called_aet`` from the config (true when the config has no
            such field).
    """
    cfg = receiver.config.dicom
    if require_called_aet is None:
        require_called_aet = bool(getattr(cfg, "require_called_aet", True))
    ae = AE(ae_title=cfg.ae_title)
    ae.require_calling_aet = list(cfg.allowed_calling_aets)
    ae.require_called_aet = require_called_aet
    ae.maximum_associations = 32
    syntaxes = list(decodable_transfer_syntaxes())
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    handlers = [(evt.EVT_C_ECHO, _handle_echo),
                (evt.EVT_C_STORE, _handle_store, [receiver]),
                (evt.EVT_REJECTED, _handle_rejected, [receiver])]
    tls = getattr(cfg, "tls", None)
    ssl_context = None if tls is None else server_context(tls)
    server = ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers,
                             ssl_context=ssl_context)
    log.info("DICOM listening", extra={"ae_title": cfg.ae_title, "port": cfg.port,
                                       "tls": ssl_context is not None})
    return server
