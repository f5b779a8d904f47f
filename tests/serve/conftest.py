"""Fixtures for medinfer.serve tests: configs in tmp_path, a store on a fake clock, a receiver."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from postgres_server import PostgresServer, require_postgres

from medinfer.serve.config import ServeConfig
from medinfer.serve.ingest import Receiver
from medinfer.serve.store import Store


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., ServeConfig]:
    """ServeConfig with storage in tmp_path, MR and PNG routes to a fake artifact path."""

    def make(**kw: object) -> ServeConfig:
        base: dict[str, object] = {
            "storage": tmp_path / "storage", "quiet_seconds": 0.3, "lease_seconds": 5,
            "log_format": "text",
            "routes": [
                {"name": "mr", "artifact": str(tmp_path / "art-mr"), "match": {"modality": ["MR"]}},
                {"name": "cxr", "artifact": str(tmp_path / "art-cxr"),
                 "match": {"modality": ["DX"]}},
                {"name": "png", "artifact": str(tmp_path / "art-png"),
                 "match": {"formats": ["png", "jpeg"]}},
            ],
        }
        base.update(kw)
        return ServeConfig.model_validate(base)

    return make


class FakeClock:
    """A ``Store`` clock: real time plus what the test skipped ahead with :meth:`advance`.

    Quiet times and leases then end at once instead of after a sleep, while threads and
    processes that only need time to pass still see it pass.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> FakeClock:
    """The ``store`` fixture's clock: ``clock.advance(s)`` instead of ``time.sleep(s)``."""
    return FakeClock()


@pytest.fixture
def store(make_config, clock: FakeClock) -> Store:
    s = Store(make_config().db_url, clock=clock)
    yield s
    s.close()


@pytest.fixture
def receiver(make_config, store) -> Receiver:
    return Receiver(make_config(), store)


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    """A PostgreSQL server for this test session (started on first use)."""
    with PostgresServer(require_postgres()) as pg:
        yield pg


@pytest.fixture
def pg_url(pg_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """URL of a new, empty PostgreSQL database for this test."""
    return pg_server.new_database("t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The job store's database, once on SQLite and once on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")
