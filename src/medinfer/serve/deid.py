"""De-identified copies of results for destinations outside the hospital, by dicognito.

The stored results keep the source study's patient and UIDs, so that the clinical PACS
files them in the study they came from. A destination with ``deidentify: true`` (an
outside service) is sent a de-identified *copy* instead, made by
`dicognito <https://github.com/blairconrad/dicognito>`_ (MIT), which replaces names, IDs,
UIDs (but SOP Class and Transfer Syntax UIDs), addresses and equipment identifiers with
pseudonyms, shifts every date and time by one offset, and sets DeidentificationMethod
``DICOGNITO``; private attributes are removed here too (PS3.15 Basic Profile: X for
private tags). PatientIdentityRemoved is set YES only where no text can be burned into
the pixels: by dicognito when BurnedInAnnotation is NO (an SC overlay keeps its source's
value), and here for a SEG (its pixels are the mask) or an SR (no pixels). An SC of a
source that does not say NO is sent without that claim: pixel cleaning is not done.

Every pseudonym is a keyed hash of the original value with the secret in
``<storage>/deid.key`` (created on first use, readable by the service only): the SEG,
SR and SC of one study, and the source instances they reference, get the same
pseudonymous StudyInstanceUID, SeriesInstanceUID and referenced SOP Instance UIDs on
every send and after a restart, so the outside service's objects stay linked to each
other (what the Retain UIDs Option gives inside the hospital) without revealing the
source UIDs. Deleting the key makes later copies unlinkable to earlier ones.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread

__all__ = ["METHOD", "deidentified_copy", "load_key"]

#: What the audit table records as the method of a de-identified send.
METHOD = "dicognito"

#: Results whose pixels (if any) cannot carry text burned into a source image.
_NO_SOURCE_PIXELS = ("SEG", "SR")

_lock = threading.Lock()  # creating the key file once when lanes start together


def load_key(storage: Path) -> str:
    """The secret that keys the pseudonyms, from ``storage/deid.key`` (created if missing).

    Args:
        storage: the service's storage folder.

    Returns:
        The secret as 64 hexadecimal characters.
    """
    path = Path(storage) / "deid.key"
    with _lock:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it meanwhile
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
        return path.read_text().strip()


@contextmanager
def deidentified_copy(path: Path, key: str) -> Iterator[Path]:
    """A de-identified copy of the DICOM file ``path``, in a temporary file while in use.

    Args:
        path: a stored result (SEG, SR or SC); it is read, never changed.
        key: the secret from :func:`load_key`; the same key gives the same pseudonyms.

    Yields:
        The path of the copy (deleted when the block ends).
    """
    from dicognito.anonymizer import Anonymizer

    ds = dcmread(path)
    Anonymizer(seed=key).anonymize(ds)
    ds.remove_private_tags()
    if ds.get("Modality") in _NO_SOURCE_PIXELS:
        ds.PatientIdentityRemoved = "YES"
    fd, name = tempfile.mkstemp(suffix=".dcm", prefix="deid-")
    os.close(fd)
    try:
        ds.save_as(name, enforce_file_format=True)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
