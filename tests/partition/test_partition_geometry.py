"""Tile geometry: each layer's halo rule reproduces the whole-signal layer block by block."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medinfer.partition import geometry as geo
from medinfer.partition.errors import PartitionGeometryError


def _window(x: torch.Tensor, iv: tuple[int, int], fill: str = "zeros") -> torch.Tensor:
    """x[lo:hi] of a (1, C, N) signal with zeros (or edge copies) outside [0, N)."""
    n = x.shape[-1]
    lo, hi = iv
    inner = x[..., max(0, lo):min(n, hi)]
    pads = (max(0, -lo), max(0, hi - n))
    return F.pad(inner, pads, mode="constant" if fill == "zeros" else "replicate")


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 2, 0, 1), (5, 1, 2, 1),
                                     (3, 1, 2, 2), (2, 2, 0, 1), (4, 2, 1, 1)])
def test_conv_need_gives_each_block_exactly(k: int, s: int, p: int, d: int) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 24), torch.randn(3, 2, k)
    whole = F.conv1d(x, w, padding=p, stride=s, dilation=d)
    span = d * (k - 1) + 1
    n_out = geo.conv_out_size(24, s, p, p, span)
    assert n_out == whole.shape[-1]
    cuts = geo.strided_cuts(geo.split_axis(24, 3, s), s, n_out)
    for lo, hi in zip(cuts, cuts[1:]):
        need = geo.conv_need((lo, hi), s, p, span)
        block = F.conv1d(_window(x, need), w, stride=s, dilation=d)
        torch.testing.assert_close(block, whole[..., lo:hi])


@pytest.mark.parametrize("k,s,p,op", [(3, 2, 1, 1), (2, 2, 0, 0), (4, 2, 1, 0), (3, 1, 1, 0),
                                      (5, 3, 1, 2)])
def test_conv_transpose_need_gives_each_block_exactly(k: int, s: int, p: int, op: int) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(1, 2, 12), torch.randn(2, 3, k)
    whole = F.conv_transpose1d(x, w, stride=s, padding=p, output_padding=op)
    n_out = geo.conv_transpose_out_size(12, s, p, k, op)
    assert n_out == whole.shape[-1]
    cuts = geo.upscaled_cuts(geo.split_axis(12, 3), s, n_out)
    for lo, hi in zip(cuts, cuts[1:]):
        need = geo.conv_transpose_need((lo, hi), s, p, k)
        y = F.conv_transpose1d(_window(x, need), w, stride=s)
        start = lo - s * need[0] + p
        torch.testing.assert_close(y[..., start:start + hi - lo], whole[..., lo:hi])


@pytest.mark.parametrize("mode,f", [("nearest", 2), ("linear", 2), ("linear", 3), ("nearest", 3)])
def test_interpolate_need_gives_each_block_exactly(mode: str, f: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 2, 10)
    whole = F.interpolate(x, scale_factor=f, mode=mode)
    linear = mode == "linear"
    cuts = geo.upscaled_cuts(geo.split_axis(10, 3), f, 10 * f)
    for lo, hi in zip(cuts, cuts[1:]):
        need = geo.interpolate_need((lo, hi), f, linear)
        y = F.interpolate(_window(x, need, "replicate" if linear else "zeros"),
                          scale_factor=f, mode=mode)
        start = lo - f * need[0]
        torch.testing.assert_close(y[..., start:start + hi - lo], whole[..., lo:hi])


def test_split_and_tile_axes_are_aligned() -> None:
    assert geo.split_axis(32, 2, 4) == (0, 16, 32)
    assert geo.split_axis(40, 3, 8) == (0, 16, 24, 40)
    assert geo.tile_axis(100, 30, 8) == (0, 32, 64, 96, 100)
    with pytest.raises(PartitionGeometryError):
        geo.split_axis(8, 3, 4)


def test_strided_cuts_reject_off_grid_blocks() -> None:
    assert geo.strided_cuts((0, 8, 16), 2, 8) == (0, 4, 8)
    with pytest.raises(PartitionGeometryError, match="stride"):
        geo.strided_cuts((0, 7, 16), 2, 8)


def test_layout_regions_and_validation() -> None:
    lay = geo.Layout(((0, 4, 8), (0, 8)))
    assert lay.shape == (8, 8) and lay.grid == (2, 1)
    assert list(lay.indices()) == [(0, 0), (1, 0)]
    assert lay.region((1, 0)) == ((4, 8), (0, 8))
    assert lay.flat((1, 0)) == 1
    with pytest.raises(PartitionGeometryError):
        geo.Layout(((0, 4, 4),))


def test_halo_tiles_cover_core_plus_halo_aligned_and_clipped() -> None:
    lay = geo.Layout((geo.tile_axis(64, 16, 4),))
    tiles = geo.halo_tiles(lay, (5,), (3,), (4,))
    assert [t.crop for t in tiles] == [((0, 20),), ((8, 36),), ((24, 52),), ((40, 64),)]
    for t in tiles:
        (c_lo, c_hi), (k_lo, k_hi) = t.core[0], t.crop[0]
        assert k_lo <= max(0, c_lo - 5) and k_hi >= min(64, c_hi + 3) and k_lo % 4 == 0
        assert t.offset == (c_lo - k_lo,)


def test_cube_tile_respects_volume_and_alignment() -> None:
    assert geo.cube_tile(64**3, (200, 200, 40), (8, 8, 8)) == (64, 64, 40)
    assert geo.cube_tile(1, (32, 32, 32), (8, 8, 8)) == (8, 8, 8)
