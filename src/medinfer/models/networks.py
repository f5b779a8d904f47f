"""The registered networks. MONAI builds them; this module only names and configures them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from monai.networks.nets import UNet

from medinfer.models.registry import register_model


class ResizeUNet(UNet):
    """MONAI ``UNet`` whose decoder upsamples by interpolation, then convolves.

    MONAI's decoder level is a transposed convolution (+ a residual unit). Here it is a
    parameter-free resize (bilinear / trilinear, ``align_corners=False``) followed by a
    3x3 convolution with the same norm and activation, then the same residual unit; the
    top level ends in a plain convolution to the logits.
    Transposed convolutions are what OpenVINO/NNCF and ONNX Runtime leave in float in
    MONAI's ``UNet`` (with PReLU, see ``act``); with ``act="relu"`` every layer of this
    network has an INT8 kernel, so the quantized model has no INT8 <-> FP32 round trips.
    """

    def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> torch.nn.Module:
        up = UpSample(self.dimensions, in_channels, scale_factor=strides, mode="nontrainable",
                      interp_mode="bilinear" if self.dimensions == 2 else "trilinear",
                      align_corners=False)
        if is_top:
            # The logits come from a plain convolution over a full-width feature map: a
            # normalized, ReLU'd map of ``out_channels`` (1) channels, as MONAI's top level
            # has, could die whole and hold the output constant.
            mid = self.channels[0]
            return torch.nn.Sequential(up, self._conv(in_channels, mid), Convolution(
                self.dimensions, mid, out_channels, kernel_size=self.kernel_size, conv_only=True,
                bias=self.bias))
        layers: list[torch.nn.Module] = [up, self._conv(in_channels, out_channels)]
        if self.num_res_units > 0:
            layers.append(ResidualUnit(
                self.dimensions, out_channels, out_channels, strides=1, kernel_size=self.kernel_size,
                subunits=1, act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
                adn_ordering=self.adn_ordering))
        return torch.nn.Sequential(*layers)

    def _conv(self, cin: int, cout: int) -> Convolution:
        return Convolution(self.dimensions, cin, cout, kernel_size=self.up_kernel_size, act=self.act,
                           norm=self.norm, dropout=self.dropout, bias=self.bias,
                           adn_ordering=self.adn_ordering)


def _unet(up: str, **kwargs: object) -> UNet:
    """MONAI's ``UNet`` (``up="deconv"``) or :class:`ResizeUNet` (``up="resize"``)."""
    if up not in ("deconv", "resize"):
        raise ValueError(f"up must be 'deconv' or 'resize', got {up!r}")
    return (ResizeUNet if up == "resize" else UNet)(**kwargs)  # type: ignore[arg-type]


@register_model(
    "resunet", task="segmentation", spatial_dims=2,
    channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2), num_res_units=2,
)
def resunet(
    *, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
    num_res_units: int, dropout: float = 0.0, act: str = "prelu", up: str = "deconv",
    norm: str | None = "batch",
) -> torch.nn.Module:
    """Residual U-Net (ResUNet): U-Net whose encoder/decoder blocks are residual units.

    This is the DQ-ResUNet paper's base network (U-Net + residual learning). MONAI's
    ``UNet`` with ``num_res_units > 0`` gives exactly that structure: strided-conv
    downsampling, residual units of conv-BN-PReLU, transposed-conv upsampling.
    Batch norm (not MONAI's default instance norm) so inference folds it into the
    convolutions and INT8 quantization sees plain conv layers. ``act="relu"`` and
    ``up="resize"`` (:class:`ResizeUNet`) give a network whose every layer quantizes;
    the defaults (PReLU, transposed convolutions) are MONAI's and the first polyp model's.
    ``norm``: ``batch`` (the default), ``instance`` or None (none). In data-parallel training
    batch norm sees only each process's share of the batch; without it (None) W processes
    train the weights of one process on the whole batch.

    Input (N, in_channels, H, W) with H, W divisible by 16; output (N, out_channels, H, W) logits.
    """
    return _unet(
        up, spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
        channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
        norm=norm, dropout=dropout, act=act,
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


RESNET_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
"""Block type and blocks per stage of the ResNets of He et al. (10: one block per stage)."""


@register_model("tile-resnet", task="classification", spatial_dims=2, depth=10, width=16)
def tile_resnet(*, in_channels: int, out_channels: int, depth: int, width: int) -> torch.nn.Module:
    """A 2D ResNet (MONAI) classifying slide tiles: one logit per class.

    ``depth`` 10/18/34/50 picks the blocks (50: bottleneck blocks, the seed's ResNet-50 at
    ``width`` 64); stage channels are ``width * (1, 2, 4, 8)`` (times 4 after bottlenecks).
    Stem: 7x7 convolution of stride 2 and max pooling, as in the paper.
    """
    from monai.networks.nets import ResNet

    if depth not in RESNET_DEPTHS:
        raise ValueError(f"tile-resnet depth must be one of {sorted(RESNET_DEPTHS)}, not {depth}")
    block, layers = RESNET_DEPTHS[depth]
    return ResNet(block, list(layers), [width, 2 * width, 4 * width, 8 * width], spatial_dims=2,
                  n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, num_classes=out_channels)
