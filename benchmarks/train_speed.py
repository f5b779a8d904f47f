"""Benchmark: training images per second on this CPU, per way of computing a step, side by side.

Variants of one training step (forward, loss in FP32, backward, Adam step):
``fp32`` (eager), ``fp32+channels_last``, ``bf16`` (``torch.autocast("cpu", bfloat16)``
around the forward), ``bf16+channels_last``, ``fp32+compile`` and ``bf16+compile``
(``torch.compile`` of the network, default mode; its compile time is reported apart and
the throughput is the steady state after it). Networks: densenet121 (224² RGB, batch 16,
1 logit), the first polyp resunet (224², batch 16, channels 16..256), the retrained one
(``resunet-wide``: 32..512, ReLU, resize decoder), unet3d and
dense_unet3d (48×64×48, batch 2, 3 outputs), on synthetic data.

Each variant has its own copy of the network (same initial weights) and optimizer. After
the warm-up steps, the variants take turns (round robin over ``--repeats`` rounds of
``--steps`` timed steps each), so a change in machine load hits all alike. Reported:
median images/s over the timed steps and its ratio to ``fp32`` eager of the same network.

Usage (from the repository root):

    .venv/bin/python benchmarks/train_speed.py --threads 2 \
        --out benchmarks/results/train_speed_$(date +%F).json
    .venv/bin/python benchmarks/train_speed.py --quick --out runs/train_speed_quick.json

Run time: the default run took 27 minutes on 2 cores shared with a training run, 14.5 of
them torch.compile's compilation (8 compilations, 1 to 5 minutes each); leaving out the
compile variants (``--variants fp32,fp32+channels_last,bf16,bf16+channels_last``) brings
it to about 6 to 8 minutes. ``--quick`` (small inputs, one timed step per variant, no
compile variants) is a smoke run of 1 to 2 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medinfer.models import create_model
from medinfer.progress import status_progress
from medinfer.runtime.cpu import cpu_info, has_bf16

log = logging.getLogger("train_speed")
REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "fp32+channels_last", "bf16", "bf16+channels_last", "fp32+compile",
            "bf16+compile")


@dataclass(frozen=True)
class NetCase:
    """One network as benchmarked: registry name, shapes and architecture overrides."""

    label: str
    arch: str
    in_channels: int
    out_channels: int
    spatial: tuple[int, ...]
    batch: int
    kwargs: dict[str, object] = field(default_factory=dict)


CASES = (
    NetCase("densenet121", "densenet121", 3, 1, (224, 224), 16),
    NetCase("resunet", "resunet", 3, 1, (224, 224), 16, {"channels": (16, 32, 64, 128, 256)}),
    NetCase("resunet-wide", "resunet", 3, 1, (224, 224), 16,
            {"channels": (32, 64, 128, 256, 512), "act": "relu", "up": "resize"}),
    NetCase("unet3d", "unet3d", 1, 3, (48, 64, 48), 2),
    NetCase("dense_unet3d", "dense_unet3d", 1, 3, (48, 64, 48), 2),
)
QUICK_SPATIAL = {2: (32, 32), 3: (16, 16, 16)}


class Runner:
    """One variant of one network: its network copy, optimizer, step function and timings."""

    def __init__(self, case: NetCase, variant: str, state: dict[str, torch.Tensor],
                 data: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.variant, self.case = variant, case
        self.bf16 = variant.startswith("bf16")
        self.compiled = variant.endswith("+compile")
        self.channels_last = variant.endswith("+channels_last")
        net = create_model(case.arch, in_channels=case.in_channels,
                           out_channels=case.out_channels, **case.kwargs)
        net.load_state_dict(state)
        x, y = data
        if self.channels_last:
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        self.net = net.train()
        self.x, self.y = x, y
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.net) if self.compiled else self.net)
        self.first_step_s: float | None = None
        self.times: list[float] = []
        self.error: str | None = None

    def step(self) -> float:
        """One optimizer step; returns its wall seconds."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.forward(self.x)
        # The loss (and so the gradient it starts) in FP32, outside autocast.
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), self.y)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0

    def warm_up(self, steps: int) -> None:
        """Warm-up steps; the first includes torch.compile's compilation."""
        try:
            self.first_step_s = self.step()
            for _ in range(steps - 1):
                self.step()
        except Exception as exc:  # the compiler raises many unrelated types
            if not self.compiled:
                raise
            self.error = f"torch.compile failed: {type(exc).__name__}: {exc}"[:500]
            log.warning("%s %s: %s", self.case.label, self.variant, self.error)
            torch._dynamo.reset()

    def summary(self, batch: int) -> dict[str, object]:
        if self.error or not self.times:
            return {"variant": self.variant, "skipped": True, "note": self.error}
        med = statistics.median(self.times)
        out: dict[str, object] = {
            "variant": self.variant, "skipped": False, "steps": len(self.times),
            "median_step_s": med, "median_images_per_s": batch / med,
            "min_step_s": min(self.times), "max_step_s": max(self.times),
            "step_s": self.times, "first_step_s": self.first_step_s,
        }
        if self.compiled and self.first_step_s is not None:
            # The first call compiles forward and backward graphs; the rest is one step.
            out["compile_s"] = max(0.0, self.first_step_s - med)
        return out


def _data(case: NetCase, spatial: tuple[int, ...], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, case.in_channels, *spatial, generator=g)
    if case.arch.startswith("densenet"):
        y = torch.randint(0, 2, (batch, case.out_channels), generator=g).float()
    else:
        y = torch.randint(0, 2, (batch, case.out_channels, *spatial), generator=g).float()
    return x, y


def bench_case(case: NetCase, variants: list[str], args: argparse.Namespace,
               bar, task) -> dict[str, object]:
    """All variants of one network, interleaved; returns its JSON record."""
    spatial = QUICK_SPATIAL[len(case.spatial)] if args.quick else case.spatial
    batch = min(case.batch, 2) if args.quick else case.batch
    # Dynamo keys its cache by code object: resunet and unet3d share MONAI's UNet.forward,
    # and a second shape would trigger a dynamic-shape recompile that times something else.
    torch._dynamo.reset()
    torch.manual_seed(0)
    state = create_model(case.arch, in_channels=case.in_channels, out_channels=case.out_channels,
                         **case.kwargs).state_dict()
    data = _data(case, spatial, batch)
    runners = [Runner(case, v, state, data) for v in variants]
    for r in runners:
        bar.update(task, status=f"{case.label} {r.variant}: warm-up")
        r.warm_up(args.warmup)
        bar.advance(task)
    live = [r for r in runners if r.error is None]
    for rnd in range(args.repeats):
        for r in live:
            bar.update(task, status=f"{case.label} {r.variant}: round {rnd + 1}/{args.repeats}")
            r.times.extend(r.step() for _ in range(args.steps))
            bar.advance(task)
    rows = [r.summary(batch) for r in runners]
    base = next((row for row in rows if row["variant"] == "fp32" and not row["skipped"]), None)
    for row in rows:
        if base is not None and not row["skipped"]:
            row["ratio_to_fp32"] = row["median_images_per_s"] / base["median_images_per_s"]
    params = sum(p.numel() for p in runners[0].net.parameters())
    return {"network": case.label, "architecture": case.arch, "arch_kwargs": case.kwargs,
            "input": [batch, case.in_channels, *spatial], "out_channels": case.out_channels,
            "parameters": params, "variants": rows}


def revision() -> dict[str, object]:
    """``git rev-parse HEAD`` and whether the working tree differs from it."""
    def git(*a: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                             check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def markdown(results: list[dict[str, object]], variants: list[str]) -> str:
    """Table: one row per network, median images/s (ratio to fp32 eager) per variant."""
    lines = ["| network | input | " + " | ".join(variants) + " |",
             "|---|---|" + "---:|" * len(variants)]
    for res in results:
        cells = []
        for row in res["variants"]:  # type: ignore[union-attr]
            if row["skipped"]:
                cells.append("skipped")
            else:
                cells.append(f"{row['median_images_per_s']:.2f} ({row['ratio_to_fp32']:.2f}×)")
        shape = "×".join(str(s) for s in res["input"][2:])  # type: ignore[index]
        lines.append(f"| {res['network']} | {res['input'][0]}×{shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per variant")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per variant per round")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--networks", default=",".join(c.label for c in CASES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small inputs, one timed step, no compile variants")
    ap.add_argument("--note", default="", help="e.g. that another process shared the CPU")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.quick:
        variants = [v for v in variants if not v.endswith("+compile")]
        args.steps, args.repeats = 1, 1
    cases = [c for c in CASES if c.label in args.networks.split(",")]
    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    results = []
    with status_progress() as bar:
        task = bar.add_task("train speed", status="",
                            total=len(cases) * len(variants) * (1 + args.repeats))
        for case in cases:
            results.append(bench_case(case, variants, args, bar, task))
    payload = {
        "benchmark": "train_speed", "date": started.strftime("%Y-%m-%d"),
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": (dt.datetime.now(dt.UTC) - started).total_seconds(),
        "command": "python " + " ".join(sys.argv), "revision": revision(),
        "machine": {**cpu_info(), "has_bf16": has_bf16()},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "settings": {"warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
                     "quick": args.quick, "optimizer": "adam", "lr": 1e-4,
                     "loss": "binary cross-entropy with logits, FP32",
                     "data": "synthetic (randn inputs, random 0/1 targets)"},
        "note": args.note, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    sys.stdout.write(markdown(results, variants) + "\n")


if __name__ == "__main__":
    main()
