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

The network, optimizer, learning-rate schedule (with warm-up) and epoch sampler live in a
:class:`Trainer`, which federated clients drive round by round. Under torchrun
(:mod:`medinfer.train.distributed`) the same loop runs on every rank with a
:class:`~medinfer.train.parallel.Parallel`: each rank steps on its shard of every global
batch through ``DistributedDataParallel``; rank 0 validates, writes the artifact and the
checkpoint. With ``checkpoint`` a run leaves ``<out>/checkpoint.pt`` after every epoch, and
``resume`` continues from it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
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
from medinfer.train.parallel import Parallel
from medinfer.train.recipes import Recipe, Split, recipe_for, site_share

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


def make_optimizer(cfg: FitConfig, params: Iterable[torch.nn.Parameter],
                   lr: float | None = None) -> torch.optim.Optimizer:
    """Adam or AdamW at ``lr`` (default ``cfg.lr``) with ``cfg.weight_decay``."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=cfg.lr if lr is None else lr, weight_decay=cfg.weight_decay)


def make_schedule(cfg: FitConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch learning-rate schedule of ``cfg.schedule``."""
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def lr_scale(cfg: FitConfig, world: int) -> float:
    """The factor of ``cfg.lr`` for ``world`` data-parallel processes (``cfg.lr_scaling``)."""
    if world == 1 or cfg.lr_scaling == "none":
        return 1.0
    return float(world) if cfg.lr_scaling == "linear" else math.sqrt(world)


def make_network(recipe: Recipe[Any], cfg: FitConfig) -> torch.nn.Module:
    """``cfg``'s network (from ``cfg.init``'s weights when given)."""
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


def load_parts(recipe: Recipe[Any], cfg: FitConfig, split: Split, show: bool = True) -> tuple[Any, Any]:
    """The training and validation parts of ``split``, read by the recipe (a progress bar when ``show``)."""
    with status_progress(show) as bar:
        task = bar.add_task("loading", total=len(split.train) + len(split.val), status="")
        train = recipe.load(cfg, split.train, lambda k: bar.advance(task, k))
        val = recipe.load(cfg, split.val, lambda k: bar.advance(task, k))
    return train, val


def new_artifact(recipe: Recipe[Any], cfg: FitConfig, split: Split, command: str) -> ModelArtifact:
    """The artifact a run of ``cfg`` writes (not saved yet): network, task fields, record."""
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


def state_arrays(net: torch.nn.Module) -> list[np.ndarray]:
    """``net``'s state (weights and buffers) as arrays, in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


def array_problem(arrays: list[np.ndarray], shapes: list[tuple[int, ...]],
                  dtypes: list[np.dtype] | None = None) -> str | None:
    """Why ``arrays`` cannot be a network state of ``shapes`` (and ``dtypes``); None: they can.
    Checked: the count, each shape (and dtype), finite floating-point values."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays, the network has {len(shapes)}"
    for i, a in enumerate(arrays):
        a = np.asarray(a)
        if tuple(a.shape) != tuple(shapes[i]):
            return f"array {i}: shape {tuple(a.shape)}, expected {tuple(shapes[i])}"
        if dtypes is not None and a.dtype != dtypes[i]:
            return f"array {i}: dtype {a.dtype}, expected {dtypes[i]}"
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"array {i}: not finite"
    return None


def load_state_arrays(net: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays in :func:`state_arrays`' order into ``net`` (each cast to its tensor's dtype).

    Raises:
        ValueError: :func:`array_problem` finds one.
    """
    state = net.state_dict()
    problem = array_problem(arrays, [tuple(v.shape) for v in state.values()])
    if problem:
        raise ValueError(problem)
    net.load_state_dict({k: torch.as_tensor(np.asarray(a), dtype=v.dtype)
                         for (k, v), a in zip(state.items(), arrays)})


class Trainer:
    """A network in training: its optimizer, learning-rate schedule and warm-up, loss, and
    the sampler of this process's share of the training data.

    :func:`fit` drives it epoch by epoch; a federated client (:mod:`medinfer.train.federated`)
    round by round, loading the server's weights before each round.

    Args:
        recipe: the task's pieces.
        cfg: the run's config.
        train: the loaded training data (``recipe.load``).
        parallel: this process's rank (default: one process).
    """

    def __init__(self, recipe: Recipe[Any], cfg: FitConfig, train: Any, parallel: Parallel | None = None) -> None:
        self.cfg, self.parallel = cfg, parallel or Parallel()
        self.step = StepOptions.of(cfg)
        self.model = self.parallel.wrap(self.step.prepare(make_network(recipe, cfg)).to(self.parallel.device))
        self.net: torch.nn.Module = getattr(self.model, "module", self.model)
        self.lr = cfg.lr * lr_scale(cfg, self.parallel.world)
        self.opt = make_optimizer(cfg, self.net.parameters(), self.lr)
        self.schedule = make_schedule(cfg, self.opt)
        self.loss_fn = recipe.loss(cfg, train).to(self.parallel.device)
        self.draw = recipe.sampler(cfg, train, self.parallel.shard)
        self.rng = np.random.default_rng(cfg.seed)
        samples = recipe.epoch_samples(cfg, train)
        self.epoch_samples = self.parallel.shard.count(samples)
        """Samples this rank steps on per epoch (about; the progress bar's total)."""
        self.steps_per_epoch = max(1, math.ceil(samples / (cfg.batch_size * self.parallel.world)))
        self.steps = 0
        """Optimizer steps taken so far (the warm-up's clock)."""

    def warmup(self) -> float:
        """The factor of the scheduled learning rate at this step: rising linearly from
        ``cfg.lr`` to the scaled rate over ``cfg.warmup_epochs`` epochs, then 1."""
        total = self.cfg.warmup_epochs * self.steps_per_epoch
        if total <= 0 or self.steps >= total:
            return 1.0
        start = self.cfg.lr / self.lr
        return start + (1.0 - start) * self.steps / total

    def train_epoch(self, on_step: Callable[[int], None] = lambda k: None) -> tuple[float | None, int]:
        """One epoch of optimizer steps, then one step of the schedule.

        Returns:
            This rank's mean loss (None when no batch ran) and the samples stepped on by
            all ranks.
        """
        self.model.train()
        scheduled = [g["lr"] for g in self.opt.param_groups]
        device, step, losses, n = self.parallel.device, self.step, [], 0
        for x, y in prefetched(self.draw(self.rng), self.cfg.prefetch):
            warm = self.warmup()
            for group, lr in zip(self.opt.param_groups, scheduled):
                group["lr"] = lr * warm
            x, y = x.to(device), y.to(device)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step.bf16):
                logits = self.model(step.input(x))
            loss = self.loss_fn(logits.float(), y)  # the loss in FP32 whatever the forward ran in
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
            n, self.steps = n + len(x), self.steps + 1
            on_step(len(x))
        for group, lr in zip(self.opt.param_groups, scheduled):
            group["lr"] = lr
        self.schedule.step()
        return (float(np.mean(losses)) if losses else None), n * self.parallel.world

    def weights(self) -> list[np.ndarray]:
        """The network's state as arrays (:func:`state_arrays`)."""
        return state_arrays(self.net)

    def set_weights(self, arrays: list[np.ndarray]) -> None:
        """Load arrays in :meth:`weights`' order and shapes (:func:`load_state_arrays`)."""
        load_state_arrays(self.net, arrays)

    def state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (see :meth:`load_state`)."""
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(),
                "schedule": self.schedule.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "steps": self.steps}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`."""
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.steps = int(state["steps"])


def validate(task: Any, net: torch.nn.Module, val: Any, threads: int) -> tuple[dict[str, float], Any]:
    """The task's validation metrics of ``net`` (eval mode, FP32) and the engine that scored them."""
    engine = TorchEngine(net.eval(), "fp32", EngineOptions(threads=threads))
    scores = task.score(engine, val, n_boot=0)
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float))}, engine


def _comparable(score: float) -> float:
    """NaN (e.g. an AUC with no positive case) never beats a real score."""
    return -math.inf if math.isnan(score) else score


class _Budget:
    """``max_minutes`` of wall time, counted from construction plus ``spent_seconds`` (the
    time a resumed run had already used); None: unlimited."""

    def __init__(self, max_minutes: float | None, spent_seconds: float = 0.0) -> None:
        self.start, self.max_minutes = time.perf_counter() - spent_seconds, max_minutes

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
    trainer: Trainer
    art: ModelArtifact
    task: Any
    val: Any

    @property
    def parallel(self) -> Parallel:
        return self.trainer.parallel


def checkpoint_path(cfg: FitConfig) -> Path:
    """Where a run of ``cfg`` keeps its checkpoint."""
    return Path(cfg.out) / "checkpoint.pt"


def _save_checkpoint(run: _Run, epoch: int, seconds: float) -> None:
    path = checkpoint_path(run.cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    record = run.art.spec.training.model_copy(update={"seconds": round(seconds, 1)})
    torch.save({"epoch": epoch, "trainer": run.trainer.state(), "record": record.model_dump(mode="json"),
                "world": run.parallel.world, "batch_size": run.cfg.batch_size}, tmp)
    os.replace(tmp, path)  # a run killed while writing keeps the previous checkpoint


def _resume(run: _Run) -> int:
    """Load the checkpoint when ``cfg.resume`` finds one; the first epoch still to run.

    Raises:
        ArtifactError: the checkpoint is unreadable or was written by a run of another
            number of processes or batch size (its batches would not be the ones drawn).
    """
    cfg, par = run.cfg, run.parallel
    path = checkpoint_path(cfg)
    state = None
    if cfg.resume and par.main and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or foreign file
            raise ArtifactError(path, f"cannot read the checkpoint: {exc}") from exc
    state = par.share(state)
    if state is None:
        return 1
    if (state["world"], state["batch_size"]) != (par.world, cfg.batch_size):
        raise ArtifactError(path, f"written by {state['world']} process(es) of batch {state['batch_size']}; "
                                  f"this run has {par.world} of batch {cfg.batch_size}")
    run.trainer.load_state(state["trainer"])
    rec = TrainingRecord.model_validate(state["record"])
    run.art.spec.training.history, run.art.spec.training.best_epoch = rec.history, rec.best_epoch
    run.art.spec.training.seconds = rec.seconds
    if rec.best_epoch is not None and (run.art.root / "artifact.json").is_file():
        kept = ModelArtifact.load(run.art.root).spec  # what on_best stored with the best weights
        run.art.spec = kept.model_copy(update={"training": run.art.spec.training})
    log.warning("resuming %s after epoch %d", cfg.out, state["epoch"])
    return int(state["epoch"]) + 1


def _epoch(run: _Run, epoch: int, budget: _Budget, on_step: Callable[[int], None]) -> tuple[EpochRecord, bool]:
    """Train (and when due, validate) one epoch; the entry and whether the budget is spent."""
    cfg, rec, par = run.cfg, run.art.spec.training, run.parallel
    t0, lr = time.perf_counter(), run.trainer.opt.param_groups[0]["lr"] * run.trainer.warmup()
    loss, samples = run.trainer.train_epoch(on_step)
    entry = EpochRecord(epoch=epoch, train_loss=loss, lr=lr, samples=samples,
                        train_seconds=round(time.perf_counter() - t0, 3))
    spent = par.agree(budget.spent())  # every rank stops after the same epoch
    validated = spent or epoch % cfg.val_every == 0 or epoch == cfg.epochs
    if validated and par.main:
        entry.metrics, engine = validate(run.task, run.trainer.net, run.val, cfg.threads)
        best = rec.best()
        primary = run.task.primary
        if best is None or _comparable(entry.metrics[primary]) > _comparable(best.metrics[primary]):
            rec.best_epoch = epoch
            run.art.save_weights(run.trainer.net)
            run.recipe.on_best(cfg, run.art, engine, run.val)
    entry.seconds = time.perf_counter() - t0
    rec.history.append(entry)
    if par.main and entry.metrics:
        _save_record(run.art, budget.seconds)
    # A validated epoch that ends past the budget is the last; an unvalidated one cannot
    # be (the budget was checked before its validation was skipped).
    last = spent or (validated and par.agree(budget.spent()))
    if par.main and cfg.checkpoint:
        _save_checkpoint(run, epoch, budget.seconds)
    return entry, last


def _epochs(run: _Run, first: int) -> None:
    cfg = run.cfg
    budget = _Budget(cfg.max_minutes, run.art.spec.training.seconds or 0.0)
    with status_progress(run.parallel.main) as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, completed=first - 1, status="")
        step_task = bar.add_task(f"  {run.recipe.unit}", total=run.trainer.epoch_samples, status="")
        for epoch in range(first, cfg.epochs + 1):
            bar.reset(step_task, total=run.trainer.epoch_samples)
            entry, last = _epoch(run, epoch, budget, lambda k: bar.advance(step_task, k))
            bar.update(ep_task, advance=1, status=_status(entry, run.task.primary, run.art.spec.training))
            if last and epoch < cfg.epochs:
                log.warning("stopping after epoch %d: time budget of %.0f min spent", epoch, cfg.max_minutes)
                break
    run.art.spec.training.seconds = round(budget.seconds, 1)


def fit(recipe: Recipe[Any], cfg: FitConfig, command: str = "", parallel: Parallel | None = None) -> FitResult:
    """Train ``cfg``'s network with ``recipe``; keep the best validated epoch as an artifact.

    Args:
        recipe: the task's pieces (:data:`medinfer.train.recipes.RECIPES`).
        cfg: the validated config of that recipe (e.g. :class:`TrainConfig`).
        command: the command line, recorded in the artifact.
        parallel: this process's rank in a data-parallel run (default: one process).

    Returns:
        The artifact written to ``cfg.out`` (weights of the best epoch; metrics and the
        :class:`~medinfer.artifact.TrainingRecord` in ``artifact.json``); on ranks other
        than 0, the same description, unsaved.

    Raises:
        InputError: the data folder does not hold the recipe's layout.
        MedinferError: an unknown architecture or architecture argument.
        ArtifactError: ``resume`` with a checkpoint of another run.
    """
    par = parallel or Parallel()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    split = site_share(recipe.split(cfg), cfg.site, cfg.sites)
    train, val = load_parts(recipe, cfg, split, par.main)
    trainer = Trainer(recipe, cfg, train, par)
    art = new_artifact(recipe, cfg, split, command)
    art.spec.training.machine = {**cpu_info(), "precision": trainer.step.precision,
                                 "channels_last": trainer.step.channels_last}
    run = _Run(recipe, cfg, trainer, art, task_for(art), val)
    _epochs(run, _resume(run))
    if par.world > 1:
        spread = par.spread(trainer.net)
        art.spec.training.parallel = {**par.record(cfg.batch_size, trainer.lr), "rank_spread": spread}
    if not par.main:
        return FitResult(art)
    _save_record(art, art.spec.training.seconds or 0.0)
    checkpoint_path(cfg).unlink(missing_ok=True)
    par.close()  # stage 2 of a two-stage recipe trains in rank 0 alone
    recipe.finish(cfg, art)
    return FitResult(art)


def run_training(cfg: FitConfig, command: str = "", parallel: Parallel | None = None) -> FitResult:
    """:func:`fit` with the recipe of ``cfg.task``."""
    return fit(recipe_for(cfg), cfg, command, parallel)
