"""One Engine interface over backends (torch, onnxruntime, openvino).

Every engine takes a float32 batch (N, C, *spatial) and returns float32 logits of
the same batch size; :meth:`Engine.infer_many` keeps several requests in flight
with the backend's own mechanism (OpenVINO async infer requests, ONNX Runtime's
thread-safe ``run`` from a pool of callers; torch runs them one after another).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from medinfer.errors import BackendUnavailableError
from medinfer.variants import BACKENDS, LABELS

if TYPE_CHECKING:
    from medinfer.artifact import ModelArtifact, VariantRecord

PRECISIONS = LABELS
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class EngineOptions:
    """Execution settings, explicit so benchmarks are reproducible.

    Attributes:
        threads: compute threads the backend may use (intra-op).
        in_flight: concurrent requests for :meth:`Engine.infer_many`.
        static_batch: fix the batch size at load (OpenVINO compiles a static graph: faster).
        device: ``cpu`` or ``cuda`` (ONNX Runtime's TensorRT / CUDA providers, torch on the GPU).
        pin_threads: pin compute threads to cores (OpenVINO CPU pinning, ONNX Runtime intra-op
            affinities, torch: the process's CPU affinity) so a shared machine's scheduler does
            not migrate them.
        channels_last: torch only: NHWC memory format (faster convolutions on GPUs and oneDNN).
    """

    threads: int = 2
    in_flight: int = 1
    static_batch: int | None = None
    device: str = "cpu"
    pin_threads: bool = False
    channels_last: bool = False


def cuda_available() -> bool:
    """Whether a CUDA device can be used by torch (the GPU paths' precondition)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class Engine(abc.ABC):
    """A loaded model ready to run. Subclasses register themselves in :data:`ENGINES`."""

    backend: str = ""

    def __init__(self, path: Path, precision: str, options: EngineOptions) -> None:
        self.path = path
        self.precision = precision
        self.options = options

    @classmethod
    def load(cls, art: ModelArtifact, variant: VariantRecord, options: EngineOptions) -> Engine:
        """Build the engine for ``variant`` of ``art``: every backend is built through this.

        File-based backends read ``art.root / variant.path``; torch overrides it to load the
        artifact's network.
        """
        return cls(art.root / variant.path, variant.precision, options)

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch (N, C, *spatial) float32; returns logits (N, K, *spatial) float32."""

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run many requests, up to ``options.in_flight`` at a time; results in input order."""
        return [self.infer(b) for b in batches]

    def close(self) -> None:
        """Release backend resources."""


ENGINES: dict[str, type[Engine]] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    ENGINES[cls.backend] = cls
    return cls


def engine_class(backend: str) -> type[Engine]:
    """The engine class for ``backend``; imports it lazily so unused backends cost nothing."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in ENGINES:
        import importlib

        importlib.import_module(f"medinfer.runtime.{backend}_engine")
    return ENGINES[backend]
