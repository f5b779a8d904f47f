"""Training configuration: one validated pydantic model per recipe, passed explicitly.

Every config shares :class:`FitConfig` (data, output, network, optimizer, schedule, time
budget) and adds its recipe's own fields. ``task`` tells them apart when a config is
read from YAML (see :data:`AnyTrainConfig` and :mod:`medinfer.train.cli_config`); an
unknown key is an error, so a misspelt setting never silently falls back to its default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medinfer.artifact import CytologySpec, DetectionSpec
from medinfer.data.spec import Preprocessing


class FitConfig(BaseModel):
    """Settings every training recipe has.

    Attributes:
        task: which recipe runs (``segmentation``, ``classification``, ``segmentation3d``).
        data: the data folder (its layout must match ``task``).
        out: the artifact folder to write.
        architecture: a registered network (``medinfer.models.list_models()``).
        arch_kwargs: architecture arguments over the registry's defaults, e.g. ``channels``.
        epochs: epochs to train (fewer when ``max_minutes`` runs out).
        batch_size: samples per optimizer step of one process (a data-parallel run of W
            processes steps on W x ``batch_size`` samples).
        lr: initial learning rate (of one process; see ``lr_scaling``).
        lr_scaling: the learning rate of a data-parallel run of W processes: ``linear``
            (``lr`` x W, the rule of Goyal et al. 2017 for a W times larger batch), ``sqrt``
            (``lr`` x sqrt(W)) or ``none`` (``lr``). One process: ``lr``.
        warmup_epochs: over this many epochs the learning rate rises step by step from
            ``lr`` to the scaled one (gradual warm-up; 0: none; nothing to warm with W = 1).
        optimizer: ``adam`` or ``adamw`` (decoupled weight decay).
        weight_decay: L2 (``adam``) or decoupled (``adamw``) weight decay.
        schedule: ``step`` (times ``lr_gamma`` every ``lr_step`` epochs), ``cosine`` (to 0
            over ``epochs``) or ``constant``.
        lr_step: epochs between steps of the ``step`` schedule.
        lr_gamma: factor of each step of the ``step`` schedule.
        val_every: validate every this many epochs (and always after the last one).
        seed: seeds torch, numpy and the augmentation.
        threads: torch intra-op threads.
        max_minutes: stop after the first epoch that ends past this wall time (None or 0: no budget).
        precision: the arithmetic of the training steps: ``fp32``; ``bf16`` (autocast of
            the forward pass to bfloat16 on the CPU; weights, optimizer and loss stay FP32);
            ``auto`` (bf16 where the CPU computes BF16 natively, else fp32). Validation
            always runs in FP32, so the kept metric is the deployed model's.
        channels_last: train with channels-last (NHWC / NDHWC) tensors and weights.
        init: start from this artifact's weights instead of a random initialization (to
            continue or fine-tune a run; its architecture and channels must be this config's).
        prefetch: training batches a background thread prepares ahead of the step
            (augmentation overlaps computation); 0 draws them in the training thread.
        site, sites: train on hospital ``site`` (0-based) of ``sites``: a contiguous share of
            the training and validation cases (a federated client, or its train-alone
            baseline); None: all the data.
        checkpoint: write ``<out>/checkpoint.pt`` (network, optimizer, schedule, generator
            state, record) after every epoch; removed when the run completes.
        resume: continue from ``<out>/checkpoint.pt`` when it is there (the epochs it holds
            are not trained again; the resumed run draws the batches the interrupted one would have).
        preprocessing: how images become network inputs (stored in the artifact).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    data: Path
    out: Path
    architecture: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    warmup_epochs: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    lr_step: int = Field(30, ge=1)
    lr_gamma: float = Field(0.5, gt=0)
    val_every: int = Field(1, ge=1)
    seed: int = 0
    threads: int = Field(2, ge=1)
    max_minutes: float | None = Field(None, ge=0)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    channels_last: bool = False
    prefetch: int = Field(2, ge=0)
    init: Path | None = None
    sites: int = Field(1, ge=1)
    site: int | None = Field(None, ge=0)
    checkpoint: bool = True
    resume: bool = False
    preprocessing: Preprocessing = Preprocessing()

    @field_validator("preprocessing", mode="before")
    @classmethod
    def _over_recipe_default(cls, value: Any) -> Any:
        """A mapping (YAML) changes only the keys it names of the recipe's default preprocessing."""
        if not isinstance(value, dict):
            return value
        # Preprocessing itself ignores unknown keys (artifacts written by other versions
        # must load); in a training config a misspelt key is a mistake.
        unknown = sorted(set(value) - set(Preprocessing.model_fields))
        if unknown:
            raise ValueError(f"unknown preprocessing key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(Preprocessing.model_fields)}")
        default = cls.model_fields["preprocessing"].default
        return {**default.model_dump(), **value}

    @field_validator("site")
    @classmethod
    def _site_of_sites(cls, value: int | None, info: Any) -> int | None:
        sites = info.data.get("sites", 1)
        if value is not None and value >= sites:
            raise ValueError(f"site {value} of {sites} sites: sites are numbered 0 to {sites - 1}")
        return value


class TrainConfig(FitConfig):
    """A 2D binary segmentation run (DQ-ResUNet recipe).

    Defaults follow the DQ-ResUNet paper's recipe (Dice loss, Adam, step LR,
    rotation + horizontal flip with p = 0.5, 224x224), except the initial learning
    rate: the paper fine-tunes at 1e-4 for 100 epochs x 5 folds, while a from-scratch
    run on two CPU cores needs a faster start (1e-3 halved every ``lr_step`` epochs).

    Attributes:
        loss: ``dice`` or ``dicece`` (Dice + binary cross-entropy).
        val_fraction: fraction of the pairs held out for validation (split by name and seed).
        augment: ``paper`` (random rotation and horizontal flip) or ``strong`` (flips on
            both axes, rotation + scale + shift, colour gain/offset/gamma, rare blur and
            noise: :func:`medinfer.data.augment.strong_augmentation`).
        augment_prob: probability of each random transform of the augmentation.
        limit: use only the first N pairs by name (tests, quick runs; None or 0: all).
    """

    task: Literal["segmentation"] = "segmentation"
    architecture: str = "resunet"
    loss: Literal["dice", "dicece"] = "dice"
    val_fraction: float = Field(0.2, gt=0, lt=1)
    augment: Literal["paper", "strong"] = "paper"
    augment_prob: float = Field(0.5, ge=0, le=1)
    limit: int | None = Field(None, ge=0)


class ClassifyConfig(FitConfig):
    """A multi-label classification run (CheXNet recipe).

    The recipe follows CheXNet (DenseNet-121, binary cross-entropy per finding, Adam),
    trained from scratch (no downloaded weights): cosine learning-rate decay, small random
    affine augmentation, a patient-level split into train / validation (best epoch) / test
    (never seen in training; the artifact records which patients went where).

    Attributes:
        classes: the findings to learn, in output order (empty: the 14 NIH findings).
        pos_weight_max: cap of the per-class positive weight (negatives / positives).
        split: train / validation / test fractions of the images, split by patient.
        augment_prob: probability of the random affine transform per image.
        limit: use only the first N images by name (tests, quick runs; None or 0: all).
        exclusive: the classes are mutually exclusive (one per image: the Bethesda classes
            of a cell): softmax cross-entropy, class weights ``n_max / n_k`` clipped to
            [1, ``pos_weight_max``] (1 = unweighted), ``accuracy`` and ``balanced_accuracy``
            reported. ``classes`` must then be listed. False: independent findings (BCE).
        groups: output class -> the labels (class folders or findings) merged into it, e.g.
            ``{normal: [NILM], abnormal: [ASC-US, LSIL, ASC-H, HSIL, SCC]}`` for normal vs
            abnormal; ``classes`` defaults to the groups' names, in order.
        normal: the class meaning "nothing abnormal" (exclusive runs report ``abnormal_auc``
            as the AUC of one minus its probability); empty: none.
    """

    task: Literal["classification"] = "classification"
    architecture: str = "densenet121"
    classes: tuple[str, ...] = ()
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    pos_weight_max: float = Field(10.0, ge=1)
    split: tuple[float, float, float] = (0.6, 0.15, 0.25)
    augment_prob: float = Field(0.5, ge=0, le=1)
    limit: int | None = Field(None, ge=0)
    exclusive: bool = False
    groups: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    normal: str = ""
    preprocessing: Preprocessing = Preprocessing(
        size=(128, 128), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    @field_validator("split")
    @classmethod
    def _fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(sum(value) - 1.0) > 1e-6 or min(value) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(value)}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _classes_from_groups(cls, data: Any) -> Any:
        """Without ``classes``, the groups' names (in order) are the classes."""
        if isinstance(data, dict) and data.get("groups") and not data.get("classes"):
            return {**data, "classes": tuple(data["groups"])}
        return data

    @model_validator(mode="after")
    def _consistent_labels(self) -> ClassifyConfig:
        if self.exclusive and not self.classes:
            raise ValueError("exclusive: true needs the classes listed (the 14 NIH findings are not exclusive)")
        if self.groups:
            if tuple(self.groups) != tuple(self.classes):
                raise ValueError(f"classes {list(self.classes)} must be the groups' names {list(self.groups)}, "
                                 "in order")
            members = [m for ms in self.groups.values() for m in ms]
            twice = sorted({m for m in members if members.count(m) > 1})
            if twice or not all(self.groups.values()):
                raise ValueError(f"every group needs labels and a label belongs to one group "
                                 f"(in several: {', '.join(twice) or 'none'})")
        if self.normal and self.normal not in self.classes:
            raise ValueError(f"normal {self.normal!r} is not one of the classes {list(self.classes)}")
        return self


class VolumeTrainConfig(FitConfig):
    """A 3D segmentation run: random windows from whole volumes, Dice + CE.

    Validation runs the whole held-out volumes through the same sliding window the
    deployed model uses, so the recorded Dice is the deployment Dice.

    Attributes:
        val_prefixes: volumes whose names start with one of these are held out (by patient).
        segment: name of the label-1 segment of a binary model (stored in the artifact).
        segments: label value -> name for a multi-label model (e.g. ``{1: hippocampus
            anterior, 2: hippocampus posterior}``): a softmax over background + each label,
            Dice + CE on one-hot targets, validation Dice per label. Empty: binary
            (``segment``).
        val_slab: hold out this ``(start, stop)`` fraction range of the last axis of every
            volume for validation and train on the rest (a data set of one volume, e.g.
            ``(0.75, 1.0)``: the last quarter of the slices); None: split by ``val_prefixes``.
            A split within one patient: the held-out slices' neighbours are trained on.
        windows_per_volume: training windows per training volume and epoch.
        foreground_prob: probability that a window is centred on a foreground voxel.
    """

    task: Literal["segmentation3d"] = "segmentation3d"
    architecture: str = "unet3d"
    val_prefixes: tuple[str, ...] = ("PGBM-001",)
    segment: str = "tumour"
    segments: dict[int, str] = Field(default_factory=dict)
    val_slab: tuple[float, float] | None = None
    epochs: int = Field(60, ge=1)
    windows_per_volume: int = Field(32, ge=1)
    batch_size: int = Field(4, ge=1)
    foreground_prob: float = Field(0.8, ge=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    val_every: int = Field(3, ge=1)
    preprocessing: Preprocessing = Preprocessing(
        size=(64, 64, 16), scale=1.0, mean=(0.0,), std=(1.0,), channels=1, intensity="zscore", overlap=0.25)


    @field_validator("val_slab")
    @classmethod
    def _slab(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (0.0 <= value[0] < value[1] <= 1.0 and value[1] - value[0] < 1.0):
            raise ValueError(f"val_slab must be fractions 0 <= start < stop <= 1 leaving slices "
                             f"to train on, got {list(value)}")
        return value


CT_LUNG_WINDOW = (-1000.0, 400.0)
"""HU window of the detector's input: lung parenchyma to soft tissue."""


class DetectConfig(FitConfig):
    """A two-stage lesion detection run (Lung-PET-CT-Dx layout: DICOM series + VOC boxes).

    Stage 1 (MONAI RetinaNet on a small ResNet + FPN, 2.5D: each slice with its neighbours
    as channels) trains on augmented annotated slices (flips, zoom, shift, intensity) with
    ATSS matching and hard-negative sampling; stage 2 (a small ResNet on candidate crops)
    trains on crops of the trained stage 1's candidates on the same training series, the
    truth boxes jittered as positives and random boxes as extra negatives (the LUNA16
    false-positive-reduction recipe).

    Attributes:
        test_patients: held out entirely (leave-one-patient-out): neither trained nor validated on.
        val_series: series names (``<patient>/<series folder>``) that choose the best epoch;
            empty: the last series of the training patients. With one training patient this
            is the same scan in another reconstruction kernel: it guards against a broken
            epoch, it is not an independent estimate.
        samples_per_epoch: augmented slices per epoch.
        stage2_epochs: epochs of the candidate classifier (0: a one-stage detector).
        stage2_architecture: the candidate classifier's network.
        jitter: positive crops drawn per truth box for stage 2.
        negatives_per_slice: random negative crops per training slice for stage 2.
        paste_prob: probability per training slice of pasting a training lesion into its lung
            (copy-paste augmentation: more lesion positions and backgrounds than the data has).
        detection: post-processing settings stored in the artifact.
    """

    task: Literal["detection"] = "detection"
    architecture: str = "retinanet2d"
    test_patients: tuple[str, ...] = ("A0002",)
    val_series: tuple[str, ...] = ()
    samples_per_epoch: int = Field(96, ge=1)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(8, ge=2)
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    val_every: int = Field(5, ge=1)
    stage2_epochs: int = Field(30, ge=0)
    stage2_architecture: str = "candidate-resnet"
    jitter: int = Field(6, ge=1)
    negatives_per_slice: int = Field(6, ge=0)
    paste_prob: float = Field(0.5, ge=0, le=1)
    detection: DetectionSpec = DetectionSpec(stage2="stage2")
    preprocessing: Preprocessing = Preprocessing(
        size=(256, 256), scale=1.0 / 1400.0, mean=(-1000.0 / 1400.0,) * 3, std=(1.0, 1.0, 1.0), channels=3,
        window=CT_LUNG_WINDOW)


class CytologyConfig(FitConfig):
    """A whole-slide cytology run: stage 1 (tile classifier), slide fusion and operating
    points, then stage 2 (cell-centre detector) through the same loop.

    ``data`` holds ``train/`` and ``val/`` slide folders (``labels.csv`` + slides + cells'
    JSON, as :func:`medinfer.data.mosaic.write_slide_set` writes them); a ``test/`` folder
    beside them is never read here. Stage 1 trains on tiles drawn from the training slides
    (``per_cell`` tiles around each abnormal cell, ``negatives_per_slide`` tissue tiles
    without one) with flips, 90-degree turns and stain jitter; it is validated on the whole
    validation slides (tile AUC). After the last epoch the aggregator is fitted on the
    training slides' tile scores, the fusion with the better validation slide AUC is kept
    (``fusion: auto``), the stage-1 threshold is set on the validation slides for
    ``cytology.target_sensitivity``, stage 2 is trained on level-0 regions around the
    training slides' abnormal cells and at random tissue positions, and the flag and
    two-stage thresholds are set on the validation slides.

    Attributes:
        per_cell: positive tiles drawn around each abnormal cell of a training slide.
        negatives_per_slide: tissue tiles without an abnormal cell drawn per training slide.
        fusion: ``topk``, ``learned`` or ``auto`` (the better on the validation slides).
        flag_margin: the flag threshold is this fraction of the lowest stage-1 score of a
            validation abnormal slide (stage 2 then sees every validation positive).
        stage2_epochs: epochs of the cell-centre detector (0: one stage).
        stage2_architecture, stage2_arch_kwargs: its network; stage2_side: its region side
            (level-0 pixels).
        stage2_negatives: random tissue regions per training slide for stage 2.
        cytology: the slide settings stored in the artifact (thresholds are overwritten).
    """

    task: Literal["cytology"] = "cytology"
    architecture: str = "tile-resnet"
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    per_cell: int = Field(2, ge=1)
    negatives_per_slide: int = Field(96, ge=1)
    fusion: Literal["topk", "learned", "auto"] = "auto"
    flag_margin: float = Field(0.8, gt=0, le=1)
    stage2_epochs: int = Field(10, ge=0)
    stage2_architecture: str = "cell-centres"
    stage2_arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    stage2_side: int = Field(256, ge=32)
    stage2_negatives: int = Field(8, ge=0)
    cytology: CytologySpec = CytologySpec(stage2="stage2")
    preprocessing: Preprocessing = Preprocessing(size=(128, 128), mean=(0.8, 0.75, 0.8), std=(0.15, 0.15, 0.15))


AnyTrainConfig = Annotated[TrainConfig | ClassifyConfig | VolumeTrainConfig | DetectConfig | CytologyConfig,
                           Field(discriminator="task")]
"""Any recipe's config, told apart by ``task`` (validate with a ``pydantic.TypeAdapter``)."""

TASKS = ("segmentation", "classification", "segmentation3d", "detection", "cytology")
