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

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medinfer.data.spec import Preprocessing
from medinfer.errors import ArtifactError
from medinfer.variants import REFERENCE, VariantKind, find_kind, get_kind

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
        name: e.g. ``"openvino-int8"`` (a :mod:`medinfer.variants` kind).
        backend: ``torch`` | ``onnxruntime`` | ``openvino``.
        precision: the ``--precision`` label: ``fp32`` | ``bf16`` | ``int8`` | ``int8-dynamic`` |
            ``int8-ac`` (the numeric precision and the quantization method are in :attr:`kind`).
        quantization: how it was made (``none``, ``static-qdq``, ``dynamic``, ``post-training``,
            ``accuracy-control``); filled from the registry for records written before it.
        path: file relative to the artifact folder ("" for the torch weights).
        metrics: validation metrics of this variant (the task's: dice/iou or mean_auc/auc/<class>, n).
        passed: whether it kept the metric within the gate.
        latency_ms: batch-16 median latency measured by the optimizer (None if not measured): the
            network call, or what the task times (:meth:`~medinfer.tasks.Task.latency_call`).
        size_mb: size of the variant's files on disk.
        ops: compute operators by arithmetic, ``{"int8": {op: n}, "float": {op: n}}``.
        reason: why the gate rejected it (empty when passed).
    """

    name: str
    backend: str
    precision: str
    path: str
    quantization: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    passed: bool | None = None
    latency_ms: float | None = None
    size_mb: float | None = None
    ops: dict[str, dict[str, int]] = Field(default_factory=dict)
    reason: str = ""
    float_layers: list[str] = Field(default_factory=list)
    """Accuracy-controlled INT8: the layers NNCF returned to FP32 to keep the metric."""

    @model_validator(mode="after")
    def _fill_quantization(self) -> VariantRecord:
        kind = find_kind(self.name)
        if not self.quantization and kind is not None:
            self.quantization = kind.quantization.value
        return self

    @classmethod
    def of(cls, kind: VariantKind) -> VariantRecord:
        """A fresh record of ``kind`` (no metrics yet)."""
        return cls(name=kind.name, backend=kind.backend, precision=kind.label, path=kind.path,
                   quantization=kind.quantization.value)

    @property
    def kind(self) -> VariantKind | None:
        """The registry entry of this variant (None for a name the registry does not know)."""
        return find_kind(self.name)


TRAINING_RECORD_VERSION = 2
"""Layout version of :class:`TrainingRecord` (1: the untyped dict of the first training loops)."""


class EpochRecord(BaseModel):
    """One epoch of a training run.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean loss over the epoch's training batches (None when no batch ran).
        lr: learning rate during the epoch (None in version-1 3D records, which did not keep it).
        seconds: wall time of the epoch, its validation included.
        train_seconds: wall time of the epoch's training steps alone.
        samples: training samples the epoch stepped on, over all processes.
        metrics: the task's validation metrics (``dice``, ``iou``, ``n`` or ``mean_auc``,
            ``abnormal_auc``, ``auc/<class>``, ``n``); empty when the epoch was not validated.
    """

    model_config = ConfigDict(extra="allow")

    epoch: int
    train_loss: float | None = None
    lr: float | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    samples: int | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _read_v1(cls, data: Any) -> Any:
        # Version 1 flattened the validation metrics into the entry as ``val_<metric>``.
        if isinstance(data, dict) and any(str(k).startswith("val_") for k in data):
            data = dict(data)
            metrics = dict(data.get("metrics") or {})
            for key in [k for k in data if str(k).startswith("val_")]:
                metrics[key[4:]] = data.pop(key)
            data["metrics"] = metrics
        return data

    @field_validator("metrics", mode="before")
    @classmethod
    def _null_is_nan(cls, value: Any) -> Any:
        # Version 1 stored an undefined metric (an AUC without positives) as null.
        if isinstance(value, dict):
            return {k: float("nan") if v is None else v for k, v in value.items()}
        return value


class DataSplit(BaseModel):
    """Which cases went into each part of a training run.

    Attributes:
        unit: what the lists name: ``"patient"`` (patient ids of a labeled folder: the
            classification split never cuts a patient), ``"case"`` (image stems, volume names)
            or ``"slab"`` (slice ranges of volumes: a split within one patient).
        train: trained on.
        val: chose the best epoch (and, for classification, the decision thresholds).
        test: never seen in training (empty when the recipe keeps no test part).
    """

    unit: Literal["case", "patient", "slab", "slide"] = "case"
    train: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)

    @field_validator("train", "val", "test", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else value


class TrainingRecord(BaseModel):
    """How an artifact's weights were trained (``artifact.json`` ``training``).

    Written by :func:`medinfer.train.fit`; ``medinfer optimize`` adds :attr:`optimize`.
    Version-1 records (plain dicts: ``split_patients``, top-level ``train``/``val`` name
    lists, ``val_<metric>`` history keys) are read into this layout.

    Attributes:
        format_version: layout version (:data:`TRAINING_RECORD_VERSION`).
        command: the command line that trained the model.
        config: the validated training config, as JSON.
        data: the data folder, as given (relative to where training ran).
        n_train: training cases.
        n_val: validation cases.
        n_test: held-out test cases (None when the recipe keeps no test part).
        split: the cases or patients of each part (None when not recorded).
        best_epoch: the epoch whose weights the artifact holds (None before a validation).
        epochs_run: epochs trained (fewer than configured when the time budget ran out).
        seconds: wall time of the whole run.
        torch: ``torch.__version__`` of the run.
        history: one entry per epoch run.
        optimize: what ``medinfer optimize`` was run with (calibration, validation, gate).
        machine: the CPU the run trained on (model, cores, ISA flags) and the step
            arithmetic used (``precision`` fp32/bf16, ``channels_last``).
        parallel: a data-parallel run's processes and communication (``world``, ``nodes``,
            ``backend``, ``batch_per_rank``, ``global_batch``, ``lr``, ``allreduce_bytes``
            per rank, ``rank_spread``: the largest difference of a weight between ranks at
            the end); empty for one process.
        federated: a federated run's sites, rounds, local epochs and, per round, the sites
            whose updates were averaged, rejected (malformed) or lost (dropped out); empty otherwise.
    """

    model_config = ConfigDict(extra="allow")

    format_version: int = TRAINING_RECORD_VERSION
    command: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    data: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    split: DataSplit | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    seconds: float | None = None
    torch: str | None = None
    history: list[EpochRecord] = Field(default_factory=list)
    optimize: dict[str, Any] = Field(default_factory=dict)
    machine: dict[str, Any] = Field(default_factory=dict)
    parallel: dict[str, Any] = Field(default_factory=dict)
    federated: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _read_v1(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("format_version", 1)
        if isinstance(version, int) and version > TRAINING_RECORD_VERSION:
            raise ValueError(f"training record format {version} is newer than this medinfer reads "
                             f"({TRAINING_RECORD_VERSION})")
        if version == TRAINING_RECORD_VERSION:
            return data
        data = dict(data)
        patients = data.pop("split_patients", None)
        if isinstance(patients, dict) and data.get("split") is None:
            data["split"] = {"unit": "patient", **patients}
        if (data.get("split") is None and isinstance(data.get("train"), list)
                and isinstance(data.get("val"), list)):
            data["split"] = {"unit": "case", "train": data.pop("train"), "val": data.pop("val")}
        data["format_version"] = TRAINING_RECORD_VERSION
        return data

    def best(self) -> EpochRecord | None:
        """The history entry of :attr:`best_epoch` (None when there is none)."""
        return next((h for h in self.history if h.epoch == self.best_epoch), None)

    def validated(self) -> list[EpochRecord]:
        """The epochs that were validated (3D recipes validate every few epochs)."""
        return [h for h in self.history if h.metrics]


class DetectionSpec(BaseModel):
    """Detection: what runs outside the exported network (decoding and NMS) and the second stage.

    Attributes:
        score_thresh: stage-1 candidates below this probability are dropped before NMS.
        nms_iou: IoU above which NMS suppresses the lower-scoring of two candidates.
        topk: candidates per FPN level kept before NMS.
        max_per_slice: candidates per slice kept after NMS.
        stage2: sub-folder holding the second-stage classifier artifact ("": one stage).
        crop_size: side of the square candidate crop the classifier takes (input pixels).
        crop_context: crop side / the candidate's longer side (context around the box).
        stage2_weight: how much the classifier counts in the final score
            ``p1 ** (1 - w) * p2 ** w`` (0.5: the geometric mean; 0: stage 1 alone ranks, the
            classifier's probability is only reported; 1: the classifier alone).
        min_score: detections whose final score is below this are dropped (the JSON lists the
            rest: what FROC analysis needs).
        report_score: detections at or above this go into the DICOM SR and the overlay (what
            a reader sees).
    """

    score_thresh: float = 0.05
    nms_iou: float = 0.3
    topk: int = 200
    max_per_slice: int = 10
    stage2: str = ""
    crop_size: int = 32
    crop_context: float = 1.5
    stage2_weight: float = Field(0.5, ge=0.0, le=1.0)
    min_score: float = 0.05
    report_score: float = 0.5


class CytologySpec(BaseModel):
    """Whole-slide cytology: where stage 1 reads its tiles, how their scores become a slide
    score, and when and where stage 2 looks for abnormal cells.

    Attributes:
        downsample: level-0 pixels per tile pixel (2: tiles at half the scan resolution,
            read from the level with that downsample or pooled from a finer one).
        min_tissue: tiles whose footprint the tissue mask covers less than this are skipped.
        batch: tiles per network call.
        fusion: ``topk`` (mean of the ``topk`` highest tile probabilities) or ``learned``
            (the logistic aggregator in ``aggregator``).
        topk: tiles the top-k mean averages (and the aggregator's feature length).
        aggregator: the fitted logistic aggregator (``metrics.slides.LogisticAggregator``).
        threshold: slide-score threshold of the stage-1 decision (chosen on validation
            slides for ``target_sensitivity``).
        target_sensitivity: the sensitivity the operating points are chosen for.
        stage2: sub-folder of the cell-centre detector ("": one stage).
        flag_threshold: stage-1 slide score at or above which stage 2 runs.
        regions: highest-scoring tiles per flagged slide that stage 2 examines.
        cell_threshold: stage-2 heat-map peaks below this are not cells.
        stage2_weight: weight ``w`` of the stage-2 evidence in the two-stage score
            ``s1 ** (1 - w) * c ** w`` (``c``: the best cell's score; 0 on unflagged slides).
        two_stage_threshold: two-stage score threshold of the final decision.
        classes: stage 2's cell classes, in output order.
    """

    downsample: float = 2.0
    min_tissue: float = 0.05
    batch: int = 32
    fusion: Literal["topk", "learned"] = "topk"
    topk: int = 8
    aggregator: dict[str, Any] | None = None
    threshold: float = 0.5
    target_sensitivity: float = Field(0.96, gt=0.0, le=1.0)
    stage2: str = ""
    flag_threshold: float = 0.0
    regions: int = 16
    cell_threshold: float = 0.3
    stage2_weight: float = Field(1.0, ge=0.0, le=1.0)
    two_stage_threshold: float = 0.5
    classes: list[str] = Field(default_factory=lambda: ["ASC-US", "LSIL", "ASC-H", "HSIL", "SCC"])


class ClassificationSpec(BaseModel):
    """How a classifier's outputs relate to each other and to the data's labels.

    Absent (None) in artifacts written before it: independent findings, a sigmoid each.

    Attributes:
        exclusive: the classes are mutually exclusive (one per image, e.g. the six Bethesda
            classes of a cell): a softmax over the outputs, cross-entropy in training, and
            top-1 ``accuracy`` and ``balanced_accuracy`` beside the AUCs. False: independent
            findings (CheXNet), a sigmoid per output.
        groups: output class -> the data's labels (findings or class folders) merged into it,
            e.g. ``{"normal": ["NILM"], "abnormal": ["ASC-US", "LSIL", "ASC-H", "HSIL", "SCC"]}``;
            empty: each class is a label of the data.
        normal: the class meaning "nothing abnormal" (``NILM``, ``normal``); for an exclusive
            model the abnormal score of an image is one minus its probability
            (``abnormal_auc``). Empty: no such class.
    """

    exclusive: bool = False
    groups: dict[str, list[str]] = Field(default_factory=dict)
    normal: str = ""


def label_groups(spec: ArtifactSpec) -> dict[str, list[str]] | None:
    """The groups an artifact's classes merge the data's labels into (None: none)."""
    return (spec.classification.groups if spec.classification else None) or None


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
    training: TrainingRecord = Field(default_factory=TrainingRecord)
    variants: list[VariantRecord] = Field(default_factory=list)
    chosen: str | None = None
    classes: list[str] = Field(default_factory=list)
    """Classification: the name of each output, in order."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Classification: decision threshold per class (Youden's J on the validation part)."""
    segments: dict[int, str] = Field(default_factory=dict)
    """Segmentation: label value -> segment name (default ``{1: "foreground"}``)."""
    detection: DetectionSpec | None = None
    """Detection: post-processing outside the network and the second stage."""
    cytology: CytologySpec | None = None
    """Whole-slide cytology: tiles, slide fusion, operating points and the second stage."""
    classification: ClassificationSpec | None = None
    """Classification: exclusive classes (softmax) or independent findings (None: sigmoid),
    merged labels and the normal class."""


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
        """The stored record of variant ``name``; the reference (the artifact's own FP32
        weights) is always there, stored or not.

        Raises:
            ArtifactError: no such variant was built.
        """
        for v in self.spec.variants:
            if v.name == name:
                return v
        if name == REFERENCE:
            return VariantRecord.of(get_kind(REFERENCE))
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
            if not v.path:  # torch: the artifact's own weights stay
                continue
            for f in self.variant_files(v):
                f.unlink(missing_ok=True)
        self.spec.variants = [v for v in self.spec.variants if v.name in names]
        if self.spec.chosen not in names:
            self.spec.chosen = None
        self.save()
        return [v.name for v in removed]

    def variant_files(self, record: VariantRecord) -> list[Path]:
        """Files making up a variant (OpenVINO IR: .xml + .bin; torch: the weights)."""
        if not record.path:
            return [self.weights_path]
        path = self.root / record.path
        return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]

    def variant_size_mb(self, record: VariantRecord) -> float:
        """Size on disk of a variant's files, MiB (missing files count 0)."""
        return sum(f.stat().st_size for f in self.variant_files(record) if f.is_file()) / 2**20

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """Zero tensor of the network's input shape (batch, C, *spatial)."""
        import torch

        return torch.zeros(batch, self.spec.input.channels, *self.spec.input.spatial)
