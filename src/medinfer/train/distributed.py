"""Data-parallel training on torchrun: ``medinfer train --config FILE --nproc-per-node N``.

The command validates the config once, writes it beside the launch and starts the ranks
(:func:`launch_training`); every rank runs this module's :func:`main`, which joins the job
(:class:`~medinfer.train.parallel.Parallel`) and runs the one training loop
(:func:`~medinfer.train.fit.fit`) on its shard. Several machines run the same command with
``--nnodes`` and one ``--rdzv-endpoint``; the rank 0 process writes the artifact on its
machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from medinfer.artifact import ModelArtifact
from medinfer.errors import MedinferError
from medinfer.runtime.launch import Launch, run_torchrun
from medinfer.train.cli_config import validate
from medinfer.train.config import FitConfig
from medinfer.train.fit import FitResult, run_training
from medinfer.train.parallel import Parallel

log = logging.getLogger(__name__)


def threads_per_rank(cfg: FitConfig, launch: Launch, cores: int | None = None) -> int:
    """``cfg.threads``, lowered so this machine's ranks do not oversubscribe its cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cfg.threads, cores // launch.nproc_per_node))


def launch_training(cfg: FitConfig, launch: Launch, command: str = "") -> FitResult | None:
    """Train ``cfg`` on the ranks of ``launch`` and wait for them.

    Returns:
        The artifact when rank 0 ran on this machine (None when it ran on another one).

    Raises:
        MedinferError: a rank failed (its messages are on this terminal).
    """
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="medinfer-train-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(cfg.model_dump_json())
        run_torchrun(launch, "medinfer.train.distributed", [str(path), "--command", command], capture=False,
                     env={"OMP_NUM_THREADS": str(cfg.threads)})
    written = Path(cfg.out) / "artifact.json"
    if written.is_file() and written.stat().st_mtime >= start:
        return FitResult(ModelArtifact.load(cfg.out))
    return None


def main(argv: list[str] | None = None) -> int:
    """One rank: ``python -m torch.distributed.run ... -m medinfer.train.distributed CONFIG.json``;
    exit code 2 on a user error (bad data, bad config)."""
    p = argparse.ArgumentParser(prog="medinfer.train.distributed")
    p.add_argument("config", type=Path, help="The validated training config, as JSON.")
    p.add_argument("--command", default="", help="The command line to record in the artifact.")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    par = Parallel.join()
    try:
        cfg = validate(json.loads(a.config.read_text()), a.config)
        result = run_training(cfg, a.command, par)
        if par.main:
            info = result.artifact.spec.training.parallel
            print(f"rank 0 wrote {cfg.out}: {info.get('world')} processes on {info.get('nodes')} machine(s), "
                  f"ranks differ by at most {info.get('rank_spread', 0.0):.3g}", file=sys.stderr)
    except MedinferError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        par.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
