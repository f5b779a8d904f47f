"""Data-parallel training: sharding, learning-rate scaling and warm-up, checkpoint and resume,
and torchrun runs of 2 processes (one machine, and two "machines" on loopback) that must
train the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pair_helpers import write_disk_pairs
import torch

from medinfer.artifact import ModelArtifact
from medinfer.errors import ArtifactError, MedinferError
from medinfer.runtime.launch import Launch, free_port
from medinfer.train import TrainConfig, run_training
from medinfer.train.distributed import threads_per_rank
from medinfer.train.fit import Trainer, checkpoint_path, lr_scale
from medinfer.train.recipes import Shard, index_batches



@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 pairs: 16 train, 4 validation, so global batches of 8 are full."""
    return write_disk_pairs(tmp_path_factory.mktemp("pairs"), 20, 0)


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    # No normalization layer: batch norm keeps per-rank statistics, and a bias before
    # instance norm has a zero gradient whose float noise Adam amplifies.
    base: dict = dict(data=data, out=out, architecture="test_resunet", arch_kwargs={"norm": None},
                      epochs=3, batch_size=8, lr=0.01, val_every=3, augment_prob=0.0, threads=1,
                      prefetch=0, lr_scaling="none", preprocessing={"size": (32, 32)})
    return TrainConfig(**{**base, **kw})


def _yaml(cfg: TrainConfig, path: Path) -> Path:
    import yaml

    raw = cfg.model_dump(mode="json", exclude={"preprocessing"})
    raw["preprocessing"] = {"size": list(cfg.preprocessing.size)}
    path.write_text(yaml.safe_dump(raw))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ModelArtifact.load(path).load_network().state_dict()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _train_cli(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(Path(sys.executable).parent / "medinfer"), "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


# --- sharding -------------------------------------------------------------------------


def test_shards_of_a_global_batch_are_the_one_process_batch() -> None:
    one = list(index_batches(20, 8, np.random.default_rng(3)))
    two = [list(index_batches(20, 4, np.random.default_rng(3), Shard(r, 2))) for r in range(2)]
    assert len(two[0]) == len(two[1]) == len(one) == 3  # 8, 8 and the last 4 cut 2 + 2
    for whole, a, b in zip(one, *two):
        assert sorted(whole) == sorted(np.concatenate([a, b]))
        assert not set(a) & set(b)


def test_a_global_batch_too_short_to_share_is_skipped_on_every_rank() -> None:
    counts = [len(list(index_batches(18, 4, np.random.default_rng(0), Shard(r, 2)))) for r in range(2)]
    assert counts == [2, 2]  # 8, 8, then 2 samples = one per rank: skipped by both


def test_rank_generators_differ_and_keep_the_shared_one_in_step() -> None:
    shared = [np.random.default_rng(5) for _ in range(2)]
    mine = [Shard(r, 2).generator(g) for r, g in enumerate(shared)]
    assert mine[0].integers(1 << 30) != mine[1].integers(1 << 30)
    assert shared[0].integers(1 << 30) == shared[1].integers(1 << 30)
    one = np.random.default_rng(5)
    assert Shard().generator(one) is one


def test_learning_rate_scaling_rules(pairs: Path, tmp_path: Path) -> None:
    assert lr_scale(_cfg(pairs, tmp_path, lr_scaling="linear"), 4) == 4.0
    assert lr_scale(_cfg(pairs, tmp_path, lr_scaling="sqrt"), 4) == 2.0
    assert lr_scale(_cfg(pairs, tmp_path, lr_scaling="none"), 4) == 1.0
    assert lr_scale(_cfg(pairs, tmp_path, lr_scaling="linear"), 1) == 1.0


def test_threads_per_rank_never_oversubscribe() -> None:
    cfg = TrainConfig(data=Path("d"), out=Path("o"), threads=2)
    assert threads_per_rank(cfg, Launch(nproc_per_node=2), cores=2) == 1
    assert threads_per_rank(cfg, Launch(nproc_per_node=4), cores=2) == 1
    assert threads_per_rank(cfg, Launch(nproc_per_node=1), cores=8) == 2


def test_launch_settings_are_checked() -> None:
    with pytest.raises(MedinferError, match="rdzv-endpoint"):
        Launch(nproc_per_node=1, nnodes=2)
    with pytest.raises(MedinferError, match="HOST:PORT"):
        Launch(nnodes=2, rdzv_endpoint="localhost")
    assert not Launch().distributed and Launch(nproc_per_node=2).distributed


# --- checkpoint and resume -------------------------------------------------------------


def _interrupt_in_epoch(cfg: TrainConfig, epoch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``cfg`` until it is interrupted (Ctrl-C) at the start of ``epoch``."""
    real, calls = Trainer.train_epoch, []

    def interrupted(self: Trainer, *a: object, **k: object):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == epoch:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg)


def test_resumed_run_trains_the_weights_of_an_uninterrupted_one(pairs: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run_training(_cfg(pairs, tmp_path / "whole", augment_prob=0.5, val_every=1))
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed when the run completes

    cfg = _cfg(pairs, tmp_path / "cut", augment_prob=0.5, val_every=1)
    _interrupt_in_epoch(cfg, 3, monkeypatch)
    assert checkpoint_path(cfg).is_file()
    resumed = run_training(cfg.model_copy(update={"resume": True}))
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert _max_diff(_weights(whole.artifact.root), _weights(resumed.artifact.root)) == 0.0
    assert resumed.metrics == whole.metrics
    assert not checkpoint_path(cfg).exists()


def test_a_checkpoint_of_another_batch_size_is_refused(pairs: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(pairs, tmp_path / "run", epochs=2)
    _interrupt_in_epoch(cfg, 2, monkeypatch)
    with pytest.raises(ArtifactError, match="checkpoint.pt.*batch 8; this run has 1 of batch 4"):
        run_training(cfg.model_copy(update={"resume": True, "batch_size": 4}))


def test_an_unreadable_checkpoint_is_named(pairs: Path, tmp_path: Path) -> None:
    cfg = _cfg(pairs, tmp_path / "run", resume=True)
    checkpoint_path(cfg).parent.mkdir(parents=True)
    checkpoint_path(cfg).write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="checkpoint.pt.*cannot read"):
        run_training(cfg)


# --- torchrun ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_with_the_same_global_batch(pairs: Path, tmp_path: Path) -> None:
    one = run_training(_cfg(pairs, tmp_path / "one"))
    cfg = _yaml(_cfg(pairs, tmp_path / "two", batch_size=4), tmp_path / "two.yaml")
    _wait(_train_cli(["--config", str(cfg), "--nproc-per-node", "2"], tmp_path))
    two = ModelArtifact.load(tmp_path / "two")
    par = two.spec.training.parallel
    assert (par["world"], par["nodes"], par["global_batch"], par["backend"]) == (2, 1, 8, "gloo")
    assert par["rank_spread"] == 0.0  # the ranks hold the same weights
    assert _max_diff(_weights(one.artifact.root), _weights(two.root)) < 1e-5
    # Every step all-reduces every gradient once: 4-byte floats x parameters x 2 steps x 3 epochs.
    n_params = sum(p.numel() for p in two.load_network().parameters())
    assert par["allreduce_bytes"] == 4 * n_params * 2 * 3
    assert [h.samples for h in two.spec.training.history] == [16, 16, 16]
    assert two.spec.metrics["dice"] == pytest.approx(one.metrics["dice"], abs=1e-5)


@pytest.mark.slow
def test_two_machines_on_loopback_scale_the_rate_with_warm_up(pairs: Path, tmp_path: Path) -> None:
    cfg = _yaml(_cfg(pairs, tmp_path / "out", batch_size=4, lr_scaling="linear", warmup_epochs=2),
                tmp_path / "run.yaml")
    args = ["--config", str(cfg), "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "loopback-test"]
    machines = [_train_cli(args, tmp_path), _train_cli(args, tmp_path)]
    for m in machines:
        _wait(m)
    art = ModelArtifact.load(tmp_path / "out")
    par = art.spec.training.parallel
    assert (par["world"], par["nodes"], par["lr"]) == (2, 2, pytest.approx(0.02))
    assert par["rank_spread"] == 0.0
    # Warm-up from lr to 2 x lr over 2 epochs of 2 steps: the epochs start at 0.01, 0.015, 0.02.
    assert [h.lr for h in art.spec.training.history] == pytest.approx([0.01, 0.015, 0.02])


@pytest.mark.slow
def test_a_rank_error_names_the_data_folder(tmp_path: Path) -> None:
    cfg = _yaml(_cfg(tmp_path / "missing", tmp_path / "out"), tmp_path / "bad.yaml")
    proc = _train_cli(["--config", str(cfg), "--nproc-per-node", "2"], tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "missing" in out and "InputError" in out
    assert not (tmp_path / "out" / "artifact.json").exists()
