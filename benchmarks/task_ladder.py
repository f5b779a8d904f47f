"""Benchmark: the seed's four-step ladder for any trained artifact, side by side, one run.

For DenseNet-121 (S1, seed 002): PyTorch eager FP32 -> optimized FP32 (OpenVINO) ->
INT8 -> INT8 with 8 requests in flight, per image, each with the task's metric
(mean AUC / Dice) measured on the held-out part; every variant in its own process,
rounds interleaved. Also records this CPU's measured INT8 matrix-multiply peak and how
much of it the INT8 model reaches.

Usage (repository root, after `make install`):

    .venv/bin/python benchmarks/task_ladder.py --model models/cxr-densenet121 --tag cxr_ladder
    .venv/bin/python benchmarks/task_ladder.py --model models/brain-unet3d --tag brain_unet3d --in-flight 2

Writes benchmarks/results/<tag>_<UTC date>.json and <tag>.png, prints Markdown tables.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from medinfer.apps.splits import classification_split, volume_split
from medinfer.artifact import ModelArtifact
from medinfer.optimize.pipeline import OptimizeConfig, optimize
from medinfer.report.html import ladder_chart
from medinfer.report.tables import ladder_markdown, ladder_table
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import run_bench
from medinfer.runtime.measure import MeasureSettings
from medinfer.runtime.peak import int8_matmul_peak, model_macs
from medinfer.tasks import task_for
from medinfer.variants import Quantization, kinds

# the four-step ladder's variants (dynamic INT8 left out), floating point first
VARIANTS = tuple(k.name for k in sorted(kinds(optimized=True), key=lambda k: k.is_int8)
                 if k.quantization is not Quantization.DYNAMIC)


def ladder_steps(result: dict, int8: str, primary: str) -> list[dict]:
    """The seed's four steps from a bench result: ms per image and the metric of each."""
    rows = {v["name"]: v for v in result["variants"]}
    m = lambda n: rows[n]["metrics"].get(primary)  # noqa: E731
    steps = [("PyTorch eager FP32", "torch-fp32", rows["torch-fp32"]["single_ms_median"]),
             ("optimized FP32 (OpenVINO)", "openvino-fp32", rows["openvino-fp32"]["single_ms_median"]),
             (f"INT8 ({int8})", int8, rows[int8]["single_ms_median"]),
             (f"INT8, {rows[int8]['in_flight']} requests in flight", int8, 1000.0 / rows[int8]["throughput_ips"])]
    ref = steps[0][2]
    return [{"step": s, "variant": v, "ms_per_image": ms, "speedup": ref / ms, primary: m(v)} for s, v, ms in steps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--runs-batch", type=int, default=10)
    ap.add_argument("--runs-single", type=int, default=40)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-optimize", action="store_true")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--keep", default="", help="after the run, keep only these variants' files (comma-separated; "
                                             "'chosen' = the chosen one) for a compact committed artifact")
    args = ap.parse_args()
    console = Console(stderr=True, width=200)
    command = "python " + " ".join(sys.argv)
    art = ModelArtifact.load(args.model)
    work = args.work or Path("runs") / args.tag
    folders = (classification_split(art, work, n_calib=args.calib) if art.spec.task == "classification"
               else volume_split(art, work))
    records = []
    if not args.skip_optimize:
        with console.status("optimize") as status:
            records = optimize(art, OptimizeConfig(calib=folders.calib, val=folders.test, tune=folders.tune,
                                                   calib_limit=args.calib, options=EngineOptions(threads=args.threads)),
                               step=lambda s: status.update(f"optimize: {s}"))
    settings = MeasureSettings(threads=args.threads, in_flight=args.in_flight, runs_batch=args.runs_batch,
                               runs_single=args.runs_single, requests=args.requests)
    built = {v.name for v in art.spec.variants} | {"torch-fp32"}
    with console.status("bench") as status:
        result = run_bench(art, [v for v in VARIANTS if v in built], settings, command,
                           on_variant=lambda n: status.update(f"bench: {n}"), rounds=args.rounds,
                           metric_columns=task_for(art).columns)
    console.print(ladder_table(result))
    payload = json.loads(result.to_json())
    primary = art.spec.training.optimize.get("primary", "dice")
    int8 = art.spec.chosen if art.spec.chosen and "int8" in art.spec.chosen else "openvino-int8"
    payload["ladder"] = steps = ladder_steps(payload, int8, primary)
    peak = int8_matmul_peak(args.threads)
    macs = model_macs(art.root / art.variant(int8).path, 1)
    rows = {v["name"]: v for v in payload["variants"]}
    payload["int8_peak"] = {**asdict(peak), "model": int8, "macs_per_image": macs,
                            "gops_single": 2 * macs / (rows[int8]["single_ms_median"] / 1e3) / 1e9,
                            "gops_in_flight": 2 * macs * rows[int8]["throughput_ips"] / 1e9}
    payload["int8_peak"]["fraction_single"] = payload["int8_peak"]["gops_single"] / peak.gops
    payload["int8_peak"]["fraction_in_flight"] = payload["int8_peak"]["gops_in_flight"] / peak.gops
    payload["gate"] = [r.model_dump(mode="json") for r in records]
    payload["gate_data"] = ("the validation part (it chose the best epoch; never trained or "
                            "calibrated on)" if folders.test_is_val else "the test part")
    payload["training"] = art.spec.training.model_dump(mode="json", exclude={"history"})
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{args.tag}_{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    (args.results / f"{args.tag}.png").write_bytes(base64.b64decode(ladder_chart(result)))
    print(ladder_markdown(result))
    print()
    print(f"| step | variant | ms / image | speed-up | {primary} |\n|---|---|---|---|---|")
    for s in steps:
        print(f"| {s['step']} | {s['variant']} | {s['ms_per_image']:.2f} | {s['speedup']:.2f}× | {s[primary]:.4f} |")
    p = payload["int8_peak"]
    print(f"\nINT8 GEMM peak {peak.gops:.1f} GOPS ({peak.m}x{peak.k}x{peak.n}, {peak.threads} threads); "
          f"{int8}: {p['gops_single']:.1f} GOPS one image ({p['fraction_single']:.0%}), "
          f"{p['gops_in_flight']:.1f} GOPS in flight ({p['fraction_in_flight']:.0%})")
    console.print(f"results: {out}")
    if args.keep:
        keep = {art.spec.chosen if k == "chosen" else k for k in args.keep.split(",")}
        console.print(f"removed variants: {', '.join(art.keep_variants(keep)) or 'none'}")


if __name__ == "__main__":
    main()
