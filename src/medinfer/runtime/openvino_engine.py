"""OpenVINO engine: a sync request for latency, a pool of async requests for requests in flight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medinfer.errors import BackendUnavailableError, InputError
from medinfer.runtime.engine import Engine, EngineOptions, register_engine


@register_engine
class OpenVINOEngine(Engine):
    """OpenVINO CPU plugin with explicit ``INFERENCE_NUM_THREADS``.

    ``in_flight == 1`` compiles with the LATENCY hint (one stream using every thread);
    ``in_flight > 1`` compiles with ``NUM_STREAMS = in_flight`` and keeps that many
    infer requests running asynchronously.
    """

    backend = "openvino"

    def __init__(self, path: Path, precision: str, options: EngineOptions) -> None:
        super().__init__(path, precision, options)
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            raise InputError(path, f"OpenVINO cannot read this model: {exc}") from exc
        if options.static_batch:
            shape = list(model.input(0).get_partial_shape())
            shape[0] = options.static_batch
            model.reshape({model.input(0).get_any_name(): ov.PartialShape(shape)})
        if options.device != "cpu":
            raise BackendUnavailableError(f"OpenVINO engine runs on the CPU here, not {options.device!r}")
        config: dict[str, object] = {"INFERENCE_NUM_THREADS": options.threads,
                                     "INFERENCE_PRECISION_HINT": "f32",
                                     "ENABLE_CPU_PINNING": options.pin_threads}
        if options.in_flight > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": options.in_flight})
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._pool: list | None = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return self.request.get_output_tensor(0).data.copy()

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Keep ``in_flight`` infer requests busy (OpenVINO's async API, one request per stream).

        A fixed pool of requests is cycled with ``start_async``/``wait`` rather than an
        ``AsyncInferQueue`` with a Python callback: the queue's destructor can deadlock
        against a callback that needs the GIL (seen here with openvino 2026.4).
        """
        n = self.options.in_flight
        if n <= 1:
            return [self.infer(b) for b in batches]
        if self._pool is None:
            self._pool = [self.compiled.create_infer_request() for _ in range(n)]
        results: list[np.ndarray | None] = [None] * len(batches)
        owner: list[int | None] = [None] * n  # which batch each request is running

        def collect(slot: int) -> None:
            index = owner[slot]
            if index is not None:
                self._pool[slot].wait()
                results[index] = self._pool[slot].get_output_tensor(0).data.copy()
                owner[slot] = None

        for i, b in enumerate(batches):
            slot = i % n
            collect(slot)
            self._pool[slot].start_async({0: np.ascontiguousarray(b, np.float32)})
            owner[slot] = i
        for slot in range(n):
            collect(slot)
        return [r for r in results if r is not None]

    def close(self) -> None:
        # Dropping the last references frees the compiled model's memory.
        self._pool = None
        self.request = None
        self.compiled = None
