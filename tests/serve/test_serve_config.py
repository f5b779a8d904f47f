"""Config loading/validation and routing rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from medinfer.errors import InputError
from medinfer.serve.config import load_config
from medinfer.serve.routing import route_series
from medinfer.serve.store import SeriesInfo

REPO = Path(__file__).resolve().parents[2]


def series(modality: str = "MR", body: str = "", desc: str = "", sop: str = "",
           fmt: str = "dicom") -> SeriesInfo:
    return SeriesInfo("1.2.3", modality, body, desc, sop, fmt, 1)


def test_example_config_routes_the_shipped_models() -> None:
    cfg = load_config(REPO / "config" / "serve.example.yaml")
    assert cfg.storage == (REPO / "runs" / "serve").resolve()
    assert cfg.db_url == f"sqlite:///{cfg.storage / 'medinfer.db'}"
    assert route_series(cfg.routes, series("MR"))[1] == str(REPO / "models" / "brain-unet3d")
    assert route_series(cfg.routes, series("DX", "CHEST"))[0] == "chest-xray"
    assert route_series(cfg.routes, series("DX", "HAND")) is None
    assert route_series(cfg.routes, series("ES"))[1].endswith("polyp-resunet")
    assert route_series(cfg.routes, series("XC", fmt="jpeg"))[0] == "endoscopy"
    assert route_series(cfg.routes, series("CT"))[0] == "chest-ct-lesions"  # a plain (not temporal) CT
    assert route_series(cfg.routes, series("", fmt="slide"))[1] == str(REPO / "models" / "cervical-cytology")


@pytest.mark.parametrize("text, message", [
    ("routes: [{name: a, artifact: x, match: {series_description: '(' }}]", "regular expression"),
    ("dicom: {port: 104}", "allowed_calling_aets"),
    ("destinations: [{name: p, kind: dimse, host: h}]", "needs host, port and ae_title"),
    ("workers: -1", "workers"),
    ("bogus_field: 1", "bogus_field"),
    ("- a list", "mapping"),
])
def test_invalid_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "s.yaml"
    path.write_text("storage: data\nroutes: [{name: a, artifact: ../models/m}]\n")
    cfg = load_config(path, workers=3)
    assert cfg.storage == tmp_path / "cfg" / "data"
    assert cfg.routes[0].artifact == tmp_path / "models" / "m"
    assert cfg.workers == 3


@pytest.mark.parametrize("match, info, expected", [
    ({"series_description": "t1.*post"}, series(desc="AX T1 POST GD"), True),
    ({"series_description": "flair"}, series(desc="T1 post"), False),
    ({"sop_class_uid": ["1.2.840.10008.5.1.4.1.1.4"]}, series(sop="1.2.840.10008.5.1.4.1.1.4"), True),
    ({"sop_class_uid": ["1.2.840.10008.5.1.4.1.1.4"]}, series(sop="1.2.840.10008.5.1.4.1.1.2"), False),
    ({"body_part": ["chest"]}, series("DX", "CHEST"), True),
    ({"modality": ["mr"], "formats": ["dicom"]}, series("MR"), True),
    ({"modality": ["MR"], "formats": ["nifti"]}, series("MR"), False),
])
def test_routing_rule_conditions(make_config, match: dict, info: SeriesInfo,
                                 expected: bool) -> None:
    cfg = make_config(routes=[{"name": "r", "artifact": "/a", "match": match}])
    assert (route_series(cfg.routes, info) is not None) is expected
