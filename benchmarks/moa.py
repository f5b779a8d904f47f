"""Benchmark: MoA profiling of the real BBBC021 per-well profiles (1-NN, cosine). Not a test.

Runs :func:`medinfer.apps.moa.run_moa` (per-plate DMSO robust z-scores, treatment medians,
nearest neighbour under NSC / NSCB / random) and records the accuracies with the machine,
versions, date and command; the figures are written beside the JSON.

Usage (repository root):

    .venv/bin/python benchmarks/moa.py --out benchmarks/results/moa_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from medinfer.apps.moa import run_moa
from medinfer.runtime.bench import machine_info, versions

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO.parent / "shared" / "data" / "hcs-bbbc021" / "profiles"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROFILES)
    parser.add_argument("--out", type=Path, required=True, help="result JSON; PNGs beside it")
    args = parser.parse_args()
    stem = args.out.with_suffix("").name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_moa(args.data, Path(tmp))
        seconds = time.perf_counter() - t0
        figures = []
        for name in ("confusion_nsc.png", "confusion_nscb.png", "embedding_pca.png"):
            dest = args.out.parent / f"{stem}_{name}"
            shutil.copyfile(Path(tmp) / name, dest)
            figures.append(str(dest.relative_to(REPO)) if dest.is_relative_to(REPO) else str(dest))
    summary.pop("files")
    summary["data"] = os.path.relpath(args.data.resolve(), REPO)  # no machine's absolute path
    result = {
        "benchmark": "moa", "date": dt.date.today().isoformat(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(), "versions": versions(),
        **summary, "seconds": round(seconds, 2), "figures": figures,
        "reference": {"cytominer_vignette_nsc_1nn": 0.82},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({p: r["accuracy"] for p, r in result["protocols"].items()}))


if __name__ == "__main__":
    main()
