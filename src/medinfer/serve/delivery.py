"""Sending results to destinations: C-STORE SCU (pynetdicom) or STOW-RS (httpx), with retries.

A delivery that fails stays ``pending`` and is retried with exponential backoff
(``delivery_retry_seconds`` doubling up to ``delivery_retry_max_seconds``) for as long
as the destination is unreachable; only a destination that answers and refuses the
object (a C-STORE failure status, an HTTP 4xx) marks it ``failed``. Delivery is
at-least-once: a crash between sending and recording re-sends the same SOP instance,
which a PACS stores once.

The service sends in :class:`DeliveryLanes`: a few threads per destination, apart from
the thread that closes studies, so a destination that hangs delays only its own
deliveries; :meth:`DeliveryLanes.health` tells which destination hangs or fails. A
destination found unreachable gets no sends, only a connection probe every
``delivery_probe_seconds``; when it answers again, every delivery waiting for it goes at
once (the per-delivery backoff is for what one destination keeps failing).

A destination with ``deidentify`` (an outside service) is sent a de-identified copy of
each result (:mod:`medinfer.serve.deid`), never the stored file; the audit table records
each such send (delivery, destination, kind, method; no patient values).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydicom import dcmread
from sqlalchemy import func, select

from medinfer.serve.config import DestinationConfig, ServeConfig
from medinfer.serve.deid import METHOD, deidentified_copy, load_key
from medinfer.serve.store import Store
from medinfer.serve.tls import client_context

__all__ = ["Attempt", "DeliveryError", "DeliveryLanes", "DestinationHealth", "deliver_due",
           "deliver_one", "reachable", "send"]

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
    # DICOM TLS: the host name in the certificate must match dest.host
    tls_args = None if dest.tls is None else (client_context(dest.tls), dest.host)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
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


@dataclass(frozen=True)
class Attempt:
    """How one send went: ``error`` is ``""`` when it was sent; ``unreachable`` when the
    destination itself failed (no connection or association, no answer, HTTP 5xx), as
    opposed to this one object (refused, or its file unreadable)."""

    error: str = ""
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return not self.error


def deliver_one(config: ServeConfig, store: Store, dest: DestinationConfig, delivery_id: int,
                kind: str, path: str) -> Attempt:
    """Send one delivery and record the attempt (sent, retry later, or failed): a
    delivery the destination refused fails for good, any other is retried with backoff.
    """
    try:
        if dest.deidentify:
            with deidentified_copy(Path(path), load_key(config.storage)) as copy:
                send(dest, copy, config.dicom.calling_ae_title)
        else:
            send(dest, Path(path), config.dicom.calling_ae_title)
    except DeliveryError as exc:
        error, retryable = str(exc), exc.retryable
        unreachable = exc.retryable
    except Exception as exc:  # e.g. an unreadable result file: kept pending, with backoff
        log.exception("delivery raised", extra={"delivery": delivery_id, "destination": dest.name})
        error, retryable, unreachable = f"{type(exc).__name__}: {exc}", True, False
    else:
        store.mark_delivery(delivery_id, ok=True)
        if dest.deidentify:
            store.audit("delivery", "send-deidentified", target=f"delivery:{delivery_id}",
                        detail=f"destination={dest.name} kind={kind} method={METHOD}")
        log.info("delivered", extra={"delivery": delivery_id, "destination": dest.name,
                                     "kind": kind})
        return Attempt()
    delay = min(config.delivery_retry_seconds * 2 ** _attempts(store, delivery_id),
                config.delivery_retry_max_seconds)
    store.mark_delivery(delivery_id, ok=False, error=error,
                        retry_after=delay if retryable else None)
    log.warning("delivery failed", extra={"delivery": delivery_id, "destination": dest.name,
                                          "kind": kind, "error": error,
                                          "retry_in_s": delay if retryable else None})
    return Attempt(error, unreachable)


def reachable(dest: DestinationConfig, timeout: float = 5.0) -> bool:
    """Whether ``dest`` accepts a TCP connection (its DICOM port, or its URL's host and
    port): the cheap probe of a destination that was unreachable."""
    if dest.kind == "dimse":
        host, port = dest.host or "", dest.port or 104
    else:
        url = urlsplit(dest.url or "")
        host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def deliver_due(config: ServeConfig, store: Store) -> int:
    """Try every pending delivery whose retry time has come once, one after the other, in
    the calling thread, claiming each as the lanes do; returns how many were sent. (The
    service uses :class:`DeliveryLanes`.)"""
    fail_unconfigured(config, store)
    owner, sent, tried = sender_name("deliver-due"), 0, set()
    for dest in config.destinations:
        while (claim := store.claim_delivery(dest.name, owner,
                                             config.delivery_lease_seconds)) is not None:
            delivery_id, kind, path = claim
            if delivery_id in tried:  # retried with no delay: once per call is enough
                break
            tried.add(delivery_id)
            sent += deliver_one(config, store, dest, delivery_id, kind, path).ok
    return sent


def sender_name(role: str) -> str:
    """Who holds a delivery claim: ``host:pid:role`` (several service processes, even on
    one host, never share a name)."""
    return f"{socket.gethostname()}:{os.getpid()}:{role}"


@dataclass(frozen=True)
class DestinationHealth:
    """How sending to one destination goes (what ``/health`` shows of it).

    Attributes:
        name: the destination's name in the config.
        state: ``ok``; ``failing`` (its last attempt failed); ``stalled`` (a send has been
            in flight longer than ``stall_seconds``: the destination hangs).
        pending: deliveries to it waiting to be sent (due now or backing off).
        in_flight: sends to it in progress now.
        consecutive_failures: failed attempts since its last success (in this run).
        last_error: the last failure's message ("" once a send succeeded again).
        last_sent_at: store-clock time of the last success in this run (None: none yet).
        last_failed_at: store-clock time of the last failure in this run (None: none yet).
        longest_send_seconds: age of its oldest send in flight (0 when none).
    """

    name: str
    state: str
    pending: int
    in_flight: int
    consecutive_failures: int
    last_error: str
    last_sent_at: float | None
    last_failed_at: float | None
    longest_send_seconds: float


@dataclass
class _Record:
    """A destination's outcomes so far (mutable; under the lanes' lock). ``unreachable``:
    its last send failed for want of the destination; nothing more is sent to it until a
    probe at ``next_probe_at`` connects."""

    failures: int = 0
    last_error: str = ""
    last_sent_at: float | None = None
    last_failed_at: float | None = None
    unreachable: bool = False
    next_probe_at: float = 0.0


class DeliveryLanes:
    """Sends due deliveries on daemon threads: a few lanes per destination.

    ``config.delivery_threads`` sends run at once, split evenly among the destinations (at
    least one lane each), so a destination that hangs (a C-STORE may wait 30 s per network
    step, a STOW-RS POST 60 s) holds only its own lanes: studies are still closed and
    routed, and other destinations still receive. Lanes of one destination never send the
    same delivery at the same time, nor do the lanes of another service process on the same
    database: each send starts with a claim in the database (:meth:`Store.claim_delivery`).
    The threads are daemons: a send still hanging when the process exits is abandoned; the
    delivery, still pending, is sent again once its claim is released (:meth:`stop`, or the
    next start on this host when the process was killed) or has expired.

    Args:
        config: the service config (destinations, ``delivery_threads``, retry delays).
        store: the job store; its clock times the sends (``stall_seconds``).
        poll_seconds: how long an idle lane waits before it looks for due deliveries again.
        stall_seconds: a send in flight longer than this makes its destination ``stalled``.
    """

    def __init__(self, config: ServeConfig, store: Store, poll_seconds: float = 0.25,
                 stall_seconds: float = 15.0) -> None:
        self.config, self.store = config, store
        self.poll, self.stall = poll_seconds, stall_seconds
        self._lock = threading.Lock()  # guards _in_flight and _records
        self.owner = sender_name("lanes")
        self._in_flight: dict[int, tuple[str, float]] = {}  # id -> (destination, started)
        self._records = {d.name: _Record() for d in config.destinations}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Fail deliveries to destinations no longer configured, release the claims of
        dead senders on this host; start the lanes."""
        fail_unconfigured(self.config, self.store)
        host = socket.gethostname()
        dead = [o for o in self.store.delivery_claim_owners()
                if o.split(":")[0] == host and not _pid_alive(o.split(":")[1])]
        if dead:
            released = self.store.release_delivery_claims(dead)
            log.info("released claims of dead senders", extra={"deliveries": released})
        dests = self.config.destinations
        lanes = max(1, self.config.delivery_threads // len(dests)) if dests else 0
        for dest in dests:
            for k in range(lanes):
                t = threading.Thread(target=self._lane, args=(dest,), daemon=True,
                                     name=f"delivery-{dest.name}-{k}")
                t.start()
                self._threads.append(t)

    def stop(self, timeout: float = 2.0) -> None:
        """Let the lanes finish their current send for up to ``timeout`` s in all."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._threads and not any(t.is_alive() for t in self._threads):
            self.store.release_delivery_claims([self.owner])

    def health(self) -> dict[str, DestinationHealth]:
        """Each configured destination's :class:`DestinationHealth`, by name.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database cannot be read (pending counts).
        """
        pending = pending_counts(self.store)
        now = self.store.clock()
        out = {}
        with self._lock:
            for dest in self.config.destinations:
                r = self._records[dest.name]
                started = [t for n, t in self._in_flight.values() if n == dest.name]
                longest = max((now - t for t in started), default=0.0)
                state = "stalled" if longest > self.stall else "failing" if r.failures else "ok"
                out[dest.name] = DestinationHealth(
                    dest.name, state, pending.get(dest.name, 0), len(started), r.failures,
                    r.last_error, r.last_sent_at, r.last_failed_at, round(longest, 3))
        return out

    def _lane(self, dest: DestinationConfig) -> None:
        while not self._stop.is_set():
            try:
                busy = self._send_next(dest)
            except Exception:  # the database failed: the delivery stays pending, tried again
                log.exception("delivery lane failed", extra={"destination": dest.name})
                busy = False
            if not busy:
                self._stop.wait(self.poll)

    def _send_next(self, dest: DestinationConfig) -> bool:
        """Claim and send the next due delivery to ``dest``; False if none is due.

        The claim (:meth:`Store.claim_delivery`) keeps every other lane, of this process or
        of another service process on the same database, from sending it meanwhile. While
        ``dest`` is unreachable nothing is sent; one lane probes it every
        ``delivery_probe_seconds`` instead (:meth:`_probe`)."""
        if not self._probe(dest):
            return False
        claim = self.store.claim_delivery(dest.name, self.owner,
                                          self.config.delivery_lease_seconds)
        if claim is None:
            return False
        delivery_id, kind, path = claim
        with self._lock:
            self._in_flight[delivery_id] = (dest.name, self.store.clock())
        try:
            attempt = deliver_one(self.config, self.store, dest, delivery_id, kind, path)
        except Exception as exc:
            self._finish(dest.name, delivery_id, Attempt(f"{type(exc).__name__}: {exc}"))
            raise
        self._finish(dest.name, delivery_id, attempt)
        return True

    def _probe(self, dest: DestinationConfig) -> bool:
        """False while ``dest`` is unreachable. When a probe is due, this lane (only one)
        tries to connect; once that works, the backoff of every delivery to ``dest`` ends
        (:meth:`Store.retry_deliveries_now`), so what piled up during an outage goes out at
        once instead of each after its own doubling delay."""
        now = self.store.clock()
        with self._lock:
            r = self._records[dest.name]
            if not r.unreachable:
                return True
            if now < r.next_probe_at:
                return False
            r.next_probe_at = now + self.config.delivery_probe_seconds  # the other lanes wait
        if not reachable(dest):
            return False
        with self._lock:
            r.unreachable = False
        due = self.store.retry_deliveries_now(dest.name)
        log.info("destination reachable again", extra={"destination": dest.name,
                                                        "deliveries": due})
        return True

    def _finish(self, name: str, delivery_id: int, attempt: Attempt) -> None:
        now = self.store.clock()
        with self._lock:
            # after the attempt was recorded, so no lane takes it up again meanwhile
            self._in_flight.pop(delivery_id, None)
            r = self._records[name]
            if attempt.ok:
                r.failures, r.last_error, r.last_sent_at = 0, "", now
                return
            r.failures, r.last_error, r.last_failed_at = r.failures + 1, attempt.error, now
            if attempt.unreachable and not r.unreachable:
                r.unreachable, r.next_probe_at = True, now + self.config.delivery_probe_seconds


def pending_counts(store: Store) -> dict[str, int]:
    """Pending deliveries per destination name."""
    from medinfer.serve.models import Delivery

    with store.session() as s:
        return {name: n for name, n in s.execute(
            select(Delivery.destination, func.count()).where(Delivery.state == "pending")
            .group_by(Delivery.destination))}


def fail_unconfigured(config: ServeConfig, store: Store) -> int:
    """Fail the pending deliveries to destinations the config no longer names; how many."""
    from medinfer.serve.models import Delivery

    names = [d.name for d in config.destinations]
    with store.session() as s:
        rows = list(s.execute(select(Delivery.id, Delivery.destination).where(
            Delivery.state == "pending", Delivery.destination.not_in(names))))
    for delivery_id, name in rows:
        store.mark_delivery(delivery_id, ok=False, error=f"destination {name!r} not configured")
    return len(rows)


def _pid_alive(pid: str) -> bool:
    """Whether a process ``pid`` (as text) runs on this host; True when unsure."""
    try:
        os.kill(int(pid), 0)
    except ValueError:
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _attempts(store: Store, delivery_id: int) -> int:
    from medinfer.serve.models import Delivery

    with store.session() as s:
        d = s.get(Delivery, delivery_id)
        return d.attempts if d else 0
