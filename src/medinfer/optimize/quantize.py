"""INT8 quantization: ONNX Runtime static (QDQ) and dynamic, OpenVINO via NNCF PTQ."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_ORT_DEBUG_DUMP = re.compile(r"sym_shape_infer_temp\.onnx.*|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.data")
"""What ORT's symbolic shape inference writes into the working directory when it fails:
the partial model and its weights as external data under a UUID name."""


class _CalibrationReader:
    """ONNX Runtime CalibrationDataReader over a preprocessed (N, C, H, W) array, one image a step."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self._items = iter([{input_name: images[i:i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _preprocessed(onnx_path: Path, work: Path) -> Path:
    """ORT's recommended pre-quantization pass (shape inference + graph cleanup).

    ORT's symbolic shape inference gives up on some graphs (a ``Resize`` whose output size
    is computed from a dynamic batch, as in :class:`~medinfer.models.networks.ResizeUNet`);
    those get ONNX's own shape inference only (``skip_symbolic_shape``), which is what the
    quantizer needs to place the QDQ pairs.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / (onnx_path.stem + "_prep.onnx")
    before = set(Path.cwd().iterdir())
    try:
        quant_pre_process(str(onnx_path), str(out), skip_symbolic_shape=False)
    except Exception as exc:  # ORT raises a bare Exception("Incomplete symbolic shape inference")
        log.info("symbolic shape inference failed on %s (%s); ONNX shape inference only", onnx_path, exc)
        quant_pre_process(str(onnx_path), str(out), skip_symbolic_shape=True)
    finally:  # on failure ORT dumps its partial model into the working directory
        for dump in set(Path.cwd().iterdir()) - before:
            if _ORT_DEBUG_DUMP.fullmatch(dump.name):
                dump.unlink(missing_ok=True)
    return out


def ort_static_int8(onnx_path: str | Path, out_path: str | Path, calib: np.ndarray) -> Path:
    """Static INT8 in QDQ format, calibrated (MinMax) on ``calib`` images.

    Activations uint8 (asymmetric), weights int8 per channel — the layout ONNX Runtime's
    CPU provider fuses into QLinearConv.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    prep = _preprocessed(onnx_path, out_path.parent)
    input_name = onnx.load(str(prep), load_external_data=False).graph.input[0].name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(
            str(prep), str(out_path), _CalibrationReader(input_name, calib),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    prep.unlink(missing_ok=True)
    return out_path


def ort_dynamic_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic INT8 (the DQ-ResUNet paper's method): weights quantized offline, activations
    quantized per batch at run time. Convolutions become ConvInteger (uint8 x uint8 on CPU)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    prep = _preprocessed(onnx_path, out_path.parent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(prep), str(out_path), weight_type=QuantType.QUInt8)
    prep.unlink(missing_ok=True)
    return out_path


def openvino_int8(xml_path: str | Path, out_path: str | Path, calib: np.ndarray) -> Path:
    """NNCF post-training INT8 quantization of an OpenVINO IR, calibrated on ``calib``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(out_path), compress_to_fp16=False)
    return Path(out_path)


def openvino_int8_accuracy_control(xml_path: str | Path, out_path: str | Path, calib: np.ndarray,
                                   task, tune_data, max_drop: float) -> tuple[Path, list[str]]:
    """NNCF INT8 with accuracy control, driven by the task's own medical metric.

    NNCF quantizes, measures ``task.primary`` (Dice, mean AUC) on ``tune_data`` and, while
    the drop against FP32 exceeds ``max_drop``, returns the most harmful layers to FP32
    (ranked by how far their outputs move). ``tune_data`` must not be the data the final
    gate evaluates on. Returns the IR path and the names of the layers left in FP32.
    """
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))

    def validate(compiled, items) -> tuple[float, list[list[np.ndarray]]]:
        index = [int(i) for i in items]
        data = task.subset(tune_data, index)
        outputs = task.outputs(lambda x: compiled(np.ascontiguousarray(x, np.float32))[0], data)
        metric = task.metrics(outputs, data)[task.primary]
        # A whole-set metric (AUC) means nothing on one case: NNCF then ranks layers by
        # how far the outputs move, which the per-case output lists let it do.
        return float(metric), [[o] for o in outputs]

    calibration = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
    # Items are case indices: ``validate`` scores whole cases; NNCF's layer ranking runs
    # the model itself on ``transform_fn(index)``, one network input per case.
    validation = nncf.Dataset(list(range(task.count(tune_data))), lambda i: task.network_input(tune_data, i))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = nncf.quantize_with_accuracy_control(
            model, calibration, validation, validate, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calib),
            preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(quantized, str(out_path), compress_to_fp16=False)
    return Path(out_path), float_layers(quantized)


def float_layers(model) -> list[str]:
    """Names of convolution / matmul layers whose activations are not fed by a FakeQuantize."""
    out = []
    for node in model.get_ordered_ops():
        if node.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            continue
        src = node.input_value(0).get_node().get_type_name()
        if src != "FakeQuantize":
            out.append(node.get_friendly_name())
    return out
