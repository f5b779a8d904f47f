"""Workers: lease a job, read the series, run the routed model, write and record the results.

A worker renews its lease while it works (every third of ``lease_seconds``); if it
dies, the lease expires and another worker takes the job over. Results are written
under a folder named after the attempt's lease token and recorded only if the
attempt still holds the lease (:meth:`Store.complete_job`), so a job completes
exactly once. Deterministic failures (an unreadable or inconsistent series, DICOM
attributes the writers refuse, any value/type/attribute error: see
:func:`~medinfer.serve.logs.describe_failure`) fail the job at once; any other error
is retried up to ``max_attempts``. The error a job records names a class and never
quotes DICOM attribute values.

A whole-slide image (``POST /api/v1/slides``) takes the same path: the routed cytology
model reads the slide file, predicts over the whole slide and writes a heat-map PNG, the
cells as GeoJSON and the JSON summary. None of these is DICOM, so none is delivered: only
the DICOM kinds (:data:`~medinfer.serve.config.RESULT_KINDS`) go to destinations.

Run one with ``medinfer serve --worker --config serve.yaml`` (or let the service
spawn ``workers`` of them).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from medinfer.errors import InputError
from medinfer.serve.config import RESULT_KINDS, ServeConfig
from medinfer.serve.logs import describe_failure, hash_uid
from medinfer.serve.store import LeasedJob, ResultFile, Store

__all__ = ["Worker", "run_worker"]

log = logging.getLogger(__name__)


class PredictorLike(Protocol):
    """What a worker needs of a model: :class:`medinfer.tasks.Predictor`'s predict and write."""

    def predict(self, image: Any) -> Any: ...

    def read(self, paths: list[Path], limits: Any = None) -> Any: ...

    def warm_up(self) -> None: ...

    def write(self, pred: Any, image: Any, out_dir: Path, options: Any) -> list[Any]: ...


def open_predictor(artifact: str) -> PredictorLike:
    """The real model: :class:`medinfer.tasks.Predictor` on the chosen variant."""
    from medinfer.tasks import Predictor

    return Predictor.open(artifact)


class Worker:
    """Processes jobs from the store, one at a time.

    Args:
        config: the service config.
        store: the job store.
        name: lease owner name (host:pid:n by default).
        predictor_factory: artifact dir -> object with ``read``, ``warm_up``, ``predict(Image)
            -> Prediction`` and ``write(...)`` (a :class:`medinfer.tasks.Predictor`); cached
            per artifact.
    """

    def __init__(self, config: ServeConfig, store: Store, name: str | None = None,
                 predictor_factory: Callable[[str], PredictorLike] = open_predictor) -> None:
        self.config, self.store = config, store
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._factory = predictor_factory
        self._predictors: dict[str, PredictorLike] = {}

    def predictor(self, artifact: str) -> PredictorLike:
        if artifact not in self._predictors:
            self._predictors[artifact] = self._factory(artifact)
        return self._predictors[artifact]

    def warm_up(self) -> None:
        """Open every routed model and run it once on a blank input of its own size, and
        load the DICOM writers, so the first study does not pay for loading and imports.

        A model that cannot be opened is logged and skipped; its jobs fail with the reason.
        """
        import highdicom  # noqa: F401  (first import takes seconds)

        for route in self.config.routes:
            try:
                self.predictor(str(route.artifact)).warm_up()
            except Exception as exc:  # a missing model must not stop the other routes
                log.warning("model not loaded", extra={"route": route.name, "error": str(exc)})

    def attempt_dir(self, job: LeasedJob) -> Path:
        """Where one attempt writes its results: named by its lease token, so attempts
        never mix files; an attempt that does not complete the job has its folder removed."""
        return self.config.storage / "results" / str(job.id) / job.token

    def run_once(self) -> bool:
        """Lease and process one job; False when none was waiting.

        A failed attempt records :func:`~medinfer.serve.logs.describe_failure`'s
        ``class: message`` (no attribute values) and is retried only when that says it
        may pass next time: an :class:`~medinfer.errors.InputError` or a ``ValueError``
        from building the results would fail every attempt the same way, after a full
        inference each time; an ``OSError``, ``MemoryError`` or ``RuntimeError`` (CUDA out
        of memory, a lost database) may not.
        """
        cfg = self.config
        job = self.store.lease_job(self.name, cfg.lease_seconds, cfg.max_attempts)
        if job is None:
            return False
        log.info("job leased", extra={"job": job.id, "attempt": job.attempts, "worker": self.name,
                                      "series": hash_uid(job.series_uid)})
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, stop), daemon=True)
        beat.start()
        try:
            results, seconds, summary = self.process(job)
        except Exception as exc:  # every failure is recorded on the job, none kills the worker
            failure = describe_failure(exc)
            state = self.store.fail_attempt(job.id, job.token, str(failure), cfg.max_attempts,
                                            retryable=failure.retryable)
            # Unexpected errors get a traceback (made safe by the log filter); expected ones
            # are told by their class and message.
            log.warning("job attempt failed", extra={"job": job.id, "state": state,
                                                     "error": str(failure)},
                        exc_info=failure.retryable)
            shutil.rmtree(self.attempt_dir(job), ignore_errors=True)  # half-written files
            return True
        finally:
            stop.set()
            beat.join()
        dests = {k: [d.name for d in cfg.destinations if k in d.results]
                 for k in DICOM_KINDS}
        if self.store.complete_job(job.id, job.token, results, dests, seconds, summary):
            log.info("job done", extra={"job": job.id, "seconds": seconds})
        else:
            shutil.rmtree(self.attempt_dir(job), ignore_errors=True)
            log.warning("job lease lost; results discarded", extra={"job": job.id})
        return True

    def _heartbeat(self, job: LeasedJob, stop: threading.Event) -> None:
        while not stop.wait(self.config.lease_seconds / 3):
            if not self.store.renew_lease(job.id, job.token, self.config.lease_seconds):
                return

    def process(self, job: LeasedJob) -> tuple[list[ResultFile], dict[str, float], dict]:
        """Run the model on the job's series and write its result files (the task writes
        them: DICOM SEG / SR + Secondary Capture for DICOM input, masks or pictures otherwise,
        and the JSON summary)."""
        from medinfer.tasks import WriteOptions

        predictor = self.predictor(job.artifact)
        t0 = time.perf_counter()
        image = read_job_input(job, predictor.read, self.config.limits.read_limits())
        t1 = time.perf_counter()
        pred = predictor.predict(image)
        t2 = time.perf_counter()
        out = self.attempt_dir(job)
        options = WriteOptions(labelmap=self.config.seg_type == "labelmap", summary={
            "job": job.id, "series_uid_hash": hash_uid(job.series_uid), "route": job.route})
        written = predictor.write(pred, image, out, options)
        t3 = time.perf_counter()
        seconds = {"read": t1 - t0, "predict": t2 - t1, "write": t3 - t2}
        seconds.update({f"model_{k}": v for k, v in getattr(pred, "seconds", {}).items()})
        results = [result_file(f.kind, Path(f.path), f.media_type, f.uid) for f in written]
        return results, {k: round(v, 4) for k, v in seconds.items()}, summarize(pred)


DICOM_KINDS = RESULT_KINDS


def result_file(kind: str, path: Path, media_type: str, sop_uid: str) -> ResultFile:
    """The record of one written file; a DICOM result (``seg``, ``sr``, ``sc``) also carries
    its own Study/Series/SOP Class UIDs, read from the file's header (what DICOMweb
    searches answer from)."""
    if kind not in DICOM_KINDS:
        return ResultFile(kind, str(path), media_type, sop_uid)
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
        "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"])
    return ResultFile(kind, str(path), media_type, sop_uid or str(ds.get("SOPInstanceUID", "")),
                      study_uid=str(ds.get("StudyInstanceUID", "")),
                      series_uid=str(ds.get("SeriesInstanceUID", "")),
                      sop_class_uid=str(ds.get("SOPClassUID", "")))


def read_job_input(job: LeasedJob, reader: Callable[[list[Path], Any], Any], limits: Any = None) -> Any:
    """The job's input as an :class:`~medinfer.io.Image`, read by the routed model
    (:meth:`medinfer.tasks.Predictor.read`: one file, a 3D series whose instances come in
    array order, a perfusion model's 4D series, or a whole slide: its thumbnail with the
    slide file as ``source``). ``limits``: the service's
    :class:`~medinfer.io.limits.ReadLimits` (checked from the headers first).

    Raises:
        InputError: unreadable files or inconsistent geometry (named by the reader).
    """
    paths = [Path(p) for p, _ in job.files]
    if not paths:
        raise InputError(Path("."), f"job {job.id} has no input files")
    if {f for _, f in job.files} != {"dicom"}:
        paths = paths[:1]  # an uploaded picture or NIfTI is one file
    return reader(paths, limits)


def summarize(pred: Any) -> dict[str, object]:
    """The prediction's summary for the job record (no timings; scores rounded, the findings
    above threshold sorted)."""
    out = {k: v for k, v in pred.summary().items() if k != "seconds"}
    if pred.scores:
        out["scores"] = {k: round(float(v), 4) for k, v in pred.scores.items()}
        out["findings"] = sorted(pred.positive)
    return out


def run_worker(config: ServeConfig, name: str | None = None,
               stop: threading.Event | Any | None = None, poll_seconds: float = 0.2,
               parent_pid: int | None = None, ready: Any | None = None) -> None:
    """Loop until ``stop`` is set: process jobs, wait ``poll_seconds`` when there are none.

    Suitable as a ``multiprocessing`` target (spawn): opens its own store connection.

    Args:
        parent_pid: the service process that spawned this worker. The worker ends when
            that process is gone, even killed by SIGKILL: on Linux the kernel sends it
            SIGTERM (``PR_SET_PDEATHSIG``); everywhere, the loop compares ``os.getppid()``
            with it before each lease, so an orphan leases no new job (it finishes the one
            it holds). A spawned worker ignores SIGINT: Ctrl-C reaches the whole process
            group, and the service stops its workers itself (``stop``, then SIGTERM).
        ready: an event (``multiprocessing.Event``) set once the models are warmed up
            (:meth:`Worker.warm_up`), before the first lease: the service's ``/health``
            counts ready workers.
    """
    import multiprocessing
    import signal
    import sys

    from medinfer.serve.logs import setup_logging

    def orphaned() -> bool:
        return parent_pid is not None and os.getppid() != parent_pid

    if orphaned():
        return  # the service died before this worker started
    if parent_pid is not None and sys.platform.startswith("linux"):
        import ctypes

        try:  # PR_SET_PDEATHSIG (1); the signal comes when the spawning *thread* ends
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
        except (OSError, AttributeError):
            pass  # the getppid() check below still ends the loop
    if (parent_pid is not None and multiprocessing.parent_process() is not None
            and threading.current_thread() is threading.main_thread()):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(config.log_format)
    store = Store(config.db_url)
    worker = Worker(config, store, name)
    started = time.perf_counter()
    worker.warm_up()
    if ready is not None:
        ready.set()
    log.info("worker started", extra={"worker": worker.name,
                                      "warm_up_s": round(time.perf_counter() - started, 3)})
    try:
        while (stop is None or not stop.is_set()) and not orphaned():
            if not worker.run_once():
                if stop is None:
                    time.sleep(poll_seconds)
                else:
                    stop.wait(poll_seconds)
    finally:
        store.close()
    log.info("worker stopped", extra={"worker": worker.name,
                                      "reason": "service gone" if orphaned() else "stop"})
