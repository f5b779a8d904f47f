"""Fixtures for medinfer.io tests: a tiny DICOM slice writer (staged data: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from medinfer.data.synthetic import dicom_slice, write_dicom


@pytest.fixture
def write_dicom_slice() -> Callable[..., Path]:
    """Return a writer of a small uncompressed MR slice (:mod:`medinfer.data.synthetic`)."""

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
        ds = dicom_slice(pixels, position=position, orientation=orientation, instance=instance,
                         series_uid=series_uid, spacing=spacing, slope=slope, intercept=intercept)
        return write_dicom(ds, path, file_meta=with_meta)

    return write
