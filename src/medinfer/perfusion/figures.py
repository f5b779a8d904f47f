"""Pictures of a perfusion result: the summary page (slices with core and hypoperfusion
drawn over the baseline CT, volumes and mismatch, in the spirit of the RAPID page
clinicians know), the maps of one slice, and the arterial / venous / tissue curves.

Every function returns an ``(H, W, 3)`` uint8 picture (for a PNG, a DICOM Secondary
Capture or an HTML report). Images are shown as stored in a DICOM axial series: the
patient's right on the viewer's left.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from medinfer.perfusion.lesions import Lesions  # noqa: E402
from medinfer.perfusion.maps import PerfusionMaps  # noqa: E402

__all__ = ["curves_figure", "maps_figure", "summary_page"]

CORE_RGB = (1.0, 0.2, 0.8)      # magenta: CBF < 30 %
PENUMBRA_RGB = (0.2, 0.9, 0.3)  # green: Tmax > 6 s
_MAP_STYLE = {"cbf": ("CBF ml/100 g/min", "jet", 0, 80), "cbv": ("CBV ml/100 g", "jet", 0, 8),
              "mtt": ("MTT s", "jet", 0, 16), "tmax": ("Tmax s", "jet", 0, 12)}


def _rgb(fig: plt.Figure) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return np.asarray(PILImage.open(buf).convert("RGB"))


def _ct(baseline: np.ndarray) -> np.ndarray:
    """Brain window (0..80 HU) as grey RGB floats."""
    g = np.clip(baseline / 80.0, 0, 1)
    return np.repeat(g[..., None], 3, axis=2)


def _shown_slices(n: int, limit: int = 16) -> list[int]:
    return list(range(n)) if n <= limit else [int(round(i)) for i in np.linspace(0, n - 1, limit)]


def summary_page(maps: PerfusionMaps, lesions: Lesions, title: str = "CT perfusion") -> np.ndarray:
    """Every slice (up to 16) with the hypoperfusion (green) and the core (magenta) over the
    baseline CT, and the volumes, mismatch and DEFUSE-3 criteria above them."""
    slices = _shown_slices(maps.brain.shape[2])
    cols = min(4, len(slices))
    rows = int(np.ceil(len(slices) / cols))
    height = 2.4 * rows + 0.9
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, height), facecolor="black", squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, k in zip(axes.ravel(), slices):
        pic = _ct(maps.baseline[..., k])
        pic[lesions.penumbra[..., k]] = 0.45 * pic[lesions.penumbra[..., k]] + 0.55 * np.array(PENUMBRA_RGB)
        pic[lesions.core[..., k]] = 0.35 * pic[lesions.core[..., k]] + 0.65 * np.array(CORE_RGB)
        ax.imshow(pic, interpolation="nearest")
        ax.set_title(f"slice {k + 1}", color="white", fontsize=8)
    ratio = "n/a (no core)" if lesions.mismatch_ratio is None else f"{lesions.mismatch_ratio:.1f}"
    text = (f"{title}\nCBF<30% volume (core): {lesions.core_ml:.1f} ml    "
            f"Tmax>6s volume: {lesions.penumbra_ml:.1f} ml\n"
            f"Mismatch volume: {lesions.mismatch_ml:.1f} ml    Mismatch ratio: {ratio}    "
            f"DEFUSE-3 imaging criteria: {'met' if lesions.defuse3_eligible else 'not met'}")
    fig.suptitle(text, color="white", fontsize=10, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / height))
    return _rgb(fig)


def maps_figure(maps: PerfusionMaps, lesions: Lesions) -> np.ndarray:
    """CBF, CBV, MTT and Tmax of the slice with the most hypoperfusion (the middle one
    without), each with its colour bar."""
    area = lesions.penumbra.sum(axis=(0, 1))
    k = int(np.argmax(area)) if area.any() else maps.brain.shape[2] // 2
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    for ax, (name, (label, cmap, lo, hi)) in zip(axes, _MAP_STYLE.items()):
        shown = np.ma.masked_where(~maps.brain[..., k], maps.get(name)[..., k])
        ax.imshow(_ct(maps.baseline[..., k]), interpolation="nearest")
        im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"slice {k + 1}", fontsize=9)
    fig.tight_layout()
    return _rgb(fig)


def curves_figure(maps: PerfusionMaps, tissue: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Arterial (as measured and scaled to the venous area), venous and mean tissue
    curves (``tissue``: label -> ``(T,)`` enhancement), HU above baseline against time."""
    t = maps.times
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(t, maps.aif.curve, color="tab:red", label=f"AIF ({len(maps.aif.voxels)} voxels, {maps.aif.source})")
    if maps.aif_scale != 1.0:
        ax.plot(t, maps.aif.curve * maps.aif_scale, color="tab:red", ls="--",
                label=f"AIF x {maps.aif_scale:.2f} (venous area)")
    if maps.vof is not None:
        ax.plot(t, maps.vof.curve, color="tab:blue", label=f"VOF ({len(maps.vof.voxels)} voxels)")
    ax.axvspan(t[0], t[maps.arrival], color="0.85", label="baseline frames")
    ax.set_xlabel("time, s")
    ax.set_ylabel("enhancement, HU")
    if tissue:
        ax2 = ax.twinx()
        for (label, curve), colour in zip(tissue.items(), ("tab:green", "tab:purple", "tab:orange")):
            ax2.plot(t, curve, color=colour, lw=1.2, label=label)
        ax2.set_ylabel("tissue enhancement, HU")
        ax2.legend(loc="center right", fontsize=7)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return _rgb(fig)
