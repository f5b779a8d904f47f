"""Optimize: export (ONNX, OpenVINO IR), quantize (ORT, NNCF), accuracy gate, variant choice."""
