"""Federated training on Flower (S10): hospitals train one model; no image leaves a hospital.

``medinfer federated --config FILE --sites 3 --rounds 10`` starts a Flower server and one
client process per hospital on this machine (loopback); in use, the server and each
hospital run ``--role server`` / ``--role client --site K`` on their own machines.

* A client (:class:`HospitalClient`) reads only its hospital's data: site K's share of the
  config's split (:func:`~medinfer.train.recipes.site_share`), or that hospital's own data
  folder. Each round it loads the global weights into its
  :class:`~medinfer.train.fit.Trainer`, trains ``local_epochs`` epochs and sends back the
  weights and its number of training samples; then it scores the new global model on its
  own validation share. Only weights and metrics travel.
* The server (:class:`CheckedFedAvg`) averages the updates weighted by samples (FedAvg,
  McMahan et al. 2017) after checking each one: every array must have the network's
  shape and dtype and be finite; a malformed update is rejected and recorded. A client
  that drops out or misses the round's timeout is a failure; the round averages the others
  as long as ``min_sites`` updates arrive (else the global model stays as it was).
* After the last round the server writes the global model as a normal artifact (the
  record: per round the sites averaged, rejected and lost, the sample-weighted validation
  metrics): ``medinfer evaluate``, ``optimize`` and ``serve`` take it like any other.

The deprecated-in-Flower ``start_server``/``start_client`` gRPC entry points are used:
they need no Flower app packaging (``flwr run``) and run the same on loopback and across
machines.
"""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr loads: nothing is sent out

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.client.app import start_client
from flwr.compat.server.app import start_server
from flwr.server import ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from medinfer.artifact import DataSplit, EpochRecord, ModelArtifact
from medinfer.errors import InputError, MedinferError
from medinfer.progress import status_progress
from medinfer.runtime.launch import free_port
from medinfer.tasks import task_for
from medinfer.train.cli_config import validate as validate_config
from medinfer.train.config import FitConfig
from medinfer.train.fit import (FitResult, Trainer, array_problem, load_parts, load_state_arrays, make_network,
                                 new_artifact, state_arrays, validate)
from medinfer.train.recipes import Recipe, Split, recipe_for, site_share

log = logging.getLogger(__name__)
logging.getLogger("flwr").setLevel(logging.WARNING)  # its per-message INFO lines drown the progress bar


@dataclass(frozen=True)
class FederatedPlan:
    """How the hospitals train together.

    Attributes:
        sites: hospitals taking part.
        rounds: rounds of local training + averaging.
        local_epochs: epochs each hospital trains per round.
        min_sites: updates a round needs to change the global model (None: a majority).
        round_timeout: seconds a round waits for the hospitals (a hospital later than this
            is a failure of that round).
        join_timeout: seconds the first round waits for every hospital to connect.
        tls: PEM files ``(ca, cert, key)``: the server serves gRPC over TLS with ``cert``/``key``;
            the sites need only ``ca`` to check it (None: plain gRPC, for loopback and tests).
    """

    sites: int = 3
    rounds: int = 10
    local_epochs: int = 1
    min_sites: int | None = None
    round_timeout: float = 1800.0
    join_timeout: float = 600.0
    tls: tuple[Path, Path | None, Path | None] | None = None

    def __post_init__(self) -> None:
        if self.sites < 1 or self.rounds < 1 or self.local_epochs < 1:
            raise MedinferError(f"sites, rounds and local epochs must be >= 1, got {self.sites}, "
                                f"{self.rounds}, {self.local_epochs}")
        if self.min_sites is not None and not 1 <= self.min_sites <= self.sites:
            raise MedinferError(f"--min-sites must be between 1 and --sites ({self.sites}), got {self.min_sites}")

    def server_certificates(self) -> tuple[bytes, bytes, bytes] | None:
        """What Flower's server takes for TLS (None: plain gRPC).

        Raises:
            InputError: a file is missing or unreadable (named).
            MedinferError: TLS without the server's certificate and key.
        """
        if self.tls is None:
            return None
        ca, cert, key = self.tls
        if cert is None or key is None:
            raise MedinferError("a TLS server needs --tls-cert and --tls-key besides --tls-ca")
        return _pem(ca), _pem(cert), _pem(key)

    def root_certificate(self) -> bytes | None:
        """The CA a site checks the server's certificate against (None: plain gRPC)."""
        return None if self.tls is None else _pem(self.tls[0])

    @property
    def quorum(self) -> int:
        """Updates a round needs (``min_sites``, else a majority of the sites)."""
        return self.min_sites or self.sites // 2 + 1


def _pem(path: Path) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the certificate: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise InputError(path, "not a PEM file")
    return data


def site_config(cfg: FitConfig, plan: FederatedPlan, site: int | None) -> FitConfig:
    """``cfg`` for hospital ``site`` (None: all the data): its epochs are the whole run's, so
    the learning-rate schedule spans every round."""
    update: dict[str, Any] = {"epochs": plan.rounds * plan.local_epochs, "checkpoint": False}
    if site is not None:
        update |= {"site": site, "sites": plan.sites}
    return cfg.model_copy(update=update)


# --- the hospital --------------------------------------------------------------------------


class HospitalClient(NumPyClient):
    """One hospital: trains on its own data, shares weights and metrics only.

    Args:
        recipe: the task's pieces.
        cfg: the hospital's config (:func:`site_config`).
    """

    def __init__(self, recipe: Recipe[Any], cfg: FitConfig) -> None:
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        split = site_share(recipe.split(cfg), cfg.site, cfg.sites)
        self.train, self.val = load_parts(recipe, cfg, split, show=False)
        self.n_train, self.n_val = len(split.train), len(split.val)
        self.trainer = Trainer(recipe, cfg, self.train)
        self.task = task_for(new_artifact(recipe, cfg, split, ""))

    def get_parameters(self, config: dict[str, Scalar]) -> list[np.ndarray]:
        return self.trainer.weights()

    def fit(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        self.trainer.set_weights(parameters)
        losses = []
        for _ in range(int(config.get("local_epochs", 1))):
            loss, _ = self.trainer.train_epoch()
            if loss is not None:
                losses.append(loss)
        site = -1 if self.cfg.site is None else self.cfg.site
        return self.trainer.weights(), self.n_train, {"site": site, "loss": float(np.mean(losses)) if losses else float("nan")}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Scalar]) -> tuple[float, int, dict[str, Scalar]]:
        self.trainer.set_weights(parameters)
        metrics, _ = validate(self.task, self.trainer.net, self.val, self.cfg.threads)
        primary = metrics.get(self.task.primary, float("nan"))
        return 1.0 - primary, self.n_val, {k: v for k, v in metrics.items() if k != "n"}


def run_client(cfg: FitConfig, plan: FederatedPlan, site: int, server: str,
               client: NumPyClient | None = None) -> None:
    """Hospital ``site``: connect to ``server`` (retrying while it starts) and train until it
    ends the run (``client``: another client in its place, e.g. a test's)."""
    client = client or HospitalClient(recipe_for(cfg), site_config(cfg, plan, site))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        root = plan.root_certificate()
        start_client(server_address=server, client=client.to_client(), insecure=root is None,
                     root_certificates=root, max_wait_time=plan.join_timeout)


# --- the server ----------------------------------------------------------------------------


def _weighted(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Sample-weighted mean of every numeric metric the clients sent."""
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, int] = defaultdict(int)
    for n, m in metrics:
        for k, v in m.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                sums[k] += n * float(v)
                weights[k] += n
    return {k: sums[k] / weights[k] for k in sums if weights[k]}


@dataclass
class RoundLog:
    """What happened in one round (the artifact's record keeps it)."""

    round: int
    averaged: list[int] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    lost: int = 0
    samples: int = 0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class CheckedFedAvg(FedAvg):
    """FedAvg over the updates that fit the network; records every round.

    Args:
        initial: the global model's starting weights.
        plan: sites, rounds, local epochs, quorum.
        on_round: called with each finished round's log (progress).
    """

    def __init__(self, initial: list[np.ndarray], plan: FederatedPlan,
                 on_round: Callable[[RoundLog], None] = lambda r: None) -> None:
        super().__init__(
            fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=plan.quorum,
            min_evaluate_clients=plan.quorum, min_available_clients=plan.quorum, accept_failures=True,
            initial_parameters=ndarrays_to_parameters(initial),
            on_fit_config_fn=lambda r: {"round": r, "local_epochs": plan.local_epochs},
            evaluate_metrics_aggregation_fn=_weighted)
        self.plan, self.on_round = plan, on_round
        self.shapes, self.dtypes = [a.shape for a in initial], [a.dtype for a in initial]
        self.latest = initial
        self.rounds: dict[int, RoundLog] = {}
        self._started = time.perf_counter()

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # type: ignore[no-untyped-def]
        if server_round == 1 and not client_manager.wait_for(self.plan.sites, int(self.plan.join_timeout)):
            log.warning("only %d of %d sites connected; starting with them", client_manager.num_available(),
                        self.plan.sites)
        self._started = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        entry = self.rounds.setdefault(server_round, RoundLog(server_round))
        entry.lost = len(failures)
        good = []
        for proxy, res in results:
            site = int(res.metrics.get("site", -1))
            try:
                problem = array_problem(parameters_to_ndarrays(res.parameters), self.shapes, self.dtypes)
            except Exception as exc:  # bytes that are not arrays at all
                problem = f"unreadable: {exc}"
            if problem:
                entry.rejected.append(f"site {site}: {problem}")
                log.warning("round %d: update of site %d rejected: %s", server_round, site, problem)
            else:
                good.append((proxy, res))
                entry.averaged.append(site)
        entry.samples = sum(r.num_examples for _, r in good)
        entry.loss = _weighted([(r.num_examples, {"loss": r.metrics.get("loss", float("nan"))})
                                for _, r in good]).get("loss")
        if len(good) < self.plan.quorum:
            log.warning("round %d: %d usable update(s), %d needed: the global model is unchanged",
                        server_round, len(good), self.plan.quorum)
            return None, {}
        params, metrics = super().aggregate_fit(server_round, good, [])
        if params is not None:
            self.latest = parameters_to_ndarrays(params)
        return params, metrics

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]):  # type: ignore[no-untyped-def]
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        entry = self.rounds.setdefault(server_round, RoundLog(server_round))
        entry.metrics = {k: float(v) for k, v in metrics.items()}
        entry.seconds = round(time.perf_counter() - self._started, 2)
        self.on_round(entry)
        return loss, metrics


def _record(art: ModelArtifact, strategy: CheckedFedAvg, plan: FederatedPlan, seconds: float) -> None:
    rec = art.spec.training
    rec.history = [EpochRecord(epoch=r.round, train_loss=r.loss, samples=r.samples, metrics=r.metrics,
                               seconds=r.seconds) for r in sorted(strategy.rounds.values(), key=lambda r: r.round)]
    rec.epochs_run, rec.seconds = len(rec.history), round(seconds, 1)
    rec.best_epoch = rec.history[-1].epoch if rec.history else None  # the last round's model
    rec.n_train = max((r.samples for r in strategy.rounds.values()), default=0)
    rec.n_val = rec.n_test = None
    rec.split = None  # each hospital keeps its own split
    rec.federated = {"sites": plan.sites, "rounds": plan.rounds, "local_epochs": plan.local_epochs,
                     "quorum": plan.quorum, "strategy": "FedAvg (sample-weighted), updates checked",
                     "per_round": [{"round": r.round, "averaged": r.averaged, "rejected": r.rejected,
                                    "lost": r.lost} for r in sorted(strategy.rounds.values(), key=lambda r: r.round)]}
    art.spec.metrics = dict(rec.history[-1].metrics) if rec.history else {}


def run_server(cfg: FitConfig, plan: FederatedPlan, address: str, command: str = "") -> FitResult:
    """Coordinate ``plan.rounds`` rounds on ``address`` (``HOST:PORT``) and write the global
    model to ``cfg.out``.

    Raises:
        MedinferError: no round produced a model (no hospital sent a usable update).
    """
    recipe = recipe_for(cfg)
    cfg = site_config(cfg, plan, None)
    certificates = plan.server_certificates()  # a bad certificate fails before anything starts
    torch.manual_seed(cfg.seed)
    net = make_network(recipe, cfg)
    initial = state_arrays(net)
    t0 = time.perf_counter()
    with status_progress() as bar:
        task = bar.add_task("rounds", total=plan.rounds, status="waiting for the sites")

        def shown(r: RoundLog) -> None:
            text = f"{len(r.averaged)} site(s) averaged"
            text += f", {len(r.rejected)} rejected" if r.rejected else ""
            text += f", {r.lost} lost" if r.lost else ""
            text += "".join(f" {k} {v:.4f}" for k, v in r.metrics.items() if "/" not in k)[:80]
            bar.update(task, advance=1, status=text)

        strategy = CheckedFedAvg(initial, plan, shown)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            start_server(server_address=address, strategy=strategy, certificates=certificates,
                         config=ServerConfig(num_rounds=plan.rounds, round_timeout=plan.round_timeout))
    if not any(r.averaged for r in strategy.rounds.values()):
        raise MedinferError("federated run ended without a usable update from any site; no model written")
    load_state_arrays(net, strategy.latest)
    art = new_artifact(recipe, cfg, Split([], [], [], DataSplit()), command)
    _record(art, strategy, plan, time.perf_counter() - t0)
    art.save_weights(net)
    art.save()
    return FitResult(art)


# --- loopback: server and hospitals on this machine ----------------------------------------


def client_command(config: Path, plan: FederatedPlan, site: int, server: str) -> list[str]:
    """The command line of hospital ``site``'s process (``config``: the config as JSON)."""
    cmd = [sys.executable, "-m", "medinfer.train.federated", str(config), "--site", str(site),
           "--sites", str(plan.sites), "--rounds", str(plan.rounds), "--local-epochs",
           str(plan.local_epochs), "--server", server]
    return cmd + (["--tls-ca", str(plan.tls[0])] if plan.tls else [])


def run_federated(cfg: FitConfig, plan: FederatedPlan, command: str = "") -> FitResult:
    """The server in this process and one client process per site, on loopback.

    Raises:
        MedinferError: no usable update arrived.
    """
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": str(cfg.threads)}
    with tempfile.TemporaryDirectory(prefix="medinfer-federated-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(cfg.model_dump_json())
        logs = [Path(tmp) / f"site{site}.log" for site in range(plan.sites)]
        clients = []
        for site, out in enumerate(logs):
            with out.open("w") as sink:  # a file, not a pipe: Flower's logging never blocks a site
                clients.append(subprocess.Popen(client_command(path, plan, site, address), env=env,
                                                stdout=sink, stderr=subprocess.STDOUT))
        try:
            result = run_server(cfg, plan, address, command)
        finally:
            for site, proc in enumerate(clients):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.returncode != 0:
                    tail = logs[site].read_text(errors="replace").strip()[-800:]
                    log.warning("site %d exited with %s: %s", site, proc.returncode, tail)
    return result


def main(argv: list[str] | None = None) -> int:
    """One hospital's process: ``python -m medinfer.train.federated CONFIG.json --site K ...``."""
    p = argparse.ArgumentParser(prog="medinfer.train.federated")
    p.add_argument("config", type=Path, help="The validated training config, as JSON.")
    p.add_argument("--site", type=int, required=True)
    p.add_argument("--sites", type=int, required=True)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--server", required=True, help="HOST:PORT of the Flower server.")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA of the server's certificate (TLS).")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = validate_config(json.loads(a.config.read_text()), a.config)
        plan = FederatedPlan(sites=a.sites, rounds=a.rounds, local_epochs=a.local_epochs,
                             tls=(a.tls_ca, None, None) if a.tls_ca else None)
        run_client(cfg, plan, a.site, a.server)
    except MedinferError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
