"""torchrun worker of test_partition_distributed.py: runs every case, rank 0 writes the diffs.

    python -m torch.distributed.run --nproc_per_node 4 dist_worker.py OUT.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

# This folder (partition_helpers) and tests/ (shared_data, located through
# MEDINFER_SHARED_DATA, which the launching test sets).
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
from partition_helpers import BRAIN, brain_crop, max_rel_diff, tiny_net  # noqa: E402

from medinfer.partition.distributed import Mesh, distributed_inference, partitioned_train_step  # noqa: E402


def _ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target, reduction="sum")


def inference(kind: str, x: torch.Tensor, mesh: tuple[int, ...]) -> float | None:
    net = tiny_net(kind)
    with torch.no_grad():
        ref = net(x[None])[0]
    out = distributed_inference(net, x, mesh)
    return None if out is None else max_rel_diff(out, ref)


def training(kind: str, x: torch.Tensor, mesh: Mesh) -> tuple[float, float]:
    """(loss diff, max relative gradient diff) of one step against the unpartitioned step.

    ``x`` is the whole batch; with ``mesh.data > 1`` replica ``d`` trains on sample ``d``.
    """
    torch.manual_seed(3)
    target = torch.randint(0, 2, (x.shape[0], *x.shape[2:]))
    net = tiny_net(kind).train()
    ref = copy.deepcopy(net)
    ref_loss = F.cross_entropy(ref(x), target)
    ref_loss.backward()
    d = dist.get_rank() // (dist.get_world_size() // mesh.data)
    per = x.shape[0] // mesh.data
    loss = partitioned_train_step(net, None, x[d * per:(d + 1) * per],
                                  target[d * per:(d + 1) * per], _ce, mesh)
    # relative to the largest gradient anywhere: the biases of convolutions followed by
    # instance norm have zero gradient, up to rounding, so a per-tensor ratio is noise.
    diff = max(float((p.grad - q.grad).abs().max())
               for p, q in zip(net.parameters(), ref.parameters()))
    scale = max(float(q.grad.abs().max()) for q in ref.parameters())
    return abs(loss - float(ref_loss)), diff / scale


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    torch.manual_seed(1)
    x = torch.randn(1, 32, 32, 16)
    res: dict[str, object] = {
        "inference unet-instance 2x2x1": inference("unet-instance", x, (2, 2, 1)),
        "inference unet-batch 4x1x1": inference("unet-batch", x, (4, 1, 1)),
        "inference basicunet 1x2x2": inference("basicunet", torch.randn(1, 32, 32, 32), (1, 2, 2)),
        "inference dynunet 2x1x2": inference("dynunet", x, (2, 1, 2)),
        "train unet-instance 2x2x1": training("unet-instance", x[None], Mesh((2, 2, 1))),
        "train unet-batch 1x2x2": training("unet-batch", x[None], Mesh((1, 2, 2))),
        "train unet-instance data2 x 2x1x1": training(
            "unet-instance", torch.randn(2, 1, 32, 32, 16), Mesh((2, 1, 1), data=2)),
    }
    if BRAIN.is_file():
        res["inference brain unet-instance 2x2x1"] = inference(
            "unet-instance", brain_crop((48, 48, 32)), (2, 2, 1))
        res["train brain unet-instance 2x2x1"] = training(
            "unet-instance", brain_crop((32, 32, 16))[None], Mesh((2, 2, 1)))
    if dist.get_rank() == 0:
        out.write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
