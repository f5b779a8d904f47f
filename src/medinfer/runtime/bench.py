"""`medinfer bench`: every variant side by side, each in its own process, in one run."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata

from medinfer.artifact import ModelArtifact
from medinfer.errors import MedinferError
from medinfer.runtime.cpu import cpu_info
from medinfer.runtime.loader import variant_by_name
from medinfer.runtime.measure import MeasureSettings
from medinfer.variants import REFERENCE, kinds

DEFAULT_VARIANTS = tuple(k.name for k in sorted(
    (k for k in kinds(optimized=True) if not k.needs_tuning_data), key=lambda k: k.is_int8))
"""The post-training ladder, floating point first: every variant ``medinfer optimize`` builds
without tuning data."""
_PACKAGES = ("torch", "onnxruntime", "openvino", "nncf", "monai", "numpy", "onnx")


@dataclass
class BenchmarkResult:
    """One benchmark run: machine, versions, settings and one row per variant."""

    artifact: str
    date: str
    command: str
    machine: dict[str, object]
    versions: dict[str, str]
    settings: dict[str, int]
    variants: list[dict[str, object]] = field(default_factory=list)
    chosen: str | None = None
    metric_columns: list[tuple[str, str]] = field(default_factory=list)
    """(metrics key, header) the task reports, primary first (from the artifact's task)."""

    def row(self, name: str) -> dict[str, object]:
        return next(v for v in self.variants if v["name"] == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BenchmarkResult:
        """Parse a result; extra keys (a benchmark script's own additions) are ignored.

        Raises:
            ValueError: not JSON, or a required key is missing.
        """
        data = json.loads(text)
        names = set(cls.__dataclass_fields__)
        missing = {"artifact", "date", "command", "machine", "versions", "settings"} - set(data)
        if missing:
            raise ValueError(f"not a medinfer benchmark result (missing {', '.join(sorted(missing))})")
        return cls(**{k: v for k, v in data.items() if k in names})


def machine_info() -> dict[str, object]:
    """CPU model, logical cores, ISA flags, OS and Python (:func:`medinfer.runtime.cpu.cpu_info`)."""
    return cpu_info()


def versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_worker(art: ModelArtifact, name: str, s: MeasureSettings,
                timeout_s: float = 900.0) -> dict[str, object]:
    args = [sys.executable, "-m", "medinfer.runtime.measure", str(art.root), name]
    for key, value in asdict(s).items():
        args += ["--" + key.replace("_", "-"), str(value)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise MedinferError(f"benchmark of {name} did not finish within {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise MedinferError(f"benchmark of {name} failed: {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_AGGREGATED = ("batch_ms_median", "batch_ms_p95", "single_ms_median", "single_ms_p95",
               "throughput_ips", "sequential_ips", "peak_rss_mb", "baseline_rss_mb", "load_s")


def _merge_rounds(rounds: list[dict[str, object]]) -> dict[str, object]:
    """One row from several rounds of the same variant: the median of each statistic.

    The per-round figures are kept under ``"rounds"`` so the spread stays visible.
    """
    import statistics

    row = dict(rounds[0])
    for key in _AGGREGATED:
        row[key] = statistics.median(float(r[key]) for r in rounds)  # type: ignore[arg-type]
    row["rounds"] = [{k: r[k] for k in _AGGREGATED} for r in rounds]
    row["samples_batch_ms"] = [x for r in rounds for x in r["samples_batch_ms"]]  # type: ignore[union-attr]
    row["samples_single_ms"] = [x for r in rounds for x in r["samples_single_ms"]]  # type: ignore[union-attr]
    return row


def run_bench(art: ModelArtifact, variants: Sequence[str] = DEFAULT_VARIANTS,
              settings: MeasureSettings = MeasureSettings(), command: str = "",
              on_variant: Callable[[str], None] = lambda name: None, rounds: int = 1,
              metric_columns: Sequence[tuple[str, str]] = ()) -> BenchmarkResult:
    """Measure ``variants`` of ``art``, each in a fresh process, ``rounds`` times interleaved.

    Interleaving (all variants, then all again) spreads slow drifts of a shared machine's
    load over every variant instead of penalising whichever ran during the slow spell;
    each statistic is then the median over rounds. Rows also carry the variant's
    validation metrics and gate verdict from the artifact, its size on disk and which
    operators stayed in floating point. ``metric_columns`` (the task's) are recorded so a
    report of the JSON shows the task's own metrics.
    """
    built = {v.name: v for v in art.spec.variants}
    missing = [n for n in variants if n != REFERENCE and n not in built]
    if missing:
        raise MedinferError(f"{art.root}: variants not built: {', '.join(missing)}; run `medinfer optimize`")
    result = BenchmarkResult(
        artifact=str(art.root), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=command, machine=machine_info(), versions=versions(),
        settings={**asdict(settings), "rounds": rounds}, chosen=art.spec.chosen,
        metric_columns=[tuple(c) for c in metric_columns])
    per_variant: dict[str, list[dict[str, object]]] = {n: [] for n in variants}
    for r in range(rounds):
        for name in variants:
            on_variant(name if rounds == 1 else f"{name} (round {r + 1}/{rounds})")
            per_variant[name].append(_run_worker(art, name, settings))
    for name in variants:
        row = _merge_rounds(per_variant[name])
        rec = built.get(name)
        row["size_mb"] = art.variant_size_mb(variant_by_name(art, name))
        row["metrics"] = dict(rec.metrics) if rec else dict(art.spec.metrics)
        row["passed"] = rec.passed if rec else None
        row["ops"] = rec.ops if rec else {}
        result.variants.append(row)
    return result
