"""Tasks: one contract per kind of model, derived from the artifact.

prepare (Image -> network input) -> inference strategy over an Engine -> post-process to a
:class:`Prediction` -> metrics -> write. 2D segmentation, 3D segmentation and multi-label
classification and CT perfusion (no network: maps by deconvolution) are the built-in tasks; a new seed system is one :class:`Task` subclass
passed to :func:`register_task`, and every command (predict, evaluate, optimize, bench,
report, serve, training validation) then handles it.

This layer uses io, data, models, runtime, metrics, the artifact and the exact-inference
core of partition; commands, the optimizer, training, reports and the service use it.
"""

from medinfer.tasks.base import (
    Example,
    GateLimits,
    Infer,
    PictureTask,
    Prediction,
    Task,
    WriteOptions,
    WrittenFile,
)
from medinfer.tasks.cells import CellCentres
from medinfer.tasks.classification import Classification
from medinfer.tasks.cytology import Cytology, SlidePrediction
from medinfer.tasks.detection import Detection, StagedEngine
from medinfer.tasks.perfusion import Perfusion, PerfusionPrediction
from medinfer.tasks.predictor import Predictor
from medinfer.tasks.registry import list_tasks, register_task, task_for, unregister_task
from medinfer.tasks.segmentation import Segmentation2D, SegmentationTask, labels_from_logits
from medinfer.tasks.volume import Segmentation3D, VolumeInference, window_logits

for _task in (Segmentation2D, Segmentation3D, Classification, Perfusion, Detection, Cytology, CellCentres):
    register_task(_task)

__all__ = ["CellCentres", "Classification", "Cytology", "Detection", "SlidePrediction", "StagedEngine", "Example", "GateLimits", "Infer", "Perfusion", "PerfusionPrediction",
           "PictureTask", "Prediction", "Predictor",
           "Segmentation2D", "Segmentation3D", "SegmentationTask", "Task", "VolumeInference",
           "WriteOptions", "WrittenFile", "labels_from_logits", "list_tasks", "register_task",
           "task_for", "unregister_task", "window_logits"]
