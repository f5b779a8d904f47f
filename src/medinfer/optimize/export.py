"""Export a trained network to ONNX and OpenVINO IR."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from medinfer.errors import MedinferError

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 18


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export ``net`` to a single-file ONNX model with a dynamic batch axis.

    Uses the torch.export-based exporter (it folds eval-mode batch norm into the
    convolutions). Input name ``image`` (N, C, *spatial), output ``logits``.

    Args:
        net: network in eval mode.
        example: example input (N, C, *spatial); N >= 2 so the batch axis stays symbolic.
        path: output ``.onnx`` file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1, max=1024)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (example,), path, dynamo=True, external_data=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={next(iter(_forward_arg_names(net))): {0: batch}},
            )
    except Exception as exc:  # the exporter raises many unrelated types
        raise MedinferError(f"ONNX export of {type(net).__name__} failed: {exc}") from exc
    log.info("exported ONNX to %s", path)
    return path


def _forward_arg_names(net: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(net.forward).parameters]


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Convert an ONNX model to OpenVINO IR (``.xml`` + ``.bin``), weights kept in FP32."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    log.info("converted to OpenVINO IR %s", xml_path)
    return xml_path
