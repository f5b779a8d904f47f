"""ONNX Runtime static INT8 of a network with a resize decoder: ORT's symbolic shape
inference gives up on it; the quantizer falls back and leaves no file behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import torch

from medinfer.models import create_model
from medinfer.optimize.export import export_onnx
from medinfer.optimize.quantize import ort_static_int8


def test_resize_decoder_quantizes_and_the_working_directory_stays_clean(tmp_path: Path) -> None:
    net = create_model("resunet", in_channels=3, out_channels=1, channels=(4, 8, 16), strides=(2, 2),
                       num_res_units=1, act="relu", up="resize").eval()
    onnx_path = export_onnx(net, torch.zeros(1, 3, 32, 32), tmp_path / "model.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        out = ort_static_int8(onnx_path, tmp_path / "q.onnx", np.random.default_rng(0).random(
            (4, 3, 32, 32), dtype=np.float32))
    finally:
        os.chdir(old)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "Resize" in ops
    assert list(cwd.iterdir()) == []  # ORT's failed-inference dump was removed
