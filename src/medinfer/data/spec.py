"""The preprocessing spec carried by a model artifact (pydantic only: no torch, no MONAI)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Preprocessing(BaseModel):
    """How raw pixels become a network input.

    Attributes:
        size: (H, W) the network sees, e.g. (224, 224).
        scale: multiplier applied to raw intensities (1/255 for 8-bit images).
        mean: per-channel mean subtracted after scaling.
        std: per-channel std divided after subtracting the mean.
        channels: channels the network expects (3 = RGB).
        mask_threshold: raw mask value above which a pixel is foreground (JPEG masks are noisy).
        intensity: ``"scale"`` (``x * scale``, then mean/std) or ``"zscore"`` (per image, over
            its nonzero voxels: MR intensities have no fixed unit).
        overlap: volumes (3D ``size``) run through a sliding window of ``size`` with this
            overlap instead of being resized.
        window: volumes: raw intensities are clipped to ``(low, high)`` before scaling (a CT
            window in HU, e.g. ``(-200, 300)`` for the abdomen); None: no clipping.
    """

    model_config = ConfigDict(frozen=True)

    size: tuple[int, ...] = (224, 224)
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: int = 3
    mask_threshold: int = 127
    intensity: str = "scale"
    overlap: float = 0.25
    window: tuple[float, float] | None = None
