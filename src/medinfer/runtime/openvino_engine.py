"""OpenVINO engine: sync requests for latency, AsyncInferQueue for requests in flight."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medinfer.errors import InputError
from medinfer.runtime.engine import Engine, EngineOptions, register_engine


@register_engine
class OpenVINOEngine(Engine):
    """OpenVINO CPU plugin with explicit ``INFERENCE_NUM_THREADS``.

    ``in_flight == 1`` compiles with the LATENCY hint (one stream using every thread);
    ``in_flight > 1`` compiles with ``NUM_STREAMS = in_flight`` and runs requests
    through an ``AsyncInferQueue`` of that many jobs.
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
        config: dict[str, object] = {"INFERENCE_NUM_THREADS": options.threads,
                                     "INFERENCE_PRECISION_HINT": "f32"}
        if options.in_flight > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": options.in_flight})
        else:
            config["PERFORMANCE_HINT"] = "LATENCY"
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._queue = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return self.request.get_output_tensor(0).data.copy()

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.options.in_flight <= 1:
            return [self.infer(b) for b in batches]
        import openvino as ov

        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.options.in_flight)
        results: list[np.ndarray | None] = [None] * len(batches)

        def done(request, index: int) -> None:
            results[index] = request.get_output_tensor(0).data.copy()

        self._queue.set_callback(done)
        for i, b in enumerate(batches):
            self._queue.start_async({0: np.ascontiguousarray(b, np.float32)}, userdata=i)
        self._queue.wait_all()
        return [r for r in results if r is not None]
