"""Heat-map figures: the image, its Grad-CAM overlay and its LRP overlay side by side."""

from __future__ import annotations

import io

import numpy as np

from medinfer.data.preprocess import resize_image, to_channels
from medinfer.io.writers import to_rgb_uint8


def display_rgb(image: np.ndarray) -> np.ndarray:
    """A raw (C, H, W) image as (H, W, 3) uint8 for display (min-max scaled unless uint8)."""
    arr = np.asarray(image)
    return to_rgb_uint8(to_channels(arr, 3) if arr.shape[0] != 1 else arr)


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` (H, W); float32."""
    if tuple(heat.shape) == tuple(size):
        return heat.astype(np.float32)
    return resize_image(heat[None].astype(np.float32), size)[0]


def heatmap_panel(rgb: np.ndarray, gradcam: np.ndarray, lrp: np.ndarray, title: str,
                  lrp_label: str = "LRP") -> bytes:
    """PNG bytes of three panels: image, Grad-CAM (jet, 0..max) and LRP (red +, blue -).

    Args:
        rgb: (H, W, 3) uint8 image.
        gradcam: (H, W) non-negative map; lrp: (H, W) signed relevance (same grid).
        title: figure title, e.g. "Effusion  p=0.71 (threshold 0.66)".
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3))
    g_max = float(np.max(gradcam)) or 1.0
    r_max = float(np.max(np.abs(lrp))) or 1.0
    axes[0].imshow(rgb)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(rgb)
    axes[1].imshow(gradcam, cmap="jet", alpha=0.45, vmin=0.0, vmax=g_max)
    axes[1].set_title("Grad-CAM", fontsize=9)
    axes[2].imshow(rgb.mean(axis=2), cmap="gray")
    axes[2].imshow(lrp, cmap="bwr", alpha=0.6, vmin=-r_max, vmax=r_max)
    axes[2].set_title(lrp_label, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
