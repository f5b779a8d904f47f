"""Which operators of a quantized model still compute in floating point."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

# Operators that carry the arithmetic; data movement (Concat, Reshape, ...) is not counted.
_COMPUTE_ONNX = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "PRelu", "Relu",
                 "Sigmoid", "BatchNormalization", "InstanceNormalization", "AveragePool",
                 "MaxPool", "Resize"}
_INT_ONNX = {"ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd"}
# Node types whose DequantizeLinear -> op -> QuantizeLinear groups ONNX Runtime's CPU
# provider rewrites into integer kernels (QLinearConv, QLinearAdd, ...). Any other op
# between Q/DQ pairs (ConvTranspose, PRelu) is run as DQ -> float op -> Q.
_ORT_CPU_QDQ_FUSED = {"Conv", "MatMul", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool",
                      "Sigmoid", "LeakyRelu", "Softmax", "Concat", "MaxPool", "Resize"}
_COMPUTE_OV = {"Convolution", "ConvolutionBackpropData", "GroupConvolution", "MatMul", "Add",
               "Multiply", "PRelu", "Relu", "Sigmoid", "MaxPool", "AvgPool", "Interpolate"}
_WEIGHTED = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Convolution", "ConvolutionBackpropData",
             "GroupConvolution"}


def onnx_float_ops(path: str | Path) -> dict[str, dict[str, int]]:
    """Count compute operators by type and whether they run in INT8 or float.

    In a QDQ model a node runs in integer arithmetic when ONNX Runtime's CPU provider fuses
    it: its type is one the provider has integer kernels for and its inputs come from
    DequantizeLinear. A QDQ-wrapped ConvTranspose still runs in float.
    ``ConvInteger``/``MatMulInteger`` (dynamic quantization) count as INT8.

    Returns:
        ``{"int8": {op: count}, "float": {op: count}}``.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    int8, flt = Counter(), Counter()
    for node in graph.node:
        op = node.op_type
        if op in _INT_ONNX:
            int8[op] += 1
        elif op in _COMPUTE_ONNX:
            needed = node.input[:2] if op in _WEIGHTED else node.input[:1]
            quantized = all(producer.get(i) == "DequantizeLinear" for i in needed if i not in inits)
            quantized = quantized and op in _ORT_CPU_QDQ_FUSED
            (int8 if quantized and needed else flt)[op] += 1
    return {"int8": dict(int8), "float": dict(flt)}


def openvino_float_ops(path: str | Path) -> dict[str, dict[str, int]]:
    """Same count for an OpenVINO IR: an op is INT8 when its data input comes from a FakeQuantize.

    Nodes fed by constants (weight decompression, bias adds) are not counted.
    """
    import openvino as ov

    model = ov.Core().read_model(str(path))
    int8, flt = Counter(), Counter()
    constant: set[str] = set()  # nodes computed from constants only (weight decompression)
    for node in model.get_ordered_ops():
        op = node.get_type_name()
        producers = [node.input_value(i).get_node() for i in range(node.get_input_size())]
        if op == "Constant" or (producers and all(p.get_friendly_name() in constant for p in producers)):
            constant.add(node.get_friendly_name())
            continue
        if op not in _COMPUTE_OV:
            continue
        if op in ("Add", "Multiply") and any(p.get_friendly_name() in constant for p in producers):
            continue  # bias / per-channel scale: the CPU plugin fuses it into the producing op
        src = producers[0].get_type_name()
        (int8 if src == "FakeQuantize" else flt)[op] += 1
    return {"int8": dict(int8), "float": dict(flt)}
