"""Tile geometry: pure functions on integer intervals (no torch).

A spatial axis of ``n`` voxels is cut into blocks by *cuts* ``(0, c1, ..., n)``; a
:class:`Layout` holds the cuts of every axis. Each layer maps a block of its output
to the interval of its input that the block depends on (``*_need`` functions); the
difference between that interval and the input block is the layer's halo. Intervals
are half-open ``(lo, hi)`` in global voxel coordinates and may reach outside
``[0, n)``, where the layer's padding supplies the values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from medinfer.partition.errors import PartitionGeometryError

Interval = tuple[int, int]
Region = tuple[Interval, ...]
Cuts = tuple[int, ...]
BlockIndex = tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """How the spatial axes of a volume are cut into blocks.

    Attributes:
        cuts: per axis, increasing cut points from 0 to the axis length, e.g.
            ``((0, 16, 32), (0, 32), (0, 32))`` cuts a 32³ volume into two blocks along x.
    """

    cuts: tuple[Cuts, ...]

    def __post_init__(self) -> None:
        for axis, c in enumerate(self.cuts):
            if len(c) < 2 or c[0] != 0 or any(b <= a for a, b in zip(c, c[1:])):
                raise PartitionGeometryError(f"axis {axis}: cuts {c} must rise strictly from 0")

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the whole volume."""
        return tuple(c[-1] for c in self.cuts)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of blocks along each axis."""
        return tuple(len(c) - 1 for c in self.cuts)

    def indices(self) -> Iterator[BlockIndex]:
        """Block indices in C order (the last axis varies fastest)."""
        return itertools.product(*(range(g) for g in self.grid))

    def region(self, idx: BlockIndex) -> Region:
        """Global voxel intervals of block ``idx``."""
        return tuple((c[i], c[i + 1]) for c, i in zip(self.cuts, idx))

    def block_shape(self, idx: BlockIndex) -> tuple[int, ...]:
        return tuple(hi - lo for lo, hi in self.region(idx))

    def flat(self, idx: BlockIndex) -> int:
        """Position of ``idx`` in C order (the rank of its block in a mesh)."""
        pos = 0
        for i, g in zip(idx, self.grid):
            pos = pos * g + i
        return pos


def split_axis(size: int, parts: int, align: int = 1) -> Cuts:
    """Cut ``size`` voxels into ``parts`` near-equal blocks whose inner cuts are multiples of ``align``.

    >>> split_axis(32, 2, 4)
    (0, 16, 32)
    """
    units = size // align
    if parts < 1 or units < parts:
        raise PartitionGeometryError(
            f"cannot cut {size} voxels into {parts} blocks aligned to {align}")
    inner = [align * round(units * k / parts) for k in range(1, parts)]
    return (0, *inner, size)


def tile_axis(size: int, tile: int, align: int = 1) -> Cuts:
    """Cut ``size`` voxels into blocks of ``tile`` voxels (rounded up to ``align``); the last may be shorter."""
    step = max(align, -(-tile // align) * align)
    cuts = list(range(0, size, step)) + [size]
    return tuple(cuts)


def conv_need(out: Interval, stride: int, pad_lo: int, span: int) -> Interval:
    """Input interval a convolution or pooling needs for output interval ``out``.

    Args:
        out: output voxels ``(lo, hi)``.
        stride: the layer's stride.
        pad_lo: padding before the first voxel.
        span: ``dilation * (kernel - 1) + 1``, the voxels one output reads.
    """
    lo, hi = out
    return stride * lo - pad_lo, stride * (hi - 1) - pad_lo + span


def conv_out_size(size: int, stride: int, pad_lo: int, pad_hi: int, span: int) -> int:
    """Output length of a convolution or pooling over ``size`` input voxels."""
    return (size + pad_lo + pad_hi - span) // stride + 1


def strided_cuts(cuts: Cuts, stride: int, out_size: int, layer: str = "layer") -> Cuts:
    """Output cuts of a layer that divides resolution by ``stride``; inner cuts must divide."""
    if any(c % stride for c in cuts[1:-1]):
        raise PartitionGeometryError(
            f"{layer}: block cuts {cuts} are not multiples of its stride {stride}; "
            "align tiles to the network's total stride")
    out = tuple(c // stride for c in cuts[:-1]) + (out_size,)
    if any(b <= a for a, b in zip(out, out[1:])):
        raise PartitionGeometryError(f"{layer}: blocks {cuts} vanish after stride {stride}")
    return out


def conv_transpose_need(out: Interval, stride: int, pad: int, kernel: int) -> Interval:
    """Input interval a transposed convolution (dilation 1) needs for output interval ``out``.

    Output voxel ``o`` receives input ``i`` through kernel tap ``o + pad - stride * i``.
    """
    lo, hi = out
    return -(-(lo + pad - kernel + 1) // stride), (hi - 1 + pad) // stride + 1


def conv_transpose_out_size(size: int, stride: int, pad: int, kernel: int, out_pad: int,
                            dilation: int = 1) -> int:
    """Output length of a transposed convolution over ``size`` input voxels."""
    return (size - 1) * stride - 2 * pad + dilation * (kernel - 1) + out_pad + 1


def upscaled_cuts(cuts: Cuts, factor: int, out_size: int) -> Cuts:
    """Output cuts of a layer that multiplies resolution by ``factor``."""
    return tuple(c * factor for c in cuts[:-1]) + (out_size,)


def interpolate_need(out: Interval, factor: int, linear: bool) -> Interval:
    """Input interval an integer-factor upsampling (nearest or linear, ``align_corners=False``) needs."""
    lo, hi = out
    if not linear:
        return lo // factor, -(-hi // factor)
    return lo // factor - 1, -(-hi // factor) + 1


def clip(interval: Interval, size: int) -> Interval:
    """``interval`` ∩ ``[0, size)``."""
    return max(0, interval[0]), min(size, interval[1])


def outside(interval: Interval, size: int) -> tuple[int, int]:
    """Voxels of ``interval`` before 0 and after ``size`` (the padding a layer supplies)."""
    return max(0, -interval[0]), max(0, interval[1] - size)


@dataclass(frozen=True)
class Tile:
    """One tile of a one-pass tiling.

    Attributes:
        index: block index in the tiling layout.
        core: the voxels this tile delivers (global intervals).
        crop: the input the network runs on: ``core`` grown by the halo, aligned, clipped.
    """

    index: BlockIndex
    core: Region
    crop: Region

    @property
    def offset(self) -> tuple[int, ...]:
        """Position of ``core`` inside ``crop``."""
        return tuple(c[0] - k[0] for c, k in zip(self.core, self.crop))


def halo_tiles(layout: Layout, halo_lo: Sequence[int], halo_hi: Sequence[int],
               align: Sequence[int]) -> list[Tile]:
    """Tiles whose crops hold each core's whole receptive field, aligned to the network's stride.

    Args:
        layout: the cores (inner cuts multiples of ``align``).
        halo_lo, halo_hi: receptive-field reach before and after a voxel, per axis.
        align: total stride per axis; crop origins and lengths are multiples of it
            (except where the crop meets the volume's end) so every layer samples the
            same grid as on the whole volume.
    """
    tiles = []
    for idx in layout.indices():
        core = layout.region(idx)
        crop = []
        for (lo, hi), hl, hh, a, n in zip(core, halo_lo, halo_hi, align, layout.shape):
            c_lo = max(0, (lo - hl) // a * a)
            c_hi = min(n, -(-(hi + hh) // a) * a)
            crop.append((c_lo, c_hi))
        tiles.append(Tile(idx, core, tuple(crop)))
    return tiles


def cube_tile(voxels: float, shape: Sequence[int], align: Sequence[int]) -> tuple[int, ...]:
    """Near-cubic tile of at most about ``voxels`` voxels, aligned, no larger than ``shape``."""
    side = max(1.0, voxels ** (1.0 / len(shape)))
    out = []
    for n, a in zip(shape, align):
        t = max(a, int(side + 1e-6) // a * a)
        out.append(min(n, t))
    return tuple(out)


def lcm(values: Sequence[int]) -> int:
    return math.lcm(*values) if values else 1
