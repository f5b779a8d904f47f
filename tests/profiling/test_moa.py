"""MoA profiling on the real BBBC021 per-well profiles, a synthetic case with a known answer,
bad input files, and the `medinfer moa` command."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.errors import InputError
from medinfer.profiling.moa import PROTOCOLS, cosine_similarity, evaluate_protocols, nearest_neighbour_moa
from medinfer.profiling.normalize import (TreatmentProfiles, dmso_stats, is_position_feature,
                                          normalize_per_plate, select_features, treatment_profiles)
from medinfer.profiling.profiles import IMAGE_FILE, MOA_FILE, PROFILE_FILE, WellProfiles, read_profiles

FILES = (PROFILE_FILE, IMAGE_FILE, MOA_FILE)


@pytest.fixture(scope="module")
def folder(shared_path) -> Path:
    return shared_path("hcs-bbbc021/profiles")


@pytest.fixture(scope="module")
def wells(folder: Path) -> WellProfiles:
    return read_profiles(folder)


@pytest.fixture(scope="module")
def normalized(wells: WellProfiles) -> WellProfiles:
    return normalize_per_plate(select_features(wells))


@pytest.fixture(scope="module")
def treatments(normalized: WellProfiles) -> TreatmentProfiles:
    return treatment_profiles(normalized)


@pytest.fixture(scope="module")
def results(treatments: TreatmentProfiles):
    return evaluate_protocols(treatments)


def test_real_profiles_join(wells: WellProfiles, treatments: TreatmentProfiles) -> None:
    assert wells.features.shape == (632, 516)
    assert int(wells.is_control.sum()) == 330
    assert not (wells.moa == "").any()
    assert wells.batch[list(wells.plate).index("Week1_22123")] == "Week1"
    assert all(p.startswith(b + "_") for p, b in zip(wells.plate, wells.batch))
    assert treatments.n_treatments == 103
    assert len(set(treatments.compound.tolist())) == 38
    assert len(set(treatments.moa.tolist())) == 12 and "DMSO" not in treatments.moa


def test_normalisation_centres_dmso_and_drops_positions(wells: WellProfiles, normalized: WellProfiles) -> None:
    _, med, _ = dmso_stats(normalized)
    assert np.abs(med).max() < 1e-9
    assert not any(is_position_feature(n) for n in normalized.feature_names)
    assert "Cells_Location_Center_X" in wells.feature_names
    assert "Nuclei_AreaShape_Center_Y" not in normalized.feature_names
    assert "Cells_AreaShape_Area" in normalized.feature_names
    assert np.isfinite(normalized.features).all()


def test_accuracy_on_the_shipped_profiles_is_pinned(results) -> None:
    """The figures BENCHMARKS.md "S8" quotes (``benchmarks/moa.py``): correct treatments of 103."""
    assert (results["nsc"].n_scored, round(results["nsc"].accuracy * 103)) == (103, 78)  # 0.757
    assert round(results["nscb"].accuracy * 103) == 72  # 0.699
    assert round(results["random"].accuracy * 103) == 97  # 0.942
    assert results["nsc"].accuracy == pytest.approx(78 / 103)


def test_protocols_respect_their_exclusions(treatments: TreatmentProfiles, results) -> None:
    nsc, nscb = results["nsc"], results["nscb"]
    for i, j in enumerate(nsc.neighbour):
        assert j >= 0 and treatments.compound[j] != treatments.compound[i]
    for i, j in enumerate(nscb.neighbour):
        if j >= 0:
            assert treatments.compound[j] != treatments.compound[i]
            assert not treatments.batches[i] & treatments.batches[j]
    assert nscb.n_scored + nscb.n_unscored == treatments.n_treatments
    assert results["random"].accuracy >= nsc.accuracy
    for r in results.values():
        assert r.confusion.sum() == r.n_scored
        assert np.trace(r.confusion) / r.n_scored == pytest.approx(r.accuracy)


def _tiny() -> TreatmentProfiles:
    # Two MoAs along two axes; compound "a" has two doses, so only the random protocol may
    # match a1 with a2. c sits closest to a1 but is in a1's batch: NSCB must skip it.
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.1, 1.0], [0.0, 1.0]])
    return TreatmentProfiles(
        features=x, feature_names=("f0", "f1"),
        compound=np.array(["a", "a", "c", "d", "e"]), concentration=np.array([1.0, 2.0, 1.0, 1.0, 1.0]),
        moa=np.array(["X", "X", "Y", "Y", "Y"]),
        batches=(frozenset({"W1"}), frozenset({"W2"}), frozenset({"W1"}), frozenset({"W2"}), frozenset({"W1"})),
        n_wells=np.ones(5, dtype=int))


@pytest.mark.parametrize("protocol, neighbours, accuracy", [
    ("random", [1, 0, 1, 4, 3], 4 / 5),
    ("nsc", [2, 2, 1, 4, 3], 2 / 5),
    ("nscb", [3, 2, 1, 4, 3], 2 / 5),
])
def test_tiny_case_known_answer(protocol: str, neighbours: list[int], accuracy: float) -> None:
    r = nearest_neighbour_moa(_tiny(), protocol)
    assert r.neighbour.tolist() == neighbours
    assert r.accuracy == pytest.approx(accuracy)
    assert r.n_unscored == 0


def test_tiny_case_unscored_and_confusion() -> None:
    t = _tiny()
    t = TreatmentProfiles(t.features, t.feature_names, t.compound, t.concentration, t.moa,
                          tuple(frozenset({"W1"}) for _ in range(5)), t.n_wells)
    r = nearest_neighbour_moa(t, "nscb")
    assert r.n_scored == 0 and r.n_unscored == 5 and (r.neighbour == -1).all()
    r = nearest_neighbour_moa(_tiny(), "nsc")
    assert r.moas == ("X", "Y")
    assert r.confusion.tolist() == [[0, 2], [1, 2]]
    assert r.per_moa == {"X": 0.0, "Y": pytest.approx(2 / 3)}
    assert cosine_similarity(np.array([[3.0, 4.0], [0.0, 0.0]]))[0].tolist() == [pytest.approx(1.0), 0.0]


def test_tiny_wells_normalise_per_plate() -> None:
    f = np.array([[1.0, 5.0], [3.0, 5.0], [7.0, 5.0], [10.0, 5.0], [14.0, 5.0], [40.0, 5.0]])
    plate = np.array(["Week1_1"] * 3 + ["Week2_2"] * 3)
    wells = WellProfiles(f, ("Cells_Intensity", "Cells_Constant"), plate, np.array(["A"] * 6),
                         np.array(["DMSO", "DMSO", "x", "DMSO", "DMSO", "y"]), np.ones(6),
                         np.array(["DMSO", "DMSO", "M", "DMSO", "DMSO", "N"]), np.array(["Week1"] * 3 + ["Week2"] * 3))
    sel = select_features(wells)
    assert sel.feature_names == ("Cells_Intensity",)
    z = normalize_per_plate(sel).features[:, 0]
    # plate 1: DMSO median 2, MAD 1 -> (7 - 2) / 1.4826; plate 2: median 12, MAD 2
    assert z[2] == pytest.approx(5 / 1.4826) and z[5] == pytest.approx(28 / (2 * 1.4826))
    assert z[[0, 1]].tolist() == pytest.approx([-1 / 1.4826, 1 / 1.4826])


@pytest.mark.parametrize("name", FILES)
def test_missing_or_truncated_file_names_it(folder: Path, tmp_path: Path, name: str) -> None:
    for f in FILES:
        shutil.copyfile(folder / f, tmp_path / f)
    data = (folder / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        read_profiles(tmp_path)
    assert exc.value.path.name == name
    (tmp_path / name).unlink()
    with pytest.raises(InputError, match="does not exist") as exc:
        read_profiles(tmp_path)
    assert exc.value.path.name == name


def test_truncated_rows_in_a_valid_gzip(folder: Path, tmp_path: Path) -> None:
    for f in FILES:
        shutil.copyfile(folder / f, tmp_path / f)
    lines = gzip.open(folder / PROFILE_FILE, "rt").read().splitlines()
    lines[5] = lines[5][: len(lines[5]) // 2]
    with gzip.open(tmp_path / PROFILE_FILE, "wt") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="truncated") as exc:
        read_profiles(tmp_path)
    assert exc.value.path.name == PROFILE_FILE


def test_cli_moa_writes_results(folder: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["moa", "--data", str(folder), "--out", str(tmp_path / "out"),
                                   "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["treatments"] == 103 and set(summary["protocols"]) == set(PROTOCOLS)
    for name in ("confusion_nsc.png", "confusion_nscb.png", "embedding_pca.png", "moa.json"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert (tmp_path / "out" / "moa.json").read_bytes()[:8] == b"{\n  \"dat"


def test_cli_moa_bad_folder_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["moa", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert IMAGE_FILE in res.output
