"""Variant resolution, engine lookup, and engines on tiny hand-built models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact, VariantRecord
from medinfer.data.spec import Preprocessing
from medinfer.errors import BackendUnavailableError, InputError
from medinfer.models import create_model
from medinfer.runtime import BACKENDS, EngineOptions, engine_class, open_engine, resolve_variant, variant_name


def _artifact(root: Path, variants: list[VariantRecord] | None = None, chosen: str | None = None) -> ModelArtifact:
    spec = ArtifactSpec(architecture="test_resunet", in_channels=3, out_channels=1,
                        input=InputSpec(channels=3, spatial=(32, 32)),
                        preprocessing=Preprocessing(size=(32, 32)), variants=variants or [], chosen=chosen)
    art = ModelArtifact(root, spec)
    art.save()
    return art


def _rec(name: str) -> VariantRecord:
    backend, _, precision = name.partition("-")
    return VariantRecord(name=name, backend=backend, precision=precision, path=f"variants/{name}.onnx")


def _scale_onnx(path: Path, factor: float = 2.0) -> Path:
    """A one-node ONNX model ``logits = image * factor`` with a dynamic batch axis."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "k"], ["logits"])], "scale",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- resolve_variant ----------------------------------------------------------------------------

def test_variant_name() -> None:
    assert variant_name("openvino", "int8") == "openvino-int8"
    assert variant_name("onnxruntime", "int8-dynamic") == "onnxruntime-int8-dynamic"


def test_resolve_defaults_to_torch_fp32_without_chosen(tmp_path: Path) -> None:
    art = _artifact(tmp_path, variants=[_rec("onnxruntime-fp32")])
    for backend, precision in [(None, None), ("torch", None), (None, "fp32"), ("torch", "fp32")]:
        v = resolve_variant(art, backend, precision)
        assert (v.name, v.backend, v.precision, v.path) == ("torch-fp32", "torch", "fp32", "")


def test_resolve_uses_chosen_and_explicit_choices(tmp_path: Path) -> None:
    art = _artifact(tmp_path, variants=[_rec("onnxruntime-fp32"), _rec("onnxruntime-int8")],
                    chosen="onnxruntime-int8")
    assert resolve_variant(art, None, None).name == "onnxruntime-int8"
    assert resolve_variant(art, "onnxruntime", "fp32").name == "onnxruntime-fp32"
    assert resolve_variant(art, "onnxruntime", None).name == "onnxruntime-fp32"  # precision defaults to fp32
    assert resolve_variant(art, "torch", "fp32").name == "torch-fp32"  # explicit beats chosen


@pytest.mark.parametrize(("backend", "precision", "word"),
                         [("tensorrt", "fp32", "tensorrt"), ("onnxruntime", "fp16", "fp16"),
                          ("TORCH", None, "TORCH")])
def test_resolve_unknown_backend_or_precision(tmp_path: Path, backend: str, precision: str | None,
                                              word: str) -> None:
    with pytest.raises(BackendUnavailableError, match=word):
        resolve_variant(_artifact(tmp_path), backend, precision)


def test_resolve_not_built_variant_points_to_optimize(tmp_path: Path) -> None:
    art = _artifact(tmp_path, variants=[_rec("onnxruntime-fp32")])
    with pytest.raises(BackendUnavailableError, match="medinfer optimize") as info:
        resolve_variant(art, "openvino", "int8")
    msg = str(info.value)
    assert "openvino-int8" in msg and "onnxruntime-fp32" in msg and str(tmp_path) in msg
    with pytest.raises(BackendUnavailableError, match="medinfer optimize"):
        resolve_variant(_artifact(tmp_path / "empty"), "torch", "int8")


# --- engine_class / open_engine ----------------------------------------------------------------

def test_engine_class_lookup() -> None:
    for backend in BACKENDS:
        assert engine_class(backend).backend == backend
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        engine_class("tensorrt")


def test_open_torch_engine_matches_network(tmp_path: Path) -> None:
    art = _artifact(tmp_path)
    torch.manual_seed(0)
    net = create_model("test_resunet", in_channels=3, out_channels=1).eval()
    art.save_weights(net)
    engine = open_engine(art, resolve_variant(art, None, None), EngineOptions(threads=2))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    out = engine.infer(x)
    assert out.shape == (2, 1, 32, 32) and out.dtype == np.float32
    with torch.inference_mode():
        np.testing.assert_allclose(out, net(torch.from_numpy(x)).numpy(), atol=1e-6)
    many = engine.infer_many([x[:1], x[1:]])
    np.testing.assert_allclose(np.concatenate(many), out, atol=1e-5)
    engine.close()


@pytest.mark.parametrize("content", [b"this is not an onnx model", b""])
def test_onnxruntime_engine_garbage_file_raises_input_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="ONNX Runtime cannot load") as info:
        engine_class("onnxruntime")(bad, "fp32", EngineOptions())
    assert info.value.path == bad


def test_onnxruntime_engine_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        engine_class("onnxruntime")(tmp_path / "nope.onnx", "fp32", EngineOptions())


def test_openvino_engine_garbage_file_raises_input_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.xml"
    bad.write_text("<net><broken")
    with pytest.raises(InputError, match="OpenVINO cannot read") as info:
        engine_class("openvino")(bad, "fp32", EngineOptions())
    assert info.value.path == bad


def test_open_engine_missing_variant_file_raises_input_error(tmp_path: Path) -> None:
    art = _artifact(tmp_path, variants=[_rec("onnxruntime-fp32")])
    with pytest.raises(InputError):
        open_engine(art, resolve_variant(art, "onnxruntime", "fp32"), EngineOptions())


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("in_flight", [1, 3])
def test_engine_infer_and_infer_many_keep_order(tmp_path: Path, backend: str, in_flight: int) -> None:
    path = _scale_onnx(tmp_path / "scale.onnx", 2.0)
    engine = engine_class(backend)(path, "fp32", EngineOptions(threads=1, in_flight=in_flight))
    try:
        batches = [np.full((1 + i % 2, 1, 4, 4), float(i), np.float32) for i in range(7)]
        outs = engine.infer_many(batches)
        assert len(outs) == 7
        for i, (b, o) in enumerate(zip(batches, outs, strict=True)):
            assert o.shape == b.shape, f"request {i}"
            np.testing.assert_array_equal(o, 2.0 * b)
        single = engine.infer(np.ones((3, 1, 4, 4), np.float32))
        np.testing.assert_array_equal(single, np.full((3, 1, 4, 4), 2.0, np.float32))
    finally:
        engine.close()
