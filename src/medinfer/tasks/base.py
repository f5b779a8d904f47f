"""The contract every kind of model fulfils: prepare -> infer -> post-process -> metrics -> write.

A :class:`Task` is built from a :class:`~medinfer.artifact.ModelArtifact` and derives
everything from it (preprocessing, input size, classes, segments), so predict,
evaluate, the optimizer's gate, the benchmarks, the report, the service and training
validation all feed a network exactly the same way. A new kind of model is one subclass
registered with :func:`medinfer.tasks.register_task`; no command changes.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.data.pairs import load_calibration_images
from medinfer.data.preprocess import prepare_batch
from medinfer.errors import InputError
from medinfer.io import Image, read_dicom_series, read_image
from medinfer.io.limits import ReadLimits
from medinfer.runtime import Engine, EngineOptions, open_engine, resolve_variant

Infer = Callable[[np.ndarray], np.ndarray]
"""A network call: batch (N, C, *spatial) float32 -> outputs (N, K, ...) float32."""


@dataclass(frozen=True)
class GateLimits:
    """How much a variant may lose against the reference (absolute)."""

    max_drop: float = 0.005
    max_class_drop: float = 0.02


@dataclass(frozen=True, eq=False)
class Prediction:
    """A model's answer for one image, in the input image's own geometry.

    Attributes:
        task: the task's name (``segmentation``, ``segmentation3d``, ``classification``, ...).
        mask: segmentation label map, uint8, shape ``image.array.shape[1:]`` (the input's own
            grid), 0 = background; None for tasks without one.
        segments: label value -> segment name, e.g. ``{1: "polyp"}``.
        scores: per-class probability (classification).
        thresholds: per-class decision threshold (classification).
        artifact: the artifact folder's name; variant: the variant that ran.
        seconds: wall time per stage (``preprocess``, ``infer``, ``postprocess``).
        extra: task-specific JSON-ready values (a new task's outputs).
    """

    task: str
    mask: np.ndarray | None = None
    segments: dict[int, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    artifact: str = ""
    variant: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> list[str]:
        """Classes whose probability reaches their threshold, in class order."""
        return [c for c, p in self.scores.items() if p >= self.thresholds.get(c, 0.5)]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): task, variant, timings, voxels per segment and/or
        scores, thresholds and the positive findings."""
        out: dict[str, Any] = {"task": self.task, "artifact": self.artifact, "variant": self.variant,
                               "seconds": {k: round(v, 6) for k, v in self.seconds.items()}}
        if self.mask is not None:
            counts = np.bincount(np.asarray(self.mask, np.uint8).ravel(), minlength=256)
            out["segments"] = {name: int(counts[v]) for v, name in self.segments.items()}
        if self.scores:
            out.update(scores={k: float(v) for k, v in self.scores.items()},
                       thresholds=dict(self.thresholds), positive=self.positive)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class WrittenFile:
    """One file a task wrote for a prediction.

    ``kind``: ``mask`` | ``overlay`` | ``json`` | ``seg`` | ``sr`` | ``sc`` (or a new task's
    own); ``uid``: SOP Instance UID of a DICOM result.
    """

    kind: str
    path: Path
    media_type: str
    uid: str = ""


@dataclass(frozen=True)
class WriteOptions:
    """How results are written.

    Attributes:
        stem: file name prefix (``<stem>_mask.png``); empty: plain names (``mask.png``).
        dicom: write DICOM results (SEG / SR + Secondary Capture) when the image carries its
            source instances.
        labelmap: DICOM SEG as LABELMAP instead of BINARY.
        overlay: also write an overlay picture.
        summary: extra keys for the JSON summary (a job id, a route, ...).
    """

    stem: str = ""
    dicom: bool = True
    labelmap: bool = False
    overlay: bool = True
    summary: dict[str, Any] = field(default_factory=dict)

    def name(self, suffix: str) -> str:
        return f"{self.stem}_{suffix}" if self.stem else suffix


@dataclass(frozen=True)
class Example:
    """A case for a report: the picture, the truth and each variant's result drawn over it.

    ``pictures`` maps a caption to an RGB (H, W, 3) uint8 image; ``scores`` maps a caption
    to a per-case metric (e.g. Dice of that variant on this case).
    """

    name: str
    pictures: dict[str, np.ndarray]
    scores: dict[str, float] = field(default_factory=dict)


class Task(ABC):
    """One kind of model (see the module docstring).

    Class attributes:
        name: task name, also the ``task`` key of ``evaluate --json``.
        primary: the metric the gate and reports lead with.
        columns: (metrics key, header) pairs reports show, primary first.
        layout: the data layout it evaluates on, in words (for error messages).
    """

    name: ClassVar[str]
    primary: ClassVar[str]
    columns: ClassVar[tuple[tuple[str, str], ...]]
    layout: ClassVar[str]

    def __init__(self, art: ModelArtifact) -> None:
        self.art = art
        self.spec = art.spec.preprocessing

    @classmethod
    @abstractmethod
    def handles(cls, art: ModelArtifact) -> bool:
        """Whether this task runs ``art`` (by its recorded task and input dimensionality)."""

    # -- engine and input ------------------------------------------------------------
    def open_engine(self, backend: str | None, precision: str | None,
                    options: EngineOptions) -> tuple[Engine | None, str]:
        """(engine, variant name) for ``--backend/--precision``: the artifact's variant
        (its chosen one by default) loaded in its backend. A task without a network
        (perfusion) returns no engine and names the computation it runs."""
        variant = resolve_variant(self.art, backend, precision)
        return self.open_variant(variant, options), variant.name

    def open_variant(self, record: VariantRecord, options: EngineOptions) -> Engine:
        """The engine running ``record`` (a task with more than one network opens each of
        them in that variant)."""
        return open_engine(self.art, record, options)

    def parts(self, calib: np.ndarray) -> list[tuple[ModelArtifact, np.ndarray]]:
        """The task's other networks (beyond the artifact's own), each with its calibration
        inputs derived from ``calib``: the optimizer builds every variant of each, and
        :meth:`open_variant` opens them together. None by default."""
        return []

    def read_input(self, paths: Sequence[Path], limits: ReadLimits | None = None) -> Image:
        """The input of one request from its files: one file (picture, NIfTI, DICOM) or a
        DICOM series (the instances in array order, :attr:`Image.instances`)."""
        if not paths:
            raise InputError(Path("."), "no input files")
        if len(paths) == 1:
            return read_image(paths[0], limits=limits)
        return read_dicom_series(list(paths), limits=limits)

    def blank_input(self) -> Image | None:
        """An input to run once before the first request (the service's warm start): zeros
        of the network's input size; None when the artifact records no fixed size."""
        spec = self.art.spec.input
        if not all(spec.spatial) or spec.channels <= 0:
            return None
        n = len(spec.spatial)
        return Image(np.zeros((spec.channels, *spec.spatial), np.float32), (1.0,) * n, (0.0,) * n, np.eye(n))

    # -- data folders ----------------------------------------------------------------
    @abstractmethod
    def is_layout(self, folder: Path) -> bool:
        """Whether ``folder`` is in this task's evaluation layout."""

    def check_layout(self, folder: Path) -> None:
        """Fail early, naming the folder, when it does not hold this task's data."""
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "data folder does not exist")
        if not self.is_layout(folder):
            raise InputError(folder, f"model {self.art.root.name} ({self.name}) needs {self.layout}")

    @abstractmethod
    def load_eval(self, folder: Path, limit: int | None = None) -> Any:
        """Labeled evaluation data, prepared for the network (first ``limit`` cases)."""

    @abstractmethod
    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Calibration network inputs (N, C, *size); labels are not needed."""

    def count(self, data: Any) -> int:
        return len(data)

    def subset(self, data: Any, index: list[int]) -> Any:
        """The cases ``index`` of ``data`` (accuracy control ranks layers on subsets)."""
        return data.subset(index)

    def network_input(self, data: Any, i: int) -> np.ndarray:
        """One network input (1, C, *size) standing for case ``i``."""
        return data.images[i:i + 1]

    def latency_batch(self, data: Any) -> np.ndarray:
        """A representative network batch for quick latency checks."""
        return data.images[np.arange(16) % len(data)]

    def latency_call(self, engine: Engine) -> Callable[[np.ndarray], Any]:
        """What the optimizer times on :meth:`latency_batch` to rank variants: the network
        call; a task whose own steps depend on the variant (a second network fed by the
        first one's output) times them all."""
        return engine.infer

    # -- one image -------------------------------------------------------------------
    def check_image(self, image: Image) -> None:
        """Raise InputError naming ``image.source`` when the model cannot take it."""
        want = len(self.art.spec.input.spatial)
        if image.ndim_spatial != want:
            raise InputError(image.source or "<image>", f"{image.ndim_spatial}D image, but model "
                                                       f"{self.art.root.name} takes {want}D")

    @abstractmethod
    def prepare(self, image: Image) -> np.ndarray:
        """The network input for one image, from the artifact's preprocessing."""

    @abstractmethod
    def infer(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        """Run the inference strategy (resize, sliding window, exact tiling) on a prepared
        input; the outputs of the one image, without a batch axis (e.g. (K, H, W) logits)."""

    @abstractmethod
    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        """:meth:`infer`'s outputs -> a Prediction in ``image``'s own geometry (timings left empty)."""

    def predict(self, engine: Engine, image: Image, variant: str = "") -> Prediction:
        """prepare -> infer -> postprocess for one image, each stage timed."""
        self.check_image(image)
        t0 = time.perf_counter()
        x = self.prepare(image)
        t1 = time.perf_counter()
        y = self.infer(engine, x)
        t2 = time.perf_counter()
        pred = self.postprocess(y, image)
        t3 = time.perf_counter()
        return replace(pred, artifact=self.art.root.name, variant=variant,
                       seconds={"preprocess": t1 - t0, "infer": t2 - t1, "postprocess": t3 - t2})

    # -- many cases: metrics and gate ------------------------------------------------
    @abstractmethod
    def outputs(self, infer: Infer, data: Any) -> list[np.ndarray]:
        """Raw network outputs per case (what the metrics are computed from)."""

    @abstractmethod
    def metrics(self, outputs: list[np.ndarray], data: Any, n_boot: int = 0) -> dict[str, Any]:
        """Task metrics from :meth:`outputs` (flat floats, plus intervals when ``n_boot``)."""

    def engine_outputs(self, engine: Engine, data: Any) -> list[np.ndarray]:
        """:meth:`outputs` of an opened engine (a task with several networks runs them all)."""
        return self.outputs(engine.infer, data)

    def score(self, engine: Engine, data: Any, n_boot: int = 0) -> dict[str, Any]:
        """:meth:`metrics` of ``engine`` on ``data``."""
        return self.metrics(self.engine_outputs(engine, data), data, n_boot)

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        """Why ``cand`` fails against ``ref`` ("" when it passes)."""
        drop = ref[self.primary] - cand.get(self.primary, float("nan"))
        if not drop <= limits.max_drop:  # a NaN drop fails too
            return f"{self.primary} drop {drop:.4f} > max {limits.max_drop:.4f}"
        return ""

    # -- results ---------------------------------------------------------------------
    def write(self, pred: Prediction, image: Image, out_dir: Path,
              options: WriteOptions = WriteOptions()) -> list[WrittenFile]:
        """Write a prediction: the task's own files, DICOM results when the image came from
        DICOM, and the JSON summary (always last)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = self.write_files(pred, image, out_dir, options)
        if options.dicom and image.instances:
            files += self.write_dicom(pred, image, out_dir, options)
        json_name = f"{options.stem}.json" if options.stem else "result.json"
        files.append(write_summary(pred, out_dir / json_name, options))
        return files

    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """The task's own result files (masks, overlays); none by default."""
        return []

    def write_dicom(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """DICOM results for a DICOM input; none by default."""
        return []

    def examples(self, data: Any, outputs: dict[str, list[np.ndarray]], n: int) -> list[Example]:
        """Up to ``n`` report cases drawing each variant's outputs (none by default)."""
        return []


class PictureTask(Task):
    """A task on 2D pictures of any size resized to the network's input: the shared
    prepare / infer / calibration / batched outputs of 2D segmentation, classification and
    any other picture task (mix in before the task's other base)."""

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Pictures from ``folder/images`` (or ``folder``), prepared like inputs."""
        return load_calibration_images(folder, self.spec, limit)

    def prepare(self, image: Image) -> np.ndarray:
        """(1, C, *size): channels matched, resized, normalized by the artifact's preprocessing."""
        return prepare_batch([image.array], self.spec)

    def infer(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        return engine.infer(x)[0]

    def outputs(self, infer: Infer, data: Any) -> list[np.ndarray]:
        return batched(infer, data.images)


def gate_keys(ref: dict[str, float], cand: dict[str, float], limits: GateLimits,
              keys: Sequence[str]) -> str:
    """Why ``cand`` fails: the first of ``keys`` dropping more than ``limits.max_drop`` below
    ``ref`` ("" when none does; a key the reference cannot compute, NaN, is not checked)."""
    for key in keys:
        base = ref.get(key, float("nan"))
        drop = base - cand.get(key, float("nan"))
        if np.isfinite(base) and not drop <= limits.max_drop:
            return f"{key} drop {drop:.4f} > max {limits.max_drop:.4f}"
    return ""


def write_summary(pred: Prediction, path: Path, options: WriteOptions) -> WrittenFile:
    """The prediction's JSON summary (plus ``options.summary``)."""
    payload = {**options.summary, **pred.summary()}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return WrittenFile("json", path, "application/json")


def batched(infer: Infer, images: np.ndarray, batch: int = 16) -> list[np.ndarray]:
    """Per-case outputs of ``images`` run in batches of ``batch``."""
    out: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        out.extend(np.asarray(infer(images[i:i + batch])))
    return out
