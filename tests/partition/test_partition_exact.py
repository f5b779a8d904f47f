"""exact_inference equals the whole-volume result: tiles, budgets, memory-mapped activations."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from partition_helpers import max_rel_diff, tiny_net

from medinfer.partition import exact_inference, network_geometry
from medinfer.partition.errors import PartitionGeometryError

TOL = 1e-4  # relative to the output's largest magnitude


def _whole(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x[None])[0]


CASES = [  # network, volume (C, X, Y, Z), exact_inference keywords
    ("unet-instance", (1, 40, 32, 24), {"tile_shape": (16, 16, 16)}),
    ("unet-instance", (1, 40, 32, 24), {"memory_budget_mb": 1}),
    ("unet-batch", (1, 96, 32, 24), {"tile_shape": (48, 16, 16)}),
    ("unet-batch", (1, 96, 32, 24), {"tile_shape": (16, 16, 16)}),
    ("basicunet", (1, 32, 32, 32), {"tile_shape": (16, 16, 16)}),
    ("dynunet", (1, 32, 24, 16), {"tile_shape": (8, 8, 8)}),
]


@pytest.mark.parametrize("kind,shape,kw", CASES)
def test_tiled_equals_whole_volume(kind: str, shape: tuple[int, ...], kw: dict) -> None:
    net = tiny_net(kind)
    torch.manual_seed(1)
    x = torch.randn(shape)
    ref = _whole(net, x)
    out = exact_inference(net, x, **kw)
    assert out.shape == ref.shape
    assert max_rel_diff(out, ref) < TOL
    assert torch.equal(out.argmax(0), ref.argmax(0))


def test_batch_norm_network_runs_one_pass_with_real_tiles(caplog: pytest.LogCaptureFixture) -> None:
    net = tiny_net("unet-batch")
    geom = network_geometry(net, 1, (96, 32, 24))
    assert geom.global_stats == () and geom.align == (4, 4, 4)
    assert 0 < geom.halo_lo[0] < 48  # a 16-voxel tile's crop is smaller than the volume
    with caplog.at_level(logging.INFO, logger="medinfer.partition"):
        exact_inference(net, torch.randn(1, 96, 32, 24), tile_shape=(48, 32, 24))
    assert "(2, 1, 1) tiles" in caplog.text and "one pass" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medinfer.partition"):  # tiles narrower than the halo
        exact_inference(net, torch.randn(1, 96, 32, 24), tile_shape=(16, 16, 16))
    assert "layer by layer" in caplog.text


def test_instance_norm_spills_activations_to_disk_and_stays_exact(
        tmp_path: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture) -> None:
    net = tiny_net("unet-instance")
    torch.manual_seed(2)
    x = torch.randn(1, 32, 32, 32)
    with caplog.at_level(logging.INFO, logger="medinfer.partition"):
        out = exact_inference(net, x, memory_budget_mb=0.5, workdir=tmp_path)
    assert "on disk" in caplog.text and "layer by layer" in caplog.text
    assert list(tmp_path.iterdir()) == []  # activation files are removed when no longer used
    assert max_rel_diff(out, _whole(net, x)) < TOL


def test_batched_input_keeps_its_batch_axis() -> None:
    net = tiny_net("unet-instance")
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)
    out = exact_inference(net, x, tile_shape=(8, 8, 8))
    assert out.shape == (2, 2, 16, 16, 16) and max_rel_diff(out, ref) < TOL


def test_shipped_brain_volume_tiled_equals_whole(brain: Callable[..., torch.Tensor]) -> None:
    x = brain((48, 48, 32))
    for kind in ("unet-instance", "unet-batch"):
        net = tiny_net(kind)
        ref = _whole(net, x)
        out = exact_inference(net, x, tile_shape=(16, 16, 16))
        assert max_rel_diff(out, ref) < TOL
        assert torch.equal(out.argmax(0), ref.argmax(0))


def test_volume_off_the_stride_grid_is_refused() -> None:
    with pytest.raises(PartitionGeometryError, match="multiple"):  # 18 is off the stride-4 grid
        exact_inference(tiny_net("unet-batch"), torch.randn(1, 18, 16, 16), tile_shape=(8, 8, 8))
