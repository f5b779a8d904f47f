"""Blocks in one process: in RAM, or memory-mapped on disk once the budget is spent.

:class:`LocalContext` keeps every block of an activation in one process and
assembles a block's halo from its neighbours. An activation whose size would
push the activations held in RAM past half the memory budget goes to a
memory-mapped file instead (:class:`DiskStore`); the file is mapped only while a
block is read or written, so its pages do not stay in the process's resident set.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medinfer.partition.geometry import BlockIndex, Layout, Region, clip, outside
from medinfer.partition.tiled import Need, Store, TiledTensor

log = logging.getLogger(__name__)

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _slices(region: Region) -> tuple[slice, ...]:
    return (slice(None), slice(None), *(slice(lo, hi) for lo, hi in region))


class RamStore:
    """An activation held block by block in RAM (no copy when a layer writes its output)."""

    def __init__(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype) -> None:
        self.layout, self.batch, self.channels, self.dtype = layout, batch, channels, dtype
        self.blocks: dict[BlockIndex, torch.Tensor] = {}

    def read(self, region: Region) -> torch.Tensor:
        for idx, block in self.blocks.items():
            if self.layout.region(idx) == region:
                return block
        out = torch.zeros((self.batch, self.channels, *(hi - lo for lo, hi in region)),
                          dtype=self.dtype)
        self.read_into(out, region)
        return out

    def read_into(self, out: torch.Tensor, region: Region) -> None:
        """Copy the voxels of ``region`` this store holds into ``out`` (which spans ``region``)."""
        for idx, block in self.blocks.items():
            own = self.layout.region(idx)
            both = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(own, region)]
            if any(lo >= hi for lo, hi in both):
                continue
            src = (slice(None), slice(None), *(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(both, own)))
            dst = (slice(None), slice(None), *(slice(lo - c, hi - c) for (lo, hi), (c, _) in zip(both, region)))
            out[dst] = block[src]

    def write(self, idx: BlockIndex, block: torch.Tensor) -> None:
        self.blocks[idx] = block


class DiskStore:
    """An activation in a memory-mapped ``.f32`` file, mapped only during each read or write."""

    def __init__(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype,
                 path: Path) -> None:
        if dtype not in _NP_DTYPES:
            raise TypeError(f"cannot keep {dtype} activations on disk")
        self.layout, self.batch, self.channels, self.dtype = layout, batch, channels, dtype
        self.path = path
        self.shape = (batch, channels, *layout.shape)
        np.memmap(path, dtype=_NP_DTYPES[dtype], mode="w+", shape=self.shape).flush()
        weakref.finalize(self, path.unlink, missing_ok=True)

    def _map(self, mode: str) -> np.memmap:
        return np.memmap(self.path, dtype=_NP_DTYPES[self.dtype], mode=mode, shape=self.shape)

    def read(self, region: Region) -> torch.Tensor:
        mm = self._map("r")
        out = torch.from_numpy(np.array(mm[_slices(region)]))
        del mm
        return out

    def read_into(self, out: torch.Tensor, region: Region) -> None:
        inside = tuple(clip(iv, n) for iv, n in zip(region, self.layout.shape))
        dst = (slice(None), slice(None),
               *(slice(lo - r, hi - r) for (lo, hi), (r, _) in zip(inside, region)))
        out[dst] = self.read(inside)

    def write(self, idx: BlockIndex, block: torch.Tensor) -> None:
        mm = self._map("r+")
        mm[_slices(self.layout.region(idx))] = block.detach().cpu().numpy()
        mm.flush()
        del mm


def pad_outside(x: torch.Tensor, pads: Sequence[tuple[int, int]], fill: str) -> torch.Tensor:
    """Pad the spatial axes of ``x`` by ``pads`` (before, after) per axis with zeros or edge copies."""
    if not any(a or b for a, b in pads):
        return x
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat, mode="constant" if fill == "zeros" else "replicate")


class LocalContext:
    """All blocks in this process.

    Args:
        budget_bytes: memory budget; activations beyond half of it go to disk. None: all in RAM.
        workdir: folder for memory-mapped activations (a temporary folder if None).
        on_step: called with each finished layer's name (progress).
    """

    def __init__(self, budget_bytes: int | None = None, workdir: str | Path | None = None,
                 on_step: Callable[[str], None] | None = None) -> None:
        self.budget_bytes = budget_bytes
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._workdir = Path(workdir) if workdir is not None else None
        self.ram_bytes = 0
        self.spilled_bytes = 0
        self._counter = itertools.count()
        self._on_step = on_step

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="medinfer-partition-")
            self._workdir = Path(self._tmp.name)
        return self._workdir

    def close(self) -> None:
        """Remove the temporary folder (activations still alive keep their files until then)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def blocks(self, layout: Layout) -> Sequence[BlockIndex]:
        return list(layout.indices())

    def empty(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype) -> Store:
        nbytes = batch * channels * int(np.prod(layout.shape)) * torch.finfo(dtype).bits // 8
        if self.budget_bytes is None or self.ram_bytes + nbytes <= self.budget_bytes // 2:
            store = RamStore(layout, batch, channels, dtype)
            self.ram_bytes += nbytes
            weakref.finalize(store, self._release, nbytes)
            return store
        self.spilled_bytes += nbytes
        path = self.workdir / f"act{next(self._counter)}.f32"
        log.debug("activation (%d, %d, %s) to disk: %s", batch, channels, layout.shape, path)
        return DiskStore(layout, batch, channels, dtype, path)

    def _release(self, nbytes: int) -> None:
        self.ram_bytes -= nbytes

    def fetch(self, x: TiledTensor, out_layout: Layout, idx: BlockIndex,
              needs: Sequence[Need], fill: str) -> torch.Tensor:
        want = tuple(need(iv) for need, iv in zip(needs, out_layout.region(idx)))
        shape = x.layout.shape
        if fill == "zeros":  # one copy of the blocks into the window; zeros only outside
            if want in [x.layout.region(i) for i in x.layout.indices()]:
                return x.store.read(want)
            out = torch.empty((x.store.batch, x.store.channels, *(hi - lo for lo, hi in want)),
                              dtype=x.store.dtype)
            for axis, (before, after) in enumerate(outside(iv, n) for iv, n in zip(want, shape)):
                out.narrow(axis + 2, 0, before).zero_()
                out.narrow(axis + 2, out.shape[axis + 2] - after, after).zero_()
            x.store.read_into(out, want)  # the blocks cover everything inside the volume
            return out
        inside = tuple(clip(iv, n) for iv, n in zip(want, shape))
        block = x.store.read(inside)
        return pad_outside(block, [outside(iv, n) for iv, n in zip(want, shape)], fill)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    def wrap(self, volume: torch.Tensor, layout: Layout) -> TiledTensor:
        """A batch ``(N, C, *shape)`` as a partitioned tensor of this context."""
        store = self.empty(layout, volume.shape[0], volume.shape[1], volume.dtype)
        for idx in layout.indices():
            store.write(idx, volume[_slices(layout.region(idx))])
        return TiledTensor(store, self)


def gather(t: TiledTensor) -> torch.Tensor:
    """All blocks of a local partitioned tensor as one plain tensor."""
    whole = tuple((0, n) for n in t.layout.shape)
    if isinstance(t.store, RamStore) and len(t.store.blocks) == 1:
        return next(iter(t.store.blocks.values()))
    return t.store.read(whole)
