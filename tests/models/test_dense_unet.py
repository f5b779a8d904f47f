"""Dense U-Net (``dense_unet2d`` / ``dense_unet3d``): shapes, gradients, size, export, INT8-friendly layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinfer.models import create_model, get_entry
from medinfer.models.dense_unet import DenseBlock, DenseUNet

SMALL = {"channels": (4, 8, 16), "growth_rate": 4, "layers": 2}  # total stride 4


def _net(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=2, out_channels=3, **{**SMALL, **kwargs})


@pytest.mark.parametrize(
    ("name", "spatial"),
    [("dense_unet2d", (16, 24)), ("dense_unet2d", (4, 8)), ("dense_unet3d", (8, 12, 16)),
     ("dense_unet3d", (4, 4, 4)), ("test_dense_unet3d", (12, 8, 4))],
)
def test_output_keeps_spatial_size(name: str, spatial: tuple[int, ...]) -> None:
    net = _net(name).eval()
    with torch.inference_mode():
        out = net(torch.randn(2, 2, *spatial))
    assert out.shape == (2, 3, *spatial)
    assert torch.isfinite(out).all()


def test_default_depth_needs_sides_divisible_by_8() -> None:
    net = create_model("dense_unet3d", in_channels=1, out_channels=3).eval()
    assert net.stride == 8
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 8, 16, 24)).shape == (1, 3, 8, 16, 24)
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 1, 12, 16, 24))  # 12 is not a multiple of 8: skip shapes differ


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_gradients_flow_to_every_parameter(norm: str) -> None:
    net = _net("dense_unet3d", norm=norm).train()
    net(torch.randn(2, 2, 8, 8, 8)).square().mean().backward()
    params = list(net.named_parameters())
    assert params
    assert not [n for n, p in params if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert all(p.grad.abs().sum() > 0 for n, p in params if n.endswith("conv.weight"))


def test_dense_block_concatenates_every_layer() -> None:
    block = DenseBlock(2, in_channels=5, growth_rate=3, layers=4)
    x = torch.randn(1, 5, 6, 6)
    y = block.eval()(x)
    assert block.out_channels == y.shape[1] == 5 + 4 * 3
    torch.testing.assert_close(y[:, :5], x)  # the block's input passes through unchanged
    widths = [layer.conv.in_channels for layer in block.layers]
    assert widths == [5, 8, 11, 14]  # layer j sees the input and the j maps before it


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [("dense_unet3d", 0.5e6, 2.0e6), ("dense_unet2d", 0.15e6, 0.8e6),
     ("test_dense_unet3d", 1e3, 5e4)],
)
def test_default_parameter_count_is_sane(name: str, low: float, high: float) -> None:
    net = create_model(name, in_channels=1, out_channels=3)
    n = sum(p.numel() for p in net.parameters())
    assert low < n < high, n


def test_registry_defaults_and_overrides() -> None:
    entry = get_entry("dense_unet3d")
    assert (entry.task, entry.spatial_dims) == ("segmentation", 3)
    assert get_entry("dense_unet2d").spatial_dims == 2
    assert entry.defaults["channels"] == (16, 32, 64, 128)
    net = create_model("dense_unet3d", in_channels=1, out_channels=2, channels=(8, 16),
                       growth_rate=6, layers=1, norm="instance", upsample="linear")
    assert isinstance(net, DenseUNet) and net.stride == 2
    assert any(isinstance(m, torch.nn.InstanceNorm3d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    up = [m for m in net.modules() if isinstance(m, torch.nn.Upsample)]
    assert [(m.mode, m.align_corners) for m in up] == [("trilinear", False)]
    assert net.eval()(torch.zeros(1, 1, 6, 4, 2)).shape == (1, 2, 6, 4, 2)


@pytest.mark.parametrize("kwargs", [{"channels": (8,)}, {"upsample": "transpose"}])
def test_bad_arguments_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _net("dense_unet2d", **kwargs)


@pytest.mark.parametrize("name", ["dense_unet2d", "dense_unet3d"])
def test_only_int8_friendly_layers(name: str) -> None:
    # OpenVINO/NNCF leave transposed convolutions and PReLU in float: none here.
    kinds = {type(m).__name__ for m in create_model(name, in_channels=1, out_channels=1).modules()}
    assert not {k for k in kinds if "ConvTranspose" in k or k == "PReLU"}
    assert {"ReLU", "Upsample"} <= kinds
    assert any(k.startswith("MaxPool") for k in kinds)
    assert any(k.startswith("BatchNorm") for k in kinds)


def test_partition_geometry_is_exact_tileable() -> None:
    from medinfer.partition import network_geometry

    g = network_geometry(create_model("dense_unet3d", in_channels=1, out_channels=3).eval(),
                         1, (16, 16, 16))
    assert g.align == (8, 8, 8)
    assert g.global_stats == ()  # eval-mode batch norm only


@pytest.mark.parametrize(("name", "spatial"), [("dense_unet2d", (16, 8)), ("dense_unet3d", (8, 8, 4))])
def test_onnx_export_matches_torch(name: str, spatial: tuple[int, ...], tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from medinfer.optimize.export import INPUT_NAME, export_onnx

    net = _net(name).eval()
    path = export_onnx(net, torch.randn(2, 2, *spatial), tmp_path / f"{name}.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ConvTranspose" not in ops and "PRelu" not in ops
    assert "BatchNormalization" not in ops  # folded into the convolutions
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 2, *spatial)
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        want = net(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
