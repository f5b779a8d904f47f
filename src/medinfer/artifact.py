"""Model artifact (importable without torch, so light runtimes stay light): a folder holding weights plus everything needed to use them.

Layout::

    ART/
      artifact.json     # ArtifactSpec: task, architecture, input spec, preprocessing, metrics,
                        # training record, optimized variants and the chosen one
      weights.pt        # PyTorch state_dict (FP32)
      variants/         # written by `medinfer optimize`: model.onnx, model_int8.onnx, *.xml/bin ...
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from medinfer.data.spec import Preprocessing
from medinfer.errors import ArtifactError

if TYPE_CHECKING:  # torch is imported only by the methods that need it
    import torch

SPEC_FILE = "artifact.json"
WEIGHTS_FILE = "weights.pt"


class InputSpec(BaseModel):
    """Shape of one network input sample: (channels, *spatial)."""

    channels: int
    spatial: tuple[int, ...]


class VariantRecord(BaseModel):
    """One optimized form of the model, as stored in the artifact.

    Attributes:
        name: e.g. ``"openvino-int8"``.
        backend: ``torch`` | ``onnxruntime`` | ``openvino``.
        precision: ``fp32`` | ``int8`` | ``int8-dynamic`` | ``int8-ac`` (accuracy-controlled).
        path: file relative to the artifact folder ("" for the torch weights).
        metrics: validation metrics of this variant (the task's: dice/iou or mean_auc/auc/<class>, n).
        passed: whether it kept the metric within the gate.
        latency_ms: batch-16 median latency measured by the optimizer (None if not measured).
        size_mb: size of the variant's files on disk.
        ops: compute operators by arithmetic, ``{"int8": {op: n}, "float": {op: n}}``.
        reason: why the gate rejected it (empty when passed).
    """

    name: str
    backend: str
    precision: str
    path: str
    metrics: dict[str, float] = Field(default_factory=dict)
    passed: bool | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    ops: dict[str, dict[str, int]] = Field(default_factory=dict)
    reason: str = ""
    float_layers: list[str] = Field(default_factory=list)
    """Accuracy-controlled INT8: the layers NNCF returned to FP32 to keep the metric."""


class ArtifactSpec(BaseModel):
    """Contents of ``artifact.json``."""

    format_version: int = 1
    task: str = "segmentation"
    architecture: str
    arch_kwargs: dict[str, object] = Field(default_factory=dict)
    in_channels: int
    out_channels: int
    input: InputSpec
    preprocessing: Preprocessing
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, object] = Field(default_factory=dict)
    variants: list[VariantRecord] = Field(default_factory=list)
    chosen: str | None = None
    classes: list[str] = Field(default_factory=list)
    """Classification: the name of each output, in order."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Classification: decision threshold per class (Youden's J on the validation part)."""
    segments: dict[int, str] = Field(default_factory=dict)
    """Segmentation: label value -> segment name (default ``{1: "foreground"}``)."""


class ModelArtifact:
    """A model artifact folder (see module docstring)."""

    def __init__(self, root: str | Path, spec: ArtifactSpec) -> None:
        self.root = Path(root)
        self.spec = spec

    @classmethod
    def load(cls, root: str | Path) -> ModelArtifact:
        """Read ``root/artifact.json``; raises :class:`ArtifactError` naming what is wrong."""
        root = Path(root)
        spec_path = root / SPEC_FILE
        if not spec_path.is_file():
            raise ArtifactError(root, f"not a model artifact: {SPEC_FILE} is missing")
        try:
            spec = ArtifactSpec.model_validate_json(spec_path.read_text())
        except (ValidationError, ValueError) as exc:
            raise ArtifactError(spec_path, f"invalid artifact description: {exc}") from exc
        return cls(root, spec)

    def save(self) -> None:
        """Write ``artifact.json`` (weights are written by :meth:`save_weights`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / SPEC_FILE).write_text(json.dumps(self.spec.model_dump(mode="json"), indent=2) + "\n")

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS_FILE

    def build_network(self) -> torch.nn.Module:
        """The architecture with freshly initialized weights."""
        from medinfer.models import create_model

        s = self.spec
        return create_model(s.architecture, in_channels=s.in_channels, out_channels=s.out_channels,
                            **s.arch_kwargs)

    def load_network(self) -> torch.nn.Module:
        """The network with the artifact's weights, in eval mode."""
        import torch

        net = self.build_network()
        if not self.weights_path.is_file():
            raise ArtifactError(self.weights_path, "weights file is missing")
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # torch.load raises many types on a damaged file
            raise ArtifactError(self.weights_path, f"cannot load weights: {exc}") from exc
        return net.eval()

    def save_weights(self, net: torch.nn.Module) -> None:
        import torch

        self.root.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), self.weights_path)

    def variant(self, name: str) -> VariantRecord:
        for v in self.spec.variants:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.spec.variants) or "none (run `medinfer optimize`)"
        raise ArtifactError(self.root, f"no variant {name!r}; available: {known}")

    def upsert_variant(self, record: VariantRecord) -> None:
        self.spec.variants = [v for v in self.spec.variants if v.name != record.name] + [record]

    def keep_variants(self, names: set[str]) -> list[str]:
        """Delete every variant not in ``names`` (files and records); returns the names removed.

        For committing a compact artifact: the weights plus the variants it serves with;
        ``medinfer optimize`` rebuilds the others. The gate's full record belongs in the
        benchmark results.
        """
        removed = [v for v in self.spec.variants if v.name not in names]
        for v in removed:
            if not v.path:  # torch-fp32: the artifact's own weights stay
                continue
            path = self.root / v.path
            for f in (path, path.with_suffix(".bin")) if path.suffix == ".xml" else (path,):
                f.unlink(missing_ok=True)
        self.spec.variants = [v for v in self.spec.variants if v.name in names]
        if self.spec.chosen not in names:
            self.spec.chosen = None
        self.save()
        return [v.name for v in removed]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zero tensor of the network's input shape (batch, C, *spatial)."""
        import torch

        return torch.zeros(batch, self.spec.input.channels, *self.spec.input.spatial)
