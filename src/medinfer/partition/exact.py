"""Exact memory-bounded tiling in one process: split, run, merge.

Networks without whole-volume statistics (batch norm in eval mode) run once per
tile when the tiles are at least as wide as the receptive field: each tile's crop
holds its core grown by that field
(:func:`~medinfer.partition.receptive.network_geometry`), aligned to the total
stride, and the core of the output is kept. Networks with whole-volume statistics
(instance or group norm), and networks whose tiles would be narrower than their
receptive field, run layer by layer over all tiles at once through
:class:`~medinfer.partition.tiled.TiledTensor`: every layer fetches only its own
small halo, normalization layers reduce their statistics over all tiles first,
and activations that do not fit the budget go to memory-mapped files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from medinfer.partition import ops  # noqa: F401  (registers the partitioned rules)
from medinfer.partition.check import as_batch, check_partitionable
from medinfer.partition.errors import PartitionGeometryError
from medinfer.partition.geometry import Layout, cube_tile, halo_tiles, split_axis, tile_axis
from medinfer.progress import progress_bar
from medinfer.partition.receptive import NetworkGeometry, network_geometry
from medinfer.partition.store import LocalContext, gather
from medinfer.partition.tiled import tracking

log = logging.getLogger(__name__)

_BYTES = 4  # float32


def choose_tile(geom: NetworkGeometry, shape: Sequence[int], batch: int,
                budget_bytes: int | None, tile_shape: Sequence[int] | None,
                layerwise: bool) -> tuple[int, ...]:
    """Tile shape: the user's (aligned up), else the largest near-cube the budget allows.

    One-pass tiles must hold a whole forward pass over the crop (``peak_ratio`` of the
    input per voxel, with room for the operations' temporaries); layer-by-layer tiles
    only one operation's input window and output.
    """
    align = geom.align
    if tile_shape is not None:
        return tuple(min(n, max(a, -(-t // a) * a)) for t, n, a in zip(tile_shape, shape, align))
    if budget_bytes is None:
        return tuple(shape)
    if layerwise:
        per_voxel = _BYTES * batch * geom.peak_ratio * 2
        return cube_tile(budget_bytes / 4 / per_voxel, shape, align)
    per_voxel = _BYTES * batch * geom.peak_ratio * 4
    side = (budget_bytes / 3 / per_voxel) ** (1 / len(shape))
    halo = max(lo + hi for lo, hi in zip(geom.halo_lo, geom.halo_hi))
    return cube_tile(max(1.0, side - halo) ** len(shape), shape, align)


def one_pass_pays(geom: NetworkGeometry, shape: Sequence[int], tile: Sequence[int]) -> bool:
    """Whether tiles with the whole receptive field as halo beat running layer by layer.

    Only without whole-volume statistics, and only while each tile is at least as wide
    as its halo (else the crops recompute the same voxels many times over).
    """
    return not geom.global_stats and all(
        t >= n or t >= lo + hi for t, n, lo, hi in zip(tile, shape, geom.halo_lo, geom.halo_hi))


def exact_inference(model: torch.nn.Module, volume: torch.Tensor,
                    memory_budget_mb: float | None = None,
                    tile_shape: Sequence[int] | None = None, *, progress: bool = False,
                    workdir: str | Path | None = None) -> torch.Tensor:
    """Run ``model`` over ``volume`` in tiles and return exactly the whole-volume result.

    Args:
        model: an unmodified network (MONAI ``UNet``, ``BasicUNet``, ``DynUNet``, ...),
            usually in eval mode; it is run under ``torch.no_grad``.
        volume: ``(C, X, Y, Z)`` or ``(N, C, X, Y, Z)`` float tensor; sides divisible by
            the network's total stride.
        memory_budget_mb: memory the tiles and activations may use (MiB); picks the tile
            size, and sends activations beyond half of it to disk. None: no limit.
        tile_shape: tile size in voxels (rounded up to the total stride); overrides the
            budget's choice.
        progress: show a rich progress bar.

    Runs on the CPU (model and volume on the CPU; memory-mapped activations are host
    memory); for GPUs, split the volume over ranks with :func:`distributed_inference`.
        workdir: folder for memory-mapped activations (default: a temporary folder).

    Returns:
        The network's output for the whole volume, with the same leading axes as
        ``volume`` (``(C_out, X, Y, Z)`` or ``(N, C_out, X, Y, Z)``).

    Raises:
        UnpartitionableLayerError: the network holds a layer without a partitioned rule.
        PartitionGeometryError: the volume's sides are not multiples of the total stride.

    Example:
        >>> net = UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2).eval()
        >>> out = exact_inference(net, torch.randn(1, 256, 256, 256), memory_budget_mb=2000)
    """
    check_partitionable(model)
    x, squeezed = as_batch(volume)
    shape = tuple(x.shape[2:])
    geom = network_geometry(model, x.shape[1], shape)
    for n, a in zip(shape, geom.align):
        if n % a:
            raise PartitionGeometryError(
                f"volume shape {shape} is not a multiple of the network's total stride {geom.align}")
    budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
    tile = choose_tile(geom, shape, x.shape[0], budget, tile_shape, layerwise=False)
    one_pass = one_pass_pays(geom, shape, tile)
    if not one_pass and tile_shape is None:
        tile = choose_tile(geom, shape, x.shape[0], budget, None, layerwise=True)
    if tile_shape is None:  # budget-sized tiles: as many as needed, balanced (no thin last tile)
        layout = Layout(tuple(split_axis(n, -(-n // t), a)
                              for n, t, a in zip(shape, tile, geom.align)))
    else:
        layout = Layout(tuple(tile_axis(n, t, a) for n, t, a in zip(shape, tile, geom.align)))
    log.info("exact tiling: %s tiles of %s, %s", layout.grid, tile,
             f"one pass, halo {geom.halo_lo}/{geom.halo_hi}" if one_pass else "layer by layer")
    with torch.no_grad():
        if one_pass:
            out = _one_pass(model, x, layout, geom, progress)
        else:
            out = _layerwise(model, x, layout, geom, budget, progress, workdir)
    return out[0] if squeezed else out


def _one_pass(model: torch.nn.Module, x: torch.Tensor, layout: Layout, geom: NetworkGeometry,
              progress: bool) -> torch.Tensor:
    """Split into halo tiles, run each, merge their cores."""
    tiles = halo_tiles(layout, geom.halo_lo, geom.halo_hi, geom.align)
    out: torch.Tensor | None = None
    with progress_bar("exact tiles", len(tiles), progress) as advance:
        for tile in tiles:
            crop = x[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in tile.crop))]
            y = model(crop)
            if out is None:
                out = torch.empty((x.shape[0], y.shape[1], *layout.shape), dtype=y.dtype)
            core = tuple(slice(o, o + hi - lo) for o, (lo, hi) in zip(tile.offset, tile.core))
            out[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in tile.core))] = \
                y[(slice(None), slice(None), *core)]
            advance()
    assert out is not None
    return out


def _layerwise(model: torch.nn.Module, x: torch.Tensor, layout: Layout, geom: NetworkGeometry,
               budget: int | None, progress: bool, workdir: str | Path | None) -> torch.Tensor:
    """Run every layer over all tiles before the next (whole-volume statistics stay exact)."""
    with progress_bar("exact layers", geom.steps, progress) as advance:
        ctx = LocalContext(budget, workdir, on_step=lambda _name: advance())
        try:
            with tracking(model):
                y = model(ctx.wrap(x, layout))
            out = gather(y)
            if ctx.spilled_bytes:
                log.info("kept %.1f GiB of activations on disk", ctx.spilled_bytes / 2**30)
            del y
        finally:
            ctx.close()
    return out
