"""Whole-slide uploads (``POST /api/v1/slides``): one slide file streamed from the request
into the storage folder, opened by the slide reader, then recorded like any upload.

A slide can be gigabytes, so the ``multipart/form-data`` body is parsed as it arrives
(python-multipart, not the framework's form parser, which spools files to the system's
temporary folder first): the ``file`` part goes straight to a temporary file next to where
it will be kept, written a MiB at a time from a worker thread, so neither memory nor the
event loop carries it. The body's size is bounded by ``http.max_slide_upload_mb``
(:class:`~medinfer.serve.asgi.BodySizeLimit`). A part is refused from its headers, before
any of its bytes is stored, when its name does not end in a single-file slide suffix, and
a ``route`` field naming no route that takes slides is refused when it arrives; whatever
was written for a refused upload is removed.

A slide job is not DICOM: the worker runs the routed model's ``read`` -> ``predict`` ->
``write`` on it (the cytology task: heat-map PNG, cells GeoJSON, JSON summary), and none
of these results is sent to a PACS (destinations take DICOM kinds only).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from medinfer.errors import InputError
from medinfer.io.slides import MULTI_FILE_SUFFIXES, SINGLE_FILE_SUFFIXES, Slide
from medinfer.serve.config import RouteConfig
from medinfer.serve.routing import slide_routes

__all__ = ["SlideUpload", "pick_slide_route", "receive_slide", "slide_suffix", "verify_slide"]

VERIFY_SIDE = 256
"""The thumbnail read to check an uploaded slide (its smallest level of at least this side:
the end of the pyramid, where a file cut short loses its data first)."""
_FLUSH_BYTES = 1 << 20
_MAX_FIELD = 256


@dataclass(frozen=True)
class SlideUpload:
    """A slide as received: ``name`` the client's file name (errors name it), ``path`` the
    bytes in a temporary file under the storage folder, ``route`` the ``route`` field ("":
    none), ``size`` in bytes."""

    name: str
    path: Path
    route: str
    size: int


def slide_suffix(name: str) -> str:
    """The slide suffix of an uploaded file's name (lower case).

    Raises:
        InputError: naming ``name``, when it is not a single-file slide format.
    """
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in MULTI_FILE_SUFFIXES:
        raise InputError(name, f"a {suffix} slide is several files; upload one file of "
                               f"{', '.join(SINGLE_FILE_SUFFIXES)}")
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise InputError(name, "not a whole-slide image: the file name must end in one of "
                               + ", ".join(SINGLE_FILE_SUFFIXES))
    return suffix


def verify_slide(path: Path, label: str) -> None:
    """Open ``path`` with the slide reader and read a small thumbnail of it.

    Raises:
        InputError: naming ``label`` (the client's file name, not the stored one), when no
            slide backend opens the file or its smallest levels do not decode.
    """
    try:
        with Slide.open(path) as slide:
            slide.thumbnail(VERIFY_SIDE)
    except InputError as exc:
        raise InputError(label, exc.reason.replace(str(path), label)) from exc


def pick_slide_route(routes: list[RouteConfig], name: str) -> RouteConfig | None:
    """The route a slide upload names (None: ``name`` is empty, the first route taking
    slides whose rule matches is used).

    Raises:
        HTTPException: 422 when no route takes slides, or ``name`` is not one that does.
    """
    takers = slide_routes(routes)
    if not takers:
        raise HTTPException(422, "no route of this service takes whole-slide images (a "
                                 "route with match: {formats: [slide]})")
    if not name:
        return None
    for route in takers:
        if route.name == name:
            return route
    raise HTTPException(422, f"no route {name!r} takes whole-slide images; routes that "
                             f"do: {', '.join(r.name for r in takers)}")


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _base_name(raw: bytes) -> str:
    """The last component of a part's file name (clients may send a path), printable."""
    name = _text(raw).replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:255]


def _close_synced(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()


class _SlideForm:
    """python-multipart callbacks: the one ``file`` part to a temporary file in ``folder``,
    the optional ``route`` field (at most 256 bytes) checked by ``check_route`` as it ends."""

    def __init__(self, folder: Path, check_route: Callable[[str], object]) -> None:
        self.folder, self.check_route = folder, check_route
        self.name, self.route, self.size = "", "", 0
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._header, self._value, self._disposition = b"", b"", b""
        self._part, self._field = "", bytearray()
        self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _end(self) -> None:
        self.ended = True

    def _part_begin(self) -> None:
        self._disposition, self._part, self._field = b"", "", bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.strip().lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        field = _text(options.get(b"name", b""))
        if field == "file":
            if self.path is not None:
                raise HTTPException(422, "one slide per request: a second 'file' part")
            if b"filename" not in options:
                raise HTTPException(422, "the 'file' part carries no file name")
            self.name = _base_name(options[b"filename"])
            suffix = slide_suffix(self.name)  # refused before any byte is stored
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".part-", suffix=suffix)
            self.path, self._file = Path(tmp), os.fdopen(fd, "wb")
        elif field != "route":
            raise HTTPException(422, f"unknown form field {field!r}: expected one 'file' "
                                     "part and optionally 'route'")
        self._part = field

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._pending.append(data[start:end])
            self._pending_bytes += end - start
            self.size += end - start
        else:
            self._field += data[start:end]
            if len(self._field) > _MAX_FIELD:
                raise HTTPException(422, f"the 'route' field is longer than {_MAX_FIELD} bytes")

    def _part_end(self) -> None:
        if self._part == "route":
            self.route = _text(bytes(self._field)).strip()
            self.check_route(self.route)

    async def flush(self, force: bool = False) -> None:
        """Write what arrived of the file (once a MiB is waiting, or ``force``)."""
        due = force or self._pending_bytes >= _FLUSH_BYTES
        if self._file is not None and self._pending and due:
            data = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            await asyncio.to_thread(self._file.write, data)

    async def finish(self) -> SlideUpload:
        await self.flush(force=True)
        if not self.ended:
            raise HTTPException(400, "malformed multipart body: it ends before its closing "
                                     "boundary")
        if self._file is None or self.path is None:
            raise HTTPException(422, "no 'file' part in the form")
        f, self._file = self._file, None
        await asyncio.to_thread(_close_synced, f)
        if self.size == 0:
            raise InputError(self.name, "empty file")
        return SlideUpload(self.name, self.path, self.route, self.size)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


async def receive_slide(request: Request, folder: Path,
                        check_route: Callable[[str], object] = lambda name: None) -> SlideUpload:
    """Stream a slide upload's ``file`` part to a temporary file in ``folder`` (fsynced).

    Args:
        request: ``multipart/form-data`` with one ``file`` part and optionally ``route``.
        folder: where the file goes (the caller moves or removes it).
        check_route: called with the ``route`` field as soon as it is complete; raises to
            refuse the upload.

    Raises:
        InputError: naming the file: not a slide suffix, or empty.
        HTTPException: 415 not multipart, 400 malformed, 422 a missing, second or unknown
            part, 413 (from :class:`~medinfer.serve.asgi.BodySizeLimit`) too large.
            Nothing written for the upload is kept.
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "expected multipart/form-data with one 'file' part")
    boundary = parse_options_header(ctype)[1].get(b"boundary")
    if not boundary:
        raise HTTPException(400, "malformed multipart body: no boundary")
    form = _SlideForm(folder, check_route)
    parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await form.flush()
        parser.finalize()
        return await form.finish()
    except FormParserError as exc:
        form.discard()
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    except BaseException:
        form.discard()
        raise
