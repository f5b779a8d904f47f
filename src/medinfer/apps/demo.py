"""`medinfer demo`: the seed story end to end on shipped data and the committed model.

Copies the artifact, rebuilds the training run's own train/validation split, optimizes
(export -> quantize -> Dice gate) on small subsets, benchmarks the ladder and writes the
HTML report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from medinfer.artifact import SPEC_FILE, WEIGHTS_FILE, ModelArtifact
from medinfer.data.pairs import find_pairs, materialize_pairs, split_pairs
from medinfer.errors import ArtifactError
from medinfer.optimize.pipeline import OptimizeConfig, optimize
from medinfer.report.build import build_report
from medinfer.report.tables import ladder_table
from medinfer.runtime import EngineOptions
from medinfer.runtime.bench import DEFAULT_VARIANTS, run_bench
from medinfer.runtime.measure import MeasureSettings
from medinfer.tasks import task_for


@dataclass(frozen=True)
class DemoConfig:
    """Demo inputs; subset sizes keep it to a few minutes on 2 cores.

    Fewer than ~100 calibration images made NNCF's INT8 lose more than 0.005 Dice on
    this model (32 images: -0.006 on 48 validation images), so the defaults use 128.
    """

    model: Path
    data: Path
    work: Path
    n_calib: int = 128
    n_val: int = 160
    threads: int = 2
    max_drop: float = 0.005


def prepare(cfg: DemoConfig) -> tuple[ModelArtifact, Path, Path]:
    """Copy the artifact into the work folder and lay out calibration/validation subsets.

    The split is the one the model was trained with (seed and fraction from the artifact),
    so calibration images come from its training part and validation images were never
    trained or calibrated on.
    """
    src = ModelArtifact.load(cfg.model)
    dst = cfg.work / cfg.model.name
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (src.root / name).is_file():
            raise ArtifactError(src.root / name, "missing from the artifact")
        shutil.copy2(src.root / name, dst / name)
    art = ModelArtifact.load(dst)
    art.spec.variants, art.spec.chosen = [], None
    tcfg = dict(art.spec.training.config)
    train, val = split_pairs(find_pairs(cfg.data), float(tcfg.get("val_fraction", 0.2)),
                             int(tcfg.get("seed", 0)))
    for sub in ("calib", "val"):
        shutil.rmtree(cfg.work / sub, ignore_errors=True)
    calib_dir = materialize_pairs(train[: cfg.n_calib], cfg.work / "calib")
    val_dir = materialize_pairs(val[: cfg.n_val], cfg.work / "val")
    return art, calib_dir, val_dir


def run_demo(cfg: DemoConfig, console: Console) -> Path:
    """Run the whole demo; returns the report's path."""
    steps = 4 + 5 + len(DEFAULT_VARIANTS) + len(DEFAULT_VARIANTS) + 1
    cols = (TextColumn("{task.description:<46}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn())
    with Progress(*cols, console=console) as bar:
        task = bar.add_task("prepare subsets", total=steps)

        def step(text: str) -> None:
            bar.update(task, description=text, advance=1)

        art, calib_dir, val_dir = prepare(cfg)
        step(f"optimize ({cfg.n_calib} calib / {cfg.n_val} val images)")
        optimize(art, OptimizeConfig(calib=calib_dir, val=val_dir, max_drop=cfg.max_drop,
                                     options=EngineOptions(threads=cfg.threads), latency_runs=3), step)
        settings = MeasureSettings(threads=cfg.threads, runs_batch=5, runs_single=20, requests=32)
        result = run_bench(art, DEFAULT_VARIANTS, settings, command="medinfer demo",
                           metric_columns=task_for(art).columns,
                           on_variant=lambda n: step(f"bench {n} (own process)"))
        (cfg.work / "bench.json").write_text(result.to_json() + "\n")
        step("write HTML report")
        report = build_report(art, result, val_dir, cfg.work / "report.html", threads=cfg.threads)
        bar.update(task, completed=steps, description="done")
    out = console if console.is_terminal else Console(stderr=True, width=200)
    out.print(ladder_table(result))
    console.print(f"chosen variant: [bold]{art.spec.chosen or 'none passed the gate'}[/bold]")
    console.print(f"report: [bold]{report.resolve()}[/bold]")
    return report
