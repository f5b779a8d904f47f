"""Benchmark: M-CNN vs its single-scale baseline on the held-out CRIC cell crops. Not a test.

Both artifacts must come from the same split of the same folder (checked: their recorded
train / validation / test crops are equal). On the test part, which neither run trained,
calibrated or chose an epoch on, each network is scored through the classification task
(top-1 accuracy with a Wilson 95 % interval, balanced accuracy, macro (mean) AUC and
per-class AUC with percentile-bootstrap 95 % intervals, abnormal AUC = AUC of 1 - P(NILM))
in PyTorch FP32 ("eager") and in the artifact's chosen variant when ``medinfer optimize``
chose one. Also: parameters, multiply-accumulates per image, and ms per image (median of
single-image calls; batch of 16 divided by 16), one thread. Writes the JSON and a
confusion-matrix PNG beside it; every path in the JSON is relative to the repository.

Usage (repository root):

    .venv/bin/python benchmarks/mcnn.py --mcnn models/cric-mcnn --scnn runs/cric-scnn \\
        --threads 1 --out benchmarks/results/mcnn_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from medinfer.apps.splits import classification_split
from medinfer.artifact import ModelArtifact
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import machine_info, versions
from medinfer.runtime.measure import timed_runs
from medinfer.tasks import task_for
from medinfer.variants import REFERENCE

REPO = Path(__file__).resolve().parent.parent


def rel(path: Path | str) -> str:
    """``path`` relative to the repository (no machine's absolute path in the JSON)."""
    return os.path.relpath(Path(path).resolve(), REPO)


def revision() -> dict[str, object]:
    """``git rev-parse HEAD`` and whether the tracked files differ from it (as train_speed.py)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def macs_per_image(net: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one input of ``shape``."""
    total = 0

    def hook(m: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


def score(art: ModelArtifact, variant: str, data: Any, threads: int, n_boot: int, runs: int) -> dict[str, Any]:
    """Test metrics of one variant and its ms per image (single calls and batches of 16)."""
    task = task_for(art)
    record = art.variant(variant)
    engine = task.open_variant(record, EngineOptions(threads=threads))
    try:
        metrics = task.score(engine, data, n_boot=n_boot)
        one = timed_runs(engine.infer, data.images[:1], 10, runs)
        sixteen = timed_runs(engine.infer, data.images[np.arange(16) % len(data)], 3, max(runs // 8, 5))
    finally:
        engine.close()
    return {"variant": variant, "metrics": metrics,
            "ms_per_image_single": float(np.median(one)), "ms_per_image_batch16": float(np.median(sixteen)) / 16}


def confusion_png(rows: dict[str, dict[str, Any]], classes: list[str], path: Path) -> Path:
    """One confusion matrix per network (rows true class, columns predicted), side by side."""
    fig = Figure(figsize=(5.2 * len(rows), 4.6), dpi=110)
    for ax, (name, row) in zip(fig.subplots(1, len(rows), squeeze=False)[0], rows.items()):
        conf = np.asarray(row["eager"]["metrics"]["confusion"])
        ax.imshow(conf / np.maximum(conf.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if conf[i, j] > conf[i].sum() / 2 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        m = row["eager"]["metrics"]
        ax.set_title(f"{name}: accuracy {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}\n"
                     f"(test crops, n = {int(m['n'])}; colour: row fraction)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcnn", type=Path, required=True, help="the M-CNN artifact")
    parser.add_argument("--scnn", type=Path, required=True, help="the single-scale baseline artifact")
    parser.add_argument("--data", type=Path, help="data folder (default: the one the M-CNN trained on)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200, help="timed single-image calls per variant")
    parser.add_argument("--out", type=Path, required=True, help="result JSON; the PNG goes beside it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    arts = {"M-CNN": ModelArtifact.load(args.mcnn), "single-scale CNN": ModelArtifact.load(args.scnn)}
    splits = {k: a.spec.training.split for k, a in arts.items()}
    first = next(iter(splits.values()))
    if any(s is None or s.model_dump() != first.model_dump() for s in splits.values()):  # type: ignore[union-attr]
        raise SystemExit("the two artifacts were not trained on the same split")
    mcnn = arts["M-CNN"]
    with tempfile.TemporaryDirectory() as tmp:
        folders = classification_split(mcnn, Path(tmp), args.data)
        data = task_for(mcnn).load_eval(folders.test)
    rows: dict[str, dict[str, Any]] = {}
    for name, art in arts.items():
        net = art.load_network()
        row: dict[str, Any] = {
            "artifact": rel(art.root), "architecture": art.spec.architecture, "arch_kwargs": art.spec.arch_kwargs,
            "parameters": sum(p.numel() for p in net.parameters()),
            "macs_per_image": macs_per_image(net, (art.spec.in_channels, *art.spec.input.spatial)),
            "best_epoch": art.spec.training.best_epoch, "epochs_run": art.spec.training.epochs_run,
            "train_seconds": art.spec.training.seconds, "val_metrics": art.spec.metrics,
            "chosen": art.spec.chosen}
        row["eager"] = score(art, REFERENCE, data, args.threads, args.n_boot, args.runs)
        if art.spec.chosen and art.spec.chosen != REFERENCE:
            row["chosen_variant"] = score(art, art.spec.chosen, data, args.threads, args.n_boot, args.runs)
        row["gate"] = {v.name: {"passed": v.passed, "reason": v.reason, "latency_ms_batch16": v.latency_ms,
                                "val_accuracy": v.metrics.get("accuracy"), "val_mean_auc": v.metrics.get("mean_auc")}
                       for v in art.spec.variants}
        rows[name] = row
        print(name, {k: round(row["eager"]["metrics"][k], 4) for k in ("accuracy", "balanced_accuracy", "mean_auc")},
              f"{row['eager']['ms_per_image_single']:.2f} ms/image")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure = confusion_png(rows, list(mcnn.spec.classes), args.out.with_name(args.out.stem + "_confusion.png"))
    test = first.test  # type: ignore[union-attr]
    result = {
        "benchmark": "mcnn", "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "revision": revision(),
        "machine": machine_info(), "versions": versions(), "threads": args.threads,
        "data": rel(args.data or mcnn.spec.training.data or "."),
        "split": {"unit": "crop (the CRIC crops carry no patient or source-image id)",
                  "train": len(first.train), "val": len(first.val), "test": len(test)},  # type: ignore[union-attr]
        "test_class_counts": {c: int(v) for c, v in zip(data.classes, data.labels.sum(axis=0))},
        "classes": list(mcnn.spec.classes), "n_boot": args.n_boot,
        "intervals": "accuracy: Wilson 95 %; balanced accuracy and AUCs: percentile bootstrap 95 % over test crops",
        "networks": rows, "figures": [rel(figure)],
        "caveat": ("per-crop split: crops of one microscope image (same smear and staining) can be in "
                   "train and test, so these figures are optimistic for new slides or patients"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
