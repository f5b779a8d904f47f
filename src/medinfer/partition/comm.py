"""One block per rank: halo exchange and statistics over torch.distributed.

Before a windowed layer, each rank swaps with its neighbours exactly the margin the
layer needs (from :mod:`medinfer.partition.geometry`), one axis after the other so
that diagonal corners travel along with the second and third exchanges. The swap is
a :class:`torch.autograd.Function`: its backward sends the gradient of each received
margin back to the rank that owns those voxels, which adds it to its own gradient,
so a backward pass through a partitioned network gives the unpartitioned gradients.
Normalization statistics are summed with a differentiable all-reduce.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medinfer.partition.errors import PartitionGeometryError
from medinfer.partition.geometry import BlockIndex, Layout, Region
from medinfer.partition.store import pad_outside
from medinfer.partition.tiled import Need, Store, TiledTensor


@dataclass
class CommStats:
    """What this rank sent: bytes and messages (halo slabs, their gradients, reductions)."""

    bytes_sent: int = 0
    messages: int = 0

    def add(self, t: torch.Tensor) -> None:
        self.bytes_sent += t.numel() * t.element_size()
        self.messages += 1


@dataclass(frozen=True)
class AxisPlan:
    """One axis of one exchange, seen from this rank.

    Attributes:
        dim: tensor dimension (spatial axis + 2).
        recv_lo, recv_hi: voxels received from the lower/upper neighbour.
        send_lo, send_hi: voxels sent to the lower/upper neighbour.
        lo_rank, hi_rank: neighbours' global ranks (-1: none).
        tag: message tag, the same on both sides.
    """

    dim: int
    recv_lo: int
    recv_hi: int
    send_lo: int
    send_hi: int
    lo_rank: int
    hi_rank: int
    tag: int


class BlockStore:
    """The one block of an activation this rank holds (with its autograd history)."""

    def __init__(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype,
                 idx: BlockIndex) -> None:
        self.layout, self.batch, self.channels, self.dtype = layout, batch, channels, dtype
        self.idx = idx
        self.data: torch.Tensor | None = None

    def read(self, region: Region) -> torch.Tensor:
        own = self.layout.region(self.idx)
        if self.data is None or any(lo < a or hi > b for (lo, hi), (a, b) in zip(region, own)):
            raise PartitionGeometryError(f"rank block {own} does not hold {region}")
        t = self.data
        for axis, ((lo, hi), (a, _)) in enumerate(zip(region, own)):
            t = t.narrow(axis + 2, lo - a, hi - lo)
        return t

    def write(self, idx: BlockIndex, block: torch.Tensor) -> None:
        self.data = block


class _Exchange(torch.autograd.Function):
    """Halo swap along one axis; backward returns the margins' gradients to their owners."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, plan: AxisPlan,
                comm: DistContext) -> torch.Tensor:
        ctx.plan, ctx.comm, ctx.n = plan, comm, x.shape[plan.dim]  # type: ignore[attr-defined]
        d, n = plan.dim, x.shape[plan.dim]
        lo_buf = _buffer(x, d, plan.recv_lo)
        hi_buf = _buffer(x, d, plan.recv_hi)
        comm.p2p([(x.narrow(d, 0, plan.send_lo), plan.lo_rank),
                  (x.narrow(d, n - plan.send_hi, plan.send_hi), plan.hi_rank)],
                 [(lo_buf, plan.lo_rank), (hi_buf, plan.hi_rank)], plan.tag)
        return torch.cat([lo_buf, x, hi_buf], d)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        plan, comm, n = ctx.plan, ctx.comm, ctx.n  # type: ignore[attr-defined]
        d = plan.dim
        g_lo = grad.narrow(d, 0, plan.recv_lo)
        g_hi = grad.narrow(d, plan.recv_lo + n, plan.recv_hi)
        gx = grad.narrow(d, plan.recv_lo, n).clone()
        back_lo, back_hi = _buffer(gx, d, plan.send_lo), _buffer(gx, d, plan.send_hi)
        comm.p2p([(g_lo, plan.lo_rank), (g_hi, plan.hi_rank)],
                 [(back_lo, plan.lo_rank), (back_hi, plan.hi_rank)], plan.tag + 1)
        gx.narrow(d, 0, plan.send_lo).add_(back_lo)
        gx.narrow(d, n - plan.send_hi, plan.send_hi).add_(back_hi)
        return gx, None, None


class _AllReduce(torch.autograd.Function):
    """Sum over the group; the gradient of every rank's copy is the sum of their gradients."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, t: torch.Tensor,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group  # type: ignore[attr-defined]
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, group=ctx.group)  # type: ignore[attr-defined]
        return g, None


def _buffer(x: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = n
    return x.new_empty(shape)


class DistContext:
    """This rank's place in a spatial mesh.

    Args:
        mesh: blocks per spatial axis, e.g. ``(2, 2, 1)``.
        ranks: global rank of each block, in C order (``len == prod(mesh)``).
        group: process group of those ranks (statistics are summed over it).
    """

    def __init__(self, mesh: Sequence[int], ranks: Sequence[int],
                 group: dist.ProcessGroup | None = None) -> None:
        self.mesh = tuple(mesh)
        self.ranks = list(ranks)
        self.group = group
        me = self.ranks.index(dist.get_rank())
        self.idx: BlockIndex = tuple(int(i) for i in _unravel(me, self.mesh))
        self.stats = CommStats()
        self._tags = itertools.count(start=16, step=2)

    def blocks(self, layout: Layout) -> Sequence[BlockIndex]:
        if layout.grid != self.mesh:
            raise PartitionGeometryError(f"layout grid {layout.grid} is not the mesh {self.mesh}")
        return [self.idx]

    def empty(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype) -> Store:
        return BlockStore(layout, batch, channels, dtype, self.idx)

    def rank_of(self, idx: BlockIndex) -> int:
        flat = 0
        for i, g in zip(idx, self.mesh):
            flat = flat * g + i
        return self.ranks[flat]

    def _neighbour(self, axis: int, step: int) -> int:
        i = self.idx[axis] + step
        if not 0 <= i < self.mesh[axis]:
            return -1
        idx = list(self.idx)
        idx[axis] = i
        return self.rank_of(tuple(idx))

    def fetch(self, x: TiledTensor, out_layout: Layout, idx: BlockIndex,
              needs: Sequence[Need], fill: str) -> torch.Tensor:
        t = x.block(idx)
        for axis, need in enumerate(needs):
            # margins every block along this axis needs (< 0: it uses fewer voxels than it holds)
            lo, hi = [], []
            for j in range(self.mesh[axis]):
                a, b = x.layout.cuts[axis][j], x.layout.cuts[axis][j + 1]
                n_lo, n_hi = need((out_layout.cuts[axis][j], out_layout.cuts[axis][j + 1]))
                lo.append(a - n_lo)
                hi.append(n_hi - b)
            i, last = idx[axis], self.mesh[axis] - 1
            plan = AxisPlan(
                dim=axis + 2,
                recv_lo=max(0, lo[i]) if i > 0 else 0, recv_hi=max(0, hi[i]) if i < last else 0,
                send_lo=max(0, hi[i - 1]) if i > 0 else 0,
                send_hi=max(0, lo[i + 1]) if i < last else 0,
                lo_rank=self._neighbour(axis, -1), hi_rank=self._neighbour(axis, 1),
                tag=next(self._tags))
            size = t.shape[axis + 2]
            if max(plan.send_lo, plan.send_hi) > size:
                raise PartitionGeometryError(
                    f"a halo of {max(plan.send_lo, plan.send_hi)} voxels is wider than the "
                    f"{size}-voxel block on axis {axis}; use fewer ranks along it")
            t = _Exchange.apply(t, plan, self)
            edge_lo = lo[i] if i == 0 else 0
            edge_hi = hi[i] if i == last else 0
            if min(lo[i], 0) < 0 or min(hi[i], 0) < 0:  # crop what this block does not use
                start = -min(lo[i], 0)
                t = t.narrow(axis + 2, start, t.shape[axis + 2] - start + min(hi[i], 0))
            pads = [(0, 0)] * len(needs)
            pads[axis] = (max(0, edge_lo), max(0, edge_hi))
            t = pad_outside(t, pads, fill)
        return t

    def p2p(self, sends: Sequence[tuple[torch.Tensor, int]],
            recvs: Sequence[tuple[torch.Tensor, int]], tag: int) -> None:
        """Post all receives and sends (skipping empty ones and missing neighbours), then wait."""
        reqs = []
        for buf, src in recvs:
            if src >= 0 and buf.numel():
                reqs.append(dist.irecv(buf, src, tag=tag))
        for t, dst in sends:
            if dst >= 0 and t.numel():
                t = t.contiguous()
                self.stats.add(t)
                reqs.append(dist.isend(t, dst, tag=tag))
        for r in reqs:
            r.wait()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.stats.add(t)
        return _AllReduce.apply(t, self.group)

    def step(self, name: str) -> None:
        return None

    def wrap(self, block: torch.Tensor, layout: Layout) -> TiledTensor:
        """This rank's input block as a partitioned tensor."""
        store = self.empty(layout, block.shape[0], block.shape[1], block.dtype)
        store.write(self.idx, block)
        return TiledTensor(store, self)


def _unravel(flat: int, grid: Sequence[int]) -> list[int]:
    out = []
    for g in reversed(grid):
        out.append(flat % g)
        flat //= g
    return out[::-1]
