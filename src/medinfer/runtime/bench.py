"""`medinfer bench`: every variant side by side, each in its own process, in one run."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.errors import MedinferError
from medinfer.runtime.measure import MeasureSettings

DEFAULT_VARIANTS = ("torch-fp32", "onnxruntime-fp32", "openvino-fp32", "onnxruntime-int8",
                    "onnxruntime-int8-dynamic", "openvino-int8")
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

    def row(self, name: str) -> dict[str, object]:
        return next(v for v in self.variants if v["name"] == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> BenchmarkResult:
        return cls(**json.loads(text))


def machine_info() -> dict[str, object]:
    """CPU model, logical cores, ISA flags that matter for INT8, OS and Python."""
    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
    return {"cpu": cpu or platform.machine(), "logical_cores": os.cpu_count(), "isa": isa,
            "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    out = {}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_worker(art: ModelArtifact, name: str, s: MeasureSettings) -> dict[str, object]:
    args = [sys.executable, "-m", "medinfer.runtime.measure", str(art.root), name]
    for key, value in asdict(s).items():
        args += ["--" + key.replace("_", "-"), str(value)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise MedinferError(f"benchmark of {name} failed: {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(art: ModelArtifact, variants: Sequence[str] = DEFAULT_VARIANTS,
              settings: MeasureSettings = MeasureSettings(), command: str = "",
              on_variant: Callable[[str], None] = lambda name: None) -> BenchmarkResult:
    """Measure ``variants`` of ``art`` one after another, each in a fresh process.

    Rows carry the timing, the variant's validation metrics and gate verdict from the
    artifact, its size on disk and which operators stayed in floating point.
    """
    from medinfer.optimize.pipeline import VARIANT_DIR, variant_files

    built = {v.name: v for v in art.spec.variants}
    missing = [n for n in variants if n != "torch-fp32" and n not in built]
    if missing:
        raise MedinferError(f"{art.root}: variants not built: {', '.join(missing)}; run `medinfer optimize`")
    result = BenchmarkResult(
        artifact=str(art.root), date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        command=command, machine=machine_info(), versions=versions(), settings=asdict(settings),
        chosen=art.spec.chosen)
    for name in variants:
        on_variant(name)
        row = _run_worker(art, name, settings)
        rec = built.get(name)
        rel = rec.path if rec else ""
        row["size_mb"] = sum(f.stat().st_size for f in variant_files(art, rel)) / 2**20
        row["metrics"] = dict(rec.metrics) if rec else dict(art.spec.metrics)
        row["passed"] = rec.passed if rec else None
        row["ops"] = rec.ops if rec else {}
        result.variants.append(row)
    del VARIANT_DIR
    return result
