"""Multi-label classification training (CheXNet recipe), best epoch by validation mean AUC."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.transforms import RandAffine

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.labels import NIH_FINDINGS, LabeledArrays, load_labeled, read_labels, split_by_patient
from medinfer.metrics import classification_scores
from medinfer.models.registry import create_model
from medinfer.train.config import ClassifyConfig
from medinfer.train.loop import _progress

log = logging.getLogger(__name__)


@dataclass
class ClassifyEpoch:
    epoch: int
    train_loss: float
    val_mean_auc: float
    val_abnormal_auc: float
    lr: float
    seconds: float


@dataclass
class ClassifyResult:
    artifact: ModelArtifact
    history: list[ClassifyEpoch] = field(default_factory=list)
    best_epoch: int = -1


def predict_probs(net: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities (N, K) of an eval-mode network on (N, C, H, W) inputs."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(torch.sigmoid(net(torch.from_numpy(images[i:i + batch_size]))).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _pos_weight(labels: np.ndarray, cap: float) -> torch.Tensor:
    """Negatives/positives per class, capped: rare findings weigh more, without exploding."""
    pos = labels.sum(axis=0)
    w = (len(labels) - pos) / np.maximum(pos, 1.0)
    return torch.as_tensor(np.clip(w, 1.0, cap), dtype=torch.float32)


def _augment(aug: RandAffine, x: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(aug(im))) for im in x]).float()


def _train_epoch(net, opt, loss_fn, aug, data: LabeledArrays, cfg: ClassifyConfig, rng, on_step) -> float:
    net.train()
    order = rng.permutation(len(data))
    losses = []
    for i in range(0, len(order), cfg.batch_size):
        idx = order[i:i + cfg.batch_size]
        if len(idx) < 2:  # batch norm needs more than one sample
            continue
        loss = loss_fn(net(_augment(aug, data.images[idx])), torch.from_numpy(data.labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        on_step(len(idx))
    return float(np.mean(losses)) if losses else float("nan")


def train_classification(cfg: ClassifyConfig, command: str = "") -> ClassifyResult:
    """Train a multi-label classifier on a labeled folder; save the best epoch as an artifact.

    The artifact records the class names, the patient split and, per class, the decision
    threshold that maximizes Youden's J on the validation part.
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    classes = cfg.classes or NIH_FINDINGS
    records = read_labels(cfg.data, classes)
    if cfg.limit:
        records = sorted(records, key=lambda r: r.name)[: cfg.limit]
    train_r, val_r, test_r = split_by_patient(records, cfg.split, cfg.seed)
    with _progress() as bar:
        task = bar.add_task("loading", total=len(train_r) + len(val_r), status="")
        train = load_labeled(train_r, cfg.preprocessing, classes, lambda k: bar.advance(task, k))
        val = load_labeled(val_r, cfg.preprocessing, classes, lambda k: bar.advance(task, k))
    net = create_model(cfg.architecture, in_channels=cfg.preprocessing.channels,
                       out_channels=len(classes), **cfg.arch_kwargs)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=_pos_weight(train.labels, cfg.pos_weight_max))
    aug = RandAffine(prob=cfg.augment_prob, rotate_range=(0.12,), scale_range=(0.1, 0.1),
                     translate_range=(0.06 * cfg.preprocessing.size[0],) * 2, padding_mode="border")
    aug.set_random_state(cfg.seed)
    spec = ArtifactSpec(
        task="classification", architecture=cfg.architecture, arch_kwargs=dict(cfg.arch_kwargs),
        in_channels=cfg.preprocessing.channels, out_channels=len(classes),
        input=InputSpec(channels=cfg.preprocessing.channels, spatial=cfg.preprocessing.size),
        preprocessing=cfg.preprocessing, classes=list(classes),
        training={"command": command, "config": json.loads(cfg.model_dump_json()),
                  "data": str(cfg.data), "n_train": len(train_r), "n_val": len(val_r), "n_test": len(test_r),
                  "split_patients": {k: sorted({r.patient for r in g}, key=int_or_str)
                                     for k, g in zip(("train", "val", "test"), (train_r, val_r, test_r))}},
    )
    result = ClassifyResult(ModelArtifact(cfg.out, spec))
    start, best = time.perf_counter(), -1.0
    with _progress() as bar:
        ep_task = bar.add_task("epochs", total=cfg.epochs, status="")
        step_task = bar.add_task("  images", total=len(train), status="")
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            bar.reset(step_task, total=len(train))
            loss = _train_epoch(net, opt, loss_fn, aug, train, cfg, rng, lambda k: bar.advance(step_task, k))
            probs = predict_probs(net, val.images)
            s = classification_scores(probs, val.labels, classes, val.abnormal, n_boot=0)
            abn = s.abnormal_auc.auc if s.abnormal_auc else float("nan")
            result.history.append(ClassifyEpoch(epoch, loss, s.mean_auc.auc, abn,
                                                opt.param_groups[0]["lr"], time.perf_counter() - t0))
            sched.step()
            if s.mean_auc.auc > best:
                best, result.best_epoch = s.mean_auc.auc, epoch
                result.artifact.save_weights(net)
                result.artifact.spec.thresholds = youden_thresholds(probs, val.labels, classes)
            _record(result, time.perf_counter() - start)
            bar.update(ep_task, advance=1, status=f"loss {loss:.3f} val mean AUC {s.mean_auc.auc:.4f} "
                                                  f"(best {best:.4f} @ {result.best_epoch})")
            if cfg.max_minutes and (time.perf_counter() - start) / 60 > cfg.max_minutes:
                log.warning("stopping after epoch %d: time budget of %.0f min spent", epoch, cfg.max_minutes)
                break
    return result


def int_or_str(value: str) -> tuple[int, str]:
    """Sort key putting numeric patient ids in numeric order."""
    return (int(value), "") if value.isdigit() else (1 << 62, value)


def youden_thresholds(probs: np.ndarray, labels: np.ndarray, classes) -> dict[str, float]:
    """Per class, the probability cut maximizing sensitivity + specificity - 1 (0.5 if undefined)."""
    out = {}
    for k, c in enumerate(classes):
        y = labels[:, k] > 0.5
        if y.all() or not y.any():
            out[c] = 0.5
            continue
        cuts = np.unique(probs[:, k])
        j = [(probs[y, k] >= t).mean() + (probs[~y, k] < t).mean() - 1 for t in cuts]
        out[c] = float(cuts[int(np.argmax(j))])
    return out


def _record(result: ClassifyResult, seconds: float) -> None:
    art = result.artifact
    best = result.history[result.best_epoch - 1]
    art.spec.metrics = {"mean_auc": best.val_mean_auc, "abnormal_auc": best.val_abnormal_auc,
                        "n": float(art.spec.training["n_val"])}
    art.spec.training.update({
        "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "seconds": round(seconds, 1), "torch": torch.__version__,
        "history": [vars(h) for h in result.history],
    })
    art.save()
