"""The registered networks. MONAI builds them; this module only names and configures them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet

from medinfer.models.registry import register_model


@register_model(
    "resunet", task="segmentation", spatial_dims=2,
    channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2), num_res_units=2,
)
def resunet(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
    num_res_units: int, dropout: float = 0.0,
) -> torch.nn.Module:
    """Residual U-Net (ResUNet): U-Net whose encoder/decoder blocks are residual units.

    This is the DQ-ResUNet paper's base network (U-Net + residual learning). MONAI's
    ``UNet`` with ``num_res_units > 0`` gives exactly that structure: strided-conv
    downsampling, residual units of conv-BN-PReLU, transposed-conv upsampling.
    Batch norm (not MONAI's default instance norm) so inference folds it into the
    convolutions and INT8 quantization sees plain conv layers.

    Input (N, in_channels, H, W) with H, W divisible by 16; output (N, out_channels, H, W) logits.
    """
    return UNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
        norm="batch", dropout=dropout,
    )


@register_model(
    "unet2d", task="segmentation", spatial_dims=2,
    channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2),
)
def unet2d(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
    dropout: float = 0.0,
) -> torch.nn.Module:
    """Plain 2D U-Net (no residual units), the ResUNet's baseline. Same I/O as :func:`resunet`."""
    return UNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), strides=tuple(strides), num_res_units=0,
        norm="batch", dropout=dropout,
    )


@register_model(
    "test_resunet", task="segmentation", spatial_dims=2,
    channels=(4, 8, 16), strides=(2, 2), num_res_units=1,
)
def test_resunet(**kwargs: object) -> torch.nn.Module:
    """Tiny ResUNet for tests (input sides divisible by 4)."""
    return resunet(**kwargs)  # type: ignore[arg-type]


@register_model(
    "unet3d", task="segmentation", spatial_dims=3,
    channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch",
)
def unet3d(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
    num_res_units: int, norm: str = "batch", dropout: float = 0.0,
) -> torch.nn.Module:
    """3D U-Net with residual units (MONAI ``UNet``, ``spatial_dims=3``).

    ``norm="batch"`` (default) folds into the convolutions for INT8 inference;
    ``norm="instance"`` is MONAI's own default and needs whole-volume statistics, which
    :mod:`medinfer.partition` keeps exact. Input (N, C, X, Y, Z) with sides divisible by
    the product of ``strides``; output (N, out_channels, X, Y, Z) logits.
    """
    return UNet(
        spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
        norm=norm, dropout=dropout,
    )


@register_model(
    "test_unet3d", task="segmentation", spatial_dims=3,
    channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch",
)
def test_unet3d(**kwargs: object) -> torch.nn.Module:
    """Tiny 3D U-Net for tests (input sides divisible by 4)."""
    return unet3d(**kwargs)  # type: ignore[arg-type]


@register_model(
    "densenet121", task="classification", spatial_dims=2,
    init_features=64, growth_rate=32, block_config=(6, 12, 24, 16),
)
def densenet121(
    *, in_channels: int, out_channels: int, init_features: int, growth_rate: int,
    block_config: Sequence[int], dropout: float = 0.0,
) -> torch.nn.Module:
    """DenseNet-121 (MONAI), the CheXNet backbone: one logit per finding.

    Input (N, in_channels, H, W), any H, W >= 32; output (N, out_channels) logits (apply a
    sigmoid per finding for multi-label probabilities). Trained here from scratch: nothing
    is downloaded.
    """
    from monai.networks.nets import DenseNet

    return DenseNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        init_features=init_features, growth_rate=growth_rate, block_config=tuple(block_config),
        dropout_prob=dropout,
    )


@register_model(
    "test_densenet", task="classification", spatial_dims=2,
    init_features=8, growth_rate=4, block_config=(2, 2),
)
def test_densenet(**kwargs: object) -> torch.nn.Module:
    """Tiny DenseNet for tests (same layer types as DenseNet-121)."""
    return densenet121(**kwargs)  # type: ignore[arg-type]
