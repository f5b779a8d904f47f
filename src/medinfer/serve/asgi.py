"""Small pure-ASGI components (no BaseHTTPMiddleware): upload size limit, security headers
and access log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog", "BodySizeLimit", "SecurityHeaders"]

log = logging.getLogger("medinfer.serve.access")


class _TooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body crosses the limit.

    An HTTPException, so that whoever reads the body (FastAPI's form parsing turns
    other exceptions into 400) lets it through and the app answers 413 itself.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body larger than {max_bytes} bytes")


class BodySizeLimit:
    """Answer 413 to request bodies over ``max_bytes`` (``paths``: other limits for the
    requests to those exact paths, e.g. a larger one for whole-slide uploads).

    A declared Content-Length over the limit is refused before any byte is read;
    a chunked body is counted as it streams and refused when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int,
                 paths: Mapping[str, int] | None = None) -> None:
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope["path"], self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"request body larger than {limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


class SecurityHeaders:
    """Add security headers to every HTTP response (those the app set itself are kept).

    ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
    no-referrer`` and ``Cache-Control: no-store`` (jobs and results concern patients; no
    browser or proxy cache keeps them), and a Content-Security-Policy: the first of
    ``policies`` (path prefix -> policy) whose prefix starts the path, else ``default``.

    Args:
        app: the wrapped app.
        policies: e.g. ``{"/ui": "default-src 'none'; style-src 'sha256-...'"}``.
        default: the policy of every other response (API JSON, DICOM files).
    """

    def __init__(self, app: ASGIApp, policies: Mapping[str, str] | None = None,
                 default: str = API_CSP) -> None:
        self.app, self.policies, self.default = app, dict(policies or {}), default

    def _headers(self, path: str) -> list[tuple[bytes, bytes]]:
        policy = next((p for prefix, p in self.policies.items() if path.startswith(prefix)),
                      self.default)
        return [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
                (b"content-security-policy", policy.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self._headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLog:
    """One structured log line per HTTP request: method, path, status, milliseconds.

    Paths carry numeric ids only (never UIDs), and query strings are not logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            log.info("http", extra={"method": scope["method"], "path": scope["path"],
                                    "status": status,
                                    "ms": round((time.perf_counter() - t0) * 1000, 1)})
