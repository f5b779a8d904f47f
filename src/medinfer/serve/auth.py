"""API token authentication: ``Authorization: Bearer <token>`` or the web page's session
cookie (a random session id the store maps to a token, never the token itself). A revoked
or expired token, or an ended or expired session, is refused (401) on every route.

Scopes: ``read`` (jobs, results, metrics, web page), ``submit`` (uploads, STOW-RS),
``admin`` (tokens; implies the other two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from medinfer.serve.store import Store

__all__ = ["COOKIE", "Principal", "require"]

COOKIE = "medinfer_session"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _caller(store: Store, request: Request) -> tuple[str, frozenset[str]] | None:
    """(token name, scopes) from the bearer token, else from the session cookie."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
        return store.check_token(token) if token else None
    sid = request.cookies.get(COOKIE)
    return store.check_web_session(sid) if sid else None


def require(scope: str) -> Callable[[Request], Principal]:
    """FastAPI dependency: the caller's :class:`Principal`, or 401/403."""
    def dependency(request: Request) -> Principal:
        found = _caller(request.app.state.store, request)
        if found is None:
            raise HTTPException(401, "missing or invalid API token",
                                headers={"WWW-Authenticate": "Bearer"})
        who = Principal(*found)
        if not who.allows(scope):
            raise HTTPException(403, f"token {who.name!r} lacks the {scope!r} scope")
        return who

    dependency.__name__ = f"require_{scope}"
    return dependency
