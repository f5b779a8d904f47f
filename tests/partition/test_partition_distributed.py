"""Distributed inference and training over 4 gloo ranks equal the unpartitioned results.

One torchrun job (4 processes on a free port) runs every case (dist_worker.py); the
tests read its report.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import shared_data

TOL = 1e-4
WORKER = Path(__file__).with_name("dist_worker.py")
pytestmark = pytest.mark.slow  # one torchrun job of 4 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "report.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               shared_data.ENV_VAR: str(shared_data.SHARED_DATA)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["inference unet-instance 2x2x1", "inference unet-batch 4x1x1",
                                  "inference basicunet 1x2x2", "inference dynunet 2x1x2"])
def test_distributed_inference_equals_whole_volume(report: dict, case: str) -> None:
    assert report[case] is not None and report[case] < TOL


@pytest.mark.parametrize("case", ["train unet-instance 2x2x1", "train unet-batch 1x2x2",
                                  "train unet-instance data2 x 2x1x1"])
def test_partitioned_training_step_has_unpartitioned_gradients(report: dict, case: str) -> None:
    loss_diff, grad_diff = report[case]
    assert loss_diff < 1e-5 and grad_diff < TOL


@pytest.mark.usefixtures("brain")  # skipped (failed under CI=true) without the shipped volume
def test_shipped_brain_volume_distributed(report: dict) -> None:
    assert report["inference brain unet-instance 2x2x1"] < TOL
    loss_diff, grad_diff = report["train brain unet-instance 2x2x1"]
    assert loss_diff < 1e-5 and grad_diff < TOL
