"""Multi-scale CNN for cell phenotypes (M-CNN) and its single-scale baseline.

The M-CNN of Godinez et al. ("A multi-scale convolutional neural network for phenotyping
high-content cellular images", Bioinformatics 33(13), 2017) reads the input at several
resolutions at once: parallel branches of three convolution layers each see the image, half
of it, a quarter of it, ...; each branch's feature map is pooled down to the size of the
coarsest one, the maps are concatenated, and a final convolution layer feeds the class
output. Here the input of branch ``s`` is the image average-pooled by ``2**s``, the branch
outputs are max-pooled to the coarsest size (as in the paper), and the class output is a
global average pool and a linear layer.

:func:`scnn` is the baseline of about the same size: one input resolution, the same number of
convolution layers (three, with 2x max pooling between them, then the final one) and its
width chosen so that its parameter count is within a few per cent of :func:`mcnn`'s defaults.

Both are plain convolution / batch norm / ReLU / pooling / concatenation / linear layers with
static shapes, so they export to ONNX and OpenVINO and quantize to INT8 without float
islands. Input ``(N, C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (scales - 1)``;
output ``(N, out_channels)`` logits (a softmax over them for mutually exclusive classes).

Example:
    >>> from medinfer.models import create_model
    >>> net = create_model("mcnn", in_channels=3, out_channels=6, scales=3, width=32)
    >>> net(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

from medinfer.models.registry import register_model

BRANCH_DEPTH = 3
"""Convolution layers per branch (the paper's three)."""


def conv_block(cin: int, cout: int) -> Convolution:
    """3x3 convolution, batch norm, ReLU (MONAI ``Convolution``, padding keeps the size)."""
    return Convolution(2, cin, cout, kernel_size=3, act="relu", norm="batch")


def _branch(in_channels: int, width: int) -> nn.Sequential:
    """:data:`BRANCH_DEPTH` convolution blocks of ``width`` channels at one resolution."""
    return nn.Sequential(conv_block(in_channels, width),
                         *[conv_block(width, width) for _ in range(BRANCH_DEPTH - 1)])


def _pool(factor: int, kind: type[nn.Module]) -> nn.Module:
    """``kind`` pooling (AvgPool2d / MaxPool2d) by ``factor``; identity for a factor of 1."""
    return nn.Identity() if factor == 1 else kind(kernel_size=factor, stride=factor)


class ClassHead(nn.Module):
    """Final convolution block, global average pool and linear class output."""

    def __init__(self, cin: int, features: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_block(cin, features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


class MultiScaleCNN(nn.Module):
    """Parallel branches on the input at ``scales`` resolutions, merged at the coarsest.

    Args:
        in_channels: input channels (3: RGB).
        out_channels: classes (one logit each).
        scales: branches; branch ``s`` reads the input average-pooled by ``2**s``.
        width: channels of every branch layer; the final layer has ``2 * width``.
    """

    def __init__(self, in_channels: int, out_channels: int, scales: int, width: int) -> None:
        super().__init__()
        if scales < 1 or width < 1:
            raise ValueError(f"mcnn needs scales >= 1 and width >= 1, got scales={scales}, width={width}")
        self.scales = scales
        self.inputs = nn.ModuleList([_pool(2**s, nn.AvgPool2d) for s in range(scales)])
        self.branches = nn.ModuleList([_branch(in_channels, width) for _ in range(scales)])
        # each branch's map max-pooled down to the coarsest branch's size
        self.merges = nn.ModuleList([_pool(2 ** (scales - 1 - s), nn.MaxPool2d) for s in range(scales)])
        self.head = ClassHead(scales * width, 2 * width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [merge(branch(down(x))) for down, branch, merge in zip(self.inputs, self.branches, self.merges)]
        return self.head(torch.cat(maps, dim=1))


class SingleScaleCNN(nn.Module):
    """The baseline: :data:`BRANCH_DEPTH` convolution blocks on the input at its own
    resolution with 2x max pooling after each but the last (so the final layer works at the
    size an M-CNN of ``BRANCH_DEPTH`` scales merges at), then the same head.

    Args:
        in_channels: input channels.
        out_channels: classes.
        width: channels of the convolution layers; the final layer has ``2 * width``.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"scnn needs width >= 1, got {width}")
        layers: list[nn.Module] = [conv_block(in_channels, width)]
        for _ in range(BRANCH_DEPTH - 1):
            layers += [nn.MaxPool2d(2), conv_block(width, width)]
        self.features = nn.Sequential(*layers)
        self.head = ClassHead(width, 2 * width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("mcnn", task="classification", spatial_dims=2, scales=3, width=32)
def mcnn(*, in_channels: int, out_channels: int, scales: int, width: int) -> nn.Module:
    """M-CNN (Godinez et al. 2017): see :class:`MultiScaleCNN`. Defaults: 3 scales (the
    input, 1/2, 1/4), width 32: about 114 thousand parameters for 6 classes."""
    return MultiScaleCNN(in_channels, out_channels, scales, width)


@register_model("scnn", task="classification", spatial_dims=2, width=56)
def scnn(*, in_channels: int, out_channels: int, width: int) -> nn.Module:
    """Single-scale baseline of :func:`mcnn`: see :class:`SingleScaleCNN`. Width 56 gives
    about the parameter count of the default M-CNN (within 1 %)."""
    return SingleScaleCNN(in_channels, out_channels, width)
