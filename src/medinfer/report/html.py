"""One self-contained HTML report: accuracy, speed/memory, ladder chart, learning curve, overlays."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.report.tables import columns, ladder_rows, metric_keys
from medinfer.runtime.bench import BenchmarkResult
from medinfer.tasks import Example, task_for
from medinfer.variants import REFERENCE


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def array_b64(rgb: np.ndarray) -> str:
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
    colors = ["#9aa4b2" if v["name"] == REFERENCE or v.get("passed") is None
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


# Published figures a shipped architecture is compared with: (label, value of the primary metric).
_REFERENCE_LINES = {"densenet121": ("seed CheXNet mean AUC 0.843 (112k full-size images)", 0.843),
                    "resunet": ("paper ResUNet Dice 0.8162", 0.8162)}


def learning_curve(art: ModelArtifact) -> str | None:
    """The task's validation metrics per validated epoch (base64 PNG), with the published
    figure the architecture is compared with; None without a history."""
    history = art.spec.training.validated()
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ep = [h.epoch for h in history]
    for key, header in task_for(art).columns:
        ax.plot(ep, [h.metrics.get(key, float("nan")) for h in history], label=f"validation {header}")
    if art.spec.architecture in _REFERENCE_LINES:
        label, value = _REFERENCE_LINES[art.spec.architecture]
        ax.axhline(value, ls="--", c="grey", lw=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    out = _png_b64(fig)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class ShownExample:
    """A task's report case with its pictures as base64 PNGs, in display order."""

    name: str
    pictures: list[tuple[str, str]]
    scores: dict[str, float]


def shown(examples: list[Example]) -> list[ShownExample]:
    """Encode the pictures of :meth:`medinfer.tasks.Task.examples` for the page."""
    return [ShownExample(e.name, [(c, array_b64(p)) for c, p in e.pictures.items()], dict(e.scores))
            for e in examples]


def render_report(bench: BenchmarkResult, art: ModelArtifact, examples: list[Example], out: Path,
                  primary: str = "", max_drop: float | None = None, extra_html: str = "") -> Path:
    """Write the self-contained HTML report to ``out``: tables, ladder chart, learning curve,
    the task's example cases (``primary`` names their per-case score) and ``extra_html``."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("medinfer.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    ref = next((v for v in bench.variants if v["name"] == REFERENCE), bench.variants[0])
    t = art.spec.training
    scores = ", ".join(f"{k} {v:.4f}" for k, v in art.spec.metrics.items() if k != "n")
    note = (f"{t.epochs_run or '?'} epochs in {(t.seconds or 0) / 60:.1f} min; best epoch "
            f"{t.best_epoch or '?'}: validation {scores} on {t.n_val or '?'} held-out cases. "
            f"Command: {t.command}")
    opt = t.optimize
    html = env.get_template("report.html").render(
        title=art.root.name, bench=bench, ref=ref, columns=columns(bench), keys=metric_keys(bench), rows=ladder_rows(bench),
        ladder_png=ladder_chart(bench), curve_png=learning_curve(art), training_note=note,
        examples=shown(examples), primary=primary, reference=REFERENCE, nan=float("nan"),
        extra_html=extra_html,
        max_drop=max_drop if max_drop is not None else opt.get("max_drop", "?"),
        input_size="×".join(str(s) for s in art.spec.input.spatial))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html)
    return out
