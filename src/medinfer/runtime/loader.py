"""Open an artifact's variant as an Engine."""

from __future__ import annotations

from medinfer.errors import BackendUnavailableError
from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.runtime.engine import BACKENDS, PRECISIONS, Engine, EngineOptions, engine_class


def variant_name(backend: str, precision: str) -> str:
    """Canonical variant name, e.g. ``("openvino", "int8") -> "openvino-int8"``."""
    return f"{backend}-{precision}"


def resolve_variant(art: ModelArtifact, backend: str | None, precision: str | None) -> VariantRecord:
    """Pick the variant to run.

    With neither given, the artifact's chosen variant (set by ``medinfer optimize``),
    else PyTorch FP32. A missing half defaults to ``torch`` / ``fp32``.
    """
    if backend is None and precision is None:
        if art.spec.chosen:
            return art.variant(art.spec.chosen)
        backend, precision = "torch", "fp32"
    backend, precision = backend or "torch", precision or "fp32"
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise BackendUnavailableError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if (backend, precision) == ("torch", "fp32"):
        return VariantRecord(name="torch-fp32", backend="torch", precision="fp32", path="")
    name = variant_name(backend, precision)
    for v in art.spec.variants:
        if v.name == name:
            return v
    built = ", ".join(v.name for v in art.spec.variants) or "none"
    raise BackendUnavailableError(
        f"{art.root}: variant {name} is not built (built: {built}); run `medinfer optimize` first")


def variant_by_name(art: ModelArtifact, name: str) -> VariantRecord:
    """A built variant by name; ``torch-fp32`` (the artifact's own weights) is always there."""
    return resolve_variant(art, "torch", "fp32") if name == "torch-fp32" else art.variant(name)


def open_engine(art: ModelArtifact, variant: VariantRecord, options: EngineOptions) -> Engine:
    """Load ``variant`` of ``art`` into its backend's engine."""
    cls = engine_class(variant.backend)
    if variant.backend == "torch":
        return cls(art.load_network(), variant.precision, options)  # type: ignore[call-arg]
    return cls(art.root / variant.path, variant.precision, options)
