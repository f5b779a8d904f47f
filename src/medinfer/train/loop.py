"""Segmentation training loop: paper recipe, per-epoch validation, best checkpoint as artifact."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss, DiceLoss
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medinfer.data.augment import augment_batch, paper_augmentation
from medinfer.apps.segmentation import predict_arrays
from medinfer.data.pairs import PairArrays, find_pairs, load_pairs, split_pairs
from medinfer.metrics import dice_iou_per_image, summarize
from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.models.registry import create_model, get_entry
from medinfer.runtime import EngineOptions
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_dice: float
    val_iou: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    artifact: ModelArtifact
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = -1


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"))


def predict_masks(net: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Eval-mode masks (N, H, W) bool for normalized images (N, C, H, W), through the torch Engine."""
    engine = TorchEngine(net, "fp32", EngineOptions(threads=torch.get_num_threads()))
    return predict_arrays(engine, images, batch_size)


def _make_loss(name: str) -> torch.nn.Module:
    if name == "dice":
        return DiceLoss(sigmoid=True)
    if name == "dicece":
        return DiceCELoss(sigmoid=True)
    raise ValueError(f"unknown loss {name!r}; use 'dice' or 'dicece'")


def _train_epoch(net, opt, loss_fn, aug, data: PairArrays, cfg: TrainConfig, rng, on_step) -> float:
    net.train()
    order = rng.permutation(len(data))
    losses = []
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        if len(idx) < 2:  # batch norm needs more than one sample
            continue
        x, y = augment_batch(aug, data.images[idx], data.masks[idx])
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        on_step(len(idx))
    return float(np.mean(losses)) if losses else float("nan")


def _new_artifact(cfg: TrainConfig, n_train: int, n_val: int, command: str) -> ModelArtifact:
    entry = get_entry(cfg.architecture)
    spec = ArtifactSpec(
        task=entry.task, architecture=cfg.architecture, arch_kwargs=dict(cfg.arch_kwargs),
        in_channels=cfg.preprocessing.channels, out_channels=1,
        input=InputSpec(channels=cfg.preprocessing.channels, spatial=cfg.preprocessing.size),
        preprocessing=cfg.preprocessing,
        training={"command": command, "config": json.loads(cfg.model_dump_json()),
                  "n_train": n_train, "n_val": n_val, "data": str(cfg.data)},
    )
    return ModelArtifact(cfg.out, spec)


def train_segmentation(cfg: TrainConfig, command: str = "") -> TrainResult:
    """Train a binary segmentation network on a Kvasir-layout folder.

    Writes the best epoch (by validation Dice) to ``cfg.out`` as a model artifact after
    every improvement, so an interrupted run still leaves a usable model.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pairs = find_pairs(cfg.data)
    if cfg.limit:
        pairs = sorted(pairs, key=lambda p: p.name)[: cfg.limit]
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    with _progress() as bar:
        task = bar.add_task("loading", total=len(pairs), status="")
        train = load_pairs(train_pairs, cfg.preprocessing, lambda k: bar.advance(task, k))
        val = load_pairs(val_pairs, cfg.preprocessing, lambda k: bar.advance(task, k))
    net = create_model(cfg.architecture, in_channels=cfg.preprocessing.channels, out_channels=1,
                       **cfg.arch_kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    loss_fn, aug = _make_loss(cfg.loss), paper_augmentation(cfg.augment_prob, seed=cfg.seed)
    art = _new_artifact(cfg, len(train), len(val), command)
    result = TrainResult(art)
    start, best = time.perf_counter(), -1.0
    with _progress() as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, status="")
        step_task = bar.add_task("  images", total=len(train), status="")
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            bar.reset(step_task, total=len(train))
            loss = _train_epoch(net, opt, loss_fn, aug, train, cfg, rng,
                                lambda k: bar.advance(step_task, k))
            scores = summarize(*dice_iou_per_image(predict_masks(net, val.images), val.masks))
            rec = EpochRecord(epoch, loss, scores.dice, scores.iou, opt.param_groups[0]["lr"],
                              time.perf_counter() - t0)
            result.history.append(rec)
            sched.step()
            if scores.dice > best:
                best, result.best_epoch = scores.dice, epoch
                art.save_weights(net)
            _record(art, result, time.perf_counter() - start)
            bar.update(ep_task, advance=1, status=f"loss {loss:.3f} val Dice {scores.dice:.4f} "
                                                  f"(best {best:.4f} @ {result.best_epoch})")
            if cfg.max_minutes and (time.perf_counter() - start) / 60 > cfg.max_minutes:
                log.warning("stopping after epoch %d: time budget of %.0f min spent", epoch, cfg.max_minutes)
                break
    return result


def _record(art: ModelArtifact, result: TrainResult, seconds: float) -> None:
    """Write metrics, training record and learning curve into the artifact."""
    best = result.history[result.best_epoch - 1]
    art.spec.metrics = {"dice": best.val_dice, "iou": best.val_iou, "n": float(art.spec.training["n_val"])}
    art.spec.training.update({
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "seconds": round(seconds, 1), "torch": torch.__version__,
        "history": [vars(h) for h in result.history],
    })
    art.save()
