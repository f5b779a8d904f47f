"""Warm start: a worker opens, compiles and runs every routed model before its first lease,
and the service's /health counts the workers that are ready."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import make_artifact

from medinfer.serve import worker as worker_module
from medinfer.serve.service import Service
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker, open_predictor


@pytest.fixture(scope="module")
def picture_artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "polyp-test", dims=2)


class Counting:
    """A predictor factory that records what is opened and what each model is run on."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.inputs: list[tuple[int, ...]] = []

    def __call__(self, artifact: str):  # type: ignore[no-untyped-def]
        self.opened.append(artifact)
        real = open_predictor(artifact)
        calls = self.inputs

        class Spy:
            artifact = real.artifact

            def read(self, paths, limits=None):  # type: ignore[no-untyped-def]
                return real.read(paths, limits)

            def warm_up(self) -> None:  # the real warm-up's input, through this spy's predict
                self.predict(real.task.blank_input())

            def predict(self, image):  # type: ignore[no-untyped-def]
                calls.append(tuple(np.asarray(image.array).shape))
                return real.predict(image)

            def write(self, *args):  # type: ignore[no-untyped-def]
                return real.write(*args)

        return Spy()


def test_warm_up_opens_and_runs_each_routed_model_once_before_any_job(
        make_config, store: Store, picture_artifact: Path, tmp_path: Path) -> None:
    cfg = make_config(routes=[
        {"name": "png", "artifact": str(picture_artifact), "match": {"formats": ["png"]}},
        {"name": "missing", "artifact": str(tmp_path / "nowhere"), "match": {"modality": ["MR"]}}])
    factory = Counting()
    w = Worker(cfg, store, "w", factory)
    w.warm_up()  # the missing model is logged and skipped, not fatal
    assert factory.opened == [str(picture_artifact), str(tmp_path / "nowhere")]
    assert factory.inputs == [(3, 32, 32)]  # one blank input of the model's own size
    assert w.predictor(str(picture_artifact)) is w.predictor(str(picture_artifact))
    assert factory.opened.count(str(picture_artifact)) == 1  # jobs reuse the warm model


def test_worker_is_warm_before_its_first_lease(make_config, monkeypatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(Worker, "warm_up", lambda self: events.append("warm_up"))
    monkeypatch.setattr(Store, "lease_job", lambda self, *a: events.append("lease") or None)

    class Ready:
        def set(self) -> None:
            events.append("ready")

    class StopAfterOneLease:
        def is_set(self) -> bool:
            return "lease" in events

        def wait(self, _seconds: float) -> None:
            return None

    worker_module.run_worker(make_config(), "w", StopAfterOneLease(), ready=Ready())
    assert events == ["warm_up", "ready", "lease"]


@pytest.mark.slow  # a spawned worker process loading a real model
def test_health_counts_a_worker_ready_once_warmed_up(make_config, picture_artifact: Path,
                                                    tmp_path: Path) -> None:
    cfg = make_config(workers=1, routes=[
        {"name": "png", "artifact": str(picture_artifact), "match": {"formats": ["png"]}}])
    svc = Service(cfg, tick_seconds=0.1)
    try:
        svc.start_background()
        assert svc.worker_readiness() == {"configured": 1, "ready": 0}  # still warming up
        deadline = time.monotonic() + 90
        while svc.worker_readiness()["ready"] < 1:
            assert time.monotonic() < deadline, "worker never got ready"
            time.sleep(0.1)
        from fastapi.testclient import TestClient

        health = TestClient(svc.app()).get("/health").json()
        assert health["workers"] == {"configured": 1, "ready": 1}
        with svc.store.session() as s:  # ready without any job: warmed up at start
            from medinfer.serve.models import Job

            assert s.query(Job).count() == 0
    finally:
        svc.stop()
