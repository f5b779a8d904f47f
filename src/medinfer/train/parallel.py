"""Data parallelism for the training loop: the process's rank, DDP and what it communicates.

One process is ``Parallel()`` (rank 0 of 1): nothing is wrapped or communicated. Under
torchrun, :meth:`Parallel.join` joins the job (gloo on CPU, NCCL with CUDA) and
:meth:`Parallel.wrap` puts the network in ``DistributedDataParallel``, whose gradient
all-reduce (a ring on gloo/NCCL, like Horovod's) goes through a hook counting the bytes.
Rank 0 validates and writes the artifact; the decisions that must be the same everywhere
(stop on the time budget) are broadcast from it (:meth:`Parallel.agree`).

Batch norm keeps per-rank statistics on CPU (``SyncBatchNorm`` needs CUDA): with batch
norm, W processes of ``batch_size`` are close to, not equal to, one process of W x
``batch_size``. Networks without batch statistics (instance norm, none) train to the
same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from medinfer.runtime.launch import init_distributed
from medinfer.train.recipes import Shard


@dataclass
class CommCounter:
    """Gradient all-reduce traffic of one rank: payload bytes and calls (buckets)."""

    bytes: int = 0
    calls: int = 0

    def ring_bytes(self, world: int) -> float:
        """Bytes one rank sends in a ring all-reduce of the payload: 2 (W - 1) / W of it."""
        return self.bytes * 2 * (world - 1) / world if world > 1 else 0.0


def _counting_allreduce(counter, bucket):  # type: ignore[no-untyped-def]
    # No annotations: DDP checks them at run time and rejects the strings that
    # ``from __future__ import annotations`` makes of them.
    buf = bucket.buffer()
    counter.bytes += buf.numel() * buf.element_size()
    counter.calls += 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


@dataclass
class Parallel:
    """This process's place in a data-parallel run.

    Attributes:
        rank: global rank (0 validates and writes the artifact).
        world: processes in the run.
        local_rank: rank on this machine.
        nodes: machines in the run.
        backend: ``gloo`` or ``nccl`` ("" for one process).
        device: where this rank computes.
        comm: this rank's all-reduce traffic so far.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    nodes: int = 1
    backend: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    comm: CommCounter = field(default_factory=CommCounter)

    @classmethod
    def join(cls) -> Parallel:
        """Join the torchrun job this process was started in."""
        device = init_distributed()
        world = dist.get_world_size()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return cls(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                   nodes=max(1, world // max(1, local_world)), backend=str(dist.get_backend()), device=device)

    @property
    def main(self) -> bool:
        """Whether this process validates and writes (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        """This rank's part of each epoch."""
        return Shard(self.rank, self.world)

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` itself in one process; else ``DistributedDataParallel`` over it, whose
        construction gives every rank rank 0's weights, and whose all-reduce is counted."""
        if self.world == 1:
            return net
        if self.device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net.to(self.device))
        ddp = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        ddp.register_comm_hook(self.comm, _counting_allreduce)
        return ddp

    def agree(self, value: bool) -> bool:
        """Rank 0's ``value``, on every rank."""
        if self.world == 1:
            return value
        flag = torch.tensor([int(value)], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def share(self, obj: Any) -> Any:
        """Rank 0's picklable ``obj``, on every rank (e.g. a checkpoint it read)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, 0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def spread(self, net: torch.nn.Module) -> float:
        """The largest difference of any weight between the ranks (0.0: they agree)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1).float() for p in net.parameters()]).to(self.device)
        hi, lo = flat.clone(), flat.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        return float((hi - lo).abs().max().item())

    def record(self, batch_size: int, lr: float) -> dict[str, Any]:
        """What the artifact's training record keeps about this run."""
        return {"world": self.world, "nodes": self.nodes, "backend": self.backend,
                "batch_per_rank": batch_size, "global_batch": batch_size * self.world, "lr": lr,
                "allreduce_bytes": self.comm.bytes, "allreduce_calls": self.comm.calls,
                "ring_bytes_sent": round(self.comm.ring_bytes(self.world))}

    def close(self) -> None:
        """Leave the job (nothing in one process)."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
