"""Helpers for medinfer.serve tests: tiny DICOM series, fake predictors, free ports."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from shared_data import SHARED_DATA

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.spec import Preprocessing
from medinfer.data.synthetic import mr_series as make_series  # noqa: F401 (the serve tests' name)
from medinfer.serve.store import InstanceInfo, Store
from medinfer.tasks import Prediction, Task, task_for

MR_SERIES = SHARED_DATA / "dicom-mr-brain-tumor-progression" / "PGBM-001" / "11-T1post-80644"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_task(task: str = "segmentation") -> Task:
    """The real task of a weightless artifact named ``fake`` (what a fake model writes with)."""
    spec = ArtifactSpec(task=task, architecture="fake", in_channels=1, out_channels=2,
                        input=InputSpec(channels=1, spatial=(16, 16)), preprocessing=Preprocessing(),
                        segments={1: "lesion"})
    return task_for(ModelArtifact(Path("fake"), spec))


class FakeModel:
    """A stand-in for :class:`medinfer.tasks.Predictor`: its own ``predict``, the real task's
    ``write``."""

    task = fake_task()

    def read(self, paths, limits=None):
        return self.task.read_input(paths, limits)

    def warm_up(self) -> None:
        """A stand-in has nothing to load or compile."""

    def write(self, pred, image, out_dir, options):
        return self.task.write(pred, image, out_dir, options)


class ThresholdPredictor(FakeModel):
    """Segments pixels brighter than the image mean as label 1 ("lesion")."""

    calls = 0

    def predict(self, image) -> Prediction:
        ThresholdPredictor.calls += 1
        mask = (image.array.mean(axis=0) > image.array.mean()).astype(np.uint8)
        return Prediction("segmentation", mask, {1: "lesion"}, artifact="fake", variant="torch-fp32",
                          seconds={"infer": 0.001})


class FindingsPredictor(FakeModel):
    """Classification: two findings with fixed scores."""

    task = fake_task("classification")

    def predict(self, image) -> Prediction:
        return Prediction("classification", None, {}, {"Effusion": 0.8, "Mass": 0.1},
                          {"Effusion": 0.5, "Mass": 0.5}, artifact="fake", variant="torch-fp32")


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_artifact(root: Path, dims: int = 3, task: str = "segmentation") -> Path:
    """A tiny random-weight artifact: ``test_unet3d`` (1-channel MR volumes, sliding window
    160x136x24), ``test_resunet`` (RGB pictures, 32x32), or with ``task="classification"``
    ``test_densenet`` (3 findings, 32x32)."""
    import torch

    from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
    from medinfer.data.spec import Preprocessing

    torch.manual_seed(0)
    if task == "classification":
        spec = ArtifactSpec(architecture="test_densenet", task="classification", in_channels=3,
                            out_channels=3, input=InputSpec(channels=3, spatial=(32, 32)),
                            preprocessing=Preprocessing(size=(32, 32)),
                            classes=["Effusion", "Mass", "Nodule"],
                            thresholds={"Effusion": 0.5, "Mass": 0.3, "Nodule": 0.7})
    elif dims == 3:
        spec = ArtifactSpec(architecture="test_unet3d", in_channels=1, out_channels=1,
                            input=InputSpec(channels=1, spatial=(160, 136, 24)),
                            preprocessing=Preprocessing(size=(160, 136, 24), channels=1, mean=(0.0,), overlap=0.0,
                                                        std=(1.0,), intensity="zscore"),
                            segments={1: "tumour"})
    else:
        spec = ArtifactSpec(architecture="test_resunet", in_channels=3, out_channels=1,
                            input=InputSpec(channels=3, spatial=(32, 32)),
                            preprocessing=Preprocessing(size=(32, 32)), segments={1: "polyp"})
    art = ModelArtifact(root, spec)
    art.save()
    art.save_weights(art.build_network().eval())
    return root


class FixedClock:
    """A ``Store`` clock that stands still until a test moves ``t``."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def queue_jobs(store: Store, n: int, tag: str = "1.2") -> list[int]:
    """``n`` one-instance MR studies, each closed into one queued job; their ids."""
    ids = []
    for i in range(n):
        info = InstanceInfo(f"{tag}.{i}", f"{tag}.{i}.1", f"{tag}.{i}.1.1", modality="MR")
        study = store.add_instance(info, f"/x/{i}.dcm", "dimse", "AE")
        ids += store.finalize_study(study, lambda s: ("mr", "/art"))
    return ids
