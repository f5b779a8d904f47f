"""Distributed inference and training over a mesh of torchrun ranks.

The volume is cut into one block per rank along a user-given mesh (``(2, 2, 1)``:
two blocks along x, two along y); every rank runs the unmodified network on its
block as a :class:`~medinfer.partition.tiled.TiledTensor`, exchanging halos with its
neighbours before each windowed layer and summing normalization statistics over the
mesh (:mod:`medinfer.partition.comm`). A :class:`Mesh` with ``data > 1`` adds
data parallelism: each group of ``prod(spatial)`` ranks holds one replica working
on its own samples, and gradients are averaged over all ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medinfer.partition import ops  # noqa: F401  (registers the partitioned rules)
from medinfer.partition.check import as_batch, check_partitionable
from medinfer.partition.comm import CommStats, DistContext
from medinfer.partition.errors import PartitionGeometryError
from medinfer.partition.geometry import Layout, split_axis
from medinfer.partition.receptive import network_geometry
from medinfer.partition.tiled import TiledTensor, tracking
from medinfer.runtime.launch import init_distributed

log = logging.getLogger(__name__)

#: What the last call on this rank sent (for benchmarks).
LAST_STATS = CommStats()


@dataclass(frozen=True)
class Mesh:
    """Ranks as ``data`` replicas × ``spatial`` blocks.

    Attributes:
        spatial: blocks per spatial axis, e.g. ``(2, 2, 1)``.
        data: data-parallel replicas; ranks ``[d * S, (d + 1) * S)`` form replica ``d``
            with ``S = prod(spatial)``.
    """

    spatial: tuple[int, ...]
    data: int = 1

    @property
    def size(self) -> int:
        return self.data * math.prod(self.spatial)

    @classmethod
    def parse(cls, text: str, data: int = 1) -> Mesh:
        """``"2x2x1"`` -> ``Mesh((2, 2, 1))``."""
        try:
            spatial = tuple(int(v) for v in text.lower().split("x"))
        except ValueError as exc:
            raise ValueError(f"mesh {text!r} is not like 2x2x1") from exc
        if not spatial or min(spatial) < 1:
            raise ValueError(f"mesh {text!r} is not like 2x2x1")
        return cls(spatial, data)


def _replica(mesh: Mesh) -> tuple[list[int], dist.ProcessGroup | None, int]:
    """This rank's spatial group: its ranks, process group, and data-replica index."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != mesh.size:
        raise PartitionGeometryError(
            f"mesh {mesh.data} x {mesh.spatial} needs {mesh.size} ranks, the job has {world}")
    per = math.prod(mesh.spatial)
    if mesh.data == 1:
        return list(range(world)), None, 0
    mine = None
    for d in range(mesh.data):  # every rank creates every group, in the same order
        ranks = list(range(d * per, (d + 1) * per))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = (ranks, group, d)
    assert mine is not None
    return mine


def _layout(model: torch.nn.Module, channels: int, shape: Sequence[int],
            mesh: Sequence[int]) -> Layout:
    if len(mesh) != len(shape):
        raise PartitionGeometryError(f"mesh {tuple(mesh)} does not match volume axes {tuple(shape)}")
    geom = network_geometry(model, channels, shape)
    return Layout(tuple(split_axis(n, m, a) for n, m, a in zip(shape, mesh, geom.align)))


def _own_block(x: torch.Tensor, layout: Layout, ctx: DistContext) -> torch.Tensor:
    region = layout.region(ctx.idx)
    return x[(..., *(slice(lo, hi) for lo, hi in region))]


def gather_blocks(y: TiledTensor, ctx: DistContext, root: int) -> torch.Tensor | None:
    """The whole output on global rank ``root`` (None elsewhere); blocks travel point to point."""
    block = y.block(ctx.idx).detach().contiguous()
    if dist.get_rank() != root:
        ctx.stats.add(block)
        dist.send(block, root)
        return None
    layout, store = y.layout, y.store
    out = torch.empty((store.batch, store.channels, *layout.shape), dtype=store.dtype)
    for idx in layout.indices():
        region = layout.region(idx)
        src = ctx.rank_of(idx)
        if src == root:
            part = block
        else:
            part = block.new_empty((store.batch, store.channels, *(b - a for a, b in region)))
            dist.recv(part, src)
        out[(slice(None), slice(None), *(slice(a, b) for a, b in region))] = part.cpu()
    return out


def distributed_inference(model: torch.nn.Module, volume: torch.Tensor,
                          mesh: Sequence[int] = (2, 2, 1)) -> torch.Tensor | None:
    """Run ``model`` over ``volume`` split across the torchrun ranks; rank 0 gets the result.

    Call it on every rank (``torchrun --nproc_per_node 4 script.py``). Each rank keeps only
    its block of every activation; the result equals the whole-volume result.

    Args:
        model: an unmodified network, in eval mode, the same weights on every rank
            (moved to the rank's GPU with NCCL).
        volume: ``(C, X, Y, Z)`` or ``(N, C, X, Y, Z)``, the same on every rank.
        mesh: blocks per spatial axis; ``prod(mesh)`` must equal the number of ranks.

    Returns:
        On rank 0 the output (same leading axes as ``volume``), on other ranks None.

    Raises:
        UnpartitionableLayerError: a layer without a partitioned rule.
        PartitionGeometryError: the mesh does not fit the job or the volume.
    """
    device = init_distributed()
    check_partitionable(model)
    x, squeezed = as_batch(volume)
    ranks, group, _ = _replica(Mesh(tuple(mesh)))
    layout = _layout(model, x.shape[1], tuple(x.shape[2:]), mesh)
    ctx = DistContext(mesh, ranks, group)
    model.to(device)
    with tracking(model), torch.no_grad():
        y = model(ctx.wrap(_own_block(x, layout, ctx).to(device), layout))
    out = gather_blocks(y, ctx, ranks[0])
    LAST_STATS.bytes_sent, LAST_STATS.messages = ctx.stats.bytes_sent, ctx.stats.messages
    if out is None:
        return None
    return out[0] if squeezed else out


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def partitioned_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                           volume: torch.Tensor, target: torch.Tensor, loss_sum: LossFn,
                           mesh: Mesh) -> float:
    """One training step with the volume split over the spatial mesh (and samples over ``data``).

    The loss must be a sum over voxels (``reduction="sum"``); it is divided by the number
    of voxels of the replica's batch, so the step minimizes the same mean loss as an
    unpartitioned step. Gradients flow back through every halo exchange and statistics
    reduction; parameter gradients are then summed over the spatial ranks and averaged over
    the data replicas, so they equal the unpartitioned step's (the mean over replicas).

    Args:
        model: the network in train mode, the same weights on every rank.
        optimizer: stepped after the gradients are reduced; None to only compute them
            (they are left in ``p.grad``).
        volume: this replica's batch ``(N, C, *S)``, the same on every rank of the replica.
        target: matching target ``(N, ..., *S)`` (class indices or one-hot).
        loss_sum: ``(output_block, target_block) -> summed loss``.
        mesh: ranks as data replicas × spatial blocks.

    Returns:
        The mean loss over the whole batch, averaged over replicas.
    """
    device = init_distributed()
    check_partitionable(model)
    ranks, group, _ = _replica(mesh)
    layout = _layout(model, volume.shape[1], tuple(volume.shape[2:]), mesh.spatial)
    ctx = DistContext(mesh.spatial, ranks, group)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    model.to(device)
    with tracking(model):
        y = model(ctx.wrap(_own_block(volume, layout, ctx).to(device), layout))
    voxels = volume.shape[0] * math.prod(volume.shape[2:])
    local = loss_sum(y.block(ctx.idx), _own_block(target, layout, ctx).to(device)) / voxels
    local.backward()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= mesh.data
    loss = local.detach().clone()
    dist.all_reduce(loss)
    if optimizer is not None:
        optimizer.step()
    LAST_STATS.bytes_sent, LAST_STATS.messages = ctx.stats.bytes_sent, ctx.stats.messages
    return float(loss) / mesh.data
