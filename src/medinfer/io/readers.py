"""Read images and masks from PNG/JPEG, NIfTI and DICOM into channel-first arrays.

Every failure caused by the input (missing file, wrong format, truncated or
corrupt data, undecodable compression) is raised as
:class:`~medinfer.errors.InputError` naming the offending path; library
exceptions never escape. nibabel and pydicom are imported lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from medinfer.errors import InputError
from medinfer.io.dicom import NotDicomError, reason
from medinfer.io.image import Image
from medinfer.io.series import read_dicom_file, read_dicom_series

__all__ = ["DEFAULT_SUFFIXES", "list_images", "read_dicom_series", "read_image", "read_mask"]

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


def read_image(path: str | Path) -> Image:
    """Read a 2D picture, a NIfTI volume or DICOM data.

    Dispatch: ``.png/.jpg/.jpeg/.bmp/.tif`` -> Pillow; ``.nii/.nii.gz`` ->
    nibabel; ``.dcm`` (or a file with DICOM content) -> one DICOM file;
    a folder -> :func:`read_dicom_series`.

    Args:
        path: file or folder.

    Returns:
        PNG/JPEG: ``(C, H, W)``, C = 3 for colour (palette/RGBA/CMYK converted
        to RGB, alpha dropped) or 1 for greyscale (uint8, or uint16/int32 for
        16-bit PNG); spacing (1, 1), identity geometry, frame "pixel".
        NIfTI: ``(C, X, Y, Z)`` as stored (not reoriented); C = 1 for 3D data,
        the 4th (and later) axes become channels; spacing from the header
        zooms, origin/direction from the affine, frame "RAS".
        DICOM: see :mod:`medinfer.io.series`.

    Raises:
        InputError: missing path, unknown or corrupt file.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "folder":
        return read_dicom_series(path)
    if kind == "pil":
        return _read_pil(path)
    if kind == "nifti":
        return _read_nifti(path)
    if kind == "dicom":
        return read_dicom_file(path)
    try:
        return read_dicom_file(path)
    except NotDicomError as exc:
        raise InputError(
            path, "unrecognised file format (expected PNG, JPEG, NIfTI or DICOM)"
        ) from exc


def _open_pil(path: Path) -> tuple[PILImage.Image, str]:
    """Open and fully decode a picture with Pillow, raising InputError.

    Returns:
        (decoded image, upper-case format name such as "PNG" or "JPEG").
    """
    try:
        with PILImage.open(path) as im:
            im.load()
            return im.copy(), (im.format or path.suffix.lstrip(".")).upper()
    except UnidentifiedImageError as exc:
        raise InputError(path, "not a valid image file (unknown or corrupt format)") from exc
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


def _read_pil(path: Path) -> Image:
    """PNG/JPEG/... -> ``(C, H, W)`` Image with 1 mm pixels and identity geometry."""
    im, fmt = _open_pil(path)
    arr = _pil_to_array(im)
    meta = {"format": fmt.lower(), "frame": "pixel", "mode": im.mode}
    return Image(arr, (1.0, 1.0), (0.0, 0.0), np.eye(2), path, meta)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...], bool]:
    """Load a NIfTI file fully into memory.

    Returns:
        (data as stored, 4x4 affine, header zooms, whether scl_slope/inter applied).
    """
    import nibabel as nib

    try:
        img = nib.load(path, mmap=False)
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


def _read_nifti(path: Path) -> Image:
    """NIfTI -> ``(C, X, Y, Z)`` (or ``(1, X, Y)``) Image in RAS, as stored (not reoriented)."""
    data, affine, zooms, scaled = _load_nifti(path)
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
