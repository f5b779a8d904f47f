"""Two-stage lesion detection on CT slices (S6): candidate boxes, then a classifier of the
candidates that removes false positives; DICOM SR regions and an overlay as results.

Stage 1 is the artifact's own network (MONAI RetinaNet, 2.5D: each slice with its
neighbours as channels) ending at its heads; anchors, decoding, thresholds and NMS run
here, outside the graph (:class:`~medinfer.models.detection.DetectorGeometry`), the same
for every backend. Stage 2 is a second artifact in the sub-folder the detection settings
name (``DetectionSpec.stage2``): a small classifier of square crops around each candidate.
Both networks are optimized together: a variant name (``openvino-int8``) means that
variant of both, and the gate scores the whole pipeline on the detection metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from medinfer.artifact import DetectionSpec, ModelArtifact, VariantRecord
from medinfer.data.detection import DetectionSeries, is_detection_folder, load_detection_folder
from medinfer.data.preprocess import prepare_slices
from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.io import Image
from medinfer.io.derived import detection_overlay, write_png, write_sc
from medinfer.io.regions import RegionFinding, write_detection_sr
from medinfer.metrics.detection import SliceDetections, SliceTruth, detection_scores
from medinfer.models.detection import AnchorSpec, DetectorGeometry
from medinfer.runtime import Engine, EngineOptions, open_engine
from medinfer.tasks.base import Example, GateLimits, Infer, Prediction, Task, WriteOptions, WrittenFile, gate_keys
from medinfer.tasks.classification import sigmoid
from medinfer.variants import get_kind

COLUMNS = ("slice", "a0", "b0", "a1", "b1", "stage1", "stage2", "score")
"""Columns of a detection row: the slice, the box in network-input pixels (MONAI order: a =
row, b = column), both stages' probabilities (stage 2 NaN when it did not run) and the
final score."""
STAGE1, STAGE2, SCORE = 5, 6, 7


class StagedEngine(Engine):
    """Both stages' networks opened in the same variant; ``infer`` runs stage 1 (what the
    generic latency checks time), :attr:`classifier` the second stage (None: one stage)."""

    def __init__(self, proposer: Engine, classifier: Engine | None) -> None:
        super().__init__(proposer.path, proposer.precision, proposer.options)
        self.backend = proposer.backend
        self.proposer, self.classifier = proposer, classifier

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.proposer.infer(batch)

    def infer_many(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.proposer.infer_many(batches)

    def close(self) -> None:
        self.proposer.close()
        if self.classifier is not None:
            self.classifier.close()


def open_staged(first: ModelArtifact, second: ModelArtifact | None, record: VariantRecord,
                options: EngineOptions) -> StagedEngine:
    """``first`` in ``record``'s variant and ``second`` (None: one stage) in the variant of
    the same name, as one :class:`StagedEngine`."""
    proposer = open_engine(first, record, options)
    if second is None:
        return StagedEngine(proposer, None)
    try:
        return StagedEngine(proposer, open_engine(second, VariantRecord.of(get_kind(record.name)), options))
    except Exception:
        proposer.close()
        raise


@dataclass(frozen=True)
class DetectionSet:
    """Evaluation slices prepared for the network, with their truth.

    Attributes:
        images: (N, C, H, W) network inputs of the annotated slices.
        truths: per slice, (m, 4) truth boxes in the slice's own pixels (x0, y0, x1, y1).
        scales: per slice, (rows / H, cols / W): network-input pixels -> slice pixels.
        names: ``<series>#<slice index>`` per slice.
        patients: patient of each slice (metrics are reported with the patient count).
    """

    images: np.ndarray
    truths: list[np.ndarray]
    scales: list[tuple[float, float]]
    names: list[str]
    patients: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: list[int]) -> DetectionSet:
        return DetectionSet(self.images[index], [self.truths[i] for i in index],
                            [self.scales[i] for i in index], [self.names[i] for i in index],
                            [self.patients[i] for i in index])


def slice_volume(image: Image) -> np.ndarray:
    """(rows, cols, slices) intensities: a series as read, a picture as one grey slice."""
    if image.ndim_spatial == 3:
        return image.array[0]
    return np.asarray(image.array, np.float32).mean(axis=0)[..., None]


def load_series(series: Sequence[DetectionSeries], spec: Preprocessing, annotated_only: bool = True) -> DetectionSet:
    """The slices of ``series`` prepared by ``spec`` (2.5D, windowed, resized) with their truth
    boxes: only the annotated slices (an unannotated slice is not known to be lesion-free),
    or every slice (calibration)."""
    images, truths, scales, names, patients = [], [], [], [], []
    for s in series:
        x = prepare_slices(slice_volume(s.image), spec)
        rows, cols = s.image.spatial_shape[:2]
        for k in (sorted(s.annotated) if annotated_only else range(len(x))):
            images.append(x[k])
            boxes = s.boxes.get(k, ())
            truths.append(np.array([b.as_array() for b in boxes], np.float32).reshape(-1, 4))
            scales.append((rows / spec.size[0], cols / spec.size[1]))
            names.append(f"{s.name}#{k}")
            patients.append(s.patient)
    empty = np.zeros((0, spec.channels, *spec.size), np.float32)
    return DetectionSet(np.stack(images) if images else empty, truths, scales, names, patients)


def input_boxes(data: DetectionSet) -> list[np.ndarray]:
    """Truth boxes per slice in network-input pixels, MONAI order (a0, b0, a1, b1)."""
    return [t[:, [1, 0, 3, 2]] / np.array([sa, sb, sa, sb], np.float32) for t, (sa, sb) in zip(data.truths, data.scales)]


def crop_boxes(x: torch.Tensor, boxes: torch.Tensor, size: int, context: float) -> torch.Tensor:
    """Square crops ``(n, C, size, size)`` of ``x`` (C, H, W) centred on ``boxes`` (n, 4,
    MONAI order a0, b0, a1, b1), side ``context`` x the box's longer side, bilinear."""
    if len(boxes) == 0:
        return x.new_zeros((0, x.shape[0], size, size))
    h, w = x.shape[-2:]
    centre_a, centre_b = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=4) * context / 2
    theta = torch.zeros(len(boxes), 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = 2 * half / w, 2 * centre_b / w - 1  # output x (column)
    theta[:, 1, 1], theta[:, 1, 2] = 2 * half / h, 2 * centre_a / h - 1  # output y (row)
    grid = torch.nn.functional.affine_grid(theta, [len(boxes), x.shape[0], size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x.expand(len(boxes), -1, -1, -1), grid, align_corners=False)


class Detection(Task):
    """2.5D lesion detection on CT series (DICOM + VOC boxes) or pictures (+ boxes.json)."""

    name: ClassVar[str] = "detection"
    primary: ClassVar[str] = "ap@0.1"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("ap@0.1", "AP@0.1"), ("sensitivity@1fp", "sens@1FP/slice"), ("sensitivity@2fp", "sens@2FP/slice"),
        ("sensitivity@4fp", "sens@4FP/slice"))
    layout: ClassVar[str] = ("a detection folder (<patient>/<series>/*.dcm + annotations/<patient>/"
                             "<SOPInstanceUID>.xml, or images/ + boxes.json)")
    batch: ClassVar[int] = 16

    def __init__(self, art: ModelArtifact) -> None:
        super().__init__(art)
        self.settings = art.spec.detection or DetectionSpec()
        self.anchors = AnchorSpec.of(art.spec.arch_kwargs)
        s = self.settings
        self.geometry = DetectorGeometry(self.anchors, self.spec.size, art.spec.out_channels, s.score_thresh,
                                         s.nms_iou, s.topk, s.max_per_slice)

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "detection"

    @property
    def stage2(self) -> ModelArtifact | None:
        """The second-stage classifier artifact (None for a one-stage detector)."""
        if not self.settings.stage2:
            return None
        return ModelArtifact.load(self.art.root / self.settings.stage2)

    # -- engines -----------------------------------------------------------------------
    def open_variant(self, record: VariantRecord, options: EngineOptions) -> Engine:
        """Stage 1 in ``record``'s variant and stage 2 in the variant of the same name."""
        return open_staged(self.art, self.stage2, record, options)

    def parts(self, calib: np.ndarray) -> list[tuple[ModelArtifact, np.ndarray]]:
        stage2 = self.stage2
        return [] if stage2 is None else [(stage2, self.calibration_crops(calib))]

    # -- data --------------------------------------------------------------------------
    def is_layout(self, folder: Path) -> bool:
        return is_detection_folder(folder)

    def load_series(self, series: Sequence[DetectionSeries], annotated_only: bool = True) -> DetectionSet:
        """Prepared inputs of the (annotated) slices of ``series`` with their truth boxes."""
        return load_series(series, self.spec, annotated_only)

    def load_eval(self, folder: Path, limit: int | None = None) -> DetectionSet:
        data = self.load_series(load_detection_folder(Path(folder)))
        return data.subset(list(range(min(limit, len(data))))) if limit else data

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        """Every slice of every series (annotated or not), prepared like an input."""
        data = self.load_series(load_detection_folder(Path(folder)), annotated_only=False)
        return data.images[:limit] if limit else data.images

    def latency_batch(self, data: DetectionSet) -> np.ndarray:
        return data.images[np.arange(self.batch) % len(data)]

    def latency_call(self, engine: Engine) -> Callable[[np.ndarray], Any]:
        """Both stages with the decoding between them (a variant's stage-2 speed counts too)."""
        return lambda x: self.infer(engine, x)

    def candidates(self, x: np.ndarray) -> np.ndarray:
        """Stage-1 detection rows of the artifact's own FP32 weights (PyTorch) on prepared
        slices ``x``: what stage 2 is trained and calibrated on."""
        net = self.art.load_network()
        with torch.no_grad():
            return self.detect(lambda b: net(torch.from_numpy(b)).numpy(), None, x)

    def calibration_crops(self, calib: np.ndarray) -> np.ndarray:
        """Stage-2 calibration inputs: crops of the candidates stage 1 proposes on the
        calibration slices (what the classifier sees when deployed)."""
        return self.crops(calib, self.candidates(calib))

    # -- one image ---------------------------------------------------------------------
    def check_image(self, image: Image) -> None:
        if image.ndim_spatial == 3 and image.num_channels != 1:
            raise InputError(image.source or "<image>", f"{image.num_channels}-channel volume; the detector "
                                                        "takes one CT series")

    def prepare(self, image: Image) -> np.ndarray:
        """(slices, C, H, W): every slice with its neighbours, windowed, resized."""
        return prepare_slices(slice_volume(image), self.spec)

    def detect(self, stage1: Infer, stage2: Infer | None, x: np.ndarray,
               many: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None) -> np.ndarray:
        """Both stages on prepared slices ``x``: detection rows (n, 8) (:data:`COLUMNS`).

        ``many`` runs stage 1 on all the slice batches at once (an engine's ``infer_many``:
        several requests in flight); without it the batches run one after another."""
        batches = [x[i:i + self.batch] for i in range(0, len(x), self.batch)]
        outputs = many(batches) if many is not None else [stage1(b) for b in batches]
        rows = []
        for i, out in zip(range(0, len(x), self.batch), outputs):
            for j, o in enumerate(torch.from_numpy(np.asarray(out))):
                boxes, scores = self.geometry.decode(o)
                k = torch.full((len(boxes), 1), float(i + j))
                nan = torch.full_like(k, float("nan"))
                rows.append(torch.cat([k, boxes, scores[:, None], nan, scores[:, None]], 1).numpy())
        found = np.concatenate(rows) if rows else np.zeros((0, len(COLUMNS)), np.float32)
        if stage2 is not None and len(found):
            crops = self.crops(x, found)
            p2 = np.concatenate([sigmoid(stage2(crops[i:i + 64]))[:, 0] for i in range(0, len(crops), 64)])
            w = self.settings.stage2_weight
            found[:, STAGE2] = p2
            found[:, SCORE] = found[:, STAGE1] ** (1 - w) * p2 ** w
        return found[found[:, SCORE] >= self.settings.min_score].astype(np.float32)

    def crops(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Stage-2 inputs (n, C, s, s) for detection ``rows`` on slices ``x``."""
        s = self.settings
        out = [crop_boxes(torch.from_numpy(x[int(k)]), torch.from_numpy(rows[rows[:, 0] == k, 1:5]),
                          s.crop_size, s.crop_context) for k in np.unique(rows[:, 0])]
        order = np.argsort(rows[:, 0], kind="stable")
        crops = torch.cat(out).numpy() if out else np.zeros((0, x.shape[1], s.crop_size, s.crop_size), np.float32)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return np.ascontiguousarray(crops[back], np.float32)

    def infer(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        classifier = engine.classifier if isinstance(engine, StagedEngine) else None
        return self.detect(engine.infer, classifier.infer if classifier else None, x, engine.infer_many)

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        rows, cols = image.spatial_shape[:2]
        sa, sb = rows / self.spec.size[0], cols / self.spec.size[1]
        found = []
        for k, a0, b0, a1, b1, p1, p2, score in outputs.tolist():
            k = int(k)
            box = [round(b0 * sb, 2), round(a0 * sa, 2), round(b1 * sb, 2), round(a1 * sa, 2)]
            item: dict[str, Any] = {"slice": k, "box": box, "score": round(score, 5), "stage1": round(p1, 5)}
            if np.isfinite(p2):
                item["stage2"] = round(p2, 5)
            if image.instances and k < len(image.instances):
                item["sop_instance_uid"] = str(getattr(image.instances[k], "SOPInstanceUID", ""))
            found.append(item)
        found.sort(key=lambda d: -d["score"])
        return Prediction(self.name, extra={"detections": found, "n_detections": len(found),
                                            "stages": 2 if self.settings.stage2 else 1})

    # -- metrics -----------------------------------------------------------------------
    def outputs(self, infer: Infer, data: DetectionSet) -> list[np.ndarray]:
        """Stage-1 detections per slice (a network call alone knows no second stage)."""
        return self.split_rows(self.detect(infer, None, data.images), len(data))

    def engine_outputs(self, engine: Engine, data: DetectionSet) -> list[np.ndarray]:
        """Detections of both stages of ``engine`` per slice."""
        return self.split_rows(self.infer(engine, data.images), len(data))

    @staticmethod
    def split_rows(rows: np.ndarray, n: int) -> list[np.ndarray]:
        return [rows[rows[:, 0] == k] for k in range(n)]

    def slice_detections(self, rows: np.ndarray, scale: tuple[float, float]) -> SliceDetections:
        """Rows of one slice -> boxes (x0, y0, x1, y1) in the slice's own pixels."""
        sa, sb = scale
        boxes = rows[:, [2, 1, 4, 3]] * np.array([sb, sa, sb, sa], np.float32)
        return SliceDetections(boxes.astype(np.float32), rows[:, SCORE].astype(np.float32))

    def metrics(self, outputs: list[np.ndarray], data: DetectionSet, n_boot: int = 0) -> dict[str, Any]:
        """FROC sensitivities at 1/2/4 false positives per slice and AP at IoU 0.1 over the
        annotated slices (``n`` slices, ``patients`` distinct patients)."""
        preds = [self.slice_detections(o, s) for o, s in zip(outputs, data.scales)]
        out = detection_scores(preds, [SliceTruth(t) for t in data.truths], iou=0.1, n_boot=n_boot)
        out["patients"] = len(set(data.patients))
        # counts as floats, like the other tasks' ``n`` (variant records keep float metrics)
        return {k: float(v) if isinstance(v, int) else v for k, v in out.items()}

    def gate(self, ref: dict[str, float], cand: dict[str, float], limits: GateLimits) -> str:
        """AP@0.1 and the sensitivity at 2 false positives per slice, each within ``max_drop``."""
        return gate_keys(ref, cand, limits, (self.primary, "sensitivity@2fp"))

    # -- results -----------------------------------------------------------------------
    def reported(self, pred: Prediction) -> list[dict[str, Any]]:
        """The detections a reader sees (SR regions, overlay): score >= ``report_score``; the
        JSON keeps every candidate above ``min_score`` (what FROC analysis needs)."""
        return [d for d in pred.extra["detections"] if d["score"] >= self.settings.report_score]

    def findings(self, pred: Prediction) -> list[RegionFinding]:
        return [RegionFinding(d["slice"], tuple(d["box"]), d["score"]) for d in self.reported(pred)]

    def overlay(self, pred: Prediction, image: Image) -> np.ndarray:
        """The slice of the best detection (the middle slice when none) with its reported boxes."""
        found = pred.extra["detections"]
        volume = slice_volume(image)
        k = found[0]["slice"] if found else volume.shape[-1] // 2
        on = [d for d in self.reported(pred) if d["slice"] == k]
        return detection_overlay(volume[..., k], [d["box"] for d in on], [d["score"] for d in on])

    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        if not options.overlay:
            return []
        path = write_png(self.overlay(pred, image), out_dir / options.name("overlay.png"))
        return [WrittenFile("overlay", path, "image/png")]

    def write_dicom(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """Comprehensive SR (one planar region per detection, on its source instance) and a
        Secondary Capture of the overlay."""
        name = self.art.root.name
        path, uid = write_detection_sr(image.instances, self.findings(pred), out_dir / options.name("sr.dcm"), name,
                                       pred.variant)
        files = [WrittenFile("sr", path, "application/dicom", uid)]
        k = pred.extra["detections"][0]["slice"] if pred.extra["detections"] else len(image.instances) // 2
        path, uid = write_sc(image.instances[min(k, len(image.instances) - 1)], self.overlay(pred, image),
                             out_dir / options.name("sc.dcm"), name)
        return files + [WrittenFile("sc", path, "application/dicom", uid)]

    def examples(self, data: DetectionSet, outputs: dict[str, list[np.ndarray]], n: int) -> list[Example]:
        """The first ``n`` slices with a truth box: truth in green, each variant's boxes."""
        cases = [i for i, t in enumerate(data.truths) if len(t)][:n]
        out = []
        for i in cases:
            picture = data.images[i][data.images.shape[1] // 2]
            pictures = {}
            for variant, per_slice in outputs.items():
                found = self.slice_detections(per_slice[i], (1.0, 1.0))
                truth = data.truths[i] / np.array([data.scales[i][1], data.scales[i][0]] * 2, np.float32)
                pictures[variant] = detection_overlay(picture, found.boxes.tolist(), found.scores.tolist(),
                                                      truth=truth.tolist(), window=None)
            out.append(Example(data.names[i], pictures))
        return out
