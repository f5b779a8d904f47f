"""How close a model runs to the CPU's INT8 limit: the measured INT8 matrix-multiply peak,
and a model's multiply-accumulate count, so achieved / peak can be reported.

The peak is measured, not taken from a data sheet: a large INT8 MatMul (activations
through a FakeQuantize, weights stored as int8, exactly what NNCF produces) compiled by
OpenVINO on this CPU with the same thread count as the benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Peak:
    """Measured INT8 GEMM throughput: ``gops`` = 2 * M * N * K / seconds / 1e9 (median)."""

    gops: float
    m: int
    n: int
    k: int
    threads: int
    runs_ms: list[float]


def _int8_matmul_model(m: int, n: int, k: int):
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([m, k], np.float32, name="x")
    lo, hi = ops.constant(np.float32(-4.0)), ops.constant(np.float32(4.0))
    xq = ops.fake_quantize(x, lo, hi, lo, hi, 256)
    rng = np.random.default_rng(0)
    w8 = ops.constant(rng.integers(-127, 128, (n, k), dtype=np.int8))
    scale = ops.constant(np.full((n, 1), 0.01, np.float32))
    w = ops.multiply(ops.convert(w8, np.float32), scale)
    y = ops.matmul(xq, w, transpose_a=False, transpose_b=True)
    return ov.Model([y], [x], "int8_gemm")


def int8_matmul_peak(threads: int = 2, m: int = 1024, n: int = 2048, k: int = 2048,
                     runs: int = 15) -> Peak:
    """Median INT8 GEMM GOPS of this CPU through OpenVINO (VNNI/AMX kernels where present)."""
    import openvino as ov

    compiled = ov.Core().compile_model(_int8_matmul_model(m, n, k), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    for _ in range(3):
        req.infer({0: x})
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        req.infer({0: x})
        ms.append((time.perf_counter() - t) * 1e3)
    return Peak(2.0 * m * n * k / (float(np.median(ms)) / 1e3) / 1e9, m, n, k, threads,
                [round(v, 3) for v in ms])


def model_macs(xml_path: str | Path, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass of an OpenVINO IR at ``batch``.

    Counts Convolution / GroupConvolution / ConvolutionBackpropData / MatMul, the layers
    that INT8 accelerates; element-wise work is left out (it is not GEMM-bound).
    """
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    shape = list(model.input(0).get_partial_shape())
    shape[0] = batch
    model.reshape({model.input(0).get_any_name(): ov.PartialShape(shape)})
    total = 0
    for node in model.get_ordered_ops():
        op = node.get_type_name()
        if op not in ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"):
            continue
        out = list(node.get_output_shape(0))
        w = list(node.get_input_shape(1))
        if op == "Convolution":  # w: (Co, Ci, *k); each output element sums Ci * prod(k)
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "GroupConvolution":  # w: (G, Co/G, Ci/G, *k)
            total += int(np.prod(out)) * int(np.prod(w[2:]))
        elif op == "ConvolutionBackpropData":  # w: (Ci, Co, *k); every input element scatters Co * prod(k)
            inp = list(node.get_input_shape(0))
            total += int(np.prod(inp)) * int(np.prod(w[1:]))
        else:  # MatMul: out (..., M, N), contraction K from the first input's last axis
            a = list(node.get_input_shape(0))
            ta = node.get_attributes().get("transpose_a", False)
            total += int(np.prod(out)) * int(a[-2] if ta else a[-1])
    return total
