"""The ladder table: one row per variant, as Markdown (BENCHMARKS.md) and as a rich table."""

from __future__ import annotations

from rich.table import Table

from medinfer.artifact import ModelArtifact
from medinfer.errors import MedinferError
from medinfer.runtime.bench import BenchmarkResult
from medinfer.tasks import task_for
from medinfer.variants import REFERENCE

SPEED_COLUMNS = ("gate", "batch-16 ms (p95)", "vs torch", "1-image ms (p95)", "img/s in flight",
                 "peak RSS MB", "vs torch", "size MB", "float ops left")


def metric_keys(result: BenchmarkResult) -> tuple[tuple[str, str], ...]:
    """The task's (metrics key, header) columns recorded in the result; for results written
    before they were recorded, the columns of the result's artifact's task, else the first two
    metrics the variants carry (``n`` aside)."""
    if result.metric_columns:
        return tuple((str(k), str(h)) for k, h in result.metric_columns)
    try:
        return task_for(ModelArtifact.load(result.artifact)).columns
    except MedinferError:
        pass
    keys = [k for v in result.variants for k in (v.get("metrics") or {}) if k != "n" and "/" not in k]
    return tuple((k, k) for k in list(dict.fromkeys(keys))[:2])


def columns(result: BenchmarkResult) -> tuple[str, ...]:
    """Column headers: variant, the task's metrics, then speed and memory."""
    return ("variant", *(h for _, h in metric_keys(result)), *SPEED_COLUMNS)


def _float_ops(row: dict) -> str:
    flt = (row.get("ops") or {}).get("float", {})
    if not (row.get("ops") or {}).get("int8"):
        return "all (FP32)" if row.get("precision") == "fp32" else "—"
    return ", ".join(f"{k}×{v}" for k, v in sorted(flt.items())) or "none"


def ladder_rows(result: BenchmarkResult) -> list[list[str]]:
    """Formatted cells, speed-up and memory ratios relative to the reference row."""
    ref = next((v for v in result.variants if v["name"] == REFERENCE), result.variants[0])
    rows = []
    keys = [k for k, _ in metric_keys(result)]
    for v in result.variants:
        m = v.get("metrics", {})
        gate = "ref" if v["name"] == REFERENCE else {True: "pass", False: "REJECT", None: "—"}[v.get("passed")]
        if v["name"] == result.chosen:
            gate += " ★"
        rows.append([
            v["name"], *(f"{float(m.get(k, float('nan'))):.4f}" for k in keys), gate,
            f"{v['batch_ms_median']:.1f} ({v['batch_ms_p95']:.1f})",
            f"{ref['batch_ms_median'] / v['batch_ms_median']:.2f}×",
            f"{v['single_ms_median']:.2f} ({v['single_ms_p95']:.2f})",
            f"{v['throughput_ips']:.1f}",
            f"{v['peak_rss_mb']:.0f}", f"{ref['peak_rss_mb'] / v['peak_rss_mb']:.2f}×",
            f"{v['size_mb']:.1f}", _float_ops(v),
        ])
    return rows


def ladder_markdown(result: BenchmarkResult) -> str:
    """GitHub Markdown table of :func:`ladder_rows`."""
    cols = columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in ladder_rows(result)]
    return "\n".join(lines)


def ladder_table(result: BenchmarkResult) -> Table:
    """The same table for the terminal."""
    table = Table(title=f"medinfer ladder — {result.machine.get('cpu')}, {result.settings['threads']} threads")
    for c in columns(result):
        table.add_column(c, justify="left" if c in ("variant", "gate", "float ops left") else "right")
    for r in ladder_rows(result):
        table.add_row(*r)
    return table


def variants_table(records, chosen: str | None, metric_columns: tuple[tuple[str, str], ...]) -> Table:
    """What ``medinfer optimize`` built: each variant's task metrics, gate verdict, quick
    latency, size and (accuracy-controlled INT8) the layers left in FP32."""
    table = Table(title=f"variants ({metric_columns[0][1]} gate vs {REFERENCE})")
    for c in ("variant", *(h for _, h in metric_columns), "gate", "latency ms", "size MB", "FP32 layers"):
        table.add_column(c)
    for r in records:
        gate = "pass" if r.passed else f"REJECT: {r.reason}"
        table.add_row(r.name + (" ★" if r.name == chosen else ""),
                      *(f"{r.metrics.get(k, float('nan')):.4f}" for k, _ in metric_columns), gate,
                      f"{r.latency_ms:.1f}", f"{r.size_mb:.1f}",
                      str(len(r.float_layers)) if r.float_layers else "")
    return table


E2E_COLUMNS = ("variant", "read ms", "preprocess ms", "infer ms", "postprocess ms", "write ms", "total ms",
               "model speed-up", "end-to-end speed-up")


def e2e_rows(rows: list[dict]) -> list[list[str]]:
    """Cells of the end-to-end table (from :func:`medinfer.apps.e2e.speedups`)."""
    out = []
    for r in rows:
        m = r["median_ms"]
        out.append([r["variant"], *(f"{m[s]:.1f}" for s in ("read", "preprocess", "infer", "postprocess", "write")),
                    f"{r['total_ms']:.1f}", f"{r['model_speedup']:.2f}×", f"{r['end_to_end_speedup']:.2f}×"])
    return out


def e2e_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(E2E_COLUMNS) + " |", "|" + "---|" * len(E2E_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in e2e_rows(rows)])


def e2e_table(rows: list[dict]) -> Table:
    table = Table(title="end to end: median ms per request stage")
    for c in E2E_COLUMNS:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for r in e2e_rows(rows):
        table.add_row(*r)
    return table
