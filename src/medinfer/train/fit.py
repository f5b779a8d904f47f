"""The training loop: one :func:`fit` for every task, the task's pieces from a recipe.

Each run: seed torch / numpy, split and load the data (:meth:`Recipe.split`,
:meth:`Recipe.load`), build the network, optimizer and learning-rate schedule, then train
epoch by epoch behind a rich progress bar. Every ``val_every`` epochs (and after the
last) the network is scored on the validation part through the task layer
(:func:`medinfer.tasks.task_for`, the same scoring ``medinfer evaluate`` uses); the epoch
with the best primary metric (Dice, mean AUC) is kept. Its weights are written into the
artifact after each improvement and the record after each validation, so an interrupted
run leaves a usable model. ``max_minutes`` stops the run after the epoch that spends it
(that epoch is validated).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medinfer.artifact import ArtifactSpec, EpochRecord, InputSpec, ModelArtifact, TrainingRecord
from medinfer.data.prefetch import prefetched
from medinfer.errors import ArtifactError, MedinferError
from medinfer.models.registry import create_model
from medinfer.progress import status_progress
from medinfer.runtime import EngineOptions
from medinfer.runtime.cpu import cpu_info, has_bf16
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.tasks import task_for
from medinfer.train.config import FitConfig
from medinfer.train.recipes import Batch, Recipe, Split, recipe_for

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What :func:`fit` returns: the written artifact (its ``spec.training`` is the record)."""

    artifact: ModelArtifact

    @property
    def record(self) -> TrainingRecord:
        return self.artifact.spec.training

    @property
    def best_epoch(self) -> int | None:
        return self.record.best_epoch

    @property
    def history(self) -> list[EpochRecord]:
        return self.record.history

    @property
    def metrics(self) -> dict[str, float]:
        """Validation metrics of the best epoch."""
        return self.artifact.spec.metrics


def make_optimizer(cfg: FitConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or AdamW at ``cfg.lr`` with ``cfg.weight_decay``."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: FitConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule of ``cfg.schedule``."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _network(recipe: Recipe[Any], cfg: FitConfig) -> torch.nn.Module:
    try:
        net = create_model(cfg.architecture, in_channels=cfg.preprocessing.channels,
                           out_channels=recipe.out_channels(cfg), **cfg.arch_kwargs)
    except TypeError as exc:  # an arch_kwargs key the architecture does not take
        raise MedinferError(f"architecture {cfg.architecture!r}: {exc}") from exc
    if cfg.init is not None:
        start = ModelArtifact.load(cfg.init)
        if (start.spec.architecture, start.spec.arch_kwargs) != (cfg.architecture, dict(cfg.arch_kwargs)):
            raise ArtifactError(start.root, f"init: its network ({start.spec.architecture} "
                                            f"{start.spec.arch_kwargs}) is not this config's "
                                            f"({cfg.architecture} {dict(cfg.arch_kwargs)})")
        net.load_state_dict(start.load_network().state_dict())
    return net


def _load(recipe: Recipe[Any], cfg: FitConfig, split: Split) -> tuple[Any, Any]:
    with status_progress() as bar:
        task = bar.add_task("loading", total=len(split.train) + len(split.val), status="")
        train = recipe.load(cfg, split.train, lambda k: bar.advance(task, k))
        val = recipe.load(cfg, split.val, lambda k: bar.advance(task, k))
    return train, val


def _new_artifact(recipe: Recipe[Any], cfg: FitConfig, split: Split, command: str) -> ModelArtifact:
    pre = cfg.preprocessing
    record = TrainingRecord(
        command=command, config=json.loads(cfg.model_dump_json()), data=str(cfg.data),
        n_train=len(split.train), n_val=len(split.val), n_test=len(split.test) if split.test else None,
        split=split.record, torch=torch.__version__)
    spec = ArtifactSpec(
        architecture=cfg.architecture, arch_kwargs=dict(cfg.arch_kwargs), in_channels=pre.channels,
        out_channels=recipe.out_channels(cfg), input=InputSpec(channels=pre.channels, spatial=pre.size),
        preprocessing=pre, training=record, **recipe.spec_fields(cfg))
    return ModelArtifact(cfg.out, spec)


@dataclass(frozen=True)
class StepOptions:
    """How each training step computes: ``bf16`` autocast of the forward pass (CPU),
    ``channels_last`` memory format of the inputs (the network is converted once)."""

    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def of(cls, cfg: FitConfig) -> StepOptions:
        """``cfg.precision`` resolved against this CPU (``auto``: bf16 where it is native)."""
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and has_bf16())
        return cls(bf16=bf16, channels_last=cfg.channels_last)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(memory_format=_memory_format(net)) if self.channels_last else net

    def input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return x
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4
                            else torch.channels_last_3d)


def _memory_format(net: torch.nn.Module) -> torch.memory_format:
    conv3d = any(isinstance(m, torch.nn.Conv3d) for m in net.modules())
    return torch.channels_last_3d if conv3d else torch.channels_last


def _train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: torch.nn.Module,
                 batches: Iterable[Batch], on_step: Callable[[int], None],
                 step: StepOptions = StepOptions()) -> float | None:
    """One pass over ``batches``; the mean loss (None when no batch ran)."""
    net.train()
    losses = []
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step.bf16):
            logits = net(step.input(x))
        loss = loss_fn(logits.float(), y)  # the loss in FP32 whatever the forward ran in
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        on_step(len(x))
    return float(np.mean(losses)) if losses else None


def _validate(task: Any, net: torch.nn.Module, val: Any, threads: int) -> tuple[dict[str, float], Any]:
    """The task's validation metrics of ``net`` (eval mode, FP32) and the engine that scored them."""
    engine = TorchEngine(net.eval(), "fp32", EngineOptions(threads=threads))
    scores = task.score(engine, val, n_boot=0)
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}, engine


def _comparable(score: float) -> float:
    """NaN (e.g. an AUC with no positive case) never beats a real score."""
    return -math.inf if math.isnan(score) else score


class _Budget:
    """``max_minutes`` of wall time from construction (None: unlimited)."""

    def __init__(self, max_minutes: float | None) -> None:
        self.start, self.max_minutes = time.perf_counter(), max_minutes

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return bool(self.max_minutes) and self.seconds / 60 > self.max_minutes


def _save_record(art: ModelArtifact, seconds: float) -> None:
    rec = art.spec.training
    rec.epochs_run, rec.seconds = len(rec.history), round(seconds, 1)
    best = rec.best()
    art.spec.metrics = dict(best.metrics) if best else {}
    art.save()


def _status(entry: EpochRecord, primary: str, rec: TrainingRecord) -> str:
    text = f"loss {entry.train_loss:.3f}" if entry.train_loss is not None else "loss -"
    if entry.metrics:
        text += f" val {primary} {entry.metrics[primary]:.4f}"
    best = rec.best()
    if best is not None:
        text += f" (best {best.metrics[primary]:.4f} @ {best.epoch})"
    return text


@dataclass
class _Run:
    """Everything the epoch loop works on."""

    recipe: Recipe[Any]
    cfg: FitConfig
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: torch.nn.Module
    draw: Callable[[np.random.Generator], Iterable[Batch]]
    rng: np.random.Generator
    art: ModelArtifact
    task: Any
    val: Any
    epoch_samples: int
    step: StepOptions = StepOptions()


def _epoch(run: _Run, epoch: int, budget: _Budget, on_step: Callable[[int], None]) -> tuple[EpochRecord, bool]:
    """Train (and when due, validate) one epoch; the entry and whether the budget is spent."""
    cfg, rec = run.cfg, run.art.spec.training
    t0, lr = time.perf_counter(), run.opt.param_groups[0]["lr"]
    batches = prefetched(run.draw(run.rng), cfg.prefetch)
    loss = _train_epoch(run.net, run.opt, run.loss_fn, batches, on_step, run.step)
    run.schedule.step()
    spent = budget.spent()
    entry = EpochRecord(epoch=epoch, train_loss=loss, lr=lr)
    if spent or epoch % cfg.val_every == 0 or epoch == cfg.epochs:
        entry.metrics, engine = _validate(run.task, run.net, run.val, cfg.threads)
        best = rec.best()
        primary = run.task.primary
        if best is None or _comparable(entry.metrics[primary]) > _comparable(best.metrics[primary]):
            rec.best_epoch = epoch
            run.art.save_weights(run.net)
            run.recipe.on_best(cfg, run.art, engine, run.val)
    entry.seconds = time.perf_counter() - t0
    rec.history.append(entry)
    if entry.metrics:
        _save_record(run.art, budget.seconds)
    # A validated epoch that ends past the budget is the last; an unvalidated one cannot
    # be (the budget was checked before its validation was skipped).
    return entry, spent or (bool(entry.metrics) and budget.spent())


def _epochs(run: _Run) -> None:
    cfg, budget = run.cfg, _Budget(run.cfg.max_minutes)
    with status_progress() as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, status="")
        step_task = bar.add_task(f"  {run.recipe.unit}", total=run.epoch_samples, status="")
        for epoch in range(1, cfg.epochs + 1):
            bar.reset(step_task, total=run.epoch_samples)
            entry, spent = _epoch(run, epoch, budget, lambda k: bar.advance(step_task, k))
            bar.update(ep_task, advance=1, status=_status(entry, run.task.primary, run.art.spec.training))
            if spent and epoch < cfg.epochs:
                log.warning("stopping after epoch %d: time budget of %.0f min spent", epoch, cfg.max_minutes)
                break


def fit(recipe: Recipe[Any], cfg: FitConfig, command: str = "") -> FitResult:
    """Train ``cfg``'s network with ``recipe``; keep the best validated epoch as an artifact.

    Args:
        recipe: the task's pieces (:data:`medinfer.train.recipes.RECIPES`).
        cfg: the validated config of that recipe (e.g. :class:`TrainConfig`).
        command: the command line, recorded in the artifact.

    Returns:
        The artifact written to ``cfg.out`` (weights of the best epoch; metrics and the
        :class:`~medinfer.artifact.TrainingRecord` in ``artifact.json``).

    Raises:
        InputError: the data folder does not hold the recipe's layout.
        MedinferError: an unknown architecture or architecture argument.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    split = recipe.split(cfg)
    train, val = _load(recipe, cfg, split)
    step = StepOptions.of(cfg)
    net = step.prepare(_network(recipe, cfg))
    opt = make_optimizer(cfg, net.parameters())
    schedule = make_schedule(cfg, opt)
    loss_fn = recipe.loss(cfg, train)
    draw = recipe.sampler(cfg, train)
    art = _new_artifact(recipe, cfg, split, command)
    art.spec.training.machine = {**cpu_info(), "precision": step.precision,
                                 "channels_last": step.channels_last}
    run = _Run(recipe, cfg, net, opt, schedule, loss_fn, draw, rng, art, task_for(art), val,
               recipe.epoch_samples(cfg, train), step)
    _epochs(run)
    recipe.finish(cfg, art)
    return FitResult(art)


def run_training(cfg: FitConfig, command: str = "") -> FitResult:
    """:func:`fit` with the recipe of ``cfg.task``."""
    return fit(recipe_for(cfg), cfg, command)
