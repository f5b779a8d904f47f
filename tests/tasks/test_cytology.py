"""Whole-slide cytology (S7): slide folders, tile reading, both stages, the command's
contract, evaluation, the optimizer and bad inputs, on tiny mosaic slides of real CRIC cells."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from cytology_helpers import tiny_slides, train_tiny_cytology
from medinfer.apps.evaluate import evaluate_folder
from medinfer.artifact import ModelArtifact
from medinfer.cli import app
from medinfer.data.mosaic import read_truth
from medinfer.data.slide_sets import TileReader, read_slide_folder
from medinfer.errors import InputError
from medinfer.io.slide_results import read_cells_geojson
from medinfer.io.slide_writer import write_pyramid
from medinfer.io.slides import Slide
from medinfer.optimize.pipeline import OptimizeConfig, optimize
from medinfer.runtime import EngineOptions
from medinfer.tasks import Cytology, Predictor, task_for
from medinfer.train.cytology import network_call

pytest.importorskip("openslide")
runner = CliRunner()


@pytest.fixture(scope="module")
def slides(shared_path: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_slides(tmp_path_factory.mktemp("cyto") / "slides", shared_path("cervical-cytology-cric"))


@pytest.fixture(scope="module")
def model(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    return train_tiny_cytology(slides, tmp_path_factory.mktemp("cyto-model") / "art")


def test_parts_share_no_crop(slides: Path) -> None:
    crops = {part: {c.crop for case in read_slide_folder(slides / part) for c in read_truth(case.truth).cells}
             for part in ("train", "val", "test")}
    assert crops["train"] and crops["test"]
    assert not crops["train"] & crops["val"] and not crops["train"] & crops["test"] and not crops["val"] & crops["test"]


def test_training_records_both_stages(model: ModelArtifact) -> None:
    s = model.spec.cytology
    assert model.spec.task == "cytology" and s is not None
    assert s.stage2 == "stage2" and s.fusion in ("topk", "learned") and s.aggregator
    assert 0.0 <= s.threshold <= 1.0 and s.flag_threshold <= s.threshold
    second = ModelArtifact.load(model.root / "stage2")
    assert second.spec.task == "cell-centres" and second.spec.out_channels == 1 + len(s.classes)
    assert model.spec.training.split.unit == "slide"
    assert all(n.startswith("train/") for n in model.spec.training.split.train)


def test_block_reading_equals_tile_reading(slides: Path) -> None:
    case = read_slide_folder(slides / "val")[0]
    reader = TileReader(32, 2.0, block=3)
    with Slide.open(case.path) as slide:
        grid = reader.grid(slide, 0.05)
        for workers in (1, 3):
            got = {}
            for pixels, index in reader.batches(slide, grid, 7, workers):
                for p, i in zip(pixels, index):
                    got[int(i)] = p
            assert sorted(got) == list(range(len(grid)))
            for i in (0, len(grid) // 2, len(grid) - 1):
                assert np.array_equal(got[i], reader.read(slide, *grid[i]))


def test_tiles_pooled_from_a_finer_level(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (256, 256, 3), np.uint8)
    path = tmp_path / "one_level.tif"
    write_pyramid(path, (256, 256), lambda x, y, w, h: picture[y:y + h, x:x + w], tile=128, levels=1)
    reader = TileReader(32, 2.0)
    with Slide.open(path) as slide:
        assert reader.source(slide) == (0, 2)
        tile = reader.read(slide, 64, 0)
        level0 = slide.read_region(0, 64, 0, 64, 64).astype(np.float32)
    expect = np.round(level0.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)))
    assert tile.shape == (32, 32, 3) and np.array_equal(tile, expect.astype(np.uint8))


def test_slide_prediction_contract(model: ModelArtifact, slides: Path, tmp_path: Path) -> None:
    case = next(c for c in read_slide_folder(slides / "test") if c.label == 1)
    out = tmp_path / "out"
    res = runner.invoke(app, ["slide", str(case.path), "--model", str(model.root), "--out", str(out),
                              "--json", str(tmp_path / "r.json"), "--heatmap-side", "256"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "r.json").read_text())
    for key in ("slide_score", "abnormal", "tiles", "cells", "seconds", "stage1_score", "top_tiles"):
        assert key in summary
    assert summary["tiles"] > 0 and isinstance(summary["abnormal"], bool)
    assert set(summary["seconds"]) >= {"tissue", "stage1", "stage2", "total"}
    stem = case.path.stem
    heat = out / f"{stem}_heatmap.png"
    assert heat.is_file() and (out / f"{stem}.json").is_file()
    cells = read_cells_geojson(out / f"{stem}_cells.geojson")
    assert len(cells) == len(summary["cells"])
    for got, want in zip(cells, summary["cells"]):
        assert got["class"] == want["class"] and abs(got["x"] - want["x"]) < 0.6


def test_stage2_runs_only_on_flagged_slides(model: ModelArtifact, slides: Path) -> None:
    case = read_slide_folder(slides / "test")[0]
    task = Cytology(model)
    infer = network_call(model)
    never = Cytology(ModelArtifact(model.root, model.spec.model_copy(update={
        "cytology": model.spec.cytology.model_copy(update={"flag_threshold": 2.0})})))
    calls = []
    off = never.run_slide(case.path, infer, lambda x: calls.append(len(x)) or np.zeros((len(x), 6, 64, 64), np.float32))
    assert not off.flagged and not calls and off.score == 0.0 and len(off.cells) == 0
    on = task.run_slide(case.path, infer, lambda x: np.zeros((len(x), 6, 64, 64), np.float32))
    assert on.score1 == pytest.approx(off.score1)
    heat = on.heat()
    assert np.isfinite(heat).sum() == len(on.positions)
    assert np.nanmax(heat) == pytest.approx(on.probs.max())


def test_evaluate_slide_folder(model: ModelArtifact, slides: Path) -> None:
    out = evaluate_folder(model, slides / "val", n_boot=0)
    assert out["task"] == "cytology" and out["n"] == 4
    for key in ("tile_auc", "slide_auc", "sensitivity", "specificity", "sensitivity_2stage", "specificity_2stage"):
        assert key in out
    assert 0.0 <= out["sensitivity"] <= 1.0


def test_picture_is_one_tile(model: ModelArtifact, slides: Path, tmp_path: Path) -> None:
    case = read_slide_folder(slides / "val")[0]
    with Slide.open(case.path) as slide:
        PILImage.fromarray(slide.read_region(1, 0, 0, 32, 32)).save(tmp_path / "tile.png")
    with Predictor.open(model) as predictor:
        pred = predictor.predict(predictor.read([tmp_path / "tile.png"]))
    assert set(pred.scores) == {"abnormal"} and 0.0 <= pred.scores["abnormal"] <= 1.0


def test_optimize_builds_both_stages(model: ModelArtifact, slides: Path, tmp_path: Path) -> None:
    art = ModelArtifact.load(shutil.copytree(model.root, tmp_path / "art"))
    records = optimize(art, OptimizeConfig(calib=slides / "train", val=slides / "val", calib_limit=32,
                                           options=EngineOptions(threads=2), latency_runs=1))
    names = {r.name for r in records}
    assert {"torch-fp32", "openvino-int8", "onnxruntime-fp32"} <= names
    assert art.spec.chosen in names
    second = ModelArtifact.load(art.root / "stage2")
    built = {v.name: v for v in second.spec.variants}
    assert "openvino-int8" in built and (second.root / built["openvino-int8"].path).is_file()
    fp32 = next(r for r in records if r.name == "onnxruntime-fp32")
    ref = next(r for r in records if r.name == "torch-fp32")
    assert fp32.metrics["tile_auc"] == pytest.approx(ref.metrics["tile_auc"], abs=1e-3)
    with Predictor.open(art, "openvino", "int8") as predictor:
        case = read_slide_folder(slides / "test")[0]
        pred = predictor.predict(predictor.read([case.path]))
    assert pred.extra["tiles"] > 0 and pred.variant == "openvino-int8"


def test_bad_slide_folders_and_files(slides: Path, tmp_path: Path, model: ModelArtifact) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(slides / "test", folder)
    rows = list(csv.reader((folder / "labels.csv").open()))
    (folder / "labels.csv").write_text("\n".join(",".join(r) for r in rows + [["missing.tif", "1"]]) + "\n")
    with pytest.raises(InputError, match="missing.tif"):
        read_slide_folder(folder)
    (folder / "labels.csv").write_text("slide,label\n" + f"{rows[1][0]},2\n")
    with pytest.raises(InputError, match="label '2'"):
        read_slide_folder(folder)
    cut = tmp_path / "cut.tif"
    data = read_slide_folder(slides / "test")[0].path.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    task = task_for(model)
    with pytest.raises(InputError, match="cut.tif"):
        task.read_input([cut])
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["slide", str(cut), "--model", str(model.root), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "cut.tif" in res.output


def test_report_examples_show_truth_and_heat(model: ModelArtifact, slides: Path) -> None:
    task = Cytology(model)
    data = task.load_eval(slides / "val")
    infer = network_call(model)
    examples = task.examples(data, {"torch-fp32": task.outputs(infer, data)}, 2)
    assert len(examples) == 2 and all(e.name.endswith(".tif") for e in examples)
    first = examples[0]
    assert "label 1" in next(iter(first.pictures)) and "torch-fp32" in first.pictures
    truth = next(iter(first.pictures.values()))
    assert (truth == np.array([0, 200, 0], np.uint8)).all(axis=2).any()  # abnormal cells marked
