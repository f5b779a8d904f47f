"""API token authentication: ``Authorization: Bearer <token>`` or the web page's cookie.

Scopes: ``read`` (jobs, results, metrics, web page), ``submit`` (uploads, STOW-RS),
``admin`` (tokens; implies the other two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from medinfer.serve.store import Store

__all__ = ["COOKIE", "Principal", "require"]

COOKIE = "medinfer_token"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE)


def require(scope: str) -> Callable[[Request], Principal]:
    """FastAPI dependency: the caller's :class:`Principal`, or 401/403."""
    def dependency(request: Request) -> Principal:
        store: Store = request.app.state.store
        token = _token(request)
        found = store.check_token(token) if token else None
        if found is None:
            raise HTTPException(401, "missing or invalid API token",
                                headers={"WWW-Authenticate": "Bearer"})
        who = Principal(*found)
        if not who.allows(scope):
            raise HTTPException(403, f"token {who.name!r} lacks the {scope!r} scope")
        return who

    dependency.__name__ = f"require_{scope}"
    return dependency
