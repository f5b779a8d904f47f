"""Benchmarks of spatial partitioning (S4): fidelity, speed, memory, scaling.

Every measurement runs in its own process (peak resident memory is that process's
VmHWM from /proc/self/status); variants are compared side by side in one run. The
network is a MONAI 3D UNet (instance norm, MONAI's default), channels
(16, 32, 64, 128), strides (2, 2, 2), two residual units, random weights (seed 0),
on a smooth synthetic volume (seed 1).

Usage (repository root, after `make install`):

    .venv/bin/python benchmarks/partition_bench.py fidelity --size 192
    .venv/bin/python benchmarks/partition_bench.py speed --size 256 --budget-mb 1500
    .venv/bin/python benchmarks/partition_bench.py memory --sizes 128 192 256
    .venv/bin/python benchmarks/partition_bench.py memory --sizes 512 --budget-mb 8000 --tag 512
    .venv/bin/python benchmarks/partition_bench.py scaling --size 96

Each writes benchmarks/results/partition_<mode>_<UTC date>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress

from medinfer.runtime.measure import rss_peak_mb

log = logging.getLogger("partition_bench")
CHANNELS = (16, 32, 64, 128)
HERE = Path(__file__).resolve()


def make_net() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 2, CHANNELS, (2, 2, 2), num_res_units=2).eval()


def make_volume(size: int) -> torch.Tensor:
    """(1, 1, S, S, S) smooth random volume: structure at several scales, like tissue."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, size, size, size, generator=g)
    return F.avg_pool3d(x, 5, 1, 2) * 4.0


def one(args: argparse.Namespace) -> None:
    """Child process: one variant once; prints a JSON line, optionally saves the logits."""
    torch.set_num_threads(args.threads)
    net = make_net()
    x = make_volume(args.size)
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.variant == "whole":
            y = net(x)[0]
        elif args.variant == "exact":
            from medinfer.partition import exact_inference

            y = exact_inference(net, x[0], memory_budget_mb=args.budget_mb)
        else:
            from monai.inferers import sliding_window_inference

            y = sliding_window_inference(x, (args.roi,) * 3, 1, net, overlap=args.overlap,
                                         mode="gaussian")[0]
    seconds = time.perf_counter() - t0
    if args.save:
        np.save(args.save, y.numpy())
    print(json.dumps({"seconds": seconds, "vmhwm_mb": rss_peak_mb()}))


def child(variant: str, size: int, threads: int, **kw: object) -> dict:
    cmd = [sys.executable, str(HERE), "one", "--variant", variant, "--size", str(size),
           "--threads", str(threads)]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def meta(command: str) -> dict:
    from medinfer.runtime.bench import machine_info, versions

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "machine": machine_info(), "versions": versions(),
            "network": f"MONAI UNet(3, 1, 2, {CHANNELS}, (2, 2, 2), num_res_units=2, "
                       "norm=instance), seed 0",
            "volume": "avg_pool3d(randn, 5) * 4, seed 1"}


def save(mode: str, payload: dict, results: Path) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"partition_{mode}_{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def sw_variants(roi: int) -> list[tuple[str, dict]]:
    return [(f"MONAI sliding window roi {roi}, overlap {o}, Gaussian",
             {"variant": "sw", "roi": roi, "overlap": o}) for o in (0.25, 0.5)]


def fidelity(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Progress(console=Console(stderr=True)) as bar:
        variants = [("whole volume", {"variant": "whole"}),
                    (f"medinfer exact tiling ({args.budget_mb:g} MB budget)",
                     {"variant": "exact", "budget_mb": args.budget_mb})] + sw_variants(args.roi)
        task = bar.add_task("fidelity", total=len(variants))
        for i, (name, kw) in enumerate(variants):
            path = Path(tmp) / f"{i}.npy"
            res = child(size=args.size, threads=args.threads, save=path, **kw)
            rows.append({"name": name, **kw, **res, "path": str(path)})
            bar.advance(task)
        ref = np.load(rows[0]["path"])
        ref_labels = ref.argmax(0)
        scale = float(np.abs(ref).max())
        for r in rows:
            y = np.load(r.pop("path"))
            r["max_abs_diff"] = float(np.abs(y - ref).max())
            r["max_rel_diff"] = r["max_abs_diff"] / scale
            differ = y.argmax(0) != ref_labels
            r["label_disagreements"] = int(differ.sum())
            # how close to a tie the whole-volume logits are where the labels differ
            top2 = np.sort(ref[:, differ], axis=0)[-2:] if differ.any() else np.zeros((2, 0))
            r["max_ref_margin_at_disagreements"] = float((top2[1] - top2[0]).max()) \
                if differ.any() else 0.0
            r["label_disagreement_pct"] = 100.0 * r["label_disagreements"] / ref_labels.size
    return {"size": args.size, "voxels": args.size ** 3, "rows": rows}


def speed(args: argparse.Namespace) -> dict:
    variants = [("whole volume", {"variant": "whole"}),
                (f"medinfer exact tiling ({args.budget_mb:g} MB budget)",
                 {"variant": "exact", "budget_mb": args.budget_mb})] + sw_variants(args.roi)
    runs: dict[str, list[dict]] = {name: [] for name, _ in variants}
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("speed", total=args.rounds * len(variants))
        for _ in range(args.rounds):  # interleaved rounds: drift from the shared machine hits all
            for name, kw in variants:
                runs[name].append(child(size=args.size, threads=args.threads, **kw))
                bar.advance(task)
    base = statistics.median(r["seconds"] for r in runs["whole volume"])
    rows = []
    for name, kw in variants:
        sec = statistics.median(r["seconds"] for r in runs[name])
        rows.append({"name": name, **kw, "median_s": sec, "vs_whole": sec / base,
                     "seconds": [r["seconds"] for r in runs[name]],
                     "peak_rss_mb": max(r["vmhwm_mb"] for r in runs[name])})
    return {"size": args.size, "rounds": args.rounds, "rows": rows}


def memory(args: argparse.Namespace) -> dict:
    rows = []
    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("memory", total=2 * len(args.sizes))
        for size in args.sizes:
            row: dict[str, object] = {"size": size}
            if size <= args.whole_max:
                row["whole"] = child("whole", size, args.threads)
            bar.advance(task)
            row["exact"] = child("exact", size, args.threads, budget_mb=args.budget_mb)
            bar.advance(task)
            rows.append(row)
            log.info("memory %s", row)
    return {"budget_mb": args.budget_mb, "rows": rows}


def rank_main(args: argparse.Namespace) -> None:
    """Under torchrun: time distributed inference and one training step; rank 0 prints JSON."""
    import torch.distributed as dist

    from medinfer.partition.distributed import LAST_STATS, Mesh, distributed_inference, \
        partitioned_train_step

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    torch.set_num_threads(max(1, args.threads // world))
    mesh = {1: (1, 1, 1), 2: (2, 1, 1), 4: (2, 2, 1), 8: (2, 2, 2)}[world]
    net = make_net()
    x = make_volume(args.size)
    target = (x[:, 0] > 0).long()
    out: dict[str, object] = {"ranks": world, "mesh": mesh}
    for kind in ("inference", "train_step"):
        times, sent = [], []
        for r in range(args.rounds + 1):  # round 0 warms up (oneDNN primitives, allocator)
            dist.barrier()
            t0 = time.perf_counter()
            if kind == "inference":
                net.eval()
                distributed_inference(net, x, mesh)
            else:
                net.train()
                partitioned_train_step(net, None, x, target,
                                       lambda o, t: F.cross_entropy(o, t, reduction="sum"),
                                       Mesh(mesh))
            dist.barrier()
            if r > 0:
                times.append(time.perf_counter() - t0)
            total = torch.tensor([LAST_STATS.bytes_sent], dtype=torch.float64)
            dist.all_reduce(total)
            sent.append(float(total))
        out[kind] = {"median_s": statistics.median(times), "seconds": times,
                     "bytes_sent_all_ranks": sent[-1]}
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def scaling(args: argparse.Namespace) -> dict:
    rows = []
    for n in args.ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_addr", "127.0.0.1", "--master_port", str(29700 + n), str(HERE),
               "rank", "--size", str(args.size), "--threads", str(args.threads),
               "--rounds", str(args.rounds)]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // n)))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log.info("scaling %s", rows[-1])
    return {"size": args.size, "backend": "gloo", "device": "cpu", "rows": rows}


def markdown(mode: str, res: dict) -> str:
    if mode == "fidelity":
        lines = ["| method | max abs diff | max rel diff | label disagreements | % voxels | time (s) |",
                 "|---|---:|---:|---:|---:|---:|"]
        for r in res["rows"][1:]:
            lines.append(f"| {r['name']} | {r['max_abs_diff']:.2e} | {r['max_rel_diff']:.2e} | "
                         f"{r['label_disagreements']:,} | {r['label_disagreement_pct']:.3f} | "
                         f"{r['seconds']:.1f} |")
    elif mode == "speed":
        lines = ["| method | median time (s) | × whole volume | peak RSS (MB) |",
                 "|---|---:|---:|---:|"]
        for r in res["rows"]:
            lines.append(f"| {r['name']} | {r['median_s']:.2f} | {r['vs_whole']:.2f} | "
                         f"{r['peak_rss_mb']:,.0f} |")
    elif mode == "memory":
        lines = ["| volume | whole volume: peak RSS (MB) / time (s) | exact tiling: peak RSS (MB) / time (s) |",
                 "|---|---:|---:|"]
        for r in res["rows"]:
            w = r.get("whole")
            ws = f"{w['vmhwm_mb']:,.0f} / {w['seconds']:.1f}" if w else "not run"
            e = r["exact"]
            lines.append(f"| {r['size']}³ | {ws} | {e['vmhwm_mb']:,.0f} / {e['seconds']:.1f} |")
    else:
        lines = ["| ranks (mesh) | inference (s) | inference bytes sent | train step (s) | train bytes sent |",
                 "|---|---:|---:|---:|---:|"]
        for r in res["rows"]:
            i, t = r["inference"], r["train_step"]
            lines.append(f"| {r['ranks']} ({'x'.join(map(str, r['mesh']))}) | {i['median_s']:.2f} | "
                         f"{i['bytes_sent_all_ranks'] / 2**20:.1f} MiB | {t['median_s']:.2f} | "
                         f"{t['bytes_sent_all_ranks'] / 2**20:.1f} MiB |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fidelity", "speed", "memory", "scaling", "one", "rank"])
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256, 512])
    ap.add_argument("--whole-max", type=int, default=256, help="largest size run whole-volume")
    ap.add_argument("--budget-mb", type=float, default=1500.0)
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default="whole")
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=HERE.parent / "results")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.mode == "one":
        return one(args)
    if args.mode == "rank":
        return rank_main(args)
    command = "python benchmarks/partition_bench.py " + " ".join(sys.argv[1:])
    res = {"fidelity": fidelity, "speed": speed, "memory": memory, "scaling": scaling}[args.mode](args)
    payload = {**meta(command), "mode": args.mode, **res}
    path = save(args.mode + (f"_{args.tag}" if args.tag else ""), payload, args.results)
    print(markdown(args.mode, payload))
    print(f"\nwritten: {path.relative_to(HERE.parent.parent) if path.is_relative_to(HERE.parent.parent) else path}")


if __name__ == "__main__":
    main()
