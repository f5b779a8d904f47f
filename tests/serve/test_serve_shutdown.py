"""Stopping ``medinfer serve``: SIGTERM / SIGINT stop every worker and exit 0; a worker whose
service died (SIGKILL) exits on its own and leases nothing more."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from serve_helpers import free_port

from medinfer.serve.store import InstanceInfo, Store

WORKERS = 2


def write_config(tmp_path: Path) -> Path:
    """Two workers, DIMSE and HTTP on free ports, SQLite under ``tmp_path``; no routes (the
    workers start without opening a model)."""
    raw = {"storage": str(tmp_path / "storage"), "workers": WORKERS, "log_format": "text",
           "http": {"port": free_port()},
           "dicom": {"port": free_port(), "allowed_calling_aets": ["STORESCU"]}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.05)


def workers_of(proc: subprocess.Popen) -> list[psutil.Process]:
    """The service's live worker processes (spawned children, not the resource tracker)."""
    out = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (``is_running`` also tells a reused pid apart); zombies are gone."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def start_service(tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """``medinfer serve --config`` as users start it, once its HTTP port answers and its
    workers run; returns the process and all its children at that time."""
    config = write_config(tmp_path)
    port = yaml.safe_load(config.read_text())["http"]["port"]
    medinfer = Path(sys.executable).parent / "medinfer"
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115  (closed with the test's tmp_path)
    proc = subprocess.Popen([str(medinfer), "serve", "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (tmp_path / "service.log").read_text()
        try:
            healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False
        return healthy and len(workers_of(proc)) == WORKERS

    try:
        wait_until(up, 60, "HTTP answers and both workers run")
        children = psutil.Process(proc.pid).children(recursive=True)
    except BaseException:
        kill_all(proc, [])
        raise
    return proc, children


def kill_all(proc: subprocess.Popen, children: list[psutil.Process]) -> None:
    """Leave nothing behind, whatever the test saw."""
    if proc.poll() is None:
        children = children + psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(10)
    for p in alive(children):
        p.kill()


@pytest.mark.slow  # starts the service and its two workers (~5 s)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_service_and_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    proc, children = start_service(tmp_path)
    try:
        assert len(children) > WORKERS - 1
        proc.send_signal(sig)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the service did not exit within 15 s of " + sig.name)
        log = (tmp_path / "service.log").read_text()
        assert code == 0, log
        assert "service stopped" in log
        # the resource tracker ends when it reads EOF from the exited service: a moment later
        wait_until(lambda: not alive(children), 5, f"children {alive(children)} exit")
    finally:
        kill_all(proc, children)


@pytest.mark.slow  # starts the service and its two workers (~5 s)
def test_workers_exit_when_the_service_is_killed(tmp_path: Path) -> None:
    proc, children = start_service(tmp_path)
    workers = workers_of(proc)
    try:
        assert len(workers) == WORKERS
        proc.send_signal(signal.SIGKILL)  # no stop code runs: the workers must notice alone
        proc.wait(10)
        wait_until(lambda: not alive(workers), 10, f"workers {alive(workers)} exit")
    finally:
        kill_all(proc, children)


def test_worker_leases_nothing_once_its_parent_is_gone(make_config, monkeypatch) -> None:
    """The portable check (no prctl): the parent dies while the worker warms up; the queued
    job stays queued for a live worker, and the orphan returns."""
    from medinfer.serve import logs, worker

    cfg = make_config(workers=1)
    store = Store(cfg.db_url)
    study = store.add_instance(InstanceInfo("1.2.3", "1.2.3.1", "1.2.3.1.1", modality="MR"),
                               "/nonexistent.dcm", "dimse", "STORESCU")
    [job] = store.finalize_study(study, lambda info: ("mr", "/nonexistent-artifact"))
    parent, gone = os.getppid(), threading.Event()
    monkeypatch.setattr(sys, "platform", "darwin")  # the fallback path: poll getppid()
    monkeypatch.setattr(os, "getppid", lambda: 1 if gone.is_set() else parent)
    monkeypatch.setattr(logs, "setup_logging", lambda fmt: None)  # pytest keeps its handlers
    monkeypatch.setattr(worker.Worker, "warm_up", lambda self: gone.set())
    stop = threading.Event()
    guard = threading.Timer(20, stop.set)  # a worker that ignores its parent still ends
    guard.start()
    t0 = time.monotonic()
    try:
        worker.run_worker(cfg, "orphan", stop, poll_seconds=0.05, parent_pid=parent)
    finally:
        guard.cancel()
    assert not stop.is_set() and time.monotonic() - t0 < 10
    assert store.job_counts() == {"queued": 1}, f"job {job} was leased by an orphan"
    store.close()
