"""torchrun entry point of ``medinfer partition``: one rank of a distributed segmentation.

    python -m torch.distributed.run --nproc_per_node 4 -m medinfer.partition.launch \\
        --model ART --mesh 2x2x1 --out OUT.nii.gz INPUT.nii.gz
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medinfer.errors import MedinferError


def main(argv: list[str] | None = None) -> int:
    """Parse the rank's arguments and run it; exit code 2 on a user error."""
    from medinfer.partition.app import PartitionJob, run_rank
    from medinfer.partition.distributed import Mesh

    p = argparse.ArgumentParser(prog="medinfer.partition.launch")
    p.add_argument("input", type=Path)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--mesh", default="2x2x1")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    mesh = Mesh.parse(a.mesh).spatial
    if len(mesh) != 3:
        print(f"error: mesh {a.mesh!r} must have three axes", file=sys.stderr)
        return 2
    try:
        run_rank(PartitionJob(a.model, a.input, a.out, mesh, None, a.threads))  # type: ignore[arg-type]
    except MedinferError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
