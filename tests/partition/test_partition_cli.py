"""`medinfer partition`: in-process tiling and a torchrun mesh write the whole-volume labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.cli import app
from medinfer.data.spec import Preprocessing

runner = CliRunner()
AFFINE = np.diag([0.9, 0.8, 2.0, 1.0])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    """A tiny 3D U-Net (instance norm) artifact with seeded random weights."""
    spec = ArtifactSpec(
        architecture="test_unet3d", arch_kwargs={"norm": "instance"}, in_channels=1,
        out_channels=2, input=InputSpec(channels=1, spatial=(32, 32, 16)),
        preprocessing=Preprocessing(size=(32, 32), scale=0.01, mean=(0.5,), std=(2.0,),
                                    channels=1))
    art = ModelArtifact(tmp_path_factory.mktemp("art"), spec)
    torch.manual_seed(0)
    art.save()
    art.save_weights(art.build_network())
    return art


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 30 x 28 x 14 NIfTI (sides off the stride-4 grid: the command pads them)."""
    rng = np.random.default_rng(0)
    data = (rng.normal(50, 40, (30, 28, 14))).astype(np.float32)
    path = tmp_path_factory.mktemp("in") / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path, data


def _expected(art: ModelArtifact, data: np.ndarray) -> np.ndarray:
    net = art.load_network()
    x = (torch.from_numpy(data) * 0.01 - 0.5) / 2.0
    x = F.pad(x, (0, 2, 0, 0, 0, 2))[None, None]  # 32 x 28 x 16
    with torch.no_grad():
        logits = net(x)[0, :, :30, :28, :14]
    return logits.argmax(0).numpy()


# a mesh of more than one block launches torchrun
@pytest.mark.parametrize("mesh", ["1x1x1", pytest.param("2x1x1", marks=pytest.mark.slow)])
def test_partition_writes_whole_volume_labels(artifact: ModelArtifact, volume: tuple,
                                              tmp_path: Path, mesh: str) -> None:
    path, data = volume
    out = tmp_path / "labels.nii.gz"
    res = runner.invoke(app, ["partition", "--model", str(artifact.root), "--mesh", mesh,
                              "--memory-budget-mb", "0.2", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, AFFINE)
    labels = np.asarray(img.dataobj)
    expected = _expected(artifact, data)
    assert labels.shape == data.shape and 0 < expected.sum() < expected.size
    assert np.array_equal(labels, expected)


def test_partition_names_a_bad_input(artifact: ModelArtifact, tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    res = runner.invoke(app, ["partition", "--model", str(artifact.root), str(bad),
                              "--out", str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "broken.nii.gz" in res.output


def test_partition_rejects_a_malformed_mesh(artifact: ModelArtifact, volume: tuple,
                                            tmp_path: Path) -> None:
    res = runner.invoke(app, ["partition", "--model", str(artifact.root), "--mesh", "2by2",
                              str(volume[0]), "--out", str(tmp_path / "o.nii.gz")])
    assert res.exit_code == 2 and "mesh" in res.output.lower()


def test_shipped_3d_model_partition_equals_one_pass_on_the_task_input(tmp_path: Path) -> None:
    """`medinfer partition` on the shipped brain model prepares the volume as the task does
    (z-score over the brain for MR) and gives exactly the labels of one whole-volume pass."""
    from partition_helpers import BRAIN
    from shared_data import require

    from medinfer.io import read_image
    from medinfer.tasks import task_for
    from medinfer.tasks.volume import pad_to_stride

    require(BRAIN, "shipped 3D data")
    art = ModelArtifact.load(Path(__file__).resolve().parents[2] / "models" / "brain-unet3d")
    source = nib.load(BRAIN)
    # a real crop through the tumour, sides off the network's stride (the command pads them)
    data = np.asarray(source.dataobj, np.float32)[60:130, 60:126, 8:30]
    path = tmp_path / "crop.nii.gz"
    nib.save(nib.Nifti1Image(data, source.affine), path)
    out = tmp_path / "labels.nii.gz"
    res = runner.invoke(app, ["partition", "--model", str(art.root), "--memory-budget-mb", "64",
                              str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    labels = np.asarray(nib.load(out).dataobj)

    task, net = task_for(art), art.load_network()
    x = task.prepare(read_image(path))
    with torch.no_grad():
        logits = net(pad_to_stride(net, x)[None])[0, :, :70, :66, :22]
    expected = (logits[0] > 0).numpy().astype(np.uint8)
    assert labels.shape == data.shape and 0 < expected.sum() < expected.size
    assert np.array_equal(labels, expected)
    with torch.no_grad():  # the raw intensities (the bug this guards against) give other labels
        raw = (net(pad_to_stride(net, data[None])[None])[0, 0, :70, :66, :22] > 0).numpy()
    assert not np.array_equal(raw, expected)
