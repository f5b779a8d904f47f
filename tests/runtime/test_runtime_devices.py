"""Device and precision options: bf16 / channels-last on CPU, clear errors where CUDA is absent,
and the GPU paths themselves where a GPU is present (skipped cleanly otherwise)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from medinfer.errors import BackendUnavailableError
from medinfer.models import create_model
from medinfer.runtime.engine import EngineOptions, cuda_available
from medinfer.runtime.onnxruntime_engine import _providers
from medinfer.runtime.torch_engine import TorchEngine

needs_cuda = pytest.mark.skipif(not cuda_available(), reason="no CUDA device on this machine")


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_resunet", in_channels=3, out_channels=1)


def _x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)


def test_bf16_and_channels_last_stay_close_to_fp32_on_cpu() -> None:
    ref = TorchEngine(_net(), "fp32", EngineOptions()).infer(_x())
    cl = TorchEngine(_net(), "fp32", EngineOptions(channels_last=True)).infer(_x())
    bf = TorchEngine(_net(), "bf16", EngineOptions()).infer(_x())
    np.testing.assert_allclose(cl, ref, atol=1e-4)
    assert bf.dtype == np.float32 and np.abs(bf - ref).max() < 0.15  # bf16 keeps ~3 significant digits
    assert not np.array_equal(bf, ref)  # it really ran in bf16


def test_torch_rejects_int8_and_missing_cuda() -> None:
    with pytest.raises(BackendUnavailableError, match="fp32 or bf16"):
        TorchEngine(_net(), "int8", EngineOptions())
    if not cuda_available():
        with pytest.raises(BackendUnavailableError, match="no CUDA device"):
            TorchEngine(_net(), "fp32", EngineOptions(device="cuda"))


@pytest.mark.parametrize(("available", "want"), [
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
])
def test_onnxruntime_gpu_provider_order(available: list[str], want: list[str]) -> None:
    assert _providers("cuda", available) == want
    assert _providers("cpu", available) == ["CPUExecutionProvider"]


def test_onnxruntime_cuda_without_provider_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailableError, match="no CUDA provider"):
        _providers("cuda", ["CPUExecutionProvider"])


def _ort_affinities(engine) -> str | None:
    """The intra-op thread affinities the ONNX Runtime session was built with (None: unset)."""
    try:
        return engine.session.get_session_options().get_session_config_entry(
            "session.intra_op_thread_affinities")
    except RuntimeError:  # ORT raises for an entry that was never set
        return None


def _ov_pinning(engine) -> bool:
    """Whether the compiled OpenVINO model pins its threads."""
    return bool(engine.compiled.get_property("ENABLE_CPU_PINNING"))


def _engine(backend: str, tmp_path, options: EngineOptions):
    from medinfer.optimize.export import export_onnx

    onnx = export_onnx(_net().eval(), torch.zeros(2, 3, 32, 32), tmp_path / "m.onnx")
    if backend == "onnxruntime":
        from medinfer.runtime.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(onnx, "fp32", options)
    from medinfer.optimize.export import export_openvino
    from medinfer.runtime.openvino_engine import OpenVINOEngine

    return OpenVINOEngine(export_openvino(onnx, tmp_path / "m.xml"), "fp32", options)


@pytest.mark.parametrize(("backend", "pinning", "unpinned", "pinned"), [
    ("onnxruntime", _ort_affinities, None, "2"),  # the one extra intra-op thread on processor 2
    ("openvino", _ov_pinning, False, True),
])
def test_pinned_threads_give_the_same_answer(tmp_path, backend: str, pinning, unpinned,
                                             pinned) -> None:
    pytest.importorskip(backend)
    free = _engine(backend, tmp_path / "free", EngineOptions(threads=2))
    pin = _engine(backend, tmp_path / "pin", EngineOptions(threads=2, pin_threads=True))
    assert pinning(free) == unpinned
    assert pinning(pin) == pinned  # the runtime really was asked to pin
    np.testing.assert_allclose(pin.infer(_x()), free.infer(_x()), atol=1e-5)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity API here")
def test_pinned_torch_engine_keeps_the_process_on_threads_cores() -> None:
    before, torch_threads = os.sched_getaffinity(0), torch.get_num_threads()
    threads = max(1, len(before) - 1)  # fewer than the process may use, so pinning shows
    try:
        free = TorchEngine(_net(), "fp32", EngineOptions(threads=threads))
        assert os.sched_getaffinity(0) == before  # not pinning leaves the affinity alone
        pinned = TorchEngine(_net(), "fp32", EngineOptions(threads=threads, pin_threads=True))
        after = os.sched_getaffinity(0)
        assert len(after) == threads and after <= before
        np.testing.assert_allclose(pinned.infer(_x()), free.infer(_x()), atol=1e-5)
    finally:  # the affinity and thread count are process-wide: give them back
        os.sched_setaffinity(0, before)
        torch.set_num_threads(torch_threads)


@needs_cuda
def test_torch_bf16_channels_last_on_cuda_matches_cpu() -> None:
    ref = TorchEngine(_net(), "fp32", EngineOptions()).infer(_x())
    gpu = TorchEngine(_net(), "bf16", EngineOptions(device="cuda", channels_last=True)).infer(_x())
    assert np.abs(gpu - ref).max() < 0.15
