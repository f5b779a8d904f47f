"""Structured logs without patient-identifying values.

DICOM UIDs can identify a patient's study, so they never appear in logs, file
names or metrics in clear: :func:`hash_uid` gives a short stable pseudonym that
still lets an operator correlate log lines (and, knowing the UID, find them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

__all__ = ["JsonFormatter", "hash_uid", "setup_logging"]

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def hash_uid(uid: str) -> str:
    """First 16 hex digits of SHA-256 of ``uid`` (``"-"`` for an empty UID)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else "-"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra={...}`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure the root logger: JSON lines on stderr, or rich text for a terminal."""
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    else:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("medinfer", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
