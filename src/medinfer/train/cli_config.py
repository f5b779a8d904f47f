"""The settings of ``medinfer train``: a YAML config with ``--set`` overrides, or the flags.

YAML (see ``config/train.polyp.yaml``)::

    task: segmentation          # segmentation | classification | segmentation3d
                                # (omitted: picked from the data folder's layout)
    data: ../shared/data/kvasir-seg
    out: models/polyp-resunet
    architecture: resunet
    arch_kwargs: {channels: [16, 32, 64, 128, 256]}
    epochs: 150
    preprocessing: {size: [224, 224]}   # merged over the recipe's default preprocessing

Keys are the fields of the task's config (:class:`~medinfer.train.config.TrainConfig`,
:class:`~medinfer.train.config.ClassifyConfig`,
:class:`~medinfer.train.config.VolumeTrainConfig`); an unknown key is an error. ``data`` and
``out`` are relative to the working directory (as the flags are), so the artifact records
the paths the run was given. ``--set key=value`` (dotted keys, values parsed as YAML:
``--set epochs=3 --set preprocessing.size=[64,64]``) and flags given explicitly override
the file.

Without a file, the flags alone describe the run, as ``medinfer train`` always did: the
data folder's layout picks the recipe (NIfTI volumes -> 3D, ``labels.csv`` ->
classification, else 2D segmentation) and each recipe takes the flags it took before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from medinfer.data.detection import is_detection_folder
from medinfer.data.labels import is_labeled_folder
from medinfer.data.slide_sets import is_slide_folder
from medinfer.data.volumes import is_volume_folder
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.tasks import task_for
from medinfer.train.config import TASKS, AnyTrainConfig, FitConfig

_ADAPTER: TypeAdapter[FitConfig] = TypeAdapter(AnyTrainConfig)


@dataclass(frozen=True)
class TrainFlags:
    """The values of ``medinfer train``'s flags (the defaults are the command's)."""

    data: Path | None = None
    out: Path | None = None
    model: str | None = None
    size: int | None = None
    channels: str | None = None
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    lr_step: int = 30
    lr_gamma: float = 0.5
    loss: str = "dice"
    val_fraction: float = 0.2
    seed: int = 0
    threads: int = 2
    max_minutes: float | None = None
    limit: int | None = None


def flags_from_params(params: Mapping[str, Any]) -> TrainFlags:
    """The :class:`TrainFlags` among a command's parsed parameters (others are ignored)."""
    known = TrainFlags.__dataclass_fields__
    return TrainFlags(**{k: v for k, v in params.items() if k in known})


FLAG_KEYS = {"data": "data", "out": "out", "model": "architecture", "size": "preprocessing.size",
             "channels": "arch_kwargs.channels", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
             "lr_step": "lr_step", "lr_gamma": "lr_gamma", "loss": "loss", "val_fraction": "val_fraction",
             "seed": "seed", "threads": "threads", "max_minutes": "max_minutes", "limit": "limit"}
"""Flag (``TrainFlags`` field) -> config key it sets."""

_TASK_FLAGS = {  # the flags each recipe took before configs existed (the others were ignored)
    "segmentation3d": ("data", "out", "model", "channels", "epochs", "lr", "seed", "threads", "max_minutes"),
    "classification": ("data", "out", "model", "channels", "size", "epochs", "batch_size", "lr", "seed",
                       "threads", "max_minutes", "limit"),
    "segmentation": ("data", "out", "model", "channels", "epochs", "batch_size", "lr", "lr_step", "lr_gamma",
                     "loss", "val_fraction", "seed", "threads", "max_minutes", "limit"),
    "detection": ("data", "out", "model", "epochs", "batch_size", "lr", "seed", "threads", "max_minutes"),
}
_DEFAULT_MODEL = {"segmentation": "resunet", "classification": "densenet121", "segmentation3d": "unet3d",
                  "detection": "retinanet2d"}


def detect_task(data: str | Path) -> str:
    """The recipe a data folder's layout calls for (``segmentation`` when nothing else fits)."""
    if is_volume_folder(data):
        return "segmentation3d"
    if is_detection_folder(data):
        return "detection"
    if is_slide_folder(Path(data) / "train"):
        return "cytology"
    if is_labeled_folder(data):
        return "classification"
    return "segmentation"


def _flag_value(name: str, value: Any) -> Any:
    if name == "channels":
        return [int(c) for c in str(value).split(",")]
    if name == "size":
        return [int(value), int(value)]
    return str(value) if isinstance(value, Path) else value


def flag_overrides(flags: TrainFlags, names: Sequence[str]) -> dict[str, Any]:
    """Dotted config keys -> values of the flags ``names`` (those not None)."""
    values = asdict(flags)
    return {FLAG_KEYS[n]: _flag_value(n, values[n]) for n in names if values[n] is not None}


def from_flags(flags: TrainFlags) -> dict[str, Any]:
    """The raw config the flags describe, exactly as ``medinfer train`` read them before.

    Raises:
        MedinferError: ``--data`` or ``--out`` is missing.
    """
    if flags.data is None or flags.out is None:
        raise MedinferError("give --data and --out, or a config file with --config FILE.yaml")
    task = detect_task(flags.data)
    raw: dict[str, Any] = {"task": task}
    for key, value in flag_overrides(flags, _TASK_FLAGS[task]).items():
        set_dotted(raw, key, value)
    raw.setdefault("architecture", _DEFAULT_MODEL[task])
    return raw


def parse_set(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value parsed as YAML)``.

    Raises:
        MedinferError: no ``=``, an empty key, or a value that is not YAML.
    """
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise MedinferError(f"--set {item!r}: expected KEY=VALUE (e.g. epochs=3)")
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MedinferError(f"--set {item!r}: value is not YAML: {exc}") from exc


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw[a][b] = value`` for ``key`` ``"a.b"``, creating the mappings on the way.

    Raises:
        MedinferError: a part of the path is set to something that is not a mapping.
    """
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MedinferError(f"{key}: {'.'.join(parents[: i + 1])} is {child!r}, not a mapping")
        node = child
    node[leaf] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file.

    Raises:
        InputError: naming the file: missing, not YAML, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(path, f"a training config must be a mapping of settings, not {type(raw).__name__}")
    return raw


def _describe(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        if loc and loc[0] in TASKS:  # the discriminated union's tag: not a key of the file
            loc = loc[1:]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["task"]
        parts.append(f"{'.'.join(loc) or 'config'}: {e['msg']}")
    return "; ".join(parts)


def validate(raw: Mapping[str, Any], source: Path | None = None) -> FitConfig:
    """The validated config of ``raw``'s ``task`` (picked from ``raw["data"]`` when absent).

    Raises:
        InputError: naming ``source`` and every offending key (MedinferError without a source).
    """
    raw = dict(raw)
    if "task" not in raw and raw.get("data") is not None:
        raw["task"] = detect_task(raw["data"])
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        if source is None:
            raise MedinferError(f"invalid training settings: {_describe(exc)}") from exc
        raise InputError(source, f"invalid training config: {_describe(exc)}") from exc


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> FitConfig:
    """Read a YAML training config, apply dotted ``overrides`` and validate it.

    Example:
        >>> cfg = load_config("config/train.polyp.yaml", {"epochs": 3, "preprocessing.size": [64, 64]})  # doctest: +SKIP

    Raises:
        InputError: naming the file when it is unreadable or a key or value is wrong.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        for key, value in (overrides or {}).items():
            set_dotted(raw, key, value)
    except MedinferError as exc:
        raise InputError(path, str(exc)) from exc
    return validate(raw, path)


def build_config(config: Path | None, sets: Sequence[str], flags: TrainFlags,
                 given: Sequence[str] = ()) -> FitConfig:
    """The config of one ``medinfer train`` call.

    Args:
        config: the ``--config`` YAML file (None: the flags describe the run).
        sets: ``--set KEY=VALUE`` items, applied last.
        flags: every flag's value.
        given: the flags typed on the command line; with ``config`` they override the file.

    Raises:
        InputError: a bad config file (named) or a bad key in it.
        MedinferError: bad flags or ``--set`` items.
    """
    overrides = dict(parse_set(s) for s in sets)
    if config is not None:
        return load_config(config, {**flag_overrides(flags, [g for g in given if g in FLAG_KEYS]),
                                    **overrides})
    raw = from_flags(flags)
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return validate(raw)


def summary(art: ModelArtifact, best_epoch: int | None) -> str:
    """The line ``medinfer train`` prints when done: the best epoch's validation metrics, in
    the task's own columns."""
    metrics = art.spec.metrics
    scores = " ".join(f"{h} {metrics.get(k, float('nan')):.4f}" for k, h in task_for(art).columns)
    return f"best epoch {best_epoch}: val {scores} -> {art.root}"
