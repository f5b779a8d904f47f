"""Spatial partitioning (S4): exact tiled and distributed inference and training.

The API (stable names, imported lazily so ``import medinfer.partition`` stays light):

- :func:`exact_inference` — one process, memory-bounded, equal to the whole-volume result;
- :func:`distributed_inference` — a volume split over a mesh of torchrun ranks with
  halo exchange (rank 0 gets the result);
- :func:`partitioned_train_step` — one spatially partitioned (and data-parallel) training step;
- :func:`network_geometry` — a network's receptive-field halo and stride alignment;
- :class:`UnpartitionableLayerError` — raised naming a layer type that cannot be partitioned.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "exact_inference": "medinfer.partition.exact",
    "distributed_inference": "medinfer.partition.distributed",
    "partitioned_train_step": "medinfer.partition.distributed",
    "Mesh": "medinfer.partition.distributed",
    "network_geometry": "medinfer.partition.receptive",
    "NetworkGeometry": "medinfer.partition.receptive",
    "check_partitionable": "medinfer.partition.check",
    "UnpartitionableLayerError": "medinfer.partition.errors",
    "PartitionGeometryError": "medinfer.partition.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medinfer.partition' has no attribute {name!r}")
