"""Structured logs without patient-identifying values.

DICOM UIDs can identify a patient's study, so they never appear in logs, file
names or metrics in clear: :func:`hash_uid` gives a short stable pseudonym that
still lets an operator correlate log lines (and, knowing the UID, find them).

Libraries log and warn with attribute values: highdicom's person-name warning quotes
PatientName, pydicom's "Invalid value for VR DA" quotes PatientBirthDate, and
exception messages (``Unable to convert '1970-01-31' to 'DA' object``) end up in
tracebacks. :class:`PatientDataFilter`, installed on the service's log handler by
:func:`setup_logging` (which also routes Python warnings to logging), therefore

* replaces the text of every record from pydicom, highdicom and ``py.warnings``
  with a marker naming its source and a digest of the text (equal texts, equal
  digests), since no pattern can tell a patient's name from other words;
* formats tracebacks from frames (file, line, code) and exception types, each
  exception's message made safe by :func:`describe_failure`.

:func:`describe_failure` is also what a failed job records and the API shows: a
stable class and a message without DICOM attribute values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import traceback
from dataclasses import dataclass

from medinfer.errors import MedinferError

__all__ = ["Failure", "JsonFormatter", "PatientDataFilter", "describe_failure", "hash_uid",
           "redact", "safe_traceback", "setup_logging"]

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def hash_uid(uid: str) -> str:
    """First 16 hex digits of SHA-256 of ``uid`` (``"-"`` for an empty UID)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else "-"


# Quoted text (libraries quote the values they complain about; an apostrophe inside a
# word, as in "doesn't", opens no quote) and runs of digits with separators (dates,
# times, UIDs, IDs) that do not stand inside a word or a path.
_QUOTED = re.compile(r"(?<!\w)'[^'\n]*'(?!\w)|(?<!\w)\"[^\"\n]*\"(?!\w)")
_NUMBERS = re.compile(r"(?<![\w/.@])\d[\d.\-:^]{4,}\d(?![\w/])")
WITHHELD = "<withheld>"


def redact(text: str) -> str:
    """``text`` with quoted substrings and date/UID-like digit runs replaced by ``<withheld>``.

    A safety net for messages medinfer writes around library text; it cannot find an
    unquoted name, so library text itself is withheld whole (:class:`PatientDataFilter`).

    Example:
        >>> redact("Unable to convert '1970-01-31' to 'DA' object")
        'Unable to convert <withheld> to <withheld> object'
    """
    return _NUMBERS.sub(WITHHELD, _QUOTED.sub(WITHHELD, text))


# Exception types that say the input (or the code path it takes) is wrong: the same job
# fails the same way on every attempt, so it is not retried. Everything else (OSError,
# MemoryError, RuntimeError such as CUDA out of memory, database errors) may pass.
_DETERMINISTIC = (MedinferError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                  NotImplementedError, ArithmeticError)
_DICOM_LIBRARIES = ("pydicom", "highdicom")


@dataclass(frozen=True)
class Failure:
    """What a failure may say about itself: a stable class and a message free of DICOM values.

    Attributes:
        kind: ``InvalidDicomAttribute`` for bad DICOM data met in pydicom/highdicom,
            else the exception's type name (``InputError``, ``OSError`` ...).
        message: safe to store, show through the API and log.
        retryable: False when another attempt would fail the same way.
    """

    kind: str
    message: str
    retryable: bool

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in out):
        out.append(cur)
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return out


def _library_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """Frames of the exception chain inside pydicom/highdicom, innermost first."""
    frames = [f for e in _chain(exc) for f in reversed(traceback.extract_tb(e.__traceback__))]
    return [f for f in frames if any(f"/{lib}/" in f.filename for lib in _DICOM_LIBRARIES)]


def _attribute_named(frames: list[traceback.FrameSummary]) -> str | None:
    """The first DICOM keyword in the source lines of ``frames`` (e.g. highdicom's
    ``self.PatientBirthDate = DA(patient_birth_date)``), or None."""
    from pydicom.datadict import tag_for_keyword

    for frame in frames:
        for word in re.findall(r"\b[A-Z][A-Za-z0-9]{2,}\b", frame.line or ""):
            if tag_for_keyword(word) is not None:
                return word
    return None


def describe_failure(exc: BaseException) -> Failure:
    """Classify an exception and say what it is without the values it may quote.

    Bad DICOM data rejected inside pydicom/highdicom (a ``ValueError`` such as
    ``Unable to convert '1970-01-31' to 'DA' object``) becomes ``InvalidDicomAttribute:
    invalid DICOM attribute PatientBirthDate (value withheld)``; other messages keep
    their text with quoted values and date/UID-like numbers withheld (:func:`redact`).

    Args:
        exc: the exception a job attempt (or anything logged) ended with.

    Returns:
        The :class:`Failure`; ``retryable`` is False for medinfer's own errors
        (input, artifact, backend) and for value/type/attribute/key/index errors.
    """
    retryable = not isinstance(exc, _DETERMINISTIC)
    frames = _library_frames(exc)
    if frames and not isinstance(exc, MedinferError) and isinstance(exc, _DETERMINISTIC):
        keyword = _attribute_named(frames)
        what = f"attribute {keyword}" if keyword else "data"
        return Failure("InvalidDicomAttribute", f"invalid DICOM {what} (value withheld)", False)
    return Failure(type(exc).__name__, redact(str(exc)) or "(no message)", retryable)


def safe_traceback(exc: BaseException) -> str:
    """A traceback of ``exc`` and its causes: frames as Python prints them, but each
    exception's message replaced by its :func:`describe_failure` message."""
    parts = []
    for e in reversed(_chain(exc)):
        tb = "".join(traceback.format_list(traceback.extract_tb(e.__traceback__)))
        parts.append(f"Traceback (most recent call last):\n{tb}"
                     f"{type(e).__qualname__}: {describe_failure(e).message}")
    return "\n\nwhich led to:\n\n".join(parts)


# Loggers whose records are withheld whole; ``py.warnings`` carries every captured warning.
_WITHHELD_LOGGERS = ("pydicom", "highdicom", "py.warnings")
_WARNING_TEXT = re.compile(r"^(?P<file>[^\n]*?):(?P<line>\d+): (?P<category>\w+): ")
_MARKER = "message withheld (may carry patient data)"


def _withheld_logger(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in _WITHHELD_LOGGERS)


class PatientDataFilter(logging.Filter):
    """Make records safe before any handler formats them (see the module docstring).

    Records of pydicom, highdicom and captured warnings keep their level and logger but
    their text becomes ``"<source> message withheld (may carry patient data)"`` with a
    ``digest`` field (16 hex digits of SHA-256 of the text); a warning keeps its category
    and where it was raised. A record's exception becomes a :func:`safe_traceback` text.
    Attach it to handlers (a handler's filters see every record it gets, propagated ones
    included); it always lets the record through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        done = isinstance(record.msg, str) and record.msg.endswith(_MARKER)  # a second handler
        if _withheld_logger(record.name) and not done:
            text = record.getMessage()
            source = record.name
            m = _WARNING_TEXT.match(text) if record.name == "py.warnings" else None
            if m:
                where = "/".join(m["file"].split("/")[-2:])
                source = f"{m['category']} at {where}:{m['line']}"
            record.msg = f"{source} {_MARKER}"
            record.args = ()
            record.digest = hash_uid(text)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = safe_traceback(record.exc_info[1])
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra={...}`` fields.

    Tracebacks are :func:`safe_traceback` texts (exception messages made safe).
    """

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]  # logging's name
        return safe_traceback(ei[1]) if ei and ei[1] is not None else ""

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
        elif record.exc_text:  # made safe by PatientDataFilter
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure the root logger: JSON lines on stderr, or rich text for a terminal.

    Python warnings are routed to logging (``py.warnings``) and every record passes
    :class:`PatientDataFilter` on the handler, so no library's text reaches the log.
    """
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    else:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False)
    handler.addFilter(PatientDataFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.captureWarnings(True)
    for name in ("medinfer", "uvicorn.error"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
