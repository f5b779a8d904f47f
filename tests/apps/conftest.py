"""Tiny artifacts and data folders for every task (random weights, synthetic images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.labels import NIH_FINDINGS
from medinfer.data.spec import Preprocessing
from medinfer.data.synthetic import write_labeled_folder, write_volume_pairs
from medinfer.models import create_model

VOL_SHAPE = (20, 18, 9)
WINDOW = (16, 16, 8)


def _save(art: ModelArtifact) -> ModelArtifact:
    torch.manual_seed(0)
    art.save_weights(create_model(art.spec.architecture, in_channels=art.spec.in_channels,
                                  out_channels=art.spec.out_channels))
    art.save()
    return art


@pytest.fixture(scope="session")
def cls_artifact(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    spec = ArtifactSpec(task="classification", architecture="test_densenet", in_channels=3, out_channels=14,
                        input=InputSpec(channels=3, spatial=(32, 32)), preprocessing=Preprocessing(size=(32, 32)),
                        classes=list(NIH_FINDINGS), thresholds={c: 0.5 for c in NIH_FINDINGS})
    return _save(ModelArtifact(tmp_path_factory.mktemp("cls") / "art", spec))


@pytest.fixture(scope="session")
def vol_artifact(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    pre = Preprocessing(size=WINDOW, scale=1.0, mean=(0.0,), std=(1.0,), channels=1, intensity="zscore")
    spec = ArtifactSpec(task="segmentation", architecture="test_unet3d", in_channels=1, out_channels=1,
                        input=InputSpec(channels=1, spatial=WINDOW), preprocessing=pre, segments={1: "tumour"})
    return _save(ModelArtifact(tmp_path_factory.mktemp("vol") / "art", spec))


@pytest.fixture(scope="session")
def cls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 labeled 24x24 RGB images; every finding column has both classes somewhere."""
    rows = [(f"{i}.png", "|".join(c for k, c in enumerate(NIH_FINDINGS) if (i + k) % 3 == 0), i)
            for i in range(12)]
    return write_labeled_folder(tmp_path_factory.mktemp("cxr"), rows, side=24)


@pytest.fixture(scope="session")
def vol_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two NIfTI volumes with a bright box and its mask."""
    return write_volume_pairs(tmp_path_factory.mktemp("vols"), ["v0", "v1"], VOL_SHAPE)
