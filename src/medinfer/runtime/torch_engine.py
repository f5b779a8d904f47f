"""PyTorch eager engine (the FP32 reference)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medinfer.runtime.engine import Engine, EngineOptions, register_engine


@register_engine
class TorchEngine(Engine):
    """Eager PyTorch FP32. ``path`` is unused: the module is passed in by the loader."""

    backend = "torch"

    def __init__(self, net: torch.nn.Module, precision: str, options: EngineOptions,
                 path: Path = Path("")) -> None:
        super().__init__(path, precision, options)
        torch.set_num_threads(options.threads)
        self.net = net.eval()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        # Eager torch already spreads one request over all intra-op threads; running
        # several requests concurrently through torch.jit.fork only adds contention.
        return [self.infer(b) for b in batches]
