"""`medinfer partition`: segment a volume exactly, tiled in one process or across torchrun ranks.

The input is prepared by the artifact's task (its own preprocessing: z-score for MR,
scale/mean/std otherwise), exactly as ``medinfer predict`` prepares it. With one rank
the task runs the whole volume through :func:`~medinfer.partition.exact_inference`
(``VolumeInference(strategy="exact")``); with more, this process starts
``python -m torch.distributed.run -m medinfer.apps.partition``, whose ranks each prepare
the volume, run :func:`~medinfer.partition.distributed_inference` with halo exchange,
and rank 0 writes the label map.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.io import Image, read_image, write_mask_nifti
from medinfer.partition.distributed import LAST_STATS, Mesh, distributed_inference
from medinfer.runtime import EngineOptions, launch
from medinfer.tasks import Predictor, Task, VolumeInference, task_for
from medinfer.tasks.volume import pad_to_stride

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionJob:
    """One ``medinfer partition`` run.

    Attributes:
        model: artifact folder (a 3D segmentation model).
        input: NIfTI volume ``(X, Y, Z)`` or ``(X, Y, Z, C)`` (any format ``read_image`` reads).
        out: label map to write (``.nii.gz``), with the input's geometry.
        mesh: ranks per spatial axis; ``(1, 1, 1)`` runs in this process.
        memory_budget_mb: budget of the one-process tiling (None: no limit).
        threads: torch threads per process (None: torch's default).
    """

    model: Path
    input: Path
    out: Path
    mesh: tuple[int, int, int] = (1, 1, 1)
    memory_budget_mb: float | None = None
    threads: int | None = None


def _read(job: PartitionJob, task: Task) -> Image:
    image = read_image(job.input)
    task.check_image(image)
    return image


def run_local(job: PartitionJob, progress: bool = True) -> Path:
    """Exact tiling in this process; writes ``job.out``."""
    inference = VolumeInference("exact", job.memory_budget_mb, progress=progress)
    options = EngineOptions(threads=job.threads or torch.get_num_threads())
    with Predictor.open(job.model, "torch", "fp32", options, inference=inference) as predictor:
        image = _read(job, predictor.task)
        pred = predictor.predict(image)
    return write_mask_nifti(pred.mask, job.out, reference=image)


def run_rank(job: PartitionJob) -> Path | None:
    """This torchrun rank's share; rank 0 writes ``job.out`` and returns it."""
    import torch.distributed as dist

    if job.threads:
        torch.set_num_threads(job.threads)
    art = ModelArtifact.load(job.model)
    task = task_for(art)
    image = _read(job, task)
    x = task.prepare(image)
    net = art.load_network()
    logits = distributed_inference(net, pad_to_stride(net, x), job.mesh)
    log.info("rank %d sent %.1f MiB in %d messages", dist.get_rank(),
             LAST_STATS.bytes_sent / 2**20, LAST_STATS.messages)
    if logits is None:
        return None
    logits = logits[(slice(None), *(slice(0, n) for n in x.shape[1:]))].numpy()
    return write_mask_nifti(task.postprocess(logits, image).mask, job.out, reference=image)


def run_torchrun(job: PartitionJob) -> Path:
    """Start one rank per mesh block with torchrun and wait; writes ``job.out``."""
    n = math.prod(job.mesh)
    args = ["--model", str(job.model), "--mesh", "x".join(map(str, job.mesh)), "--out", str(job.out),
            str(job.input)]
    if job.threads:
        args += ["--threads", str(job.threads)]
    launch.run_torchrun(launch.Launch(nproc_per_node=n), "medinfer.apps.partition", args)
    if not job.out.is_file():
        raise MedinferError(f"torchrun finished but wrote no {job.out}")
    return job.out


def run_job(job: PartitionJob, progress: bool = True) -> Path:
    """Run ``job`` in this process (one rank) or under torchrun (several); the written path."""
    if not job.input.exists():
        raise InputError(job.input, "no such file")
    if math.prod(job.mesh) == 1:
        return run_local(job, progress)
    return run_torchrun(job)


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: one rank of a distributed segmentation; exit code 2 on a user error.

    ``python -m torch.distributed.run --nproc_per_node 4 -m medinfer.apps.partition
    --model ART --mesh 2x2x1 --out OUT.nii.gz INPUT.nii.gz``
    """
    p = argparse.ArgumentParser(prog="medinfer.apps.partition")
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
