"""ONNX Runtime engine (CPU provider; CUDA where present and asked for)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from medinfer.errors import BackendUnavailableError, InputError
from medinfer.runtime.engine import Engine, EngineOptions, register_engine


@register_engine
class OnnxRuntimeEngine(Engine):
    """ONNX Runtime session with full graph optimization and explicit thread counts.

    With ``in_flight > 1`` the session's intra-op pool is split between the concurrent
    callers (``threads // in_flight`` each, at least 1), since ``InferenceSession.run``
    is thread-safe and concurrent requests then overlap instead of queueing.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, precision: str, options: EngineOptions) -> None:
        super().__init__(path, precision, options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        per_request = max(1, options.threads // max(1, options.in_flight))
        so.intra_op_num_threads = per_request if options.in_flight > 1 else options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if options.pin_threads and so.intra_op_num_threads > 1:
            # One entry per extra intra-op thread (the caller's thread is the first);
            # ORT numbers logical processors from 1.
            so.add_session_config_entry("session.intra_op_thread_affinities",
                                        ";".join(str(i + 1) for i in range(1, so.intra_op_num_threads)))
        providers = _providers(options.device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # ORT raises its own untyped errors on bad files
            raise InputError(path, f"ONNX Runtime cannot load this model: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.options.in_flight <= 1:
            return [self.infer(b) for b in batches]
        with ThreadPoolExecutor(self.options.in_flight) as pool:
            return list(pool.map(self.infer, batches))


def _providers(device: str, available: list[str]) -> list[str]:
    """Execution providers for ``device``: TensorRT, then CUDA, then CPU as fallback on GPUs.

    Raises:
        BackendUnavailableError: ``cuda`` asked for but this ONNX Runtime build has no CUDA provider.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if "CUDAExecutionProvider" not in gpu:
        raise BackendUnavailableError(
            f"device {device!r}: this onnxruntime has no CUDA provider (has {', '.join(available)}); "
            "install onnxruntime-gpu on a GPU machine")
    return [*gpu, "CPUExecutionProvider"]
