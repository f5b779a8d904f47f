"""The `medinfer` command. Each subcommand parses flags and calls one stage's API."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from medinfer.errors import MedinferError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast, verified, hospital-ready inference for medical-imaging models.")
console = Console(stderr=True)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    for noisy in ("nncf", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: MedinferError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


def _emit_json(payload: dict, out: Path | None) -> None:
    text = json.dumps(payload, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Folder in the Kvasir layout (images/, masks/).")],
    out: Annotated[Path, typer.Option(help="Artifact folder to write.")],
    model: Annotated[str, typer.Option(help="Registered architecture.")] = "resunet",
    channels: Annotated[Optional[str], typer.Option(help="Comma-separated channels per level.")] = None,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    lr_step: int = 30,
    lr_gamma: float = 0.5,
    loss: Annotated[str, typer.Option(help="dice | dicece")] = "dice",
    val_fraction: float = 0.2,
    seed: int = 0,
    threads: int = 2,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after this much time.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N pairs (tests).")] = None,
) -> None:
    """Train a segmentation model (paper recipe) and save its best epoch as an artifact."""
    from medinfer.train import TrainConfig, train_segmentation

    kwargs: dict[str, object] = {}
    if channels:
        kwargs["channels"] = tuple(int(c) for c in channels.split(","))
    cfg = TrainConfig(data=data, out=out, architecture=model, arch_kwargs=kwargs, epochs=epochs,
                      batch_size=batch_size, lr=lr, lr_step=lr_step, lr_gamma=lr_gamma, loss=loss,
                      val_fraction=val_fraction, seed=seed, threads=threads,
                      max_minutes=max_minutes, limit=limit)
    command = "medinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = train_segmentation(cfg, command=command)
    except MedinferError as exc:
        raise _fail(exc) from exc
    m = result.artifact.spec.metrics
    console.print(f"best epoch {result.best_epoch}: val Dice {m['dice']:.4f} IoU {m['iou']:.4f} -> {out}")
