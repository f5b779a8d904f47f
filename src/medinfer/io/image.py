"""The in-memory image type every medinfer reader returns.

An :class:`Image` is always channel-first: ``array`` has shape
``(C, *spatial)`` where ``spatial`` is ``(H, W)`` for 2D pictures and
``(X, Y, Z)`` (NIfTI) or ``(rows, cols, slices)`` (DICOM) for volumes. The
geometry maps a voxel index ``i`` (spatial axes only, zero-based) to a world
position in millimetres::

    world = origin + direction @ (spacing * i)

in the frame named by ``meta["frame"]``: ``"RAS"`` for NIfTI, ``"LPS"`` (DICOM
patient coordinates) for DICOM and ``"pixel"`` for PNG/JPEG, whose geometry is
the identity with 1 mm pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Image"]


@dataclass(frozen=True, eq=False)
class Image:
    """A channel-first image or volume with its spatial geometry.

    The dataclass is frozen (fields cannot be reassigned; use
    :func:`dataclasses.replace`), but the numpy arrays themselves stay writable.

    Attributes:
        array: pixel data, shape ``(C, *spatial)`` with ``C`` channels (1 for
            greyscale, 3 for RGB, T for 4D NIfTI) and 2 or 3 spatial axes.
        spacing: voxel size in mm, one value per spatial axis.
        origin: world position (mm) of the voxel with index 0 on every axis.
        direction: ``(D, D)`` matrix, ``D`` = number of spatial axes; column
            ``k`` is the unit world direction of spatial axis ``k``.
        source: the file or folder the image was read from, if any.
        meta: small source metadata (``format``, ``frame``, ``modality``,
            ``series_uid``, ``rescale_applied``, ...).
        instances: DICOM only: the source datasets (pydicom, pixel data dropped) in array
            order: ``instances[k]`` is slice ``k`` of a series (one dataset for a single or
            multi-frame file). Derived objects (SEG, SR) are built from them, so they never
            need a second reading or sorting of the files.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    source: Path | None = None
    meta: dict[str, object] = field(default_factory=dict)
    instances: tuple[Any, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim < 3:
            raise ValueError(
                f"Image.array must be channel-first with >= 2 spatial axes, got shape {array.shape}"
            )
        n = array.ndim - 1
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = np.asarray(self.direction, dtype=np.float64)
        if len(spacing) != n:
            raise ValueError(f"spacing has {len(spacing)} values, expected {n} for {array.shape}")
        if len(origin) != n:
            raise ValueError(f"origin has {len(origin)} values, expected {n} for {array.shape}")
        if direction.shape != (n, n):
            raise ValueError(f"direction has shape {direction.shape}, expected {(n, n)}")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be finite and > 0, got {spacing}")
        if not (np.all(np.isfinite(origin)) and np.all(np.isfinite(direction))):
            raise ValueError("origin and direction must be finite")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        if self.source is not None:
            object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "meta", dict(self.meta))
        object.__setattr__(self, "instances", tuple(self.instances))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Sizes of the spatial axes, i.e. ``array.shape[1:]``."""
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def ndim_spatial(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.array.ndim - 1

    @property
    def num_channels(self) -> int:
        """Number of channels, i.e. ``array.shape[0]``."""
        return int(self.array.shape[0])

    @property
    def affine(self) -> np.ndarray:
        """Homogeneous index-to-world matrix, shape ``(D+1, D+1)``, in ``meta["frame"]``.

        ``affine[:D, :D] = direction * spacing`` (column ``k`` scaled by
        ``spacing[k]``) and ``affine[:D, D] = origin``.
        """
        n = self.ndim_spatial
        out = np.eye(n + 1)
        out[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        out[:n, n] = self.origin
        return out

    def __repr__(self) -> str:
        src = self.source.name if self.source is not None else None
        return (
            f"Image(shape={self.array.shape}, dtype={self.array.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, source={src!r})"
        )
