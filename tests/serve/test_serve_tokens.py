"""API tokens: expiry, revocation, listing (never the secret), web sessions that are not
the token, logout, and the migration of an older database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.serve.api import create_app
from medinfer.serve.auth import COOKIE
from medinfer.serve.config import load_config
from medinfer.serve.ingest import Receiver
from medinfer.serve.store import Store

ROUTES = [("get", "/api/v1/jobs"), ("get", "/api/v1/jobs/1"), ("get", "/metrics"),
          ("get", "/api/v1/results/1"), ("post", "/api/v1/studies"),
          ("post", "/dicom-web/studies"), ("get", "/ui/")]


@pytest.fixture
def client(make_config, store: Store) -> TestClient:
    cfg = make_config()
    return TestClient(create_app(cfg, store, Receiver(cfg, store)))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused_everywhere(client: TestClient, **kw: object) -> None:
    for method, url in ROUTES:
        r = getattr(client, method)(url, **kw)
        assert r.status_code == 401, (url, r.status_code)


def test_revoked_and_expired_tokens_are_refused_on_every_route(client, store, clock) -> None:
    revoked = store.create_token("gone", ["admin"])
    expiring = store.create_token("temp", ["admin"], expires_days=1)
    assert client.get("/api/v1/jobs", headers=_auth(expiring)).status_code == 200
    assert store.revoke_token("gone") == 1
    _refused_everywhere(client, headers=_auth(revoked))
    clock.advance(86401)
    assert store.check_token(expiring) is None
    _refused_everywhere(client, headers=_auth(expiring))


def test_list_shows_use_and_expiry_but_never_the_secret(store, clock) -> None:
    token = store.create_token("pacs", ["submit"], expires_days=2)
    store.check_token(token)
    (info,) = store.list_tokens()
    assert (info.name, info.scopes, info.revoked) == ("pacs", ("submit",), False)
    assert info.expires_at == pytest.approx(info.created_at + 2 * 86400)
    assert info.last_used_at == pytest.approx(clock())
    assert token not in repr(info)
    with pytest.raises(ValueError, match="expires_days"):
        store.create_token("bad", ["read"], expires_days=0)


def test_web_cookie_is_a_session_not_the_token_and_logout_ends_it(client, store) -> None:
    token = store.create_token("nurse", ["read"])
    r = client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    sid = client.cookies.get(COOKIE)
    assert sid and sid != token and token not in cookie
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/ui/").status_code == 200
    assert client.get("/ui/logout", follow_redirects=False).status_code == 303
    client.cookies.set(COOKIE, sid)  # a stolen cookie replayed after logout
    assert client.get("/ui/").status_code == 401
    assert store.check_token(token) is not None  # logout ends the session, not the token


def test_revoking_a_token_ends_its_web_sessions(client, store) -> None:
    token = store.create_token("nurse", ["read"])
    client.post("/ui/login", data={"token": token}, follow_redirects=False)
    assert client.get("/ui/").status_code == 200
    store.revoke_token("nurse")
    _refused_everywhere(client)


def test_cli_lists_and_revokes_tokens(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("storage: data\n")
    runner = CliRunner()
    base = ["serve", "token"]
    out = runner.invoke(app, [*base, "create", "--config", str(config), "--name", "bot",
                              "--scope", "submit", "--expires-days", "30"])
    assert out.exit_code == 0, out.output
    token = out.output.strip().splitlines()[-1]
    listed = runner.invoke(app, [*base, "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert "bot" in listed.output and "submit" in listed.output and "active" in listed.output
    assert token not in listed.output
    out = runner.invoke(app, [*base, "revoke", "--config", str(config), "--name", "bot"])
    assert out.exit_code == 0, out.output
    store = Store(load_config(config).db_url)
    assert store.check_token(token) is None
    store.close()
    assert "revoked" in runner.invoke(app, [*base, "list", "--config", str(config)]).output
    again = runner.invoke(app, [*base, "revoke", "--config", str(config), "--name", "bot"])
    assert again.exit_code == 2 and "no active token" in again.output


def test_older_database_gains_the_token_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the tokens table of the first release
        conn.execute("CREATE TABLE tokens (id INTEGER PRIMARY KEY, name VARCHAR(128), "
                     "token_hash VARCHAR(64) UNIQUE, scopes VARCHAR(64), created_at FLOAT, "
                     "revoked BOOLEAN)")
    for _ in range(2):  # idempotent
        store = Store(f"sqlite:///{db}")
        token = store.create_token("old", ["read"])
        assert store.check_token(token) == ("old", frozenset({"read"}))
        store.close()
    with sqlite3.connect(db) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tokens)")}
    assert {"expires_at", "last_used_at"} <= columns
