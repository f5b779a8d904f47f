"""M-CNN (multi-scale) and its single-scale baseline: shapes, the scales the branches see,
parameter counts and the ONNX round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinfer.models import create_model, get_entry
from medinfer.models.mcnn import MultiScaleCNN


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("name", "kwargs", "side"), [
    ("mcnn", {"scales": 1, "width": 4}, 24),
    ("mcnn", {"scales": 3, "width": 4}, 32),
    ("mcnn", {"scales": 4, "width": 4}, 48),
    ("scnn", {"width": 4}, 32),
])
def test_output_is_one_logit_per_class(name: str, kwargs: dict[str, int], side: int) -> None:
    net = create_model(name, in_channels=3, out_channels=5, **kwargs).eval()
    out = net(torch.randn(2, 3, side, side))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_registered_as_2d_classifiers() -> None:
    for name in ("mcnn", "scnn"):
        entry = get_entry(name)
        assert (entry.task, entry.spatial_dims) == ("classification", 2)
    assert get_entry("mcnn").defaults == {"scales": 3, "width": 32}


def test_branches_read_the_input_at_halving_resolutions() -> None:
    net = create_model("mcnn", in_channels=3, out_channels=2, scales=4, width=4).eval()
    assert isinstance(net, MultiScaleCNN) and len(net.branches) == 4
    seen: list[tuple[int, ...]] = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[2:])))
             for b in net.branches]
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 48))
    for h in hooks:
        h.remove()
    assert seen == [(64, 48), (32, 24), (16, 12), (8, 6)]
    # each branch: three convolutions; the head's input concatenates the four branches
    assert all(sum(isinstance(m, torch.nn.Conv2d) for m in b.modules()) == 3 for b in net.branches)
    assert net.head.conv.conv.in_channels == 4 * 4


def test_default_parameter_counts_are_within_a_fifth() -> None:
    m = _params(create_model("mcnn", in_channels=3, out_channels=6))
    s = _params(create_model("scnn", in_channels=3, out_channels=6))
    assert 100_000 < m < 130_000
    assert abs(s - m) / m < 0.05  # the brief allows 20 %; the default widths give about 1 %
    # more scales means more branches, hence more parameters
    assert _params(create_model("mcnn", in_channels=3, out_channels=6, scales=4)) > m


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="scales"):
        create_model("mcnn", in_channels=3, out_channels=2, scales=0)
    with pytest.raises(ValueError, match="width"):
        create_model("scnn", in_channels=3, out_channels=2, width=0)


@pytest.mark.parametrize(("name", "kwargs"), [("mcnn", {"scales": 3, "width": 8}), ("scnn", {"width": 8})])
def test_onnx_round_trip_matches_eager(name: str, kwargs: dict[str, int], tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from medinfer.optimize.export import INPUT_NAME, export_onnx

    torch.manual_seed(0)
    net = create_model(name, in_channels=3, out_channels=6, **kwargs)
    net.train()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is checked
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32) * 2 + 0.5)
    net.eval()
    path = export_onnx(net, torch.zeros(2, 3, 32, 32), tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        want = net(x).numpy()
    assert got.shape == (5, 6)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and ("Concat" in ops) == (name == "mcnn")  # the branches merge by concatenation
    assert not ops & {"If", "Loop"}  # static graph: nothing depends on the input's values
