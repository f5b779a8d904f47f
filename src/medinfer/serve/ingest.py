"""Receiving: validate, (de-identify,) write with fsync, then record — in that order.

A front door acknowledges an instance only after :func:`accept_dataset` returned,
so anything acknowledged is on disk and in the job store and survives a crash.
File names are hashed UIDs (no patient-identifying values on disk paths).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medinfer.errors import InputError
from medinfer.serve.config import ServeConfig
from medinfer.serve.deid import deidentify
from medinfer.serve.logs import hash_uid
from medinfer.serve.routing import route_series
from medinfer.serve.store import InstanceInfo, Store

__all__ = ["Receiver", "check_pixels", "detect_format", "read_dicom_bytes"]

log = logging.getLogger(__name__)


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


def _fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_dicom_bytes(data: bytes, label: str) -> Dataset:
    """Parse a DICOM Part 10 file from memory; InputError naming ``label`` when it is not one."""
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises many types (InvalidDicomError, EOFError ...)
        raise InputError(label, f"not a readable DICOM file: {exc}") from exc


def check_pixels(ds: Dataset, label: str) -> None:
    """Decode the pixel data once, so a truncated or undecodable instance is refused now."""
    if "PixelData" not in ds:
        return
    try:
        ds.pixel_array  # noqa: B018  (decoding is the check)
    except Exception as exc:  # pydicom raises ValueError, AttributeError, NotImplementedError ...
        raise InputError(label, f"pixel data cannot be decoded (truncated or damaged): {exc}") \
            from exc


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

    def accept_dataset(self, ds: Dataset, source: str, sender: str, label: str = "instance") -> int:
        """Validate, de-identify (if configured), write and record one DICOM dataset.

        Returns:
            The id of the receiving study it joined.

        Raises:
            InputError: missing UIDs or undecodable pixel data.
        """
        info = _info(ds, label)
        check_pixels(ds, label)
        if self.config.deidentify:
            deidentify(ds)
        if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = ds.file_meta if getattr(ds, "file_meta", None) else FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        path = (self.incoming / hash_uid(info.study_uid) / hash_uid(info.series_uid)
                / f"{hash_uid(info.sop_uid)}.dcm")
        _fsync_write(path, buf.getvalue())
        study_id = self.store.add_instance(info, path, source, sender)
        log.debug("stored instance", extra={"study": hash_uid(info.study_uid),
                                            "sop": hash_uid(info.sop_uid), "source": source})
        return study_id


    def accept_image_bytes(self, data: bytes, fmt: str, sender: str, label: str,
                           modality: str = "") -> int:
        """Store an uploaded PNG/JPEG/NIfTI image as a one-instance study.

        The image is read back with :func:`medinfer.io.read_image` before it is
        recorded, so an unreadable file is refused here, not in a worker.
        """
        from medinfer.io import read_image

        suffix = {"png": ".png", "jpeg": ".jpg", "nifti": ".nii.gz" if data[:2] == b"\x1f\x8b"
                  else ".nii"}[fmt]
        uid = generate_uid()
        path = self.incoming / "uploads" / f"{hash_uid(uid)}{suffix}"
        _fsync_write(path, data)
        try:
            read_image(path)
        except InputError as exc:
            path.unlink(missing_ok=True)
            raise InputError(label, exc.reason) from exc
        default = {"png": "XC", "jpeg": "XC", "nifti": "OT"}[fmt]
        info = InstanceInfo(study_uid=uid, series_uid=uid, sop_uid=uid,
                            modality=modality or default, format=fmt)
        return self.store.add_instance(info, path, "upload", sender)

    def close_study(self, study_id: int) -> list[int]:
        """Route a study's series and queue jobs (see :meth:`Store.finalize_study`)."""
        from medinfer.serve.models import Study

        jobs = self.store.finalize_study(study_id,
                                         lambda s: route_series(self.config.routes, s))
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
