"""Write masks, images and overlays (PNG via Pillow, NIfTI via nibabel).

Parent folders are created. Any failure to write (unwritable location, a file
where a folder should be, full disk) is raised as
:class:`~medinfer.errors.InputError` naming the target path. Wrong array
shapes or arguments are programming errors and raise ``ValueError``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from medinfer.errors import InputError
from medinfer.io.dicom import reason
from medinfer.io.image import Image

__all__ = [
    "mask_boundary",
    "overlay",
    "ras_affine",
    "write_image_nifti",
    "write_mask_nifti",
    "write_mask_png",
    "write_overlay_png",
]

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _prepare_target(path: str | Path) -> Path:
    """Create the parent folder of ``path``; raise InputError if impossible."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create the parent folder ({reason(exc)})") from exc
    if path.is_dir():
        raise InputError(path, "is a folder; expected a file path")
    return path


def _as_2d_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) or (1, H, W) mask of any dtype -> (H, W) bool (nonzero = foreground)."""
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {arr.shape}")
    return arr != 0


def _save_png(array: np.ndarray, path: str | Path) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG."""
    path = _prepare_target(path)
    try:
        PILImage.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    except Exception as exc:
        raise InputError(path, f"cannot write PNG ({reason(exc)})") from exc
    return path


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write a binary mask as an 8-bit greyscale PNG with values 0 and 255.

    Args:
        mask: ``(H, W)`` (or ``(1, H, W)``) bool or integer array; nonzero is
            foreground.
        path: target file.

    Returns:
        The written path.
    """
    return _save_png(_as_2d_mask(mask).astype(np.uint8) * 255, path)


def ras_affine(image: Image) -> np.ndarray:
    """4x4 voxel-to-RAS affine of an image (2D images get a unit third axis).

    DICOM images (``meta["frame"] == "LPS"``) are converted to RAS; all
    other frames are taken as RAS already.

    Args:
        image: the image.

    Returns:
        ``(4, 4)`` float64 affine in mm for the spatial axes of ``image``.
    """
    n = image.ndim_spatial
    affine = np.eye(4)
    affine[:n, :n] = image.affine[:n, :n]
    affine[:n, 3] = image.affine[:n, n]
    if image.meta.get("frame") == "LPS":
        affine = _LPS_TO_RAS @ affine
    return affine


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Save ``data`` with ``affine`` (scanner-based sform/qform, mm units)."""
    import nibabel as nib

    path = _prepare_target(path)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        in_range = data.size == 0 or (data.min() >= info.min and data.max() <= info.max)
        data = data.astype(np.int32 if in_range else np.float64)
    try:
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm")
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        nib.save(img, path)
    except Exception as exc:
        raise InputError(path, f"cannot write NIfTI ({reason(exc)})") from exc
    return path


def write_mask_nifti(
    mask: np.ndarray, path: str | Path, reference: Image | np.ndarray | None = None
) -> Path:
    """Write a mask or label map as a uint8 NIfTI file.

    Args:
        mask: spatial-shaped array (e.g. ``(X, Y, Z)``), or with a leading
            axis of size 1: an integer label map keeps its values (0..255),
            a boolean or float mask becomes {0, 1} (nonzero is foreground).
        path: target ``.nii`` or ``.nii.gz`` file.
        reference: an :class:`Image` whose geometry the mask shares (its
            spatial shape must match), a ``(4, 4)`` voxel-to-RAS affine, or
            None for the identity.

    Returns:
        The written path.
    """
    arr = np.asarray(mask)
    if isinstance(reference, Image):
        if arr.shape == (1, *reference.spatial_shape):
            arr = arr[0]
        if arr.shape != reference.spatial_shape:
            raise ValueError(
                f"mask shape {arr.shape} does not match image spatial shape "
                f"{reference.spatial_shape}"
            )
        affine = ras_affine(reference)
    else:
        affine = np.eye(4) if reference is None else np.asarray(reference, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must have shape (4, 4), got {affine.shape}")
    labels = arr.astype(np.uint8) if np.issubdtype(arr.dtype, np.integer) else (arr != 0).astype(np.uint8)
    return _save_nifti(labels, affine, path)


def write_image_nifti(image: Image, path: str | Path) -> Path:
    """Write an Image as NIfTI in RAS.

    Layout written: one channel -> the spatial array itself; C channels ->
    channels on the last axis, ``(X, Y, Z, C)`` (2D: ``(H, W, 1, C)``), which
    :func:`~medinfer.io.readers.read_image` reads back as ``(C, ...)``.

    Args:
        image: the image; LPS (DICOM) geometry is converted to RAS.
        path: target ``.nii`` or ``.nii.gz`` file.

    Returns:
        The written path.
    """
    arr = image.array
    if image.num_channels == 1:
        data = arr[0]
    else:
        data = np.moveaxis(arr, 0, -1)
        if image.ndim_spatial == 2:
            data = data[:, :, None, :]
    return _save_nifti(np.ascontiguousarray(data), ras_affine(image), path)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W), (1, H, W) or (3, H, W) -> (H, W, 3) uint8; non-uint8 is min-max scaled."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (H, W), (1, H, W) or (3, H, W), got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = np.nan_to_num((arr - lo) * scale).clip(0, 255).round().astype(np.uint8)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    return np.moveaxis(arr, 0, -1)


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour (image border counts as background).

    Args:
        mask: ``(H, W)`` bool.

    Returns:
        ``(H, W)`` bool boundary.
    """
    p = np.pad(mask, 1, constant_values=False)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 0, 0),
    alpha: float = 0.45,
    contour: bool = True,
) -> np.ndarray:
    """Blend a mask onto an image and optionally draw its boundary.

    Args:
        image: ``(C, H, W)`` with C = 1 or 3, or ``(H, W)``; uint8 is used
            as is, other dtypes are min-max scaled to 0..255.
        mask: ``(H, W)`` (or ``(1, H, W)``); nonzero is foreground.
        color: RGB colour of the mask, 0..255 each.
        alpha: mask opacity in [0, 1].
        contour: draw the mask boundary in ``color`` at full opacity.

    Returns:
        ``(H, W, 3)`` uint8 RGB picture.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb_color = np.asarray(color, dtype=np.float32)
    if rgb_color.shape != (3,) or np.any(rgb_color < 0) or np.any(rgb_color > 255):
        raise ValueError(f"color must be 3 values in 0..255, got {color}")
    rgb = to_rgb_uint8(image)
    fg = _as_2d_mask(mask)
    if fg.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {fg.shape} does not match image shape {rgb.shape[:2]}")
    out = rgb.astype(np.float32)
    out[fg] = (1.0 - alpha) * out[fg] + alpha * rgb_color
    if contour:
        out[mask_boundary(fg)] = rgb_color
    return out.round().clip(0, 255).astype(np.uint8)


def write_overlay_png(image: np.ndarray, mask: np.ndarray, path: str | Path, **kw: Any) -> Path:
    """Write :func:`overlay` of ``image`` and ``mask`` as an RGB PNG.

    Args:
        image: see :func:`overlay`.
        mask: see :func:`overlay`.
        path: target file.
        **kw: ``color``, ``alpha``, ``contour`` for :func:`overlay`.

    Returns:
        The written path.
    """
    return _save_png(overlay(image, mask, **kw), path)
