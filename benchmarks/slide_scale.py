"""Benchmark: one very large mosaic slide through the S7 pipeline, engines side by side. Not a test.

Each measurement runs in its own process (so its peak resident memory is its own):

* ``whole``: the whole slide through the artifact's chosen variant (``medinfer slide``'s
  path: tissue mask, stage 1 on every tissue tile with batches in flight and a reader
  thread, fusion, stage 2 when flagged), timed per step;
* ``subset``: the first ``--subset`` tiles of the same slide's grid through each engine in
  ``--engines`` (PyTorch eager FP32 and the optimized variants), alternating engines over
  ``--rounds`` rounds: tiles per second on exactly the same tiles.

The whole-slide time of an engine that ran only on the subset is NOT measured; the JSON gives
``tiles / (tiles per second)`` as an estimate, marked as such.

Usage (repository root):

    .venv/bin/python benchmarks/slide_scale.py --model models/cervical-cytology \\
        --slide ../bench/slide_100k.tif --out benchmarks/results/slide_scale_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.io.slides import Slide
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import Cytology, StagedEngine


def worker(args: argparse.Namespace) -> dict[str, object]:
    """One measurement in this process (see the module docstring)."""
    art = ModelArtifact.load(args.model)
    task = Cytology(art, progress=args.mode == "whole")
    backend, precision = (None, None) if args.engine == "chosen" else args.engine.split("-")
    engine, variant = task.open_engine(backend, precision, EngineOptions(threads=args.threads, in_flight=2))
    assert isinstance(engine, StagedEngine)
    second = engine.classifier.infer if engine.classifier is not None else None
    try:
        t0 = time.perf_counter()
        if args.mode == "whole":
            r = task.run_slide(args.slide, engine.infer, second, engine.infer_many, progress=True)
            out = {"tiles": int(len(r.probs)), "seconds": time.perf_counter() - t0, "steps": r.seconds,
                   "flagged": r.flagged, "slide_score": r.score, "cells": int(len(r.cells))}
        else:
            task.run_slide(args.slide, engine.infer, None, engine.infer_many, max_tiles=args.warmup)
            times = []
            for _ in range(args.rounds):
                r = task.run_slide(args.slide, engine.infer, None, engine.infer_many, max_tiles=args.subset)
                times.append(r.seconds["stage1"])
            out = {"tiles": int(len(r.probs)), "stage1_seconds": times,
                   "tiles_per_second": len(r.probs) / statistics.median(times)}
    finally:
        engine.close()
    out.update(variant=variant, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def spawn(args: argparse.Namespace, mode: str, engine: str) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--engine", engine, "--model", str(args.model),
           "--slide", str(args.slide), "--subset", str(args.subset), "--rounds", str(args.rounds),
           "--threads", str(args.threads), "--out", "-"]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--engines", default="torch-fp32,openvino-fp32,openvino-int8")
    parser.add_argument("--subset", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-whole", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="whole", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="chosen", help=argparse.SUPPRESS)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args), default=float))
        return
    with Slide.open(args.slide) as slide:
        info = {"path": args.slide.name, "dimensions": list(slide.info.dimensions),
                "levels": len(slide.info.level_dimensions), "file_mb": round(args.slide.stat().st_size / 2**20, 1)}
    subset = {name: spawn(args, "subset", name) for name in args.engines.split(",")}
    whole = None if args.skip_whole else spawn(args, "whole", "chosen")
    result = {
        "benchmark": "slide_scale", "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
        "versions": versions(), "model": str(args.model), "slide": info,
        "layout": "synthetic mosaic of real CRIC cell crops",
        "subset": subset, "whole_slide_chosen": whole,
    }
    if whole:
        eager = subset.get("torch-fp32")
        if eager:
            result["whole_slide_eager_estimate_seconds"] = {
                "value": whole["tiles"] / eager["tiles_per_second"],
                "note": "estimate: whole-slide tiles / eager tiles per second on the subset (stage 1 only)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: {kk: v.get(kk) for kk in ("tiles_per_second", "peak_rss_mb")} for k, v in subset.items()}))
    if whole:
        print(json.dumps({k: whole[k] for k in ("tiles", "seconds", "peak_rss_mb", "variant")}))


if __name__ == "__main__":
    main()
