"""Runtime: one Engine interface over torch, ONNX Runtime and OpenVINO."""

from medinfer.runtime.engine import BACKENDS, PRECISIONS, Engine, EngineOptions, engine_class
from medinfer.runtime.loader import open_engine, resolve_variant, variant_by_name
from medinfer.variants import variant_name

__all__ = ["BACKENDS", "PRECISIONS", "Engine", "EngineOptions", "engine_class", "open_engine",
           "resolve_variant", "variant_by_name", "variant_name"]
