"""Benchmark: composing one large mosaic slide (S7) tile by tile. Not a test.

Writes a ``--side`` x ``--side`` mosaic slide of real CRIC cells (the layout is synthetic)
from the crops of one :func:`~medinfer.data.mosaic.crop_split` part, and records the wall
time, the process's peak resident memory and the file size. The slide is the input of
``benchmarks/slide_scale.py``.

Usage (repository root):

    .venv/bin/python benchmarks/slide_compose.py --side 100000 --out-slide ../bench/slide_100k.tif \\
        --out benchmarks/results/slide_compose_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

from medinfer.data.mosaic import MosaicConfig, compose_slide, crop_split
from medinfer.runtime.bench import machine_info, versions

REPO = Path(__file__).resolve().parent.parent
CRIC = REPO.parent / "shared" / "data" / "cervical-cytology-cric"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=100_000)
    parser.add_argument("--part", default="test", choices=("train", "val", "test"))
    parser.add_argument("--abnormal", action="store_true", help="an abnormal slide (default: normal)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out-slide", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    crops = crop_split(CRIC)[args.part]
    cfg = MosaicConfig(size=(args.side, args.side), seed=args.seed)
    args.out_slide.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    truth = compose_slide(args.out_slide, crops, args.abnormal, cfg)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "benchmark": "slide_compose", "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(), "versions": versions(),
        "layout": "synthetic mosaic of real CRIC cell crops",
        "side": args.side, "cells": len(truth.cells), "label": truth.label,
        "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb, 1),
        "file_mb": round(args.out_slide.stat().st_size / 2**20, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("side", "cells", "seconds", "peak_rss_mb", "file_mb")}))


if __name__ == "__main__":
    main()
