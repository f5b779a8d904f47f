"""Benchmark: how much label the CRIC crops carry on their own. Not a test.

The small tile ResNet (``tile-resnet`` depth 10 width 16) learns NILM vs abnormal (ASC-US or
worse) on the crops of the ``train`` part of :func:`~medinfer.data.mosaic.crop_split` and is
scored on the ``val`` part (disjoint crops), at the two scales the S7 stages read: 50 pixels
(0.5 um/pixel, stage 1's tiles) and 100 pixels (0.25 um/pixel, stage 2's regions). Random
90-degree turns; AUC after each epoch. This bounds what any mosaic slide built from these
crops can teach.

Usage (repository root):

    .venv/bin/python benchmarks/cric_crops.py --out benchmarks/results/cric_crops_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medinfer.data.mosaic import crop_split
from medinfer.metrics.classification import roc_auc
from medinfer.models import create_model
from medinfer.runtime.bench import machine_info, versions

REPO = Path(__file__).resolve().parent.parent
CRIC = REPO.parent / "shared" / "data" / "cervical-cytology-cric"


def load(crops: list, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([np.asarray(Image.open(c.path).convert("RGB").resize((side, side), Image.BILINEAR))
                  for c in crops]).astype(np.float32) / 255
    return torch.from_numpy((x.transpose(0, 3, 1, 2) - 0.8) / 0.15), torch.tensor([float(c.cls != "NILM") for c in crops])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    parts = crop_split(CRIC)
    runs = {}
    for side in (50, 100):
        xt, yt = load(parts["train"], side)
        xv, yv = load(parts["val"], side)
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            net = create_model("tile-resnet", in_channels=3, out_channels=1, depth=10, width=16)
            opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            aucs = []
            for _ in range(args.epochs):
                net.train()
                order = torch.from_numpy(rng.permutation(len(xt)))
                for i in range(0, len(order) - 1, 32):
                    idx = order[i:i + 32]
                    xb = torch.rot90(xt[idx], int(rng.integers(4)), (2, 3))
                    loss = loss_fn(net(xb)[:, 0], yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    aucs.append(roc_auc(net(xv)[:, 0].numpy(), yv.numpy()))
            runs[f"{side}px seed {seed}"] = {"val_auc_per_epoch": aucs, "best": max(aucs), "last": aucs[-1]}
            print(side, seed, [round(a, 3) for a in aucs])
    result = {"benchmark": "cric_crops", "date": dt.date.today().isoformat(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "versions": versions(), "train_crops": len(parts["train"]), "val_crops": len(parts["val"]),
              "val_abnormal": int(sum(c.cls != "NILM" for c in parts["val"])), "runs": runs,
              "note": "crop-level NILM vs abnormal; the 'best' epoch is picked on the same val crops (optimistic)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
