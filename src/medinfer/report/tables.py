"""The ladder table: one row per variant, as Markdown (BENCHMARKS.md) and as a rich table."""

from __future__ import annotations

from rich.table import Table

from medinfer.runtime.bench import BenchmarkResult

COLUMNS = ("variant", "Dice", "IoU", "gate", "batch-16 ms (p95)", "vs torch", "1-image ms (p95)",
           "img/s in flight", "peak RSS MB", "vs torch", "size MB", "float ops left")
# Metric columns per task: (metrics key, header).
_METRICS = {"dice": (("dice", "Dice"), ("iou", "IoU")), "mean_auc": (("mean_auc", "mean AUC"),
                                                                    ("abnormal_auc", "abnormal AUC"))}


def metric_keys(result: BenchmarkResult) -> tuple[tuple[str, str], ...]:
    keys = {k for v in result.variants for k in (v.get("metrics") or {})}
    return _METRICS["mean_auc"] if "mean_auc" in keys else _METRICS["dice"]


def columns(result: BenchmarkResult) -> tuple[str, ...]:
    """:data:`COLUMNS` with the task's own metric headers."""
    (_, a), (_, b) = metric_keys(result)
    return (COLUMNS[0], a, b, *COLUMNS[3:])


def _float_ops(row: dict) -> str:
    flt = (row.get("ops") or {}).get("float", {})
    if not (row.get("ops") or {}).get("int8"):
        return "all (FP32)" if row.get("precision") == "fp32" else "—"
    return ", ".join(f"{k}×{v}" for k, v in sorted(flt.items())) or "none"


def ladder_rows(result: BenchmarkResult) -> list[list[str]]:
    """Formatted cells, speed-up and memory ratios relative to the torch-fp32 row."""
    ref = next((v for v in result.variants if v["name"] == "torch-fp32"), result.variants[0])
    rows = []
    (k1, _), (k2, _) = metric_keys(result)
    for v in result.variants:
        m = v.get("metrics", {})
        gate = "ref" if v["name"] == "torch-fp32" else {True: "pass", False: "REJECT", None: "—"}[v.get("passed")]
        if v["name"] == result.chosen:
            gate += " ★"
        rows.append([
            v["name"], f"{m.get(k1, float('nan')):.4f}", f"{m.get(k2, float('nan')):.4f}", gate,
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
