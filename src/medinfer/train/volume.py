"""3D segmentation training: random windows (foreground-biased) from whole volumes, Dice + CE.

Validation runs the whole held-out volumes through the same sliding window the
deployed model uses, so the recorded Dice is the deployment Dice.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from pydantic import BaseModel, ConfigDict, Field

from medinfer.apps.volume import score_volumes
from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.spec import Preprocessing
from medinfer.data.volumes import VolumeSet, find_volume_pairs, load_volumes
from medinfer.models.registry import create_model
from medinfer.runtime import EngineOptions
from medinfer.runtime.torch_engine import TorchEngine
from medinfer.train.loop import _progress

log = logging.getLogger(__name__)


class VolumeTrainConfig(BaseModel):
    """A 3D segmentation training run. ``val_names``: volume names held out (by patient)."""

    model_config = ConfigDict(frozen=True)

    data: Path
    out: Path
    architecture: str = "unet3d"
    arch_kwargs: dict[str, object] = Field(default_factory=dict)
    val_prefixes: tuple[str, ...] = ("PGBM-001",)
    segment: str = "tumour"
    epochs: int = 60
    windows_per_volume: int = 32
    batch_size: int = 4
    foreground_prob: float = 0.8
    val_every: int = 3
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    max_minutes: float | None = None
    preprocessing: Preprocessing = Preprocessing(
        size=(64, 64, 16), scale=1.0, mean=(0.0,), std=(1.0,), channels=1, intensity="zscore", overlap=0.25)


def sample_windows(data: VolumeSet, size: tuple[int, ...], n: int, fg_prob: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows (image (n, C, *size), mask (n, 1, *size)) from random volumes.

    With probability ``fg_prob`` a window is centred on a random foreground voxel (tumours
    are a small fraction of a brain), else anywhere; windows are clipped to the volume.
    """
    xs, ys = [], []
    for _ in range(n):
        v = int(rng.integers(len(data)))
        image, mask = data.images[v], data.masks[v]
        shape = np.array(mask.shape)
        if rng.random() < fg_prob and mask.any():
            fg = np.argwhere(mask)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = np.array([rng.integers(s) for s in shape])
        lo = np.clip(centre - np.array(size) // 2, 0, np.maximum(shape - size, 0))
        sl = tuple(slice(int(a), int(a) + s) for a, s in zip(lo, size))
        xs.append(_pad_to(image[(slice(None), *sl)], size))
        ys.append(_pad_to(mask[sl][None].astype(np.float32), size))
    return np.stack(xs), np.stack(ys)


def _pad_to(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    pad = [(0, 0)] + [(0, max(s - d, 0)) for d, s in zip(x.shape[1:], size)]
    return np.pad(x, pad) if any(p[1] for p in pad) else x


def train_volume_segmentation(cfg: VolumeTrainConfig, command: str = "") -> ModelArtifact:
    """Train a 3D segmentation network; keep the epoch with the best held-out Dice."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pairs = find_volume_pairs(cfg.data)
    val_pairs = [p for p in pairs if p.name.startswith(cfg.val_prefixes)]
    train_pairs = [p for p in pairs if p not in val_pairs]
    spec_pre = cfg.preprocessing
    train, val = load_volumes(train_pairs, spec_pre), load_volumes(val_pairs, spec_pre)
    net = create_model(cfg.architecture, in_channels=spec_pre.channels, out_channels=1, **cfg.arch_kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = DiceCELoss(sigmoid=True)
    art = ModelArtifact(cfg.out, ArtifactSpec(
        task="segmentation", architecture=cfg.architecture, arch_kwargs=dict(cfg.arch_kwargs),
        in_channels=spec_pre.channels, out_channels=1,
        input=InputSpec(channels=spec_pre.channels, spatial=spec_pre.size), preprocessing=spec_pre,
        segments={1: cfg.segment},
        training={"command": command, "config": json.loads(cfg.model_dump_json()), "data": str(cfg.data),
                  "train": [p.name for p in train_pairs], "val": [p.name for p in val_pairs],
                  "n_train": len(train_pairs), "n_val": len(val_pairs)}))
    history, best, start = [], -1.0, time.perf_counter()
    n_windows = cfg.windows_per_volume * len(train)
    with _progress() as bar:
        task = bar.add_task("epochs", total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            t0, losses = time.perf_counter(), []
            net.train()
            for _ in range(0, n_windows, cfg.batch_size):
                x, y = sample_windows(train, spec_pre.size, cfg.batch_size, cfg.foreground_prob, rng)
                loss = loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            sched.step()
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                            "seconds": time.perf_counter() - t0})
            last = epoch == cfg.epochs or bool(cfg.max_minutes and (time.perf_counter() - start) / 60 > cfg.max_minutes)
            if epoch % cfg.val_every and not last:
                bar.update(task, advance=1, status=f"loss {np.mean(losses):.3f} (best Dice {best:.4f})")
                continue
            net.eval()
            scores = score_volumes(TorchEngine(net, "fp32", EngineOptions(threads=cfg.threads)), val, spec_pre)
            history[-1].update(val_dice=scores["dice"], val_iou=scores["iou"], seconds=time.perf_counter() - t0)
            if scores["dice"] > best:
                best = scores["dice"]
                art.save_weights(net)
                art.spec.metrics = scores
                art.spec.training["best_epoch"] = epoch
            art.spec.training.update({"epochs_run": epoch, "history": history, "torch": torch.__version__,
                                      "seconds": round(time.perf_counter() - start, 1)})
            art.save()
            bar.update(task, advance=1, status=f"loss {np.mean(losses):.3f} val Dice {scores['dice']:.4f} "
                                               f"(best {best:.4f})")
            if last and epoch < cfg.epochs:
                log.warning("stopping after epoch %d: time budget of %.0f min spent", epoch, cfg.max_minutes)
                break
    return art
