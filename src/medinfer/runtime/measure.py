"""Measure one variant in this process: latency, throughput, peak memory.

Run as ``python -m medinfer.runtime.measure ART VARIANT --threads 2 ...``; it prints one
JSON object. Each variant gets its own process so that peak resident memory belongs to
that variant alone (an ONNX Runtime or OpenVINO variant never imports torch).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from medinfer.artifact import ModelArtifact
from medinfer.runtime.engine import EngineOptions
from medinfer.runtime.loader import open_engine, variant_by_name


@dataclass(frozen=True)
class MeasureSettings:
    """How long to measure. Warm-up runs are excluded from every statistic."""

    threads: int = 2
    in_flight: int = 4
    batch: int = 16
    warmup: int = 2
    runs_batch: int = 10
    runs_single: int = 30
    requests: int = 64
    seed: int = 0


@dataclass
class VariantTiming:
    """What :func:`measure_variant` returns (milliseconds, MiB, images per second)."""

    name: str
    backend: str
    precision: str
    threads: int
    in_flight: int
    batch: int
    batch_ms_median: float
    batch_ms_p95: float
    single_ms_median: float
    single_ms_p95: float
    throughput_ips: float
    sequential_ips: float
    baseline_rss_mb: float
    peak_rss_mb: float
    load_s: float
    samples_batch_ms: list[float] = field(default_factory=list)
    samples_single_ms: list[float] = field(default_factory=list)


def rss_peak_mb() -> float:
    """This process's peak resident set, MiB.

    Linux's ``ru_maxrss`` survives ``execve`` (a worker would inherit its parent's peak),
    so the address space's own high-water mark ``VmHWM`` is read instead where available.
    """
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed_runs(fn, x: np.ndarray, warmup: int, runs: int) -> list[float]:
    """Milliseconds of ``runs`` calls ``fn(x)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def _throughput(art: ModelArtifact, variant, s: MeasureSettings, single: np.ndarray) -> float:
    engine = open_engine(art, variant, EngineOptions(threads=s.threads, in_flight=s.in_flight, static_batch=1))
    try:
        engine.infer_many([single] * s.warmup * s.in_flight)
        t = time.perf_counter()
        engine.infer_many([single] * s.requests)
        return s.requests / (time.perf_counter() - t)
    finally:
        engine.close()


def measure_variant(art: ModelArtifact, name: str, s: MeasureSettings) -> VariantTiming:
    """Latency (batch and single image), sequential and in-flight throughput, peak RSS.

    Peak RSS is read after the latency phases and before the throughput phase, which
    opens a multi-stream engine.
    """
    variant = variant_by_name(art, name)
    rng = np.random.default_rng(s.seed)
    shape = (art.spec.input.channels, *art.spec.input.spatial)
    batch = rng.standard_normal((s.batch, *shape), dtype=np.float32)
    single = batch[:1].copy()
    baseline = rss_peak_mb()
    # A deployment compiles for the batch it serves: backends that can specialise a graph
    # to a static shape (OpenVINO) get one engine per batch size; the others ignore it.
    t0 = time.perf_counter()
    engine = open_engine(art, variant, EngineOptions(threads=s.threads, static_batch=s.batch))
    load_s = time.perf_counter() - t0
    b = timed_runs(engine.infer, batch, s.warmup, s.runs_batch)
    engine.close()
    engine = open_engine(art, variant, EngineOptions(threads=s.threads, static_batch=1))
    one = timed_runs(engine.infer, single, s.warmup, s.runs_single)
    engine.close()
    peak = rss_peak_mb()
    in_flight_ips = _throughput(art, variant, s, single)
    return VariantTiming(
        name=name, backend=variant.backend, precision=variant.precision, threads=s.threads,
        in_flight=s.in_flight if variant.backend != "torch" else 1, batch=s.batch,
        batch_ms_median=float(np.median(b)), batch_ms_p95=float(np.percentile(b, 95)),
        single_ms_median=float(np.median(one)), single_ms_p95=float(np.percentile(one, 95)),
        throughput_ips=in_flight_ips, sequential_ips=1000.0 / float(np.median(one)),
        baseline_rss_mb=baseline, peak_rss_mb=peak, load_s=load_s,
        samples_batch_ms=[round(v, 3) for v in b], samples_single_ms=[round(v, 3) for v in one],
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("artifact")
    ap.add_argument("variant")
    for f in MeasureSettings.__dataclass_fields__.values():
        ap.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default)
    args = vars(ap.parse_args(argv))
    art = ModelArtifact.load(args.pop("artifact"))
    name = args.pop("variant")
    print(json.dumps(asdict(measure_variant(art, name, MeasureSettings(**args)))))


if __name__ == "__main__":
    main()
