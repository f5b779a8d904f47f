"""A CT perfusion study through the service: routed by its structure (several time points
at one slice position), analysed by the perfusion task, and its Parametric Maps, SEG, SR and
summary Secondary Capture sent back to a real PACS (Orthanc) by C-STORE."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from orthanc_pacs import Orthanc, orthanc_binary, start_service, wait_for
from serve_helpers import free_port

from medinfer.perfusion import PhantomConfig, make_phantom, write_phantom
from medinfer.serve.config import ServeConfig
from medinfer.serve.routing import is_temporal, matches
from medinfer.serve.config import MatchRule
from medinfer.serve.store import SeriesInfo
from medinfer.tasks.perfusion import perfusion_artifact

PM, SEG, SR, SC = ("1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4",
                   "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7")


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom perfusion series (64x64, 4 slices, 24 frames): 96 DICOM files."""
    folder = tmp_path_factory.mktemp("perfusion")
    write_phantom(make_phantom(PhantomConfig(size=64, slices=4, frames=24, dt=2.0)), folder)
    return folder / "series"


def _info(paths: list[Path], modality: str = "CT") -> SeriesInfo:
    return SeriesInfo("1.2", modality, "HEAD", "CT PERFUSION", "1.2.840.10008.5.1.4.1.1.2", "dicom",
                      len(paths), tuple(str(p) for p in paths))


def test_temporal_rule_tells_a_perfusion_series_from_a_3d_one(series: Path) -> None:
    from pydicom import dcmread

    files = sorted(series.iterdir())
    one_time = {}
    for f in files:  # one file per slice position: a plain 3D series
        ds = dcmread(f, stop_before_pixels=True)
        one_time.setdefault(tuple(round(float(v), 2) for v in ds.ImagePositionPatient), f)
    assert len(one_time) == 4
    assert is_temporal(tuple(str(f) for f in files))
    assert not is_temporal(tuple(str(f) for f in one_time.values()))
    rule = MatchRule(modality=["CT"], temporal=True)
    assert matches(rule, _info(files))
    assert not matches(rule, _info(list(one_time.values())))
    assert matches(MatchRule(modality=["CT"], temporal=False), _info(list(one_time.values())))
    assert not matches(rule, _info(files, modality="MR"))






@pytest.mark.slow
@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (apt-get install orthanc)")
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed (apt-get install dcmtk)")
def test_perfusion_study_by_c_store_comes_back_to_orthanc(tmp_path: Path, series: Path) -> None:
    from pydicom import dcmread

    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    pacs.start()
    art = perfusion_artifact(tmp_path / "ct-perfusion")
    art.save()
    dicom_port = free_port()
    cfg = ServeConfig.model_validate({
        "storage": tmp_path / "storage", "quiet_seconds": 0.5, "workers": 0, "log_format": "text",
        "dicom": {"port": dicom_port, "allowed_calling_aets": ["STORESCU"]},
        "routes": [{"name": "ct-perfusion", "artifact": str(art.root),
                    "match": {"modality": ["CT"], "temporal": True}, "priority": 20},
                   {"name": "other-ct", "artifact": str(tmp_path / "missing"), "match": {"modality": ["CT"]}}],
        "destinations": [{"name": "pacs", "kind": "dimse", "host": "127.0.0.1", "port": pacs.dicom_port,
                          "ae_title": pacs.ae_title}]})
    service, shutdown = start_service(cfg)
    try:
        files = sorted(str(p) for p in series.iterdir())
        sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "MEDINFER", "127.0.0.1",
                               str(dicom_port), *files], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        # 5 Parametric Maps (CBF, CBV, MTT, Tmax, TTP), the SEG, the SR and the summary SC
        wait_for(lambda: service.store.delivery_counts().get("sent", 0) == 8, 120, "8 results sent")
        classes: dict[str, list[dict]] = {}
        for inst in pacs.find(StudyInstanceUID=str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)):
            tags = pacs.get(f"/instances/{inst['ID']}/tags?simplify")
            classes.setdefault(tags["SOPClassUID"], []).append(tags)
        assert {k: len(v) for k, v in classes.items()} == {PM: 5, SEG: 1, SR: 1, SC: 1}
        source = dcmread(files[0], stop_before_pixels=True)
        for tags in classes[PM] + classes[SEG]:
            assert tags["FrameOfReferenceUID"] == source.FrameOfReferenceUID
            assert int(tags["NumberOfFrames"]) >= 4
        labels = {s["SegmentLabel"] for s in classes[SEG][0]["SegmentSequence"]}
        assert labels == {"ischemic core", "hypoperfused tissue outside the core"}
        with service.store.session() as s:
            from medinfer.serve.models import Job

            job = s.query(Job).one()
            assert job.route == "ct-perfusion" and job.state == "done"
            assert job.summary["core_ml"] > 0 and job.summary["penumbra_ml"] > job.summary["core_ml"]
            assert set(job.summary["aif"]) >= {"voxels", "peak_time_s"}
    finally:
        shutdown()
        pacs.stop()
