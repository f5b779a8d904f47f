"""Reading and writing medical images: PNG/JPEG, NIfTI and DICOM.

Every reader returns a channel-first :class:`Image` (``(C, H, W)`` or
``(C, X, Y, Z)``) with spacing, origin and direction; every failure caused
by the input is raised as :class:`~medinfer.errors.InputError` naming the
file. This package imports numpy and Pillow only; nibabel and pydicom are
loaded on first use, torch never.
"""

from __future__ import annotations

from medinfer.io.image import Image
from medinfer.io.readers import list_images, read_dicom_series, read_image, read_mask
from medinfer.io.writers import (
    overlay,
    write_image_nifti,
    write_mask_nifti,
    write_mask_png,
    write_overlay_png,
)

__all__ = [
    "Image",
    "list_images",
    "overlay",
    "read_dicom_series",
    "read_image",
    "read_mask",
    "write_image_nifti",
    "write_mask_nifti",
    "write_mask_png",
    "write_overlay_png",
]
