"""Receiving: validate, (de-identify,) write with fsync, then record — in that order.

A front door acknowledges an instance only after :func:`accept_dataset` returned,
so anything acknowledged is on disk and in the job store and survives a crash.
File names are hashed UIDs (no patient-identifying values on disk paths).

Validation is bounded in memory (``limits`` in the config): an instance's or image's
decoded size is checked from its header before any pixel is decoded, a Deflated
instance is inflated in chunks before pydicom inflates it whole, pixel data is decoded
one frame at a time, and an uploaded volume is checked from its header without being
decoded here (the worker decodes it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from medinfer.errors import InputError
from medinfer.io.dicom import (
    check_decoded_size,
    check_deflated,
    check_deflated_stream,
    check_frames,
)
from medinfer.io.limits import ReadLimits
from medinfer.serve.config import RouteConfig, ServeConfig
from medinfer.serve.logs import hash_uid
from medinfer.serve.routing import route_series
from medinfer.serve.slides import slide_suffix, verify_slide
from medinfer.serve.store import InstanceInfo, Store

__all__ = ["DEFAULT_LIMITS", "Receiver", "check_dimse_dataset", "check_pixels", "detect_format",
           "read_dicom_bytes"]

log = logging.getLogger(__name__)

#: The limits of a default config (:class:`medinfer.serve.config.LimitsConfig`), for callers
#: that do not pass the configured ones.
DEFAULT_LIMITS = ReadLimits()


def detect_format(data: bytes) -> str:
    """``dicom`` | ``png`` | ``jpeg`` | ``nifti`` from the first bytes, else ``unknown``."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x1f\x8b") or (len(data) >= 348 and data[344:348] in (b"n+1\0", b"ni1\0")):
        return "nifti"
    return "unknown"


def _fsync_write(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the folder).

    ``data`` is the bytes, or a function writing them to the open file (no copy in memory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _ViewReader(io.RawIOBase):
    """A read-only binary file over a buffer, without copying the buffer (unlike BytesIO
    given a memoryview): a STOW-RS part is parsed where it lies in the request body."""

    def __init__(self, data: bytes | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """One copy of what is read (``RawIOBase.read`` would make two)."""
        end = len(self._view) if size is None or size < 0 else self._pos + size
        out = bytes(self._view[self._pos:end])
        self._pos += len(out)
        return out

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(buffer), len(self._view) - self._pos))
        buffer[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


def read_dicom_bytes(data: bytes | memoryview, label: str,
                     limits: ReadLimits | None = DEFAULT_LIMITS) -> Dataset:
    """Parse a DICOM Part 10 file from memory; InputError naming ``label`` when it is not one.

    Args:
        data: the file's bytes (a memoryview is parsed in place, not copied whole).
        label: names the file in errors.
        limits: a Deflated dataset is refused when it would inflate past
            ``limits.max_bytes`` (checked in chunks before pydicom inflates it whole).
    """
    fh = _ViewReader(data)
    check_deflated(label, fh, limits)
    try:
        return dcmread(fh)
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError ...)
        raise InputError(label, f"not a readable DICOM file: {exc}") from exc


def check_dimse_dataset(raw: BinaryIO, transfer_syntax: str, label: str,
                        limits: ReadLimits | None = DEFAULT_LIMITS) -> None:
    """Refuse a received C-STORE dataset (encoded, not yet decoded) that is a Deflate bomb.

    pynetdicom's ``event.dataset`` inflates a Deflated dataset whole; call this on
    ``event.request.DataSet`` with ``event.context.transfer_syntax`` first: the header is
    checked from the stream's first inflated MiB, then the whole is inflated in chunks,
    keeping nothing (:func:`medinfer.io.dicom.check_deflated_stream`). A no-op for other
    transfer syntaxes; the stream's position is kept.

    Raises:
        InputError: over ``limits``.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        check_deflated_stream(label, raw, limits)


def check_pixels(ds: Dataset, label: str, limits: ReadLimits | None = DEFAULT_LIMITS) -> None:
    """Refuse an instance whose pixels are over ``limits`` (from the header) or cannot be
    decoded (decoding one frame at a time, keeping none), so it is refused now, not in a
    worker.

    Args:
        ds: the instance.
        label: names it in errors.
        limits: the service's limits (``Receiver.limits``); the default config's when not
            given, None for no limit.
    """
    if "PixelData" not in ds:
        return
    check_decoded_size(label, ds, limits)
    check_frames(label, ds)


def _digest(path: Path) -> str:
    """SHA-256 hex of a stored file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _info(ds: Dataset, label: str, fmt: str = "dicom") -> InstanceInfo:
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if not str(ds.get(k, "") or "")]
    if missing:
        raise InputError(label, f"DICOM instance lacks {', '.join(missing)}")
    return InstanceInfo(
        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        series_description=str(ds.get("SeriesDescription", "") or ""), format=fmt)


@dataclass
class Receiver:
    """Stores what the front doors receive and closes studies into routed jobs.

    Args:
        config: the service config (storage folder, de-identification, routes).
        store: the job store.
    """

    config: ServeConfig
    store: Store

    @property
    def incoming(self) -> Path:
        return self.config.storage / "incoming"

    @property
    def limits(self) -> ReadLimits:
        """The configured read limits (``limits`` in the config)."""
        return self.config.limits.read_limits()

    def accept_dataset(self, ds: Dataset, source: str, sender: str, label: str = "instance") -> int:
        """Validate, de-identify (if configured), write and record one DICOM dataset.

        An instance of a study closed less than ``late_seconds`` ago rejoins it; an
        identical re-sent one changes nothing (:meth:`Store.add_instance`).

        Returns:
            The id of the receiving study it joined.

        Raises:
            InputError: missing UIDs, pixel data over the configured limits (from the
                header, before decoding) or undecodable pixel data.
        """
        info = _info(ds, label)
        check_pixels(ds, label, self.limits)
        if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = ds.file_meta if getattr(ds, "file_meta", None) else FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = (self.incoming / hash_uid(info.study_uid) / hash_uid(info.series_uid)
                / f"{hash_uid(info.sop_uid)}.dcm")
        _fsync_write(path, lambda f: ds.save_as(f, enforce_file_format=True))
        # The digest tells a re-sent identical instance (no change) from a changed one.
        # The same UID has the same path, so a changed one has replaced the old file.
        study_id = self.store.add_instance(info, path, source, sender, digest=_digest(path),
                                           late_seconds=self.config.late_seconds)
        log.debug("stored instance", extra={"study": hash_uid(info.study_uid),
                                            "sop": hash_uid(info.sop_uid), "source": source})
        return study_id


    def accept_image_bytes(self, data: bytes, fmt: str, sender: str, label: str,
                           modality: str = "") -> int:
        """Store an uploaded PNG/JPEG/NIfTI image as a one-instance study.

        The file is checked with :func:`medinfer.io.readers.verify_image` before it is
        recorded, so an unreadable file or one over the configured limits is refused
        here, not in a worker; a NIfTI volume is checked from its header and streamed
        through, not decoded in this process.
        """
        from medinfer.io.readers import verify_image

        suffix = {"png": ".png", "jpeg": ".jpg", "nifti": ".nii.gz" if data[:2] == b"\x1f\x8b"
                  else ".nii"}[fmt]
        uid = generate_uid()
        path = self.incoming / "uploads" / f"{hash_uid(uid)}{suffix}"
        _fsync_write(path, data)
        try:
            verify_image(path, self.limits)
        except InputError as exc:
            path.unlink(missing_ok=True)
            raise InputError(label, exc.reason) from exc
        default = {"png": "XC", "jpeg": "XC", "nifti": "OT"}[fmt]
        info = InstanceInfo(study_uid=uid, series_uid=uid, sop_uid=uid,
                            modality=modality or default, format=fmt)
        return self.store.add_instance(info, path, "upload", sender)

    @property
    def slides(self) -> Path:
        """Where uploaded whole-slide images are kept (and streamed to while they arrive)."""
        return self.incoming / "slides"

    def accept_slide(self, part: Path, label: str, sender: str) -> int:
        """Record a whole-slide image already streamed to ``part`` (under :attr:`slides`)
        as a one-instance study of format ``slide`` (modality ``SM``).

        The slide reader opens it and decodes a small thumbnail first
        (:func:`~medinfer.serve.slides.verify_slide`), so a file that is not a slide, or
        a damaged one, is refused here, not failed in a worker. The kept file is named by
        a hashed UID (never the client's name) with the slide's suffix, which tells the
        task's reader that it is a slide.

        Args:
            part: the received bytes (fsynced); moved into place, or removed when refused.
            label: the client's file name (errors name it).
            sender: the token's name.

        Returns:
            The study id.

        Raises:
            InputError: naming ``label``: not a slide suffix, or unreadable as a slide.
        """
        try:
            suffix = slide_suffix(label)
            verify_slide(part, label)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        uid = generate_uid()
        path = self.slides / f"{hash_uid(uid)}{suffix}"
        os.replace(part, path)
        _fsync_dir(path.parent)
        info = InstanceInfo(study_uid=uid, series_uid=uid, sop_uid=uid, modality="SM",
                            format="slide")
        return self.store.add_instance(info, path, "upload", sender)

    def close_study(self, study_id: int, route: RouteConfig | None = None) -> list[int]:
        """Route a study's series and queue jobs (see :meth:`Store.finalize_study`);
        ``route``: consider that route only (a slide upload naming one), not every one."""
        from medinfer.serve.models import Study

        hold = self.config.late_seconds if self.config.hold_results else 0.0
        routes = self.config.routes if route is None else [route]
        jobs = self.store.finalize_study(study_id, lambda s: route_series(routes, s), hold)
        with self.store.session() as s:
            study = s.get(Study, study_id)
            source, sender, state = study.source, study.sender, study.state
        if source != "upload":  # REST uploads are audited by the API with the token's name
            actor = f"ae:{sender}" if source == "dimse" else sender
            self.store.audit(actor, "receive", f"study:{study_id}",
                             f"{source}, {state}, jobs {jobs}")
        log.info("study complete", extra={"study_id": study_id, "jobs": jobs, "state": state})
        return jobs

    def close_quiet_studies(self) -> list[int]:
        """Close every study that received nothing for ``quiet_seconds``; returns new job ids."""
        jobs: list[int] = []
        for study_id in self.store.quiet_studies(self.config.quiet_seconds):
            jobs += self.close_study(study_id)
        return jobs
