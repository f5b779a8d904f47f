"""The detection task (S6): post-processing outside the graph, crops, training augmentation,
the gate, and exported FP32 networks giving PyTorch's boxes one to one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

from medinfer.artifact import ModelArtifact, VariantRecord
from medinfer.errors import InputError
from medinfer.io import Image, read_dicom_series
from medinfer.metrics import SliceDetections, boxes_agree
from medinfer.models import create_model
from medinfer.models.detection import AnchorSpec, DetectorGeometry
from medinfer.optimize.pipeline import build_variants
from medinfer.runtime import EngineOptions
from medinfer.tasks import Detection, GateLimits, StagedEngine, task_for
from medinfer.tasks.detection import SCORE, crop_boxes
from medinfer.train.detect import augment, paste_lesions
from medinfer.variants import get_kind

sys.path.insert(0, str(Path(__file__).parents[1]))
from detection_helpers import synthetic_data, train_tiny_detector  # noqa: E402


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelArtifact, Path]:
    root = tmp_path_factory.mktemp("detection")
    data = synthetic_data(root / "data")
    return train_tiny_detector(data, root / "model"), data


def test_network_output_is_ordered_as_monai_reshapes_the_heads() -> None:
    net = create_model("retinanet2d", in_channels=3, out_channels=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        flat = net(x)
        maps = net.retinanet(x)
    loss_side = RetinaNetDetector(net.retinanet, net.anchor_spec.generator())
    cls = loss_side._reshape_maps(maps["classification"])
    box = loss_side._reshape_maps(maps["box_regression"])
    assert torch.equal(flat[..., :1], cls)
    assert torch.equal(flat[..., 1:], box)
    assert flat.shape[1] == len(DetectorGeometry(net.anchor_spec, (64, 64)).anchors)


def test_decoding_returns_the_anchor_that_fires() -> None:
    geometry = DetectorGeometry(AnchorSpec(), (64, 64), score_thresh=0.5)
    output = torch.zeros(len(geometry.anchors), 5)
    output[:, 0] = -10.0
    output[7, 0] = 3.0  # one confident anchor, zero deltas: its box unchanged
    boxes, scores = geometry.decode(output)
    assert len(boxes) == 1
    expected = geometry.anchors[7].clamp(0, 64)
    assert torch.allclose(boxes[0], expected)
    assert scores[0] == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-5)


def test_crop_takes_the_box_region_with_context() -> None:
    x = torch.zeros(1, 40, 40)
    x[0, 10:20, 20:30] = 1.0  # rows 10-20, columns 20-30
    crop = crop_boxes(x, torch.tensor([[10.0, 20.0, 20.0, 30.0]]), size=10, context=1.0)
    assert crop.shape == (1, 1, 10, 10)
    assert crop[0, 0, 1:-1, 1:-1].min() > 0.99
    wide = crop_boxes(x, torch.tensor([[10.0, 20.0, 20.0, 30.0]]), size=20, context=2.0)
    assert wide[0, 0, 0, 0] < 0.01 and wide[0, 0, 10, 10] > 0.99  # context around, lesion in the middle


def test_augmentation_moves_boxes_with_the_pixels() -> None:
    rng = np.random.default_rng(3)
    images = np.zeros((8, 3, 64, 64), np.float32)
    images[:, :, 10:22, 30:50] = 1.0
    boxes = [np.array([[10.0, 30.0, 22.0, 50.0]], np.float32)] * 8
    x, target = augment(images, boxes, rng)
    for i in range(8):
        kept = target[i][target[i, :, 4] >= 0]
        assert len(kept) == 1
        a0, b0, a1, b1 = (int(round(float(v))) for v in kept[0, :4])
        inside = x[i, 1, a0 + 2:a1 - 2, b0 + 2:b1 - 2].mean()
        assert inside > 0.85  # the bright box is where its box says (whatever the flips)


def test_pasted_lesion_lands_in_lung_with_its_box() -> None:
    from medinfer.tasks.detection import DetectionSet

    donor = np.full((1, 3, 64, 64), 0.1, np.float32)  # lung everywhere
    donor[0, :, 5:15, 5:15] = 0.9
    data = DetectionSet(donor, [np.zeros((0, 4))], [(1.0, 1.0)], ["d#0"], ["p"])
    images = np.full((1, 3, 64, 64), 0.1, np.float32)
    out = paste_lesions(images, [np.zeros((0, 4), np.float32)], data,
                        [np.array([[5.0, 5.0, 15.0, 15.0]], np.float32)], np.random.default_rng(0), prob=1.0)
    assert len(out[0]) == 1
    a0, b0, a1, b1 = out[0][0].astype(int)
    assert images[0, 1, a0 + 4, b0 + 4] > 0.8  # the lesion's centre, unfeathered


def test_gate_checks_ap_and_sensitivity(detector: tuple[ModelArtifact, Path]) -> None:
    task = task_for(detector[0])
    ref = {"ap@0.1": 0.8, "sensitivity@2fp": 0.9}
    assert task.gate(ref, {"ap@0.1": 0.795, "sensitivity@2fp": 0.9}, GateLimits(0.01)) == ""
    assert "ap@0.1 drop" in task.gate(ref, {"ap@0.1": 0.78, "sensitivity@2fp": 0.9}, GateLimits(0.01))
    assert "sensitivity@2fp" in task.gate(ref, {"ap@0.1": 0.8, "sensitivity@2fp": 0.85}, GateLimits(0.01))


def test_a_multichannel_volume_is_refused(detector: tuple[ModelArtifact, Path]) -> None:
    task = task_for(detector[0])
    image = Image(np.zeros((2, 8, 8, 4), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3), source=Path("x.nii"))
    with pytest.raises(InputError, match="x.nii"):
        task.check_image(image)


def test_metrics_carry_the_contract_keys(detector: tuple[ModelArtifact, Path]) -> None:
    art, data = detector
    task = task_for(art)
    assert isinstance(task, Detection)
    val = task.load_eval(data / "P3")
    engine, _ = task.open_engine(None, None, EngineOptions())
    scores = task.score(engine, val, n_boot=20)
    for key in ("sensitivity@1fp", "sensitivity@2fp", "sensitivity@4fp", "ap@0.1", "n"):
        assert key in scores
    assert scores["n"] == len(val) == 6
    assert set(scores["intervals"]) >= {"ap@0.1", "sensitivity@2fp"}


def test_exported_fp32_networks_give_pytorchs_boxes(detector: tuple[ModelArtifact, Path]) -> None:
    art, data = detector
    task = task_for(art)
    calib = task.load_calib(data / "P1")
    build_variants(art, calib, lambda s: None)
    for part, part_calib in task.parts(calib):
        build_variants(part, part_calib, lambda s: None)
    image = read_dicom_series(next((data / "P3").iterdir()))
    x = task.prepare(image)
    results = {}
    for name in ("torch-fp32", "onnxruntime-fp32", "openvino-fp32"):
        engine = task.open_variant(VariantRecord.of(get_kind(name)), EngineOptions())
        assert isinstance(engine, StagedEngine) and engine.classifier is not None
        results[name] = task.split_rows(task.infer(engine, x), len(x))
        engine.close()
    ref = results["torch-fp32"]
    assert sum(len(r) for r in ref) > 0
    for name in ("onnxruntime-fp32", "openvino-fp32"):
        for k, (a, b) in enumerate(zip(ref, results[name])):
            reason = boxes_agree(SliceDetections(a[:, 1:5], a[:, SCORE]), SliceDetections(b[:, 1:5], b[:, SCORE]))
            assert reason == "", f"{name} slice {k}: {reason}"


def test_selection_outside_the_graph_is_monais() -> None:
    from monai.apps.detection.utils.box_coder import BoxCoder
    from monai.apps.detection.utils.box_selector import BoxSelector

    geometry = DetectorGeometry(AnchorSpec(), (64, 64), score_thresh=0.05, nms_thresh=0.3, topk=100, detections=20)
    monai_way = BoxSelector(score_thresh=0.05, topk_candidates_per_level=100, nms_thresh=0.3,
                            detections_per_img=20, apply_sigmoid=True)
    torch.manual_seed(0)
    for _ in range(10):
        output = torch.randn(len(geometry.anchors), 5) * 2 - 2
        boxes, scores = geometry.decode(output)
        decoded = BoxCoder(weights=(1.0,) * 4).decode_single(output[:, 1:], geometry.anchors)
        ref_boxes, ref_scores, _ = monai_way.select_boxes_per_image([decoded], [output[:, :1]], (64, 64))
        assert len(boxes) > 1 and torch.equal(boxes, ref_boxes)
        assert torch.allclose(scores, ref_scores, atol=1e-6)


def test_only_confident_boxes_reach_the_reader(detector: tuple[ModelArtifact, Path]) -> None:
    from medinfer.tasks import Prediction

    task = task_for(detector[0])
    task.settings = task.settings.model_copy(update={"report_score": 0.5})
    found = [{"slice": 0, "box": [1.0, 1.0, 9.0, 9.0], "score": 0.9},
             {"slice": 0, "box": [20.0, 20.0, 30.0, 30.0], "score": 0.2}]
    pred = Prediction("detection", extra={"detections": found})
    assert [f.score for f in task.findings(pred)] == [0.9]  # the SR's regions


@pytest.mark.parametrize("size", [(8, 8), (6, 6), (16, 16)])  # exactly half, any size, none
def test_2p5d_inputs_are_windowed_neighbours_resized_like_monai(size: tuple[int, int]) -> None:
    from medinfer.data.preprocess import prepare_slices, resize_image
    from medinfer.data.spec import Preprocessing

    rng = np.random.default_rng(0)
    volume = rng.uniform(-1500, 1500, (16, 16, 5)).astype(np.float32)  # rows, cols, slices
    spec = Preprocessing(size=size, scale=1 / 1400, mean=(-1000 / 1400,) * 3, std=(1.0,) * 3, channels=3,
                         window=(-1000.0, 400.0))
    x = prepare_slices(volume, spec)
    assert x.shape == (5, 3, *size) and x.dtype == np.float32
    planes = (np.clip(np.moveaxis(volume, -1, 0), -1000, 400) + 1000) / 1400
    expected = resize_image(planes, size) if size != (16, 16) else planes
    assert np.allclose(x[:, 1], expected, atol=1e-6)  # the slice itself in the middle channel
    assert np.allclose(x[2, 0], expected[1], atol=1e-6) and np.allclose(x[2, 2], expected[3], atol=1e-6)
    assert np.allclose(x[0, 0], expected[0], atol=1e-6) and np.allclose(x[4, 2], expected[4], atol=1e-6)
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6  # windowed to [-1000, 400] HU
