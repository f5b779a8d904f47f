"""The one registry of model variants: which backend runs them, in which numeric precision,
made by which quantization method, stored in which file.

Numeric precision (``fp32``, ``bf16``, ``int8``) and the quantization method (``none``,
``static-qdq``, ``dynamic``, ``post-training``, ``accuracy-control``) are separate
fields; the *label* is what ``--precision`` takes and what ``evaluate --json`` reports
(``fp32 | bf16 | int8 | int8-dynamic | int8-ac``), so the command-line contract keeps
its names. Every other module (optimizer, loader, bench, artifact, report) reads this
table instead of spelling variant names itself.

This module depends on nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["BACKENDS", "LABELS", "REFERENCE", "VARIANT_DIR", "Precision", "Quantization",
           "VariantKind", "find_kind", "get_kind", "kinds", "variant_name"]

VARIANT_DIR = "variants"
BACKENDS = ("torch", "onnxruntime", "openvino")


class Precision(str, Enum):
    """Numeric precision of the arithmetic."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"


class Quantization(str, Enum):
    """How an INT8 variant was made (``none`` for floating-point variants)."""

    NONE = "none"
    STATIC_QDQ = "static-qdq"          # ONNX Runtime, calibrated QDQ
    DYNAMIC = "dynamic"                # ONNX Runtime, activations quantized at run time
    POST_TRAINING = "post-training"    # NNCF post-training quantization
    ACCURACY_CONTROL = "accuracy-control"  # NNCF, layers returned to FP32 to keep the metric


@dataclass(frozen=True)
class VariantKind:
    """One kind of variant.

    Attributes:
        name: e.g. ``"openvino-int8"`` (``backend-label``).
        backend: ``torch`` | ``onnxruntime`` | ``openvino``.
        label: the ``--precision`` value, e.g. ``int8-dynamic``.
        precision: numeric precision of the arithmetic.
        quantization: how it was made.
        file: file under ``variants/`` ("" for variants run from the artifact's own weights).
        built_by_optimize: whether ``medinfer optimize`` builds and gates it.
        needs_tuning_data: built only when the optimizer gets a tuning folder.
    """

    name: str
    backend: str
    label: str
    precision: Precision
    quantization: Quantization = Quantization.NONE
    file: str = ""
    built_by_optimize: bool = True
    needs_tuning_data: bool = False

    @property
    def path(self) -> str:
        """Path relative to the artifact folder ("" for the torch weights)."""
        return f"{VARIANT_DIR}/{self.file}" if self.file else ""

    @property
    def is_int8(self) -> bool:
        return self.precision is Precision.INT8


_P, _Q = Precision, Quantization
_KINDS: tuple[VariantKind, ...] = (
    VariantKind("torch-fp32", "torch", "fp32", _P.FP32),
    VariantKind("onnxruntime-fp32", "onnxruntime", "fp32", _P.FP32, file="model.onnx"),
    VariantKind("onnxruntime-int8", "onnxruntime", "int8", _P.INT8, _Q.STATIC_QDQ,
                "model_int8_qdq.onnx"),
    VariantKind("onnxruntime-int8-dynamic", "onnxruntime", "int8-dynamic", _P.INT8, _Q.DYNAMIC,
                "model_int8_dynamic.onnx"),
    VariantKind("openvino-fp32", "openvino", "fp32", _P.FP32, file="model.xml"),
    VariantKind("openvino-int8", "openvino", "int8", _P.INT8, _Q.POST_TRAINING, "model_int8.xml"),
    VariantKind("openvino-int8-ac", "openvino", "int8-ac", _P.INT8, _Q.ACCURACY_CONTROL,
                "model_int8_ac.xml", needs_tuning_data=True),
    VariantKind("torch-bf16", "torch", "bf16", _P.BF16, built_by_optimize=False),
)
_BY_NAME = {k.name: k for k in _KINDS}

REFERENCE = "torch-fp32"
"""The variant every other is gated and timed against: eager PyTorch on the FP32 weights."""

LABELS = tuple(dict.fromkeys(k.label for k in _KINDS))
"""Every ``--precision`` value."""


def kinds(*, optimized: bool | None = None) -> tuple[VariantKind, ...]:
    """Every kind in registry order; ``optimized=True``: only those the optimizer builds."""
    return tuple(k for k in _KINDS if optimized is None or k.built_by_optimize == optimized)


def variant_name(backend: str, label: str) -> str:
    """Canonical variant name, e.g. ``("openvino", "int8") -> "openvino-int8"``."""
    return f"{backend}-{label}"


def find_kind(name: str) -> VariantKind | None:
    """The kind called ``name``, or None."""
    return _BY_NAME.get(name)


def get_kind(name: str) -> VariantKind:
    """The kind called ``name``.

    Raises:
        KeyError: no such variant, with the known names.
    """
    kind = _BY_NAME.get(name)
    if kind is None:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(_BY_NAME)}")
    return kind
