"""Dense U-Net: a U-Net whose encoder and decoder stages are dense blocks.

The seeds' Siemens cardiac segmentation model is a Dense U-Net. MONAI has no such net, so
this module assembles one from MONAI blocks (``Convolution`` = conv + ADN, ``UpSample``).

Layout for ``channels=(c0, c1, ..., cL)`` (``L + 1`` levels, total stride ``2**L``)::

    stem      conv3 in -> c0
    encoder   level i: dense block on c(i-1) (c0 at level 0), transition conv1 -> ci,
              keep as skip i, max-pool by 2 (all levels but the last, the bottleneck)
    decoder   level i (L-1 .. 0): upsample x2 (nearest) + conv3 c(i+1) -> ci,
              concatenate skip i (2 ci), dense block, transition conv1 -> ci
    head      conv1 c0 -> out_channels (logits, no norm or activation)

A dense block of ``n`` layers at growth rate ``k`` feeds layer ``j`` the concatenation of
the block's input and the ``j`` feature maps before it, and outputs the concatenation of
all of them (input width + ``n * k`` channels).

Why these layer types: every layer is conv -> batch norm -> ReLU, so inference folds the
norm into the convolution and INT8 quantizers (OpenVINO/NNCF, ONNX Runtime static QDQ)
see plain convolutions with non-negative activations; concatenated ReLU outputs share one
unsigned range. Down-sampling is max pooling and up-sampling a parameter-free
``Upsample`` followed by a convolution: no transposed convolutions and no PReLU, the two
layers those toolchains leave in float in MONAI's ``UNet``. Every operation also has a
rule in :mod:`medinfer.partition`, so exact tiled inference applies.

Example:
    >>> from medinfer.models import create_model
    >>> net = create_model("dense_unet3d", in_channels=1, out_channels=3)
    >>> net(torch.zeros(1, 1, 48, 64, 48)).shape
    torch.Size([1, 3, 48, 64, 48])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Pool

from medinfer.models.registry import register_model

__all__ = ["DenseBlock", "DenseUNet", "dense_unet2d", "dense_unet3d"]


def _conv(dims: int, cin: int, cout: int, kernel: int, norm: str, dropout: float) -> Convolution:
    """Conv -> norm -> (dropout) -> ReLU, 'same' padding."""
    return Convolution(dims, cin, cout, kernel_size=kernel, act="relu", norm=norm,
                       dropout=dropout or None, adn_ordering="NDA")


class DenseBlock(torch.nn.Module):
    """``layers`` conv3 layers, each seeing the concatenation of all maps before it.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the block's input.
        growth_rate: channels each layer adds (``k``).
        layers: number of layers (``n``).
        norm: ``"batch"`` or ``"instance"``.
        dropout: dropout probability after each layer's norm.

    Input (N, in_channels, *spatial); output (N, in_channels + layers * growth_rate, *spatial).
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, layers: int,
                 norm: str = "batch", dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            _conv(spatial_dims, in_channels + j * growth_rate, growth_rate, 3, norm, dropout)
            for j in range(layers))
        self.out_channels = in_channels + layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class _Stage(torch.nn.Sequential):
    """Dense block + conv1 transition to ``out_channels`` (one encoder or decoder level)."""

    def __init__(self, dims: int, cin: int, cout: int, growth_rate: int, layers: int,
                 norm: str, dropout: float) -> None:
        block = DenseBlock(dims, cin, growth_rate, layers, norm, dropout)
        super().__init__(block, _conv(dims, block.out_channels, cout, 1, norm, dropout))


class DenseUNet(torch.nn.Module):
    """Dense U-Net (see the module docstring for the layout).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (logits).
        channels: feature width per level, shallow to deep; ``len(channels) - 1``
            down-samplings by 2, so the input sides must be multiples of
            ``2 ** (len(channels) - 1)``.
        growth_rate: channels each dense layer adds.
        layers: dense layers per block (every encoder, bottleneck and decoder level).
        norm: ``"batch"`` (folds into the convolutions at inference) or ``"instance"``.
        dropout: dropout probability after each norm.
        upsample: ``"nearest"`` or ``"linear"`` (bi/trilinear, ``align_corners=False``).

    Input (N, in_channels, *spatial); output (N, out_channels, *spatial).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 channels: Sequence[int], growth_rate: int, layers: int, norm: str = "batch",
                 dropout: float = 0.0, upsample: str = "nearest") -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"a Dense U-Net needs at least 2 levels, got channels={channels}")
        if upsample not in ("nearest", "linear"):
            raise ValueError(f"upsample must be 'nearest' or 'linear', not {upsample!r}")
        d, c = spatial_dims, tuple(channels)
        self.stride = 2 ** (len(c) - 1)
        self.stem = _conv(d, in_channels, c[0], 3, norm, dropout)
        self.encoder = torch.nn.ModuleList(
            _Stage(d, c[max(i - 1, 0)], c[i], growth_rate, layers, norm, dropout)
            for i in range(len(c)))
        self.pool = Pool[Pool.MAX, d](kernel_size=2, stride=2)
        self.up = torch.nn.ModuleList(
            torch.nn.Sequential(
                UpSample(d, c[i + 1], c[i + 1], scale_factor=2, mode="nontrainable",
                         pre_conv=None, interp_mode=upsample,
                         align_corners=False if upsample == "linear" else None),
                _conv(d, c[i + 1], c[i], 3, norm, dropout))
            for i in range(len(c) - 1))
        self.decoder = torch.nn.ModuleList(
            _Stage(d, 2 * c[i], c[i], growth_rate, layers, norm, dropout)
            for i in range(len(c) - 1))
        self.head = Convolution(d, c[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()  # the bottleneck
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


_DEFAULTS: dict[str, object] = {"channels": (16, 32, 64, 128), "growth_rate": 16, "layers": 3,
                                "norm": "batch"}


@register_model("dense_unet3d", task="segmentation", spatial_dims=3, **_DEFAULTS)
def dense_unet3d(
    *, in_channels: int, out_channels: int, channels: Sequence[int], growth_rate: int,
    layers: int, norm: str = "batch", dropout: float = 0.0, upsample: str = "nearest",
) -> torch.nn.Module:
    """3D Dense U-Net (the seeds' cardiac model family), see :class:`DenseUNet`.

    Input (N, C, X, Y, Z) with sides divisible by ``2 ** (len(channels) - 1)`` (8 by
    default); output (N, out_channels, X, Y, Z) logits.
    """
    return DenseUNet(3, in_channels, out_channels, channels, growth_rate, layers, norm,
                     dropout, upsample)


@register_model("dense_unet2d", task="segmentation", spatial_dims=2, **_DEFAULTS)
def dense_unet2d(
    *, in_channels: int, out_channels: int, channels: Sequence[int], growth_rate: int,
    layers: int, norm: str = "batch", dropout: float = 0.0, upsample: str = "nearest",
) -> torch.nn.Module:
    """2D Dense U-Net, see :class:`DenseUNet`. Input (N, C, H, W) with sides divisible by
    ``2 ** (len(channels) - 1)``; output (N, out_channels, H, W) logits."""
    return DenseUNet(2, in_channels, out_channels, channels, growth_rate, layers, norm,
                     dropout, upsample)


@register_model("test_dense_unet3d", task="segmentation", spatial_dims=3,
                channels=(4, 8, 16), growth_rate=4, layers=2, norm="batch")
def test_dense_unet3d(**kwargs: object) -> torch.nn.Module:
    """Tiny 3D Dense U-Net for tests (input sides divisible by 4)."""
    return dense_unet3d(**kwargs)  # type: ignore[arg-type]
