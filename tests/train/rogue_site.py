"""A hospital that misbehaves, for the federated tests: ``python rogue_site.py CONFIG.json
--site K --sites N --server HOST:PORT --kind malformed|dropout``.

``malformed`` sends an update whose arrays are not the network's; ``dropout`` exits in the
middle of its first round's training."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from flwr.client import NumPyClient

from medinfer.train.cli_config import validate
from medinfer.train.federated import FederatedPlan, run_client


class Rogue(NumPyClient):
    def __init__(self, kind: str, site: int) -> None:
        self.kind, self.site = kind, site

    def get_parameters(self, config):  # type: ignore[no-untyped-def]
        return []

    def fit(self, parameters, config):  # type: ignore[no-untyped-def]
        if self.kind == "dropout":
            os._exit(3)
        return [np.zeros((3, 3), np.float32)], 1000, {"site": self.site, "loss": 0.0}

    def evaluate(self, parameters, config):  # type: ignore[no-untyped-def]
        return 1.0, 1, {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config", type=Path)
    p.add_argument("--site", type=int, required=True)
    p.add_argument("--sites", type=int, required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--kind", choices=("malformed", "dropout"), required=True)
    a = p.parse_args()
    cfg = validate(json.loads(a.config.read_text()), a.config)
    run_client(cfg, FederatedPlan(sites=a.sites), a.site, a.server, client=Rogue(a.kind, a.site))


if __name__ == "__main__":
    main()
