"""Benchmark: exact whole-volume inference on a real CT, against one whole pass and MONAI's
sliding window (S4, issue 11 item 5). Not a test.

A trained 3D segmentation artifact (``models/liver-ct-unet3d``) runs on a real CT series
(the 3D-IRCADb-01 abdominal CT in ../shared/data/liver-ct-ircadb: 512x512x129, read in
place from its DICOM files) in several ways, each in its own process (peak resident
memory = that process's VmHWM), in interleaved rounds:

* ``whole``: the network applied to the whole prepared volume in one call (zero-padded to
  its stride): what one device with enough memory computes; the reference.
* ``exact``: ``medinfer partition --memory-budget-mb M`` in one process (the same
  :func:`medinfer.apps.partition.run_job`): exact tiling within the budget.
* ``ranks``: ``medinfer partition --mesh 2x1x1`` (two torchrun ranks on this machine, halo
  exchange over gloo; peak memory is not sampled across ranks).
* ``sliding``: the artifact's deployed strategy, MONAI's sliding window over windows of its
  input size with its overlap and Gaussian blending (PyTorch FP32, and the optimizer's
  chosen variant when there is one).

For each: wall time of the inference call and of the whole command (read, prepare,
infer, postprocess, write), peak RSS, voxels whose label differs from ``whole`` and the
Dice against the reference liver mask (over the whole volume, and over the held-out slab
the model was validated on: the other slices were trained on).

Usage (repository root):

    .venv/bin/python benchmarks/ct_whole_volume.py --model models/liver-ct-unet3d \\
        --budget-mb 2000 --rounds 2 --out benchmarks/results/liver_ct_whole_volume_$(date +%F).json
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

from medinfer.runtime.measure import rss_peak_mb

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
log = logging.getLogger("ct_whole_volume")


def one(args: argparse.Namespace) -> None:
    """Child process: one way once; saves the label map, prints a JSON line."""
    import torch

    from medinfer.io import read_image
    from medinfer.runtime import EngineOptions
    from medinfer.tasks import Predictor

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.variant in ("exact", "ranks"):
        from medinfer.apps.partition import PartitionJob, run_job

        out = Path(args.save).with_suffix(".nii.gz")
        mesh = (2, 1, 1) if args.variant == "ranks" else (1, 1, 1)
        job = PartitionJob(args.model, args.input, out, mesh,
                           args.budget_mb if args.variant == "exact" else None, args.threads)
        run_job(job, progress=False)
        infer_s = time.perf_counter() - t0
        labels = np.asarray(read_image(out).array[0] > 0, np.uint8)
    else:
        backend, precision = ("torch", "fp32") if args.variant in ("whole", "sliding") else \
            tuple(args.variant.split(":", 1))
        with Predictor.open(args.model, backend, precision, EngineOptions(threads=args.threads)) as p:
            image = read_image(args.input)
            x = p.task.prepare(image)
            t1 = time.perf_counter()
            if args.variant == "whole":
                from medinfer.tasks.volume import pad_to_stride

                net = p.engine.net
                with torch.inference_mode():
                    logits = net(pad_to_stride(net, x)[None])[0]
                logits = logits[(slice(None), *(slice(0, n) for n in x.shape[1:]))].numpy()
            else:
                logits = p.task.infer(p.engine, x)
            infer_s = time.perf_counter() - t1
            labels = np.asarray(p.task.postprocess(logits, image).mask > 0, np.uint8)
    total_s = time.perf_counter() - t0
    np.save(args.save, labels)
    print(json.dumps({"infer_s": infer_s, "total_s": total_s, "vmhwm_mb": rss_peak_mb()}))


def child(args: argparse.Namespace, variant: str, save: Path) -> dict:
    cmd = [sys.executable, str(HERE), "one", "--variant", variant, "--model", str(args.model),
           "--input", str(args.input), "--threads", str(args.threads),
           "--budget-mb", str(args.budget_mb), "--save", str(save)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    inter, total = float(np.logical_and(a, b).sum()), float(a.sum() + b.sum())
    return 2 * inter / total if total else 1.0


def reference_mask(input_dir: Path) -> np.ndarray:
    """The case's reference label (its mask series merged, as training read them)."""
    from medinfer.data.spec import Preprocessing
    from medinfer.data.volumes import find_volume_pairs, load_volumes

    (pair,) = find_volume_pairs(input_dir.parent)
    return load_volumes([pair], Preprocessing(size=(8, 8, 8), channels=1)).masks[0]


def run(args: argparse.Namespace) -> dict:
    from rich.console import Console
    from rich.progress import Progress

    from medinfer.artifact import ModelArtifact
    from medinfer.runtime.bench import machine_info, versions

    art = ModelArtifact.load(args.model)
    variants = ["whole", "exact", "ranks", "sliding"]
    chosen = art.spec.chosen
    if chosen and chosen != "torch-fp32":
        from medinfer.variants import get_kind

        v = get_kind(chosen)
        variants.append(f"{v.backend}:{v.label}")
    truth = reference_mask(args.input)
    slab = art.spec.training.config.get("val_slab") if art.spec.training else None
    depth = truth.shape[-1]
    z0, z1 = (int(round(f * depth)) for f in slab) if slab else (0, depth)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("ways x rounds", total=args.rounds * len(variants))
        labels: dict[str, np.ndarray] = {}
        for r in range(args.rounds):  # interleaved: drift of the shared machine hits all alike
            for v in variants:
                save = Path(tmp) / f"{v.replace(':', '_')}_{r}.npy"
                runs[v].append(child(args, v, save))
                labels[v] = np.load(save)
                bar.advance(task)
    ref = labels["whole"]
    rows = []
    for v in variants:
        y = labels[v]
        rows.append({
            "way": v, "infer_s": statistics.median(x["infer_s"] for x in runs[v]),
            "total_s": statistics.median(x["total_s"] for x in runs[v]),
            "peak_rss_mb": max(x["vmhwm_mb"] for x in runs[v]),
            "runs": runs[v],
            "label_disagreements_vs_whole": int((y != ref).sum()),
            "dice_whole_volume": dice(y > 0, truth > 0),
            "dice_held_out_slab": dice(y[..., z0:z1] > 0, truth[..., z0:z1] > 0),
        })
    base = next(r for r in rows if r["way"] == "whole")
    for r in rows:
        r["infer_vs_whole"] = r["infer_s"] / base["infer_s"]
    return {
        "benchmark": "ct_whole_volume",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(), "versions": versions(),
        "model": str(args.model), "chosen_variant": chosen,
        "input": {"path": os.path.relpath(args.input, REPO), "shape": list(truth.shape),
                  "held_out_slab": [z0, z1], "voxels": int(truth.size)},
        "budget_mb": args.budget_mb, "threads": args.threads, "rounds": args.rounds,
        "rows": rows,
    }


def markdown(res: dict) -> str:
    lines = ["| way | inference (s) | × whole | whole command (s) | peak RSS (MB) | labels ≠ whole | "
             "Dice (volume) | Dice (held-out slab) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['way']} | {r['infer_s']:.1f} | {r['infer_vs_whole']:.2f} | "
                     f"{r['total_s']:.1f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['label_disagreements_vs_whole']:,} | {r['dice_whole_volume']:.4f} | "
                     f"{r['dice_held_out_slab']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "one"])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "liver-ct-unet3d")
    ap.add_argument("--input", type=Path,
                    default=REPO.parent / "shared" / "data" / "liver-ct-ircadb" / "ircadb01_01" / "ct")
    ap.add_argument("--budget-mb", type=float, default=2000.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variant", default="whole")
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.mode == "one":
        one(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = run(args)
    text = json.dumps(res, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(markdown(res))


if __name__ == "__main__":
    main()
