"""Splitting a STOW-RS ``multipart/related`` body (RFC 2046) into its parts.

FastAPI's form parsing handles ``multipart/form-data`` only; STOW-RS bodies are
``multipart/related; type="application/dicom"`` with one DICOM file per part.

The parts are views into the body, not copies: a body of N bytes costs N bytes however
many parts it holds (the previous ``bytes.split`` held about three copies at once). The
body may also be an ``mmap`` of a file the request was spooled to, so that the parts are
views of the page cache and the body is never in memory at all.
"""

from __future__ import annotations

import re
from mmap import mmap

__all__ = ["boundary_of", "split_multipart"]


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type, or None."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


Buffer = bytes | bytearray | mmap  # supports find() and slicing, and memoryview()


def _at(body: Buffer, token: bytes, start: int, end: int) -> bool:
    """``body[start:end]`` starts with ``token`` (mmap has no startswith)."""
    return end - start >= len(token) and body[start:start + len(token)] == token


def _delimiters(body: Buffer, delimiter: bytes) -> list[int]:
    """Offsets of every ``delimiter`` in ``body``."""
    out, at = [], body.find(delimiter)
    while at >= 0:
        out.append(at)
        at = body.find(delimiter, at + len(delimiter))
    return out


def _headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return headers


def split_multipart(body: Buffer, boundary: str) -> list[tuple[dict[str, str], memoryview]]:
    """Parts of a multipart body as (lower-cased headers, payload).

    Args:
        body: the whole request body (bytes, or an mmap of the file it was spooled to).
        boundary: the Content-Type's ``boundary`` parameter.

    Returns:
        One ``(headers, payload)`` per part; each payload is a read-only memoryview into
        ``body`` (no copy; ``bytes(payload)`` makes one).

    Raises:
        ValueError: no opening delimiter or a part without a header/body separator.
    """
    delimiter = b"--" + boundary.encode()
    view = memoryview(body).toreadonly()
    cuts = _delimiters(body, delimiter)
    if len(cuts) < 2:
        raise ValueError("no multipart parts found for the given boundary")
    parts = []
    for start, end in zip(cuts, [*cuts[1:], len(body)]):
        start += len(delimiter)
        if _at(body, b"--", start, end):  # closing delimiter
            break
        if _at(body, b"\r\n", start, end):
            start += 2
        if _at(body, b"\r\n", start, end):  # a part without headers
            headers, payload = {}, start + 2
        else:
            sep = body.find(b"\r\n\r\n", start, end)
            if sep < 0:
                raise ValueError("multipart part without a header/body separator")
            headers, payload = _headers(bytes(body[start:sep])), sep + 4
        if end - payload >= 2 and body[end - 2:end] == b"\r\n":  # CRLF before the delimiter
            end -= 2
        parts.append((headers, view[payload:end]))
    return parts
