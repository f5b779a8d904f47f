"""ModelArtifact: save/load round trip and clear ArtifactErrors for broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medinfer.artifact import SPEC_FILE, ArtifactSpec, InputSpec, ModelArtifact, VariantRecord
from medinfer.data.spec import Preprocessing
from medinfer.errors import ArtifactError, InputError
from medinfer.models import create_model


def _spec(**overrides: object) -> ArtifactSpec:
    base: dict[str, object] = dict(
        architecture="test_resunet", in_channels=3, out_channels=1,
        input=InputSpec(channels=3, spatial=(32, 32)), preprocessing=Preprocessing(size=(32, 32)),
    )
    base.update(overrides)
    return ArtifactSpec(**base)


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_resunet", in_channels=3, out_channels=1)


@pytest.fixture
def saved(tmp_path: Path) -> ModelArtifact:
    art = ModelArtifact(tmp_path / "art", _spec())
    art.save_weights(_net())
    art.save()
    return art


def test_spec_roundtrip_preserves_everything(tmp_path: Path) -> None:
    spec = _spec(
        arch_kwargs={"channels": [4, 8, 16]}, metrics={"dice": 0.8, "iou": 0.7, "n": 10.0},
        training={"epochs_run": 3, "history": [{"epoch": 1}]},
        variants=[VariantRecord(name="onnxruntime-fp32", backend="onnxruntime", precision="fp32",
                                path="variants/model.onnx", metrics={"dice": 0.8}, passed=True,
                                latency_ms=1.5, size_mb=0.1, ops={"float": {"Conv": 3}})],
        chosen="onnxruntime-fp32",
    )
    art = ModelArtifact(tmp_path / "a", spec)
    art.save()
    assert json.loads((tmp_path / "a" / SPEC_FILE).read_text())["architecture"] == "test_resunet"
    loaded = ModelArtifact.load(tmp_path / "a")
    assert loaded.spec == spec
    assert loaded.spec.input.spatial == (32, 32)
    assert loaded.spec.preprocessing.size == (32, 32)
    assert loaded.variant("onnxruntime-fp32").latency_ms == 1.5


def test_weights_roundtrip_same_outputs(saved: ModelArtifact) -> None:
    loaded = ModelArtifact.load(saved.root)
    net = loaded.load_network()
    assert not net.training  # eval mode
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(net(x), _net().eval()(x), rtol=0, atol=0)
        # a differently initialized network gives other outputs: the weights really were loaded
        assert not torch.equal(net(x), _net(seed=1).eval()(x))


def test_example_input_shape(saved: ModelArtifact) -> None:
    x = saved.example_input(4)
    assert x.shape == (4, 3, 32, 32)
    assert x.dtype == torch.float32


def test_load_folder_without_spec_names_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not_an_artifact"
    folder.mkdir()
    with pytest.raises(ArtifactError, match=SPEC_FILE) as info:
        ModelArtifact.load(folder)
    assert info.value.path == folder
    assert str(folder) in str(info.value)
    assert isinstance(info.value, InputError)


def test_load_missing_folder_raises_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError):
        ModelArtifact.load(tmp_path / "does_not_exist")


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2, 3]", '{"architecture": "test_resunet"}',
                                  '{"architecture": "x", "in_channels": "three", "out_channels": 1}'])
def test_load_corrupt_spec_raises_artifact_error(saved: ModelArtifact, text: str) -> None:
    (saved.root / SPEC_FILE).write_text(text)
    with pytest.raises(ArtifactError, match="invalid artifact description") as info:
        ModelArtifact.load(saved.root)
    assert info.value.path == saved.root / SPEC_FILE


def test_load_non_utf8_spec_raises_artifact_error(saved: ModelArtifact) -> None:
    (saved.root / SPEC_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError):
        ModelArtifact.load(saved.root)


def test_missing_weights_raises_artifact_error(saved: ModelArtifact) -> None:
    saved.weights_path.unlink()
    with pytest.raises(ArtifactError, match="missing") as info:
        ModelArtifact.load(saved.root).load_network()
    assert info.value.path == saved.weights_path


def test_weights_of_other_architecture_raise_artifact_error(saved: ModelArtifact) -> None:
    torch.save(create_model("test_resunet", in_channels=3, out_channels=1, channels=(2, 4, 8)).state_dict(),
               saved.weights_path)
    with pytest.raises(ArtifactError, match="cannot load weights"):
        saved.load_network()


def test_truncated_weights_raise_artifact_error(saved: ModelArtifact) -> None:
    data = saved.weights_path.read_bytes()
    saved.weights_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        saved.load_network()


def test_garbage_weights_raise_artifact_error(saved: ModelArtifact) -> None:
    saved.weights_path.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ArtifactError):
        saved.load_network()


def test_variant_lookup_and_upsert(tmp_path: Path) -> None:
    art = ModelArtifact(tmp_path, _spec())
    with pytest.raises(ArtifactError, match="medinfer optimize"):
        art.variant("openvino-int8")
    art.upsert_variant(VariantRecord(name="openvino-int8", backend="openvino", precision="int8",
                                     path="variants/model_int8.xml", latency_ms=2.0))
    art.upsert_variant(VariantRecord(name="onnxruntime-fp32", backend="onnxruntime", precision="fp32",
                                     path="variants/model.onnx"))
    art.upsert_variant(VariantRecord(name="openvino-int8", backend="openvino", precision="int8",
                                     path="variants/model_int8.xml", latency_ms=1.0))
    assert sorted(v.name for v in art.spec.variants) == ["onnxruntime-fp32", "openvino-int8"]
    assert art.variant("openvino-int8").latency_ms == 1.0  # replaced, not duplicated
    with pytest.raises(ArtifactError, match="onnxruntime-fp32"):  # lists what is available
        art.variant("torch-int8")


def test_keep_variants_removes_files_and_records(tmp_path: Path) -> None:
    from medinfer.artifact import VariantRecord

    art = ModelArtifact(tmp_path / "k", _spec())
    art.save()
    (art.root / "variants").mkdir()
    for name in ("a.onnx", "b.xml", "b.bin"):
        (art.root / "variants" / name).write_text("x")
    art.upsert_variant(VariantRecord(name="onnxruntime-fp32", backend="onnxruntime", precision="fp32",
                                     path="variants/a.onnx"))
    art.upsert_variant(VariantRecord(name="openvino-int8", backend="openvino", precision="int8",
                                     path="variants/b.xml"))
    art.spec.chosen = "onnxruntime-fp32"
    assert art.keep_variants({"openvino-int8"}) == ["onnxruntime-fp32"]
    assert sorted(p.name for p in (art.root / "variants").iterdir()) == ["b.bin", "b.xml"]
    loaded = ModelArtifact.load(art.root)
    assert [v.name for v in loaded.spec.variants] == ["openvino-int8"] and loaded.spec.chosen is None
