"""Which layers spatial partitioning keeps exact, checked before anything runs."""

from __future__ import annotations

import torch
from torch import nn

from medinfer.partition.errors import UnpartitionableLayerError

#: Leaf layers with a partitioned rule (see :mod:`medinfer.partition.ops`).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.GroupNorm, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.Upsample, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.LogSoftmax,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def check_partitionable(model: nn.Module) -> None:
    """Raise if ``model`` holds a leaf layer without a partitioned rule.

    Modules with children (MONAI's ``Convolution``, ``ResidualUnit``, ``SkipConnection``,
    whole networks) are fine: their own forward code runs unchanged, and every
    operation it applies to a partitioned tensor is checked again when it runs.

    Raises:
        UnpartitionableLayerError: naming the first such layer's type and path, e.g.
            ``cannot partition layer LayerNorm at 'blocks.0.norm'``.
    """
    for path, module in model.named_modules():
        if any(True for _ in module.children()) or isinstance(module, _CONTAINERS):
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            raise UnpartitionableLayerError(
                type(module).__name__, path,
                "no partitioned rule (supported: convolutions, transposed convolutions, "
                "pooling without padding, integer upsampling, batch/instance/group norm, "
                "point-wise activations, dropout)")
        if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros":
            raise UnpartitionableLayerError(
                f"{type(module).__name__}(padding_mode={module.padding_mode!r})", path,
                "only zero padding")


def as_batch(volume: torch.Tensor, spatial_dims: int = 3) -> tuple[torch.Tensor, bool]:
    """``(C, *S)`` or ``(N, C, *S)`` as a batch, and whether a batch axis was added."""
    if volume.dim() == spatial_dims + 1:
        return volume.unsqueeze(0), True
    if volume.dim() != spatial_dims + 2:
        raise ValueError(f"expected (C, *spatial) or (N, C, *spatial) with {spatial_dims} "
                         f"spatial axes, got shape {tuple(volume.shape)}")
    return volume, False
