"""Fixtures for medinfer.io tests: a tiny DICOM slice writer (staged data: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def write_dicom_slice() -> Callable[..., Path]:
    """Return a writer of a small uncompressed MR slice (pydicom)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    def write(
        path: Path,
        pixels: np.ndarray,
        *,
        position: Sequence[float] | None = (0.0, 0.0, 0.0),
        orientation: Sequence[float] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        instance: int | None = 1,
        series_uid: str = "1.2.826.0.1.3680043.8.498.1",
        spacing: Sequence[float] = (0.5, 0.8),
        slope: float | None = None,
        intercept: float | None = None,
        with_meta: bool = True,
    ) -> Path:
        ds = Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        if instance is not None:
            ds.InstanceNumber = instance
        rows, cols = pixels.shape
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.PixelSpacing = [float(s) for s in spacing]
        if position is not None:
            ds.ImagePositionPatient = [float(v) for v in position]
        if orientation is not None:
            ds.ImageOrientationPatient = [float(v) for v in orientation]
        if slope is not None:
            ds.RescaleSlope = slope
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        if with_meta:
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.save_as(path, enforce_file_format=True)
        else:
            ds.save_as(path, implicit_vr=True, little_endian=True)
        return path

    return write
