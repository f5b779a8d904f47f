"""PyTorch eager engine (the FP32 reference)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medinfer.errors import BackendUnavailableError
from medinfer.runtime.engine import Engine, EngineOptions, register_engine


@register_engine
class TorchEngine(Engine):
    """Eager PyTorch: FP32 (the reference) or bf16 autocast, on the CPU or a CUDA device.

    ``path`` is unused: the module is given (training validates a network in memory) or
    loaded from the artifact by :meth:`load`.
    """

    backend = "torch"

    @classmethod
    def load(cls, art, variant, options: EngineOptions) -> TorchEngine:
        return cls(art.load_network(), variant.precision, options)

    def __init__(self, net: torch.nn.Module, precision: str, options: EngineOptions,
                 path: Path = Path("")) -> None:
        super().__init__(path, precision, options)
        if precision not in ("fp32", "bf16"):
            raise BackendUnavailableError(f"torch runs fp32 or bf16, not {precision!r}")
        if options.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("device cuda asked for, but torch sees no CUDA device")
        torch.set_num_threads(options.threads)
        if options.pin_threads and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: options.threads])
        self.device = torch.device(options.device)
        self.net = net.eval().to(self.device)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        if options.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                   enabled=self.precision == "bf16"):
            return self.net(x).float().cpu().numpy()

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        # Eager torch already spreads one request over all intra-op threads; running
        # several requests concurrently through torch.jit.fork only adds contention.
        return [self.infer(b) for b in batches]
