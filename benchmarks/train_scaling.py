"""Benchmark: data-parallel training on 1, 2 and 4 processes of this machine (torchrun, gloo).

Each run trains the same config (default ``config/train.polyp-small.yaml``: a small ResUNet
with instance norm on Kvasir-SEG at 128², Dice + CE) through ``medinfer train
--nproc-per-node N``, one after the other, with the **global batch fixed** (``--global-batch``
split evenly over the processes, the learning rate unscaled): every run takes the same
optimizer steps on the same samples, so the runs differ in how fast they step, not in
what they learn (augmentation draws differ per rank). Threads: the machine's cores split
over the processes (at least 1 each; 4 processes on 2 cores share them).

Reported per run, from the artifact's record: wall time of the command (process start and
data loading included), training images/s (median over epochs of samples / training
seconds), seconds to reach each validation Dice target (cumulative epoch time, validation
included, from the first epoch), the final Dice, and the gradient all-reduce traffic per
rank (payload bytes and the bytes a ring all-reduce sends: 2 (W-1)/W of the payload). A
figure plots validation Dice against time. With ``--weak`` a further run of 2 processes keeps
the per-process batch (global batch doubled) with the linear learning-rate rule and one
epoch of warm-up (the seed's recipe).

Usage (from the repository root):

    .venv/bin/python benchmarks/train_scaling.py --out benchmarks/results/train_scaling_$(date +%F).json
    .venv/bin/python benchmarks/train_scaling.py --epochs 1 --procs 1,2 --out runs/scaling_quick.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medinfer.artifact import ModelArtifact  # noqa: E402
from medinfer.runtime.bench import machine_info, versions  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MEDINFER = str(Path(sys.executable).parent / "medinfer")


def rel(path: Path) -> str:
    return os.path.relpath(path, REPO)


def train(config: Path, out: Path, nproc: int, batch: int, threads: int, epochs: int,
          extra: list[str]) -> dict:
    """One ``medinfer train`` run; its measurements from the written artifact."""
    cmd = [MEDINFER, "train", "--config", rel(config), "--set", f"out={rel(out)}", "--set", f"batch_size={batch}",
           "--set", f"epochs={epochs}", "--threads", str(threads), "--nproc-per-node", str(nproc), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    rec = ModelArtifact.load(REPO / rel(out)).spec.training
    elapsed, curve = 0.0, []
    for h in rec.history:
        elapsed += h.seconds
        curve.append({"epoch": h.epoch, "seconds": round(elapsed, 2), "train_seconds": h.train_seconds,
                      "samples": h.samples, "lr": h.lr, "dice": h.metrics.get("dice")})
    rates = [h.samples / h.train_seconds for h in rec.history if h.samples and h.train_seconds]
    par = rec.parallel
    steps = sum(-(-(h.samples or 0) // (batch * nproc)) for h in rec.history)
    return {"processes": nproc, "threads_per_process": threads, "batch_per_process": batch,
            "global_batch": batch * nproc, "command": "medinfer " + " ".join(cmd[1:]), "wall_s": round(wall, 1),
            "images_per_s": round(statistics.median(rates), 2) if rates else None,
            "final_dice": curve[-1]["dice"] if curve else None, "curve": curve,
            "allreduce_bytes_per_rank": par.get("allreduce_bytes", 0),
            "allreduce_bytes_per_step": round(par.get("allreduce_bytes", 0) / steps) if steps and par else 0,
            "ring_bytes_sent_per_rank": par.get("ring_bytes_sent", 0), "rank_spread": par.get("rank_spread", 0.0),
            "lr": par.get("lr", rec.config.get("lr"))}


def time_to(curve: list[dict], target: float) -> float | None:
    """Seconds until the validation Dice first reaches ``target`` (None: never)."""
    return next((c["seconds"] for c in curve if c["dice"] is not None and c["dice"] >= target), None)


def figure(runs: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        label = f"{r['processes']} proc × batch {r['batch_per_process']}"
        ax.plot([c["seconds"] for c in r["curve"]], [c["dice"] for c in r["curve"]], marker="o", label=label)
    ax.set_xlabel("seconds (training + validation)")
    ax.set_ylabel("validation Dice")
    ax.set_title("Data-parallel training on this machine")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "config/train.polyp-small.yaml")
    p.add_argument("--procs", default="1,2,4")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--targets", default="0.5,0.6,0.7")
    p.add_argument("--weak", action="store_true", help="add 2 processes x the full batch, linear lr + warm-up")
    p.add_argument("--work", type=Path, default=REPO / "runs/bench/train_scaling")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    targets = [float(t) for t in a.targets.split(",")]
    runs = []
    for n in [int(v) for v in a.procs.split(",")]:
        if a.global_batch % n:
            raise SystemExit(f"--global-batch {a.global_batch} does not split over {n} processes")
        runs.append(train(a.config, a.work / f"p{n}", n, a.global_batch // n, max(1, cores // n), a.epochs,
                          ["--set", "lr_scaling=none"]))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
    if a.weak:
        runs.append(train(a.config, a.work / "p2-weak", 2, a.global_batch, max(1, cores // 2), a.epochs,
                          ["--set", "lr_scaling=linear", "--set", "warmup_epochs=1"]))
    base = runs[0]
    for r in runs:
        r["time_to_dice"] = {str(t): time_to(r["curve"], t) for t in targets}
        r["speedup_images_per_s"] = (round(r["images_per_s"] / base["images_per_s"], 3)
                                     if r["images_per_s"] and base["images_per_s"] else None)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    figure(runs, png)
    result = {"benchmark": "train_scaling", "date": dt.date.today().isoformat(),
              "command": " ".join([Path(sys.executable).name, *[rel(Path(x)) if x.startswith(str(REPO)) else x
                                                                 for x in sys.argv]]),
              "machine": machine_info(), "versions": versions(), "cores": cores,
              "config": rel(a.config), "global_batch": a.global_batch, "epochs": a.epochs,
              "figure": rel(png), "runs": runs}
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
