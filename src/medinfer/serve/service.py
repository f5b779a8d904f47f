"""Running the service: HTTP (uvicorn) + DICOM SCP + housekeeping thread + worker processes.

The housekeeping thread closes quiet studies into jobs and sends due deliveries.
Worker processes are started with the ``spawn`` method and restarted when one
dies; their jobs come back through lease expiry. Everything durable is in the
job store, so stopping and starting the service loses and repeats nothing.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from typing import Any

from medinfer.serve.config import ServeConfig
from medinfer.serve.delivery import deliver_due
from medinfer.serve.ingest import Receiver
from medinfer.serve.store import Store

__all__ = ["Service"]

log = logging.getLogger(__name__)


class Service:
    """All parts of one service instance.

    Args:
        config: the service config.
        tick_seconds: housekeeping period (quiet-study check, deliveries, worker supervision).
    """

    def __init__(self, config: ServeConfig, tick_seconds: float = 0.25) -> None:
        self.config = config
        config.storage.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.db_url)
        self.receiver = Receiver(config, self.store)
        self.tick = tick_seconds
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._dimse: Any = None
        self._ctx = mp.get_context("spawn")
        self._worker_stop = self._ctx.Event()
        self.workers: list[Any] = []

    @property
    def dicom_status(self) -> str:
        d = self.config.dicom
        return f"{d.ae_title}@{d.host}:{d.port}" if d.port is not None else "disabled"

    def start_background(self) -> None:
        """Start DICOM, housekeeping and workers (non-blocking)."""
        if self.config.dicom.port is not None:
            from medinfer.serve.dimse import start_dimse

            self._dimse = start_dimse(self.receiver)
        self.workers = [self._spawn_worker(i) for i in range(self.config.workers)]
        t = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        t.start()
        self._threads.append(t)

    def _spawn_worker(self, n: int) -> Any:
        from medinfer.serve.worker import run_worker

        p = self._ctx.Process(target=run_worker, args=(self.config, None, self._worker_stop),
                              name=f"medinfer-worker-{n}", daemon=True)
        p.start()
        return p

    def _housekeeping(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.receiver.close_quiet_studies()
                deliver_due(self.config, self.store)
                self._supervise()
            except Exception:  # keep the loop alive; the error is logged, state stays in the DB
                log.exception("housekeeping failed")

    def _supervise(self) -> None:
        for i, p in enumerate(self.workers):
            if not p.is_alive() and not self._worker_stop.is_set():
                log.warning("worker died; restarting", extra={"worker": p.name,
                                                              "exitcode": p.exitcode})
                self.workers[i] = self._spawn_worker(i)

    def app(self) -> Any:
        from medinfer.serve.api import create_app

        return create_app(self.config, self.store, self.receiver, self.dicom_status)

    def serve_forever(self) -> None:
        """Start everything and serve HTTP until interrupted (Ctrl-C / SIGTERM)."""
        import uvicorn

        self.start_background()
        log.info("service started", extra={"http": f"{self.config.http.host}:"
                                                   f"{self.config.http.port}",
                                           "dicom": self.dicom_status,
                                           "workers": self.config.workers})
        try:
            uvicorn.run(self.app(), host=self.config.http.host, port=self.config.http.port,
                        log_config=None, access_log=False)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop workers, DICOM and housekeeping; close the store."""
        self._stop.set()
        self._worker_stop.set()
        for p in self.workers:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        if self._dimse is not None:
            self._dimse.shutdown()
        for t in self._threads:
            t.join(timeout=5)
        self.store.close()
