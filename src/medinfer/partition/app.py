"""Segment a NIfTI volume with a model artifact, tiled in one process or across torchrun ranks.

Used by ``medinfer partition``. With one rank the volume goes through
:func:`~medinfer.partition.exact.exact_inference`; with more, this process starts
``python -m torch.distributed.run`` on :mod:`medinfer.partition.launch`, whose ranks
each read the volume, run :func:`~medinfer.partition.distributed.distributed_inference`,
and rank 0 writes the label map.
"""

from __future__ import annotations

import logging
import math
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medinfer.errors import InputError, MedinferError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionJob:
    """One ``medinfer partition`` run.

    Attributes:
        model: artifact folder.
        input: NIfTI volume ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        out: label map to write (``.nii.gz``), with the input's affine.
        mesh: ranks per spatial axis; ``(1, 1, 1)`` runs in this process.
        memory_budget_mb: budget of the one-process tiling (None: no limit).
        threads: torch threads per process.
    """

    model: Path
    input: Path
    out: Path
    mesh: tuple[int, int, int] = (1, 1, 1)
    memory_budget_mb: float | None = None
    threads: int | None = None


def _prepare(job: PartitionJob) -> tuple[torch.nn.Module, torch.Tensor, object, tuple[int, ...]]:
    """Network, normalized input padded to the total stride, the image, and its spatial shape."""
    from medinfer.artifact import ModelArtifact
    from medinfer.io import read_image
    from medinfer.partition.receptive import network_geometry

    art = ModelArtifact.load(job.model)
    net = art.load_network()
    image = read_image(job.input)
    if image.ndim_spatial != 3:
        raise InputError(job.input, f"expected a 3D volume, got {image.ndim_spatial} spatial axes")
    if image.num_channels != art.spec.in_channels:
        raise InputError(job.input, f"has {image.num_channels} channels, the model expects "
                                    f"{art.spec.in_channels}")
    pre = art.spec.preprocessing
    x = torch.from_numpy(np.asarray(image.array, dtype=np.float32)) * pre.scale
    c = image.num_channels
    mean = torch.tensor((list(pre.mean) * c)[:c], dtype=torch.float32).view(c, 1, 1, 1)
    std = torch.tensor((list(pre.std) * c)[:c], dtype=torch.float32).view(c, 1, 1, 1)
    x = (x - mean) / std
    shape = tuple(x.shape[1:])
    align = network_geometry(net, c, tuple(-(-n // 16) * 16 for n in shape)).align
    padded = [-(-n // a) * a for n, a in zip(shape, align)]
    if padded != list(shape):  # the network needs sides divisible by its total stride
        pads = [p for n, m in zip(reversed(shape), reversed(padded)) for p in (0, m - n)]
        x = torch.nn.functional.pad(x, pads)
    return net, x, image, shape


def labels_from_logits(logits: torch.Tensor) -> np.ndarray:
    """``(C, *S)`` logits -> ``(*S)`` uint8 labels: argmax, or sigmoid > 0.5 for one channel."""
    if logits.shape[0] == 1:
        return (logits[0] > 0).numpy().astype(np.uint8)
    return logits.argmax(0).numpy().astype(np.uint8)


def write_labels(labels: np.ndarray, image: object, path: Path) -> Path:
    """Write a label map with the geometry of ``image`` (RAS affine, mm)."""
    import nibabel as nib

    from medinfer.io.writers import ras_affine

    affine = ras_affine(image)  # type: ignore[arg-type]
    img = nib.Nifti1Image(labels, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        nib.save(img, path)
    except Exception as exc:  # nibabel raises several types on a bad target
        raise InputError(path, f"cannot write NIfTI ({exc})") from exc
    return path


def run_local(job: PartitionJob, progress: bool = True) -> Path:
    """Exact tiling in this process; writes ``job.out``."""
    from medinfer.partition.exact import exact_inference

    if job.threads:
        torch.set_num_threads(job.threads)
    net, x, image, shape = _prepare(job)
    logits = exact_inference(net, x, job.memory_budget_mb, progress=progress)
    logits = logits[(slice(None), *(slice(0, n) for n in shape))]
    return write_labels(labels_from_logits(logits), image, job.out)


def run_rank(job: PartitionJob) -> Path | None:
    """This torchrun rank's share; rank 0 writes ``job.out`` and returns it."""
    import torch.distributed as dist

    from medinfer.partition.distributed import LAST_STATS, distributed_inference

    if job.threads:
        torch.set_num_threads(job.threads)
    net, x, image, shape = _prepare(job)
    logits = distributed_inference(net, x, job.mesh)
    log.info("rank %d sent %.1f MiB in %d messages", dist.get_rank(),
             LAST_STATS.bytes_sent / 2**20, LAST_STATS.messages)
    if logits is None:
        return None
    logits = logits[(slice(None), *(slice(0, n) for n in shape))]
    return write_labels(labels_from_logits(logits), image, job.out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_torchrun(job: PartitionJob) -> Path:
    """Start one rank per mesh block with torchrun and wait; writes ``job.out``."""
    n = math.prod(job.mesh)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "medinfer.partition.launch", "--model", str(job.model),
           "--mesh", "x".join(map(str, job.mesh)), "--out", str(job.out), str(job.input)]
    if job.threads:
        cmd += ["--threads", str(job.threads)]
    log.info("starting %d ranks: %s", n, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        for line in tail.splitlines():
            if "InputError" in line or "ArtifactError" in line:
                raise MedinferError(line.split(":", 1)[-1].strip())
        raise MedinferError(f"torchrun failed (exit {proc.returncode}):\n{tail}")
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
