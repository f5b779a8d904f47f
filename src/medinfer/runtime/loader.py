"""Open an artifact's variant as an Engine."""

from __future__ import annotations

from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.errors import BackendUnavailableError
from medinfer.runtime.engine import Engine, EngineOptions, engine_class
from medinfer.variants import BACKENDS, LABELS, REFERENCE, find_kind, variant_name


def resolve_variant(art: ModelArtifact, backend: str | None, precision: str | None) -> VariantRecord:
    """Pick the variant to run from ``--backend`` / ``--precision``.

    With neither given, the artifact's chosen variant (set by ``medinfer optimize``), else
    the reference (PyTorch FP32). A missing half defaults to ``torch`` / ``fp32``.

    Raises:
        BackendUnavailableError: unknown backend or precision, or a variant not built.
    """
    if backend is None and precision is None:
        return art.variant(art.spec.chosen or REFERENCE)
    backend, precision = backend or "torch", precision or "fp32"
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision not in LABELS:
        raise BackendUnavailableError(f"unknown precision {precision!r}; choose one of {', '.join(LABELS)}")
    return variant_by_name(art, variant_name(backend, precision))


def variant_by_name(art: ModelArtifact, name: str) -> VariantRecord:
    """A built variant by name; variants run from the artifact's own weights (torch) are
    always there.

    Raises:
        BackendUnavailableError: the variant is not built.
    """
    for v in art.spec.variants:
        if v.name == name:
            return v
    kind = find_kind(name)
    if kind is not None and kind.backend == "torch":
        return VariantRecord.of(kind)
    built = ", ".join(v.name for v in art.spec.variants) or "none"
    raise BackendUnavailableError(
        f"{art.root}: variant {name} is not built (built: {built}); run `medinfer optimize` first")


def open_engine(art: ModelArtifact, variant: VariantRecord, options: EngineOptions) -> Engine:
    """Load ``variant`` of ``art`` into its backend's engine (every backend the same way)."""
    return engine_class(variant.backend).load(art, variant, options)
