"""The CT perfusion task through the generic task contract (registry, Predictor, write).

One small phantom (96 x 96 x 4, 30 frames) is written once per module as a DICOM series.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medinfer.artifact import ModelArtifact
from medinfer.cli import app
from medinfer.errors import BackendUnavailableError, InputError
from medinfer.io import Image
from medinfer.perfusion import PerfusionConfig
from medinfer.perfusion.phantom import Phantom, PhantomConfig, make_phantom, write_phantom
from medinfer.runtime import EngineOptions
from medinfer.tasks import Perfusion, PerfusionPrediction, Predictor, task_for

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "ct-perfusion"
SMALL = PhantomConfig(size=96, slices=4, frames=30)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(SMALL)


@pytest.fixture(scope="module")
def series(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom(phantom, tmp_path_factory.mktemp("perfusion") / "case") / "series"


@pytest.fixture(scope="module")
def predicted(series: Path, tmp_path_factory: pytest.TempPathFactory):
    """Read, predict and write through a Predictor: (image, prediction, written files, folder)."""
    out = tmp_path_factory.mktemp("predictor")
    with Predictor.open(MODEL) as predictor:
        image = predictor.read(sorted(series.iterdir()))
        pred = predictor.predict(image)
        files = predictor.write(pred, image, out)
    return image, pred, files, out


def test_the_shipped_artifact_is_a_perfusion_task() -> None:
    art = ModelArtifact.load(MODEL)
    task = task_for(art)
    assert isinstance(task, Perfusion) and task.name == "perfusion"
    assert task.config == PerfusionConfig.model_validate(art.spec.arch_kwargs)


def test_predictor_opens_without_an_engine() -> None:
    with Predictor.open(MODEL) as predictor:
        assert predictor.engine is None and predictor.variant == "torch-fp64"
        predictor.warm_up()  # analyses a tiny phantom: imports and first SVD paid, nothing raised
    with Predictor.open(MODEL, backend="numpy") as predictor:
        assert predictor.variant == "numpy-fp64" and predictor.task.config.backend == "numpy"


@pytest.mark.parametrize("backend, precision", [("openvino", None), ("onnxruntime", None), ("torch", "int8")])
def test_network_backends_are_unavailable(backend: str, precision: str | None) -> None:
    task = task_for(ModelArtifact.load(MODEL))
    with pytest.raises(BackendUnavailableError, match="torch or numpy"):
        task.open_engine(backend, precision, EngineOptions())


def test_read_gives_a_4d_series_with_frame_times(predicted, phantom: Phantom) -> None:
    image = predicted[0]
    assert image.array.shape == (SMALL.frames, SMALL.size, SMALL.size, SMALL.slices)
    assert image.ndim_spatial == 3
    np.testing.assert_allclose(image.meta["frame_times"], phantom.image.meta["frame_times"], atol=1e-3)
    assert image.instances and len(image.instances) == SMALL.slices
    # stored as rounded int16: within half a HU of the phantom
    assert np.abs(image.array - phantom.image.array).max() <= 0.5 + 1e-3


def test_prediction_carries_maps_lesions_and_the_contract(predicted, phantom: Phantom) -> None:
    _, pred, _, _ = predicted
    assert isinstance(pred, PerfusionPrediction) and pred.task == "perfusion"
    assert pred.variant == "torch-fp64" and pred.maps is not None and pred.lesions is not None
    assert pred.mask.shape == (SMALL.size, SMALL.size, SMALL.slices)
    assert set(np.unique(pred.mask)) <= {0, 1, 2}
    assert pred.extra["core_ml"] == pytest.approx(phantom.truth.lesions.core_ml, rel=0.2)
    assert pred.extra["frames"] == SMALL.frames and pred.extra["aif"]["source"] == "auto"


def test_predict_and_write_gives_what_the_cli_writes(predicted, series: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    _, pred, files, out = predicted
    cli_out = tmp_path_factory.mktemp("cli")
    res = CliRunner().invoke(app, ["perfusion", str(series), "--out", str(cli_out), "--no-report"])
    assert res.exit_code == 0, res.output
    names = {f.path.name for f in files}
    assert names == {p.name for p in out.iterdir()} == {p.name for p in cli_out.iterdir()}
    assert names == set(json.loads(res.stdout)["files"])
    for name in ("core", "penumbra", "tmax"):
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"{name}.nii.gz").dataobj),
                                      np.asarray(nib.load(cli_out / f"{name}.nii.gz").dataobj))
    assert json.loads((out / "result.json").read_text())["core_ml"] == json.loads(res.stdout)["core_ml"]


@pytest.mark.parametrize("shape, needle", [((1, 8, 8), "perfusion needs a 4D series"),
                                            ((1, 8, 8, 2), "no frame times")])
def test_predict_refuses_what_is_not_a_timed_series(shape: tuple[int, ...], needle: str) -> None:
    task = task_for(ModelArtifact.load(MODEL))
    n = len(shape) - 1
    image = Image(np.zeros(shape, np.float32), (1.0,) * n, (0.0,) * n, np.eye(n), Path("x.dcm"), {})
    with pytest.raises(InputError, match=needle) as info:
        task.predict(None, image)
    assert "x.dcm" in str(info.value)


def test_shipped_artifact_holds_the_default_settings() -> None:
    """models/ct-perfusion is regenerated when a default changes (perfusion_artifact().save())."""
    from medinfer.perfusion import PerfusionConfig

    shipped = PerfusionConfig.model_validate(ModelArtifact.load(MODEL).spec.arch_kwargs)
    assert shipped == PerfusionConfig()


def test_vessel_warnings_flag_a_venous_aif_and_stay_quiet_on_a_good_one() -> None:
    """On a 64-pixel phantom the arteries cover under half a pixel and the automatic AIF
    lands on the sinus: the result says so. The default phantom's AIF draws no warning."""
    from medinfer.perfusion import PhantomConfig, make_phantom

    task = task_for(ModelArtifact.load(MODEL))
    small = make_phantom(PhantomConfig(size=64, slices=4, frames=30))
    warnings = task.predict(None, small.image).extra["warnings"]
    assert small.truth.aif.argmax() * 1.5 == 9.0  # the true AIF peaks at 9 s, the chosen one later
    assert task.predict(None, small.image).extra["aif"]["peak_time_s"] > 12
    assert any("--aif-mask" in w for w in warnings), warnings
    good = make_phantom(PhantomConfig(size=96, slices=4, frames=30))
    assert task.predict(None, good.image).extra["warnings"] == []


def test_blank_input_is_a_small_4d_series() -> None:
    """The warm start runs the analysis on a tiny phantom (the task has no network size)."""
    image = task_for(ModelArtifact.load(MODEL)).blank_input()
    assert image.array.shape == (16, 48, 48, 2) and len(image.meta["frame_times"]) == 16
