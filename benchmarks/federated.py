"""Benchmark: federated (Flower, FedAvg) vs centralized vs each hospital alone, same epochs.

The training part of the config's split (default ``config/train.polyp-small.yaml``:
Kvasir-SEG, 640 training images) is cut into ``--sites`` contiguous shares, one per
"hospital" (:func:`medinfer.train.recipes.site_share`). Each approach trains for the
same number of epochs over its data (``--rounds`` x ``--local-epochs``):

* centralized: ``medinfer train`` on all the training images;
* federated: ``medinfer federated`` with one client process per site on loopback, each
  training ``--local-epochs`` per round on its share, FedAvg after each round;
* alone: ``medinfer train --set site=K --set sites=N`` for each site, on its share only.

Every model keeps its last epoch (or round): nothing is chosen on the evaluation images.
All are evaluated on the config's validation part (160 images none of them trained on)
through ``evaluate_folder`` (the same code as ``medinfer evaluate``), with bootstrap 95 %
intervals of the mean Dice. The shares are a random split of one data set (IID), which is
kinder to federated averaging than hospitals with different scanners and populations.

Usage (from the repository root):

    .venv/bin/python benchmarks/federated.py --out benchmarks/results/federated_$(date +%F).json
    .venv/bin/python benchmarks/federated.py --rounds 1 --out runs/federated_quick.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medinfer.apps.evaluate import evaluate_folder  # noqa: E402
from medinfer.artifact import ModelArtifact  # noqa: E402
from medinfer.data.pairs import materialize_pairs  # noqa: E402
from medinfer.runtime.bench import machine_info, versions  # noqa: E402
from medinfer.train.cli_config import load_config  # noqa: E402
from medinfer.train.recipes import recipe_for, site_share  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MEDINFER = str(Path(sys.executable).parent / "medinfer")


def rel(path: Path) -> str:
    return os.path.relpath(path, REPO)


def run(args: list[str], reuse: Path | None = None) -> float | None:
    """Run ``medinfer ARGS`` from the repository root; its wall time (None: ``reuse`` names an
    artifact already there, so nothing ran)."""
    if reuse is not None and (reuse / "artifact.json").is_file():
        return None
    t0 = time.perf_counter()
    proc = subprocess.run([MEDINFER, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"medinfer {' '.join(args)} failed:\n{(proc.stderr or proc.stdout)[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def score(art_dir: Path, val_dir: Path, threads: int) -> dict:
    from medinfer.runtime import EngineOptions

    m = evaluate_folder(ModelArtifact.load(art_dir), val_dir, options=EngineOptions(threads=threads), n_boot=1000)
    return {"dice": round(m["dice"], 4), "dice_ci95": [round(v, 4) for v in m["intervals"]["dice"]],
            "iou": round(m["iou"], 4), "n": int(m["n"])}


def figure(rows: list[dict], fed_curve: list[dict], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["approach"] for r in rows]
    dice = [r["test"]["dice"] for r in rows]
    err = [[d - r["test"]["dice_ci95"][0] for d, r in zip(dice, rows)],
           [r["test"]["dice_ci95"][1] - d for d, r in zip(dice, rows)]]
    a.bar(names, dice, yerr=err, capsize=4, color=["#4477aa", "#228833"] + ["#bbbbbb"] * (len(rows) - 2))
    a.set_ylabel("Dice on the 160 held-out images")
    a.set_ylim(0, 1)
    a.tick_params(axis="x", rotation=30)
    b.plot([c["round"] for c in fed_curve], [c["dice"] for c in fed_curve], marker="o")
    b.set_xlabel("round")
    b.set_ylabel("sites' validation Dice (sample-weighted)")
    b.set_title("federated rounds")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=REPO / "config/train.polyp-small.yaml")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--work", type=Path, default=REPO / "runs/bench/federated")
    p.add_argument("--reuse", action="store_true", help="keep the artifacts an earlier run left in --work")
    p.add_argument("--no-alone", action="store_true", help="leave out the runs of each site alone")
    p.add_argument("--optimize", action="store_true",
                   help="also optimize the federated model (calibrated on site 0's training images, gated on the held-out part)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cores = os.cpu_count() or 1
    epochs = a.rounds * a.local_epochs
    cfg = load_config(a.config)
    split = recipe_for(cfg).split(cfg)
    val_dir = materialize_pairs(split.val, a.work / "held-out")
    config, work = rel(a.config), a.work
    if not split.val:
        raise SystemExit(f"{config}: its split has no validation part to evaluate on")
    common = ["--set", f"epochs={epochs}", "--set", f"val_every={epochs}"]
    rows = []

    out = work / "centralized"
    wall = run(["train", "--config", config, "--set", f"out={rel(out)}", "--threads", str(cores), *common],
               out if a.reuse else None)
    rows.append({"approach": "centralized", "train_images": len(split.train), "wall_s": wall, "artifact": rel(out)})

    out = work / "federated"
    wall = run(["federated", "--config", config, "--sites", str(a.sites), "--rounds", str(a.rounds),
                "--local-epochs", str(a.local_epochs), "--set", f"out={rel(out)}",
                "--set", f"threads={max(1, cores // a.sites)}"], out if a.reuse else None)
    rows.append({"approach": "federated", "train_images": len(split.train), "wall_s": wall, "artifact": rel(out)})

    for k in range(0 if a.no_alone else a.sites):
        out = work / f"alone-{k}"
        share = site_share(split, k, a.sites)
        wall = run(["train", "--config", config, "--set", f"out={rel(out)}", "--set", f"site={k}",
                    "--set", f"sites={a.sites}", "--threads", str(cores), *common], out if a.reuse else None)
        rows.append({"approach": f"site {k} alone", "train_images": len(share.train), "wall_s": wall, "artifact": rel(out)})

    earlier = json.loads(a.out.read_text()) if a.reuse and a.out.is_file() else {}
    walls = {r["approach"]: r["wall_s"] for r in earlier.get("rows", [])}
    for r in rows:
        r["test"] = score(REPO / r["artifact"], val_dir, cores)
        if r["wall_s"] is None:  # reused: the time of the run that trained it
            r["wall_s"] = walls.get(r["approach"])
    optimized = None
    if a.optimize:
        calib = materialize_pairs(site_share(split, 0, a.sites).train, work / "calib-site0")
        run(["optimize", "--model", rel(work / "federated"), "--calib", rel(calib), "--val", rel(val_dir),
             "--threads", str(cores)])
        spec = ModelArtifact.load(work / "federated").spec
        optimized = {"chosen": spec.chosen, "variants": {v.name: {"passed": v.passed, "reason": v.reason,
                                                                  "dice": v.metrics.get("dice"), "latency_ms": v.latency_ms}
                                                         for v in spec.variants}}
    fed = ModelArtifact.load(work / "federated").spec.training
    fed_curve = [{"round": h.epoch, "dice": h.metrics.get("dice"), "loss": h.train_loss} for h in fed.history]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    png = a.out.with_suffix(".png")
    figure(rows, fed_curve, png)
    central = rows[0]["test"]["dice"]
    result = {"benchmark": "federated", "date": dt.date.today().isoformat(),
              "command": " ".join([Path(sys.executable).name, *[rel(Path(x)) if x.startswith(str(REPO)) else x
                                                                 for x in sys.argv]]),
              "machine": machine_info(), "versions": versions(), "config": config, "sites": a.sites,
              "rounds": a.rounds, "local_epochs": a.local_epochs, "epochs_each": epochs,
              "held_out": {"images": len(split.val), "what": "the config's validation part (never trained on)"},
              "federated_minus_centralized_dice": round(rows[1]["test"]["dice"] - central, 4),
              "federated_record": fed.federated, "federated_optimized": optimized, "federated_rounds": fed_curve, "figure": rel(png), "rows": rows}
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
