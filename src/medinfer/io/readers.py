"""Read images and masks from PNG/JPEG, NIfTI and DICOM into channel-first arrays.

Every failure caused by the input (missing file, wrong format, truncated or
corrupt data, undecodable compression) is raised as
:class:`~medinfer.errors.InputError` naming the offending path; library
exceptions never escape. nibabel and pydicom are imported lazily.

Given a :class:`~medinfer.io.limits.ReadLimits`, every reader compares the size the
header announces with it before decoding any pixel, so a small compressed file cannot
expand into gigabytes (PNG/JPEG: Pillow's lazy open; NIfTI: nibabel's header; DICOM:
Rows x Columns x frames x samples x bytes).
"""

from __future__ import annotations

import gzip
import logging
import math
import warnings
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from medinfer.errors import InputError
from medinfer.io.dicom import NotDicomError, check_frames, load_dataset, reason
from medinfer.io.image import Image
from medinfer.io.limits import ReadLimits
from medinfer.io.series import read_dicom_file, read_dicom_series

__all__ = ["DEFAULT_SUFFIXES", "ReadLimits", "list_images", "read_dicom_series", "read_image",
           "read_mask", "verify_image"]

logger = logging.getLogger(__name__)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
DEFAULT_SUFFIXES = PIL_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    """Case-insensitive name-ending test (so '.nii.gz' works)."""
    name = path.name.lower()
    return any(name.endswith(s.lower()) for s in suffixes)


def _sniff(path: Path) -> str:
    """Guess the format of a file without a known suffix from its first bytes.

    Returns:
        'pil' (PNG/JPEG magic), 'nifti' (NIfTI-1 single-file magic), 'dicom'
        ('DICM' after the preamble) or 'unknown' (tried as DICOM without File
        Meta Information).
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise InputError(path, f"cannot open file ({reason(exc)})") from exc
    if head.startswith(_PNG_MAGIC) or head.startswith(_JPEG_MAGIC):
        return "pil"
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return "nifti"
    if head[128:132] == b"DICM":
        return "dicom"
    return "unknown"


def _kind(path: Path) -> str:
    """'folder', 'pil', 'nifti', 'dicom' or 'unknown', by suffix then content."""
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return "folder"
    if _has_suffix(path, NIFTI_SUFFIXES):
        return "nifti"
    if _has_suffix(path, PIL_SUFFIXES):
        return "pil"
    if _has_suffix(path, DICOM_SUFFIXES):
        return "dicom"
    return _sniff(path)


def read_image(path: str | Path, limits: ReadLimits | None = None) -> Image:
    """Read a 2D picture, a NIfTI volume or DICOM data.

    Dispatch: ``.png/.jpg/.jpeg/.bmp/.tif`` -> Pillow; ``.nii/.nii.gz`` ->
    nibabel; ``.dcm`` (or a file with DICOM content) -> one DICOM file;
    a folder -> :func:`read_dicom_series`.

    Args:
        path: file or folder.
        limits: refuse an input whose decoded size, as its header announces it, is
            over these limits, before decoding it (None: no limit).

    Returns:
        PNG/JPEG: ``(C, H, W)``, C = 3 for colour (palette/RGBA/CMYK converted
        to RGB, alpha dropped) or 1 for greyscale (uint8, or uint16/int32 for
        16-bit PNG); spacing (1, 1), identity geometry, frame "pixel".
        NIfTI: ``(C, X, Y, Z)`` as stored (not reoriented); C = 1 for 3D data,
        the 4th (and later) axes become channels; spacing from the header
        zooms, origin/direction from the affine, frame "RAS".
        DICOM: see :mod:`medinfer.io.series`.

    Raises:
        InputError: missing path, unknown or corrupt file, or over ``limits``.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "folder":
        return read_dicom_series(path, limits)
    if kind == "pil":
        return _read_pil(path, limits)
    if kind == "nifti":
        return _read_nifti(path, limits)
    if kind == "dicom":
        return read_dicom_file(path, limits)
    try:
        return read_dicom_file(path, limits)
    except NotDicomError as exc:
        raise InputError(
            path, "unrecognised file format (expected PNG, JPEG, NIfTI or DICOM)"
        ) from exc


def verify_image(path: str | Path, limits: ReadLimits | None = None) -> None:
    """Check that :func:`read_image` would read a file, without holding a decoded volume.

    For a service's front door: the input is refused now rather than in a worker, and
    the checking process stays small. PNG/JPEG are decoded (a 2D picture, at most
    ``limits.max_pixels``); a NIfTI file is checked from its header and its data
    streamed through (gzip CRC and length) without building the array; a DICOM file
    is checked from its header and decoded one frame at a time. A folder is read.

    Args:
        path: file or folder.
        limits: the read limits (None: no limit).

    Raises:
        InputError: as :func:`read_image` would.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "pil":
        _open_pil(path, limits)
    elif kind == "nifti":
        _verify_nifti(path, limits)
    elif kind == "folder":
        read_dicom_series(path, limits)
    else:
        try:
            check_frames(path, load_dataset(path, limits))
        except NotDicomError as exc:
            raise InputError(
                path, "unrecognised file format (expected PNG, JPEG, NIfTI or DICOM)"
            ) from exc


# Pillow modes _pil_to_array turns into RGB (3 samples), and bytes per sample by mode.
_TO_RGB = ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_MODE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I": 4, "F": 4}


def _check_pil_size(path: Path, im: PILImage.Image, limits: ReadLimits | None) -> None:
    """Refuse a lazily opened picture (header read, pixels not) over ``limits``."""
    if limits is None:
        return
    width, height = im.size
    samples = 3 if im.mode in _TO_RGB else len(im.getbands())
    limits.check(path, height, width, 1, samples, _MODE_BYTES.get(im.mode, 1))


def _open_pil(path: Path, limits: ReadLimits | None = None) -> tuple[PILImage.Image, str]:
    """Open a picture with Pillow, check its size from the header, then decode it.

    Pillow's own decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide
    setting left as it is) still applies: its error (over twice that many pixels) is
    refused as InputError like any limit, and so is its warning when warnings are errors
    and no ``limits`` are given; with ``limits`` its warning is silenced, since the check
    against ``limits`` comes next.

    Returns:
        (decoded image, upper-case format name such as "PNG" or "JPEG").
    """
    try:
        # With limits, our size check follows at once and names our limit. (The filter
        # is process-wide while it is set, as any catch_warnings.)
        with warnings.catch_warnings() if limits is not None else nullcontext():
            if limits is not None:
                warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(path)  # reads the header only
        with im:
            _check_pil_size(path, im, limits)
            im.load()
            return im.copy(), (im.format or path.suffix.lstrip(".")).upper()
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise InputError(path, "not a valid image file (unknown or corrupt format)") from exc
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as exc:
        raise InputError(path, f"too large to decode: {exc}") from exc
    except Exception as exc:
        raise InputError(path, f"cannot decode image ({reason(exc)})") from exc


def _pil_to_array(im: PILImage.Image) -> np.ndarray:
    """Pillow image -> channel-first array ``(C, H, W)``."""
    if im.mode in ("1", "LA", "La"):
        im = im.convert("L")
    elif im.mode in ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 2:
        return np.ascontiguousarray(arr[None])
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


def _read_pil(path: Path, limits: ReadLimits | None = None) -> Image:
    """PNG/JPEG/... -> ``(C, H, W)`` Image with 1 mm pixels and identity geometry."""
    im, fmt = _open_pil(path, limits)
    arr = _pil_to_array(im)
    meta = {"format": fmt.lower(), "frame": "pixel", "mode": im.mode}
    return Image(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), path, meta)


def _open_nifti(path: Path, limits: ReadLimits | None) -> Any:
    """nibabel's image of a NIfTI file, its header checked against ``limits`` (data unread)."""
    import nibabel as nib

    try:
        img = nib.load(path, mmap=False)  # reads the header; the data stays in the file
        shape = tuple(int(n) for n in img.shape)
        itemsize = img.get_data_dtype().itemsize
        slope = getattr(img.dataobj, "slope", 1.0)
        inter = getattr(img.dataobj, "inter", 0.0)
    except Exception as exc:
        raise InputError(path, f"cannot read NIfTI file ({reason(exc)})") from exc
    if limits is not None and shape:
        if (slope, inter) != (1.0, 0.0):  # scaled data comes out as float64
            itemsize = max(itemsize, 8)
        dims = shape + (1,) * (3 - min(len(shape), 3))
        limits.check(path, dims[0], dims[1], dims[2], math.prod(shape[3:]), itemsize)
    return img


def _verify_nifti(path: Path, limits: ReadLimits | None, chunk: int = 4 * 1024 * 1024) -> None:
    """Check a NIfTI file's header and that its data is all there, holding no volume.

    A ``.nii.gz`` is inflated in chunks to its end (gzip checks the CRC and length); an
    uncompressed file must be at least header offset + data bytes long.
    """
    img = _open_nifti(path, limits)
    try:
        need = int(img.dataobj.offset) + math.prod(img.shape) * img.get_data_dtype().itemsize
        if path.name.lower().endswith(".gz"):
            have = 0
            with gzip.open(path, "rb") as fh:
                while data := fh.read(chunk):
                    have += len(data)
        else:
            have = path.stat().st_size
    except Exception as exc:  # gzip.BadGzipFile, EOFError (truncated), zlib.error, OSError
        raise InputError(path, f"cannot read NIfTI file ({reason(exc)})") from exc
    if have < need:
        raise InputError(path, f"cannot read NIfTI file (truncated: {have} bytes of data and "
                               f"header, the header needs {need})")


def _load_nifti(path: Path, limits: ReadLimits | None = None
                ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], bool]:
    """Load a NIfTI file fully into memory (after checking its header against ``limits``).

    Returns:
        (data as stored, 4x4 affine, header zooms, whether scl_slope/inter applied).
    """
    img = _open_nifti(path, limits)
    try:
        data = np.asarray(img.dataobj)
        # nibabel moves scl_slope/scl_inter from the header into the array proxy
        slope = getattr(img.dataobj, "slope", None)
        inter = getattr(img.dataobj, "inter", None)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise InputError(path, f"cannot read NIfTI file ({reason(exc)})") from exc
    scaled = any(
        v is not None and np.isfinite(v) and float(v) != d for v, d in ((slope, 1.0), (inter, 0.0))
    )
    return data, affine, zooms, scaled


def _read_nifti(path: Path, limits: ReadLimits | None = None) -> Image:
    """NIfTI -> ``(C, X, Y, Z)`` (or ``(1, X, Y)``) Image in RAS, as stored (not reoriented)."""
    data, affine, zooms, scaled = _load_nifti(path, limits)
    if data.ndim < 2:
        raise InputError(path, f"NIfTI data has shape {data.shape}; need 2 or more axes")
    n = min(data.ndim, 3)
    if data.ndim > 3:
        data = np.moveaxis(data.reshape(*data.shape[:3], -1), -1, 0)
    else:
        data = data[None]
    if scaled and data.dtype == np.float64:
        data = data.astype(np.float32)
    cols = affine[:n, :n]
    norms = np.linalg.norm(cols, axis=0)
    if not np.all(norms > 0):
        raise InputError(path, "degenerate NIfTI affine (a zero-length axis)")
    spacing = zooms[:n]
    if len(spacing) != n or not all(z > 0 for z in spacing):
        logger.warning("%s: header zooms %s unusable; using the affine's axis lengths", path, zooms)
        spacing = tuple(float(v) for v in norms)
    meta = {"format": "nifti", "frame": "RAS", "rescale_applied": scaled}
    try:
        return Image(np.ascontiguousarray(data), spacing, tuple(affine[:n, 3]), cols / norms,
                     path, meta)
    except ValueError as exc:
        raise InputError(path, f"inconsistent NIfTI geometry ({exc})") from exc


def read_mask(path: str | Path, threshold: int = 127) -> np.ndarray:
    """Read a binary mask.

    Args:
        path: PNG/JPEG (any mode is converted to greyscale; palette masks use
            their index), NIfTI, or DICOM.
        threshold: PNG/JPEG pixels with value ``> threshold`` are foreground
            (JPEG masks carry compression noise near edges). A PNG whose
            values are all 0/1 is taken as a label map (``> 0``).

    Returns:
        Boolean array: ``(H, W)`` for pictures and single DICOM frames,
        ``(X, Y, Z)`` for NIfTI (``> 0``), the spatial shape of the single
        channel for DICOM (``> 0``).

    Raises:
        InputError: unreadable file, or a multi-channel NIfTI/DICOM mask.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "pil":
        return _pil_mask(path, threshold)
    image = _read_nifti(path) if kind == "nifti" else read_image(path)
    if image.num_channels != 1:
        raise InputError(path, f"mask has {image.num_channels} channels; expected 1")
    return np.asarray(image.array[0] > 0)


def _pil_mask(path: Path, threshold: int) -> np.ndarray:
    """Picture -> ``(H, W)`` bool (palette: index > 0; 0/1 PNG: > 0; else > threshold)."""
    im, fmt = _open_pil(path)
    if im.mode == "P":
        return np.asarray(im) > 0
    arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16", "F") else im)
    if arr.ndim != 2:
        raise InputError(path, f"mask has shape {arr.shape}; expected (H, W)")
    if fmt == "PNG" and arr.max(initial=0) <= 1:
        return arr > 0
    return arr > threshold


def list_images(
    folder: str | Path, suffixes: Iterable[str] = DEFAULT_SUFFIXES, recursive: bool = False
) -> list[Path]:
    """Image files in a folder, sorted by path.

    Args:
        folder: the folder to list.
        suffixes: accepted name endings, case-insensitive (``.nii.gz`` works).
        recursive: also search sub-folders.

    Returns:
        Sorted list of matching files (hidden files excluded).

    Raises:
        InputError: the folder is missing, not a folder, or holds no match.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such folder")
    if not folder.is_dir():
        raise InputError(folder, "not a folder")
    suffixes = tuple(suffixes)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(
        p for p in candidates
        if p.is_file() and not p.name.startswith(".") and _has_suffix(p, suffixes)
    )
    if not files:
        raise InputError(folder, f"no image files ({', '.join(suffixes)}) in folder")
    return files
