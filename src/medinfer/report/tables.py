"""The ladder table: one row per variant, as Markdown (BENCHMARKS.md) and as a rich table."""

from __future__ import annotations

from rich.table import Table

from medinfer.runtime.bench import BenchmarkResult

COLUMNS = ("variant", "Dice", "IoU", "gate", "batch-16 ms (p95)", "vs torch", "1-image ms (p95)",
           "img/s in flight", "peak RSS MB", "vs torch", "size MB", "float ops left")


def _float_ops(row: dict) -> str:
    flt = (row.get("ops") or {}).get("float", {})
    if not (row.get("ops") or {}).get("int8"):
        return "all (FP32)" if row.get("precision") == "fp32" else "—"
    return ", ".join(f"{k}×{v}" for k, v in sorted(flt.items())) or "none"


def ladder_rows(result: BenchmarkResult) -> list[list[str]]:
    """Formatted cells, speed-up and memory ratios relative to the torch-fp32 row."""
    ref = next((v for v in result.variants if v["name"] == "torch-fp32"), result.variants[0])
    rows = []
    for v in result.variants:
        m = v.get("metrics", {})
        gate = "ref" if v["name"] == "torch-fp32" else {True: "pass", False: "REJECT", None: "—"}[v.get("passed")]
        if v["name"] == result.chosen:
            gate += " ★"
        rows.append([
            v["name"], f"{m.get('dice', float('nan')):.4f}", f"{m.get('iou', float('nan')):.4f}", gate,
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
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in ladder_rows(result)]
    return "\n".join(lines)


def ladder_table(result: BenchmarkResult) -> Table:
    """The same table for the terminal."""
    table = Table(title=f"medinfer ladder — {result.machine.get('cpu')}, {result.settings['threads']} threads")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("variant", "gate", "float ops left") else "right")
    for r in ladder_rows(result):
        table.add_row(*r)
    return table
