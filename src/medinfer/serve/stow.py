"""Splitting a STOW-RS ``multipart/related`` body (RFC 2046) into its parts.

FastAPI's form parsing handles ``multipart/form-data`` only; STOW-RS bodies are
``multipart/related; type="application/dicom"`` with one DICOM file per part.
"""

from __future__ import annotations

import re

__all__ = ["boundary_of", "split_multipart"]


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type, or None."""
    m = re.search(r'boundary="?([^";]+)"?', content_type, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


def split_multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """Parts of a multipart body as (lower-cased headers, payload bytes).

    Raises:
        ValueError: no opening delimiter or a part without a header/body separator.
    """
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise ValueError("no multipart parts found for the given boundary")
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):  # closing delimiter
            break
        chunk = chunk.removeprefix(b"\r\n")
        if chunk.startswith(b"\r\n"):  # a part without headers
            parts.append(({}, chunk[2:].removesuffix(b"\r\n")))
            continue
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header/body separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        parts.append((headers, payload.removesuffix(b"\r\n")))
    return parts
