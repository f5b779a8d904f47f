"""Running the service: HTTP (uvicorn) + DICOM SCP + intake thread + delivery lanes + workers.

The intake thread closes quiet studies into jobs (and restarts dead workers) every
tick; deliveries are sent by their own threads (:class:`~medinfer.serve.delivery.DeliveryLanes`),
so a destination that hangs never delays routing. Worker processes are started with
the ``spawn`` method and restarted when one dies; their jobs come back through lease
expiry. A worker ends by itself when the service process dies, even by SIGKILL
(:func:`~medinfer.serve.worker.run_worker`'s ``parent_pid``). SIGTERM and SIGINT stop
the service in order (:meth:`Service.serve_forever`). Everything durable is in the job
store, so stopping and starting the service loses and repeats nothing.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from typing import Any

from medinfer.serve.config import ServeConfig
from medinfer.serve.delivery import DeliveryLanes, DestinationHealth
from medinfer.serve.ingest import Receiver
from medinfer.serve.store import Store

__all__ = ["STOP_GRACE_SECONDS", "Service"]

log = logging.getLogger(__name__)

# How long stopping waits for workers to finish their current job before SIGTERM, so that
# the whole stop stays within Docker's default 10 s between SIGTERM and SIGKILL. A job cut
# short is retried after its lease expires.
STOP_GRACE_SECONDS = 5.0


class Service:
    """All parts of one service instance.

    Args:
        config: the service config.
        tick_seconds: intake period (quiet-study check, worker supervision); also how often
            an idle delivery lane looks for due deliveries.
        store: the job store (tests pass one on a fake clock); default: the config's
            database, closed by :meth:`stop`.
    """

    def __init__(self, config: ServeConfig, tick_seconds: float = 0.25,
                 store: Store | None = None) -> None:
        self.config = config
        config.storage.mkdir(parents=True, exist_ok=True)
        self._own_store = store is None
        self.store = store if store is not None else Store(config.db_url)
        self.receiver = Receiver(config, self.store)
        self.deliveries = DeliveryLanes(config, self.store, poll_seconds=tick_seconds)
        self.tick = tick_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dimse: Any = None
        self._ctx = mp.get_context("spawn")
        self._worker_stop = self._ctx.Event()
        self.workers: list[Any] = []
        self._ready: list[Any] = []  # per worker: set once its models are warmed up

    @property
    def dicom_status(self) -> str:
        d = self.config.dicom
        if d.port is None:
            return "disabled"
        return f"{d.ae_title}@{d.host}:{d.port}" + (" (TLS)" if d.tls is not None else "")

    def start_background(self) -> None:
        """Start DICOM, workers, the intake thread and the delivery lanes (non-blocking)."""
        if self.config.dicom.port is not None:
            from medinfer.serve.dimse import start_dimse

            self._dimse = start_dimse(self.receiver)
        self._ready = [self._ctx.Event() for _ in range(self.config.workers)]
        self.workers = [self._spawn_worker(i) for i in range(self.config.workers)]
        t = threading.Thread(target=self._intake, name="intake", daemon=True)
        t.start()
        self._threads.append(t)
        self.deliveries.start()

    def _spawn_worker(self, n: int) -> Any:
        from medinfer.serve.worker import run_worker

        # On Linux a worker gets SIGTERM when the thread that spawned it ends (prctl
        # PDEATHSIG), so workers come only from the main thread and the intake thread,
        # which both live until stop() has stopped the workers.
        self._ready[n] = self._ctx.Event()  # a restarted worker warms up again
        p = self._ctx.Process(target=run_worker, args=(self.config, None, self._worker_stop),
                              kwargs={"parent_pid": os.getpid(), "ready": self._ready[n]},
                              name=f"medinfer-worker-{n}", daemon=True)
        p.start()
        return p

    def _intake(self) -> None:
        """Every tick: close quiet studies into jobs, restart dead workers. Nothing here
        waits on a destination (deliveries have their own threads)."""
        while not self._stop.wait(self.tick):
            for step in (self.receiver.close_quiet_studies, self._supervise):
                try:
                    step()
                except Exception:  # keep the loop alive; logged, state stays in the DB
                    log.exception("intake step failed", extra={"step": step.__name__})

    def _supervise(self) -> None:
        for i, p in enumerate(self.workers):
            if not p.is_alive() and not self._worker_stop.is_set():
                log.warning("worker died; restarting", extra={"worker": p.name,
                                                              "exitcode": p.exitcode})
                self.workers[i] = self._spawn_worker(i)

    def destination_health(self) -> dict[str, DestinationHealth]:
        """How sending goes, per destination (``ok`` / ``failing`` / ``stalled``, pending,
        in flight, last error): see :class:`~medinfer.serve.delivery.DestinationHealth`."""
        return self.deliveries.health()

    def worker_readiness(self) -> dict[str, int]:
        """Worker processes configured, and ready (their models loaded, compiled and run
        once: :meth:`~medinfer.serve.worker.Worker.warm_up`)."""
        ready = sum(1 for p, e in zip(self.workers, self._ready, strict=False)
                    if e.is_set() and p.is_alive())
        return {"configured": self.config.workers, "ready": ready}

    def app(self) -> Any:
        """The HTTP app; ``app.state.destination_health`` is :meth:`destination_health`,
        ``app.state.worker_readiness`` :meth:`worker_readiness` (both in ``/health``)."""
        from medinfer.serve.api import create_app

        app = create_app(self.config, self.store, self.receiver, self.dicom_status)
        app.state.destination_health = self.destination_health
        app.state.worker_readiness = self.worker_readiness
        return app

    def serve_forever(self) -> None:
        """Start everything and serve HTTP until SIGTERM or SIGINT; then :meth:`stop`.

        uvicorn handles both signals while it serves, and when it has shut down it puts
        back the handlers it found and raises the signal again. Without a handler of ours
        that re-raised SIGTERM would kill the process there, before the workers are
        stopped; with it, the signal is noted and the service stops in order and returns
        (exit code 0).

        Raises:
            SystemExit: uvicorn could not start (e.g. the HTTP port is taken).
        """
        import uvicorn

        tls = self.config.http.tls
        server = uvicorn.Server(uvicorn.Config(
            self.app(), host=self.config.http.host, port=self.config.http.port,
            log_config=None, access_log=False,
            ssl_certfile=None if tls is None else str(tls.cert),
            ssl_keyfile=None if tls is None else str(tls.key)))
        received: list[str] = []

        def on_signal(sig: int, _frame: object) -> None:
            received.append(signal.Signals(sig).name)
            server.should_exit = True  # a signal before uvicorn runs: it stops at once

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start_background()
            scheme = "http" if tls is None else "https"
            log.info("service started", extra={"http": f"{scheme}://{self.config.http.host}:"
                                                       f"{self.config.http.port}",
                                               "dicom": self.dicom_status,
                                               "workers": self.config.workers})
            if not received:
                server.run()
            if not server.started and not received:
                raise SystemExit(3)  # uvicorn's own code for a failed start
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("service stopped", extra={"signal": received[0] if received else None})

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop DICOM, the workers (``grace_seconds`` to finish their job, then SIGTERM,
        then SIGKILL), the delivery lanes and the intake thread; close the store if it is
        the service's own."""
        self._worker_stop.set()
        if self._dimse is not None:
            self._dimse.shutdown()
            self._dimse = None
        self.deliveries.stop(timeout=0)  # no new sends; the current ones end meanwhile
        self._stop_workers(grace_seconds)
        self.deliveries.stop(timeout=1)
        self._stop.set()  # the intake thread lives until here: see _spawn_worker
        for t in self._threads:
            t.join(timeout=5)
        if self._own_store:
            self.store.close()

    def _stop_workers(self, grace_seconds: float) -> None:
        deadline = time.monotonic() + grace_seconds
        for p in self.workers:
            p.join(max(0.0, deadline - time.monotonic()))
        for escalate in ("terminate", "kill"):
            alive = [p for p in self.workers if p.is_alive()]
            if not alive:
                return
            log.warning("workers still running", extra={"workers": [p.name for p in alive],
                                                         "sending": escalate})
            for p in alive:
                getattr(p, escalate)()
            for p in alive:
                p.join(2)
