"""Layers that cannot be partitioned are named before (or when) they would run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medinfer.partition import UnpartitionableLayerError, exact_inference, network_geometry


def test_unsupported_leaf_layer_is_named_with_its_path() -> None:
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.LayerNorm([8, 8, 8]))
    with pytest.raises(UnpartitionableLayerError, match=r"LayerNorm at '1'") as err:
        exact_inference(net, torch.randn(1, 8, 8, 8), tile_shape=(4, 4, 4))
    assert err.value.layer_type == "LayerNorm"


class _Flipper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(self.conv(x), dims=[2])


def test_unsupported_operation_in_forward_names_the_module() -> None:
    with pytest.raises(UnpartitionableLayerError, match=r"_Flipper \(flip\)"):
        network_geometry(_Flipper(), 1, (8, 8, 8))


def test_non_zero_padding_mode_is_refused() -> None:
    net = nn.Sequential(nn.Conv3d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(UnpartitionableLayerError, match="padding_mode='reflect'"):
        exact_inference(net, torch.randn(1, 8, 8, 8))


def test_spatial_concatenation_is_refused() -> None:
    class CatX(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv3d(1, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.conv(x), x], dim=2)

    with pytest.raises(UnpartitionableLayerError, match="cat"):
        exact_inference(CatX(), torch.randn(1, 8, 8, 8), tile_shape=(4, 4, 4))


def test_geometry_of_plain_convolutions() -> None:
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv3d(2, 2, 5, padding=2),
                        nn.MaxPool3d(2), nn.Upsample(scale_factor=2))
    g = network_geometry(net, 1, (16, 16, 16))
    assert g.halo_lo == g.halo_hi == (4, 4, 4) and g.align == (2, 2, 2) and g.global_stats == ()
    torch.manual_seed(0)
    x = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        ref = net(x[None])[0]
    torch.testing.assert_close(exact_inference(net, x, tile_shape=(8, 8, 8)), ref)
