"""Errors of the partition package: what cannot be partitioned, and why."""

from __future__ import annotations

from medinfer.errors import MedinferError


class PartitionGeometryError(MedinferError, ValueError):
    """Blocks and a layer do not fit: cuts off the stride grid, halos wider than a neighbour."""


class UnpartitionableLayerError(MedinferError):
    """The network holds a layer (or calls an operation) that spatial partitioning cannot keep exact.

    Args:
        layer_type: the layer's class name (``"LayerNorm"``) or the operation (``"linear"``).
        path: where it sits in the module tree (``"model.2.attn"``), "" if unknown.
        reason: why it cannot be partitioned.
    """

    def __init__(self, layer_type: str, path: str = "", reason: str = "") -> None:
        self.layer_type = layer_type
        self.path = path
        where = f" at {path!r}" if path else ""
        why = f": {reason}" if reason else ""
        super().__init__(f"cannot partition layer {layer_type}{where}{why}")
