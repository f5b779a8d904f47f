"""End-to-end request timings of two source revisions, side by side in one run.

Runs ``medinfer bench --end-to-end`` of this checkout and of another revision's source
tree (``--base-src``, e.g. a ``git worktree`` of the commit before a refactor) on the same
model, variants and inputs, alternating the two for ``--rounds`` rounds, and records the
median of each stage per revision. Used to check that moving code behind the task layer
did not slow a request down.

    git worktree add ../medinfer-base 2589342
    .venv/bin/python benchmarks/e2e_revisions.py --base-src ../medinfer-base/src --model models/polyp-resunet \\
        --inputs ../shared/data/kvasir-seg/images/test_1*.jpg --out benchmarks/results/e2e_revisions.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.progress import Progress

from medinfer.runtime.bench import machine_info, versions

REPO = Path(__file__).resolve().parents[1]
STAGES = ("read", "preprocess", "infer", "postprocess", "write")


def run_once(src: Path, model: str, variants: str, inputs: list[str], threads: int) -> list[dict]:
    """One ``medinfer bench --end-to-end`` of the source tree ``src``; its variant rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "e2e.json"
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, "-c", "from medinfer.cli import app; app(prog_name='medinfer')", "bench", "--model", model, "--variants", variants,
               "--threads", str(threads), "--end-to-end", *inputs, "--json", str(out)]
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        return json.loads(out.read_text())["variants"]


def _revision(src: Path) -> str:
    """The commit the other tree is checked out at (recorded instead of a machine's path)."""
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-src", type=Path, required=True, help="src/ folder of the other revision")
    ap.add_argument("--model", default="models/polyp-resunet")
    ap.add_argument("--variants", default="torch-fp32,openvino-int8")
    ap.add_argument("--inputs", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    trees = {"base": a.base_src.resolve(), "this": REPO / "src"}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {t: {} for t in trees}
    with Progress() as bar:
        task = bar.add_task("rounds", total=a.rounds * len(trees))
        for _ in range(a.rounds):
            for tree, src in trees.items():
                for row in run_once(src, a.model, a.variants, a.inputs, a.threads):
                    per = samples[tree].setdefault(row["variant"], {s: [] for s in STAGES})
                    for s in STAGES:
                        per[s].append(row["median_ms"][s])
                bar.advance(task)
    medians = {t: {v: {s: statistics.median(x) for s, x in st.items()} for v, st in rows.items()}
               for t, rows in samples.items()}
    payload = {"command": " ".join(sys.argv), "machine": machine_info(), "versions": versions(),
               "model": a.model, "inputs": a.inputs, "rounds": a.rounds, "threads": a.threads,
               "base_revision": _revision(a.base_src), "median_ms": medians, "samples_ms": samples}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(payload, indent=2) + "\n")
    for v in medians["this"]:
        for s in STAGES:
            print(f"{v:16s} {s:12s} base {medians['base'][v][s]:8.2f} ms  this {medians['this'][v][s]:8.2f} ms")


if __name__ == "__main__":
    main()
