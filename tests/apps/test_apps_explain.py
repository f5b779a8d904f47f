"""Explanations (S11): Captum heat-maps, feature-space neighbours, `medinfer explain`, false positives.

A tiny classification artifact (random ``test_densenet`` weights, 32x32 input) and a synthetic
labeled folder (16 PNGs of 40x40, 8 patients) stand in for the chest X-ray model and data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from typer.testing import CliRunner

from medinfer.report.attribution import Explainer, lrp_ready
from medinfer.apps.explain import explain_files
from medinfer.report.explainer import find_false_positives, select_findings
from medinfer.report.neighbours import FeatureIndex, penultimate_features, training_records
from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.cli import app
from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.models import create_model
from medinfer.report.explain import false_positive_report

runner = CliRunner()
CLASSES = ["Atelectasis", "Effusion", "Mass"]
TRAIN_PATIENTS = ["1", "2", "3", "4", "5"]


@pytest.fixture(scope="module")
def labeled_dir(tmp_path_factory) -> Path:
    """16 images of 8 patients; findings drawn from ``CLASSES`` (some with none)."""
    root = tmp_path_factory.mktemp("cxr")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "abnormal", "findings", "patient_id"])
        for i in range(16):
            name = f"{i:08d}_000.png"
            PILImage.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "images" / name)
            found = [c for c in CLASSES if rng.random() < 0.35]
            w.writerow([name, int(bool(found)), "|".join(found) or "No Finding", str(i // 2 + 1)])
    return root


def make_artifact(root: Path, data: Path | None, thresholds: dict[str, float], seed: int = 0) -> ModelArtifact:
    """A ``test_densenet`` artifact (random weights, 32x32 input) recording ``data`` as its training folder."""
    training: dict[str, object] = {}
    if data is not None:
        training = {"data": str(data), "split_patients": {"train": TRAIN_PATIENTS, "val": [], "test": ["6", "7", "8"]}}
    spec = ArtifactSpec(
        task="classification", architecture="test_densenet", in_channels=3, out_channels=len(CLASSES),
        input=InputSpec(channels=3, spatial=(32, 32)),
        preprocessing=Preprocessing(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        classes=CLASSES, thresholds=thresholds, training=training)
    art = ModelArtifact(root, spec)
    torch.manual_seed(seed)
    art.save_weights(art.build_network())
    art.save()
    return art


@pytest.fixture(scope="module")
def tiny_classifier(labeled_dir, tmp_path_factory) -> ModelArtifact:
    """Every image is called positive for Atelectasis (threshold 0), so false positives exist."""
    return make_artifact(tmp_path_factory.mktemp("art") / "tiny-cxr", labeled_dir,
                         {"Atelectasis": 0.0, "Effusion": 0.5, "Mass": 0.5})


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_densenet", in_channels=3, out_channels=3).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_heatmaps_have_the_input_shape_are_finite_and_differ_per_finding(net, x):
    maps = Explainer(net).heatmaps(x, [0, 1])
    for m in maps:
        assert m.gradcam.shape == m.lrp.shape == (32, 32)
        assert np.isfinite(m.gradcam).all() and np.isfinite(m.lrp).all()
        assert m.gradcam.min() >= 0 and m.gradcam.max() > 0
    assert not np.allclose(maps[0].lrp, maps[1].lrp)
    assert not np.allclose(maps[0].gradcam, maps[1].gradcam)


def test_gradcam_layer_is_chosen_by_name(net, x):
    from medinfer.errors import MedinferError

    early = Explainer(net, "features.transition1")
    m = early.heatmaps(x, [0])[0]
    assert m.gradcam.shape == (32, 32) and np.isfinite(m.gradcam).all()
    assert not np.allclose(m.gradcam, Explainer(net).heatmaps(x, [0])[0].gradcam)
    assert "features.transition1" in early.methods["gradcam"]
    with pytest.raises(MedinferError, match="no_such_block"):
        Explainer(net, "features.no_such_block")


def test_batched_targets_equal_one_at_a_time(net, x):
    ex = Explainer(net)
    both = ex.heatmaps(x, [2, 0])
    for m, k in zip(both, (2, 0)):
        one = ex.heatmaps(x, [k])[0]
        np.testing.assert_allclose(m.lrp, one.lrp, atol=1e-6)
        np.testing.assert_allclose(m.gradcam, one.gradcam, atol=1e-6)


def test_lrp_conserves_the_logit_through_dense_concatenations(net, x):
    # Freshly initialized batch norms have no bias, so LRP-epsilon must conserve the
    # logit; a torch.cat that LRP cannot see breaks this (relevance double-counted).
    m = Explainer(net).heatmaps(x, [1])[0]
    with torch.no_grad():
        logit = float(net(x)[0, 1])
    assert m.lrp.sum() == pytest.approx(logit, abs=1e-4)
    assert abs(m.lrp_delta) < 1e-4


def test_lrp_copy_computes_the_same_function_and_leaves_the_network_alone(net, x):
    from monai.networks.nets.densenet import _DenseLayer

    before = net(x).detach()
    copy = lrp_ready(net)
    Explainer(net).heatmaps(x, [0])
    assert torch.allclose(copy(x), before, atol=1e-6)
    assert torch.equal(net(x), before)
    assert any(isinstance(mod, _DenseLayer) for mod in net.modules())
    assert not any(hasattr(mod, "rule") for mod in net.modules())


def test_penultimate_features_are_the_pooled_last_block(net, x):
    feats = penultimate_features(net, x.numpy())
    with torch.no_grad():
        want = net.class_layers[:-1](net.features(x)).numpy()
    assert feats.shape == (1, net.class_layers.out.in_features)
    np.testing.assert_allclose(feats, want, atol=1e-6)


def test_neighbours_sorted_ascending_and_self_first():
    feats = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    index = FeatureIndex.build(feats, [f"im{i}" for i in range(12)], [["Mass"]] * 12)
    result = index.query(feats[7], k=4)
    assert set(result) == {"euclidean", "cosine", "mahalanobis"}
    for kind, ns in result.items():
        d = [n.distance for n in ns]
        assert len(ns) == 4 and d == sorted(d), kind
        assert ns[0].name == "im7" and ns[0].distance == pytest.approx(0.0, abs=1e-5), kind


def test_select_findings_takes_top_and_everything_above_threshold():
    probs = np.array([0.2, 0.9, 0.6, 0.05])
    assert select_findings(probs, [0.5, 0.95, 0.5, 0.01], top=1) == [1, 2, 3]
    assert select_findings(probs, [0.99] * 4, top=2) == [1, 2]


def test_training_records_follow_the_recorded_split(tiny_classifier):
    records, source = training_records(tiny_classifier)
    assert records and {r.patient for r in records} <= set(TRAIN_PATIENTS)
    assert "training patients" in source


def test_missing_training_data_asks_for_train_data(tmp_path, labeled_dir):
    art = make_artifact(tmp_path / "no-data", None, {})
    with pytest.raises(InputError, match="--train-data"):
        training_records(art)
    records, _ = training_records(art, labeled_dir)
    assert len(records) == 16


def test_cli_writes_overlays_and_json_and_keeps_earlier_results(tiny_classifier, labeled_dir, tmp_path):
    image = labeled_dir / "images" / "00000014_000.png"
    args = ["explain", str(image), "--model", str(tiny_classifier.root), "--out", str(tmp_path),
            "--top", "2", "--k", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads((tmp_path / "00000014_000.json").read_text())
    assert set(payload["probabilities"]) == set(CLASSES) == set(payload["thresholds"])
    explained = [e["finding"] for e in payload["explained"]]
    assert "Atelectasis" in explained and len(explained) >= 2  # threshold 0: always positive
    for e in payload["explained"]:
        png = tmp_path / e["overlay"]
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    train_names = {r.name for r in training_records(tiny_classifier)[0]}
    for kind in ("euclidean", "cosine", "mahalanobis"):
        ns = payload["neighbours"][kind]
        assert len(ns) == 3 and [n["distance"] for n in ns] == sorted(n["distance"] for n in ns)
        assert {n["name"] for n in ns} <= train_names
    assert "features" in payload["methods"]["gradcam"] and "LRP" in payload["methods"]["lrp"]
    stamp = (tmp_path / "00000014_000.json").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "kept" in again.output
    assert (tmp_path / "00000014_000.json").stat().st_mtime_ns == stamp


def test_bad_input_is_named(tiny_classifier, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    res = runner.invoke(app, ["explain", str(bad), "--model", str(tiny_classifier.root),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "notes.png" in res.output
    with pytest.raises(InputError) as info:
        explain_files(tiny_classifier, [bad], tmp_path / "out")
    assert info.value.path == bad


def test_false_positives_are_false_and_reported(tiny_classifier, labeled_dir, tmp_path):
    from medinfer.data.labels import read_labels

    cases = find_false_positives(tiny_classifier, labeled_dir, n=2)
    truth = {r.name: r for r in read_labels(labeled_dir, CLASSES)}
    assert len(cases) == 2
    assert cases[0].probability >= cases[1].probability
    for c in cases:
        r = truth[c.path.name]
        assert c.finding not in r.findings and c.probability >= c.threshold
        assert r.patient in {"6", "7", "8"}  # the recorded test patients of the training folder
    page = false_positive_report(tiny_classifier, labeled_dir, tmp_path / "fp.html", n=2, k=2)
    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 2 * (1 + 3 * 2)
    assert all(c.path.name in html for c in cases) and "mahalanobis" in html


def test_segmentation_models_are_refused(tiny_classifier, net, tmp_path):
    from medinfer.report.explainer import ClassifierExplainer
    from medinfer.errors import MedinferError

    seg = ModelArtifact(tmp_path, tiny_classifier.spec.model_copy(update={"task": "segmentation"}))
    with pytest.raises(MedinferError, match="classification"):
        ClassifierExplainer(seg, net, None)
