"""Federated training on Flower: site shares, the update check, a 3-site run whose artifact
evaluates like any other, and rounds that survive a malformed update and a site dropping out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pair_helpers import write_disk_pairs
from tls_helpers import make_certs

from medinfer.apps.evaluate import evaluate_folder
from medinfer.artifact import ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.runtime.launch import free_port
from medinfer.train import TrainConfig
from medinfer.train.federated import (
    FederatedPlan,
    client_command,
    run_federated,
    run_server,
    site_config,
)
from medinfer.train.fit import array_problem
from medinfer.train.recipes import recipe_for, site_share

ROGUE = Path(__file__).with_name("rogue_site.py")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 pairs (32x32) with a bright disk and its mask."""
    return write_disk_pairs(tmp_path_factory.mktemp("pairs"), 24, 2)


def _cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict = dict(data=data, out=out, architecture="test_resunet", batch_size=4, lr=0.01,
                      augment_prob=0.0, threads=1, prefetch=0, preprocessing={"size": (32, 32)})
    return TrainConfig(**{**base, **kw})


def test_sites_share_the_data_without_overlap(pairs: Path, tmp_path: Path) -> None:
    cfg = _cfg(pairs, tmp_path)
    split = recipe_for(cfg).split(cfg)
    shares = [site_share(split, k, 3) for k in range(3)]
    names = [[p.name for p in s.train] for s in shares]
    assert sorted(sum(names, [])) == sorted(p.name for p in split.train)
    assert all(len(n) >= len(split.train) // 3 for n in names)
    assert not set(names[0]) & set(names[1])
    assert shares[1].record.train == names[1]  # the record names the site's own cases
    assert site_share(split, None, 3) is split


def test_site_config_spans_every_round_and_checks_the_site(pairs: Path, tmp_path: Path) -> None:
    plan = FederatedPlan(sites=3, rounds=4, local_epochs=2)
    cfg = site_config(_cfg(pairs, tmp_path), plan, 2)
    assert (cfg.epochs, cfg.site, cfg.sites) == (8, 2, 3)
    with pytest.raises(ValueError, match="site 3 of 3"):
        _cfg(pairs, tmp_path, site=3, sites=3)
    assert FederatedPlan(sites=3).quorum == 2 and FederatedPlan(sites=4, min_sites=1).quorum == 1
    with pytest.raises(MedinferError, match="min-sites"):
        FederatedPlan(sites=2, min_sites=3)


def test_a_bad_certificate_is_named_before_anything_starts(pairs: Path, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    plan = FederatedPlan(tls=(tmp_path / "ca.pem", tmp_path / "missing.pem", tmp_path / "key.pem"))
    with pytest.raises(InputError, match="ca.pem.*not a PEM"):
        run_server(_cfg(pairs, tmp_path / "out"), plan, "127.0.0.1:1")
    with pytest.raises(MedinferError, match="tls-cert and --tls-key"):
        FederatedPlan(tls=(tmp_path / "ca.pem", None, None)).server_certificates()
    assert not (tmp_path / "out").exists()


def test_update_check_names_what_does_not_fit() -> None:
    shapes, dtypes = [(2, 3), (4,)], [np.dtype(np.float32)] * 2
    good = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)]
    assert array_problem(good, shapes, dtypes) is None
    assert "1 arrays" in array_problem(good[:1], shapes, dtypes)
    assert "shape (3, 2)" in array_problem([np.zeros((3, 2), np.float32), good[1]], shapes, dtypes)
    assert "dtype float64" in array_problem([good[0], np.ones(4)], shapes, dtypes)
    assert array_problem([good[0], np.ones(4)], shapes) is None  # the dtype is cast when loaded
    assert "not finite" in array_problem([good[0], np.array([1, np.nan, 0, 0], np.float32)], shapes, dtypes)


@pytest.mark.slow
def test_three_sites_train_over_tls_a_model_that_evaluates_like_any_other(pairs: Path, tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls = (certs / "ca.pem", certs / "server.pem", certs / "server.key")
    result = run_federated(_cfg(pairs, tmp_path / "fed"), FederatedPlan(sites=3, rounds=2, tls=tls))
    art = ModelArtifact.load(tmp_path / "fed")
    fed = art.spec.training.federated
    assert [sorted(r["averaged"]) for r in fed["per_round"]] == [[0, 1, 2], [0, 1, 2]]
    assert [h.epoch for h in art.spec.training.history] == [1, 2]
    assert 0.0 <= result.metrics["dice"] <= 1.0
    scores = evaluate_folder(art, pairs)
    assert 0.0 <= scores["dice"] <= 1.0 and scores["n"] == 24
    assert not (art.root / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_malformed_update_and_a_dropped_site_do_not_break_the_rounds(pairs: Path, tmp_path: Path) -> None:
    cfg = _cfg(pairs, tmp_path / "fed")
    plan = FederatedPlan(sites=4, rounds=2, min_sites=2, round_timeout=120, join_timeout=120)
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    server = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    rogue = [sys.executable, str(ROGUE), str(config), "--sites", "4", "--server", server]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cmd in (client_command(config, plan, 0, server), client_command(config, plan, 1, server),
                         rogue + ["--site", "2", "--kind", "malformed"], rogue + ["--site", "3", "--kind", "dropout"])]
    try:
        run_server(cfg, plan, server)
    finally:
        codes = [p.wait(timeout=120) for p in procs]
    assert codes[3] == 3  # the dropped site exited mid-round
    rounds = ModelArtifact.load(tmp_path / "fed").spec.training.federated["per_round"]
    assert sorted(rounds[0]["averaged"]) == [0, 1]
    assert rounds[0]["lost"] == 1
    assert len(rounds[0]["rejected"]) == 1 and "site 2: 1 arrays" in rounds[0]["rejected"][0]
    assert sorted(rounds[1]["averaged"]) == [0, 1] and rounds[1]["lost"] == 0
    net = ModelArtifact.load(tmp_path / "fed").load_network()
    assert all(np.isfinite(p.detach().numpy()).all() for p in net.parameters())


def test_federated_command_checks_its_role(pairs: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medinfer.cli import app

    config = tmp_path / "fed.yaml"
    config.write_text(f"task: segmentation\ndata: {pairs}\nout: {tmp_path / 'out'}\narchitecture: test_resunet\n")
    runner = CliRunner()
    res = runner.invoke(app, ["federated", "--config", str(config), "--role", "client"])
    assert res.exit_code == 2 and "--site" in res.output
    res = runner.invoke(app, ["federated", "--config", str(config), "--role", "hospital"])
    assert res.exit_code == 2 and "all, server or client" in res.output
    res = runner.invoke(app, ["federated", "--config", str(config), "--sites", "2", "--min-sites", "3"])
    assert res.exit_code == 2 and "min-sites" in res.output
    assert not (tmp_path / "out").exists()
