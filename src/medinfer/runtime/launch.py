"""Starting and joining torch.distributed jobs: torchrun command lines and process groups.

Every multi-process command (``medinfer partition --mesh``, ``medinfer train
--nproc-per-node``) starts its ranks the same way: this process runs ``python -m
torch.distributed.run`` (torchrun) with a :class:`Launch`, and each rank joins with
:func:`init_distributed` (NCCL with CUDA, else gloo).

One machine: ``Launch(nproc_per_node=4)`` (a standalone rendezvous on a free port).
Several: every machine runs the same command with ``nnodes`` and the same
``rdzv_endpoint`` (``HOST:PORT`` of one of them) and ``rdzv_id``; torchrun's c10d
rendezvous assigns the ranks.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medinfer.errors import MedinferError

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Launch:
    """Where the ranks of a job run.

    Attributes:
        nproc_per_node: ranks started on this machine.
        nnodes: machines taking part (each runs the same command).
        rdzv_endpoint: ``HOST:PORT`` of the rendezvous (needed with ``nnodes > 1``; one
            machine: a free loopback port).
        rdzv_id: the job's name at the rendezvous (the same on every machine).
        max_restarts: times torchrun restarts the ranks after a failure (resume from the
            checkpoint makes a restart continue the run).
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None
    rdzv_id: str = "medinfer"
    max_restarts: int = 0

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1 or self.nnodes < 1:
            raise MedinferError(f"--nproc-per-node and --nnodes must be >= 1, got "
                                f"{self.nproc_per_node} and {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise MedinferError("several machines (--nnodes > 1) need --rdzv-endpoint HOST:PORT, "
                                "the same on every machine")
        if self.rdzv_endpoint and ":" not in self.rdzv_endpoint:
            raise MedinferError(f"--rdzv-endpoint {self.rdzv_endpoint!r}: expected HOST:PORT")

    @property
    def distributed(self) -> bool:
        """Whether this needs torchrun (more than one rank, or a rendezvous to join)."""
        return self.nproc_per_node * self.nnodes > 1 or self.rdzv_endpoint is not None

    def torchrun_args(self) -> list[str]:
        """torchrun's options for this launch."""
        args = ["--nproc_per_node", str(self.nproc_per_node), "--nnodes", str(self.nnodes),
                "--max_restarts", str(self.max_restarts)]
        if self.rdzv_endpoint is None:
            return args + ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
                           "--rdzv_id", self.rdzv_id]
        return args + ["--rdzv_backend", "c10d", "--rdzv_endpoint", self.rdzv_endpoint,
                       "--rdzv_id", self.rdzv_id]


def torchrun_command(launch: Launch, module: str, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run <launch> -m <module> <args>``."""
    return [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_args(), "-m", module, *args]


def run_torchrun(launch: Launch, module: str, args: Sequence[str], capture: bool = True,
                 env: Mapping[str, str] | None = None) -> str:
    """Run the ranks of ``module`` under torchrun and wait for them.

    Args:
        capture: keep the ranks' output (returned) instead of passing it to this terminal.
        env: extra environment variables of the ranks.

    Returns:
        The ranks' captured output ("" when not captured).

    Raises:
        MedinferError: a rank failed; with a captured output, a user error a rank printed
            (``InputError: ...``) becomes the message, otherwise the last lines of the output.
    """
    cmd = torchrun_command(launch, module, args)
    log.info("starting ranks: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=capture, text=True, env={**os.environ, **(env or {})})
    output = (proc.stderr or "") + (proc.stdout or "") if capture else ""
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        for line in tail.splitlines():
            if "InputError" in line or "ArtifactError" in line:
                raise MedinferError(line.split(":", 1)[-1].strip())
        raise MedinferError(f"torchrun failed (exit {proc.returncode})"
                            + (f":\n{tail}" if tail else "; the ranks' messages are above"))
    return output


JOIN_TIMEOUT = datetime.timedelta(hours=2)
"""How long a collective waits for the other ranks (rank 0 validating a whole 3D set while the
others wait must not time out; torch's default is 30 minutes)."""


def init_distributed() -> torch.device:
    """Join the torchrun job if not yet joined (NCCL with CUDA, else gloo); this rank's device."""
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=JOIN_TIMEOUT)
    if cuda and dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")
