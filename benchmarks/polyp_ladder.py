"""Benchmark: the Kvasir-SEG polyp ResUNet ladder (S2), full validation split, one run.

PyTorch eager FP32 -> ONNX Runtime / OpenVINO FP32 -> INT8 static (ORT QDQ, OpenVINO NNCF)
and dynamic (ORT), each measured in its own process, side by side, in one run.

Usage (from the repository root, after `make install`):

    .venv/bin/python benchmarks/polyp_ladder.py --model models/polyp-resunet \
        --data ../shared/data/kvasir-seg --work runs/bench-polyp

Writes benchmarks/results/polyp_ladder_<UTC date>.json (the BenchmarkResult plus the
optimizer's gate records) and prints the Markdown table pasted into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from pathlib import Path

from rich.console import Console

from medinfer.apps.demo import DemoConfig, prepare
from medinfer.optimize.pipeline import OptimizeConfig, optimize
from medinfer.report.build import build_report
from medinfer.report.html import ladder_chart, learning_curve
from medinfer.report.tables import ladder_markdown, ladder_table
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import DEFAULT_VARIANTS, run_bench
from medinfer.runtime.measure import MeasureSettings
from medinfer.tasks import task_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/polyp-resunet"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-polyp"))
    ap.add_argument("--calib", type=int, default=128, help="calibration images from the training split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--runs-batch", type=int, default=20)
    ap.add_argument("--runs-single", type=int, default=60)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over rounds")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    console = Console(stderr=True, width=200)
    command = "python " + " ".join(sys.argv)

    # n_val larger than the split takes the whole validation split (160 of 800 pairs).
    art, calib_dir, val_dir = prepare(DemoConfig(args.model, args.data, args.work, args.calib, 10_000))
    with console.status("optimize") as status:
        records = optimize(art, OptimizeConfig(calib=calib_dir, val=val_dir,
                                               options=EngineOptions(threads=args.threads)),
                           step=lambda s: status.update(f"optimize: {s}"))
    settings = MeasureSettings(threads=args.threads, in_flight=args.in_flight, runs_batch=args.runs_batch,
                               runs_single=args.runs_single, requests=args.requests)
    with console.status("bench") as status:
        result = run_bench(art, DEFAULT_VARIANTS, settings, command,
                           on_variant=lambda n: status.update(f"bench: {n}"), rounds=args.rounds,
                           metric_columns=task_for(art).columns)
    console.print(ladder_table(result))
    report = build_report(art, result, val_dir, args.work / "report.html", threads=args.threads)
    payload = json.loads(result.to_json())
    payload["gate"] = [r.model_dump(mode="json") for r in records]
    payload["training"] = art.spec.training.model_dump(mode="json", exclude={"history"})
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"polyp_ladder_{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    (args.results / "polyp_ladder.png").write_bytes(base64.b64decode(ladder_chart(result)))
    curve = learning_curve(art)
    if curve:
        (args.results / "polyp_learning_curve.png").write_bytes(base64.b64decode(curve))
    print(ladder_markdown(result))
    console.print(f"results: {out}\nreport: {report}")


if __name__ == "__main__":
    main()
