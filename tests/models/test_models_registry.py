"""Model registry: every registered network builds, runs, trains and exports to ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medinfer.errors import MedinferError
from medinfer.models import create_model, get_entry, list_models, register_model
from medinfer.models import registry as registry_mod

SIDE = 32  # divisible by 2**4, enough for the 4-stride U-Nets


def _small_kwargs(name: str) -> dict[str, object]:
    """Shrink a registered network's channel widths so tests stay fast (same depth)."""
    defaults = get_entry(name).defaults
    if "block_config" in defaults:  # DenseNet: same depth, narrow layers
        return {"init_features": 8, "growth_rate": 4}
    channels = defaults.get("channels")
    if channels is None:
        return {}
    return {"channels": tuple(4 * 2**i for i in range(len(channels)))}  # type: ignore[arg-type]


def _small_net(name: str, in_channels: int = 3, out_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=in_channels, out_channels=out_channels, **_small_kwargs(name))


def _out_shape(name: str, x: torch.Tensor) -> tuple[int, ...]:
    """Logits shape for one output channel: per pixel for segmentation, per image otherwise."""
    n = x.shape[0]
    task = get_entry(name).task
    if task == "detection":  # one row per anchor: the class logit and 4 box deltas
        from medinfer.models.detection import AnchorSpec, DetectorGeometry

        return (n, len(DetectorGeometry(AnchorSpec(), x.shape[2:]).anchors), 5)
    return (n, 1, *x.shape[2:]) if task == "segmentation" else (n, 1)


def _input(name: str, batch: int, channels: int = 3) -> torch.Tensor:
    dims = get_entry(name).spatial_dims
    return torch.randn(batch, channels, *([SIDE] * dims), generator=torch.Generator().manual_seed(1))


def test_builtin_models_are_registered() -> None:
    names = list_models()
    assert {"resunet", "unet2d", "test_resunet"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("res*", ["resunet"]), ("unet*", ["unet2d", "unet3d"]),
     ("*unet*", ["dense_unet2d", "dense_unet3d", "resunet", "test_dense_unet3d", "test_resunet",
                 "test_unet3d", "unet2d", "unet3d"]),
     ("test_*", ["test_dense_unet3d", "test_densenet", "test_resunet", "test_unet3d"]), ("*densenet*", ["densenet121", "test_densenet"]),
     ("no_such_model*", [])],
)
def test_list_models_pattern(pattern: str, expected: list[str]) -> None:
    # The registered models by name, sorted: a new model matching a pattern is added here.
    assert list_models(pattern) == expected


def test_unknown_model_raises_medinfer_error() -> None:
    with pytest.raises(MedinferError, match="no_such_net") as info:
        create_model("no_such_net", in_channels=3, out_channels=1)
    assert "resunet" in str(info.value)  # lists what is registered


def test_register_model_defaults_merge_and_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))
    seen: dict[str, object] = {}

    @register_model("tmp_linear", task="segmentation", spatial_dims=2, width=3, bias=True)
    def tmp_linear(*, in_channels: int, out_channels: int, width: int, bias: bool) -> torch.nn.Module:
        seen.update(width=width, bias=bias)
        return torch.nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    assert "tmp_linear" in list_models("tmp_*")
    net = create_model("tmp_linear", in_channels=2, out_channels=5, width=7)
    assert seen == {"width": 7, "bias": True}  # caller overrides one default, keeps the other
    assert net(torch.zeros(1, 2, 4, 4)).shape == (1, 5, 4, 4)
    with pytest.raises(ValueError, match="registered twice"):
        register_model("tmp_linear", task="segmentation", spatial_dims=2)(tmp_linear)


def test_create_model_overrides_channels_in_out() -> None:
    net = create_model("test_resunet", in_channels=1, out_channels=2, channels=(2, 4, 8))
    out = net.eval()(torch.zeros(1, 1, 16, 16))
    assert out.shape == (1, 2, 16, 16)


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_finite_and_gradients_flow(name: str) -> None:
    net = _small_net(name).train()
    x = _input(name, batch=2)
    out = net(x)
    assert out.shape == _out_shape(name, x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert any(p.grad.abs().sum() > 0 for _, p in params)


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_matches_torch(name: str, tmp_path) -> None:
    import onnxruntime as ort

    from medinfer.optimize.export import INPUT_NAME, export_onnx

    net = _small_net(name).eval()
    path = export_onnx(net, _input(name, batch=2), tmp_path / f"{name}.onnx")
    assert path.is_file()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == INPUT_NAME
    x = _input(name, batch=3)  # a batch size other than the example's: the batch axis is dynamic
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    with torch.inference_mode():
        want = net(x).numpy()
    assert got.shape == want.shape == _out_shape(name, x)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_resunet_with_resize_decoder_has_no_transposed_conv_or_prelu() -> None:
    import torch

    from medinfer.models import create_model

    net = create_model("resunet", in_channels=3, out_channels=1, channels=(4, 8, 16), strides=(2, 2),
                       num_res_units=1, act="relu", up="resize").eval()
    kinds = {type(m).__name__ for m in net.modules()}
    assert "ConvTranspose2d" not in kinds and "PReLU" not in kinds and "ReLU" in kinds
    assert net(torch.zeros(2, 3, 32, 48)).shape == (2, 1, 32, 48)
    default = create_model("resunet", in_channels=3, out_channels=1, channels=(4, 8, 16), strides=(2, 2),
                           num_res_units=1)
    assert {"ConvTranspose2d", "PReLU"} <= {type(m).__name__ for m in default.modules()}


def test_resunet_refuses_an_unknown_decoder() -> None:
    import pytest

    from medinfer.models import create_model

    with pytest.raises(ValueError, match="up must be"):
        create_model("resunet", in_channels=3, out_channels=1, up="pixelshuffle")
