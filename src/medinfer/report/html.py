"""One self-contained HTML report: accuracy, speed/memory, ladder chart, learning curve, overlays."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.report.tables import metric_keys, columns, ladder_rows
from medinfer.runtime.bench import BenchmarkResult


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _array_b64(rgb: np.ndarray) -> str:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def ladder_chart(bench: BenchmarkResult) -> str:
    """Bar chart (base64 PNG): batch latency and peak memory per variant; rejected bars hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [v["name"] for v in bench.variants]
    colors = ["#9aa4b2" if v["name"] == "torch-fp32" or v.get("passed") is None
              else "#2e7d32" if v["passed"] else "#c62828" for v in bench.variants]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    series = [("batch_ms_median", f"batch-{bench.settings['batch']} latency, ms (lower is better)"),
              ("throughput_ips", "images/s with requests in flight (higher is better)"),
              ("peak_rss_mb", "peak resident memory, MB (lower is better)")]
    for ax, (key, label) in zip(axes, series, strict=True):
        values = [float(v[key]) for v in bench.variants]
        bars = ax.barh(names, values, color=colors)
        for bar, v in zip(bars, bench.variants, strict=True):
            if v["name"] == bench.chosen:
                bar.set_edgecolor("#f9a825")
                bar.set_linewidth(3)
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.invert_yaxis()
    axes[1].set_yticklabels([])
    axes[2].set_yticklabels([])
    fig.suptitle("grey: reference · green: passes the accuracy gate · red: rejected · gold edge: chosen")
    out = _png_b64(fig)
    plt.close(fig)
    return out


def learning_curve(art: ModelArtifact) -> str | None:
    """Validation Dice/IoU and training loss per epoch (base64 PNG), if the artifact has a history."""
    history = art.spec.training.get("history")
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    if art.spec.task == "classification":
        ep = [h["epoch"] for h in history]
        ax.plot(ep, [h["val_mean_auc"] for h in history], label="validation mean AUC")
        ax.plot(ep, [h["val_abnormal_auc"] for h in history], label="validation abnormal AUC")
        ax.axhline(0.843, ls="--", c="grey", lw=1, label="seed CheXNet mean AUC 0.843 (112k full-size images)")
    else:  # 3D training validates every few epochs: plot the epochs that have a score
        scored = [h for h in history if "val_dice" in h]
        ep = [h["epoch"] for h in scored]
        ax.plot(ep, [h["val_dice"] for h in scored], label="validation Dice")
        ax.plot(ep, [h["val_iou"] for h in scored], label="validation IoU")
        if art.spec.architecture == "resunet":
            ax.plot(ep, [1 - h["train_loss"] for h in scored], label="1 − training Dice loss", alpha=0.6)
            ax.axhline(0.8162, ls="--", c="grey", lw=1, label="paper ResUNet Dice 0.8162")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    out = _png_b64(fig)
    plt.close(fig)
    return out


@dataclass
class OverlaySet:
    """Base64 PNGs of one validation case and the per-image Dice of each model."""

    name: str
    image: str
    truth: str
    fp32: str
    int8: str
    dice_fp32: float
    dice_int8: float


def overlay_sets(raw: list[np.ndarray], names: list[str], truth: np.ndarray, fp32: np.ndarray,
                 int8: np.ndarray) -> list[OverlaySet]:
    """Overlays of raw (C, H, W) uint8 images (network size) with their masks (N, H, W)."""
    from medinfer.io import overlay
    from medinfer.metrics import dice_iou_per_image

    d32, _ = dice_iou_per_image(fp32, truth)
    d8, _ = dice_iou_per_image(int8, truth)
    out = []
    for i, (im, name) in enumerate(zip(raw, names, strict=True)):
        rgb = np.ascontiguousarray(np.moveaxis(im, 0, -1)).astype(np.uint8)
        out.append(OverlaySet(
            name, _array_b64(rgb), _array_b64(overlay(im, truth[i], color=(0, 200, 0))),
            _array_b64(overlay(im, fp32[i], color=(30, 120, 255))),
            _array_b64(overlay(im, int8[i], color=(255, 230, 0))), float(d32[i]), float(d8[i])))
    return out


def render_report(bench: BenchmarkResult, art: ModelArtifact, overlays: list[OverlaySet], out: Path,
                  fp32_name: str, int8_name: str, max_drop: float | None = None, extra_html: str = "") -> Path:
    """Write the self-contained HTML report to ``out``."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("medinfer.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    ref = next((v for v in bench.variants if v["name"] == "torch-fp32"), bench.variants[0])
    t = art.spec.training
    scores = ", ".join(f"{k} {v:.4f}" for k, v in art.spec.metrics.items() if k != "n")
    note = (f"{t.get('epochs_run', '?')} epochs in {float(t.get('seconds', 0)) / 60:.1f} min; best epoch "
            f"{t.get('best_epoch', '?')}: validation {scores} on {t.get('n_val', '?')} held-out cases. "
            f"Command: {t.get('command', '')}")
    opt = t.get("optimize") or {}
    html = env.get_template("report.html").render(
        title=art.root.name, bench=bench, ref=ref, columns=columns(bench), keys=metric_keys(bench), rows=ladder_rows(bench),
        ladder_png=ladder_chart(bench), curve_png=learning_curve(art), training_note=note,
        overlays=overlays, fp32_name=fp32_name, int8_name=int8_name, extra_html=extra_html,
        max_drop=max_drop if max_drop is not None else opt.get("max_drop", "?"),
        input_size="×".join(str(s) for s in art.spec.input.spatial))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return out
