"""Training configuration (validated, passed explicitly)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medinfer.data.spec import Preprocessing


class TrainConfig(BaseModel):
    """Everything a segmentation training run depends on.

    Defaults follow the DQ-ResUNet paper's recipe (Dice loss, Adam, step LR,
    rotation + horizontal flip with p = 0.5, 224x224), except the initial learning
    rate: the paper fine-tunes at 1e-4 for 100 epochs x 5 folds, while a from-scratch
    run on two CPU cores needs a faster start (1e-3 halved every ``lr_step`` epochs).
    """

    model_config = ConfigDict(frozen=True)

    data: Path
    out: Path
    architecture: str = "resunet"
    arch_kwargs: dict[str, object] = Field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    lr_step: int = 30
    lr_gamma: float = 0.5
    loss: str = "dice"
    val_fraction: float = 0.2
    seed: int = 0
    augment_prob: float = 0.5
    threads: int = 2
    max_minutes: float | None = None
    limit: int | None = None
    preprocessing: Preprocessing = Preprocessing()


class ClassifyConfig(BaseModel):
    """Everything a multi-label classification training run depends on.

    The recipe follows CheXNet (DenseNet-121, binary cross-entropy per finding, Adam),
    trained from scratch (no downloaded weights): cosine learning-rate decay, small random
    affine augmentation, a patient-level split into train / validation (best epoch) / test
    (never seen in training; the artifact records which patients went where).
    """

    model_config = ConfigDict(frozen=True)

    data: Path
    out: Path
    architecture: str = "densenet121"
    arch_kwargs: dict[str, object] = Field(default_factory=dict)
    classes: tuple[str, ...] = ()
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    pos_weight_max: float = 10.0
    split: tuple[float, float, float] = (0.6, 0.15, 0.25)
    seed: int = 0
    augment_prob: float = 0.5
    threads: int = 2
    max_minutes: float | None = None
    limit: int | None = None
    preprocessing: Preprocessing = Preprocessing(
        size=(128, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
