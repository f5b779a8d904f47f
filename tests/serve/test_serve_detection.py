"""A chest CT series through the service to the lesion detector (S6): routed by its structure
(one time point per slice position, so not to the perfusion route), detected, and its
Comprehensive SR (one planar region per detection, on the instance the box lies on) and
Secondary Capture sent back to a real PACS (Orthanc) by C-STORE."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from detection_helpers import synthetic_data, train_tiny_detector
from orthanc_pacs import Orthanc, orthanc_binary, start_service, wait_for
from serve_helpers import free_port

from medinfer.serve.config import ServeConfig

CT, SR, SC = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.33",
              "1.2.840.10008.5.1.4.1.1.7")


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny two-stage detector artifact, P3's series folder: 8 CT slices held out of training)."""
    root = tmp_path_factory.mktemp("detection")
    data = synthetic_data(root / "data")
    art = train_tiny_detector(data, root / "model", epochs=2, stage2_epochs=1)
    [series] = [p for p in (data / "P3").iterdir() if p.is_dir()]
    return art.root, series


def _read_from_orthanc(pacs: Orthanc, orthanc_id: str):
    from pydicom import dcmread

    r = httpx.get(f"{pacs.url}/instances/{orthanc_id}/file", timeout=10)
    r.raise_for_status()
    return dcmread(io.BytesIO(r.content))


@pytest.mark.slow
@pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed (apt-get install orthanc)")
@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed (apt-get install dcmtk)")
def test_ct_series_by_c_store_comes_back_as_sr_regions_on_its_instances(
        tmp_path: Path, detector: tuple[Path, Path]) -> None:
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sr.codedict import codes

    art, series = detector
    files = sorted(str(p) for p in series.glob("*.dcm"))
    assert len(files) == 8
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    sources = {str(ds.SOPInstanceUID): ds for ds in headers}
    study_uid = str(next(iter(sources.values())).StudyInstanceUID)
    # slice k of a prediction, from the headers alone: the k-th along +z (axial slices)
    by_z = sorted(sources, key=lambda uid: float(sources[uid].ImagePositionPatient[2]))

    pacs = Orthanc(tmp_path / "orthanc", free_port(), free_port())
    pacs.start()
    dicom_port = free_port()
    cfg = ServeConfig.model_validate({
        "storage": tmp_path / "storage", "quiet_seconds": 0.5, "workers": 0, "log_format": "text",
        "dicom": {"port": dicom_port, "allowed_calling_aets": ["STORESCU"]},
        "routes": [{"name": "ct-perfusion", "artifact": str(tmp_path / "missing"),
                    "match": {"modality": ["CT"], "temporal": True}, "priority": 20},
                   {"name": "chest-ct-lesions", "artifact": str(art),
                    "match": {"modality": ["CT"], "temporal": False}}],
        "destinations": [{"name": "pacs", "kind": "dimse", "host": "127.0.0.1",
                          "port": pacs.dicom_port, "ae_title": pacs.ae_title}]})
    service, shutdown = start_service(cfg)
    try:
        sent = subprocess.run(["storescu", "-aet", "STORESCU", "-aec", "MEDINFER", "127.0.0.1",
                               str(dicom_port), *files], capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: service.store.delivery_counts().get("sent", 0) == 2, 120, "SR and SC sent")

        from medinfer.serve.models import Job, Result

        with service.store.session() as s:
            job = s.query(Job).one()
            assert job.route == "chest-ct-lesions" and job.state == "done", job.error
            summary = dict(job.summary)
            [json_path] = [r.path for r in s.query(Result).filter_by(job_id=job.id, kind="json")]
        result = json.loads(Path(json_path).read_text())
        found = result["detections"]
        assert result["task"] == "detection" and result["n_detections"] == len(found)
        assert summary["detections"] == found  # the job record holds the same detections

        received: dict[str, list] = {}
        for inst in pacs.find(StudyInstanceUID=study_uid):  # the sources went to medinfer only
            ds = _read_from_orthanc(pacs, inst["ID"])
            received.setdefault(str(ds.SOPClassUID), []).append(ds)
        assert {k: len(v) for k, v in received.items()} == {SR: 1, SC: 1}
        [sr], [sc] = received[SR], received[SC]
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == study_uid
        assert str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID) in sources
        evidence = {str(i.ReferencedSOPInstanceUID)
                    for st in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert evidence == set(sources)  # the whole series is the report's evidence

        content = hd.sr.ComprehensiveSR.from_dataset(sr).content
        groups = content.get_planar_roi_measurement_groups()
        if not found:  # nothing detected is stated: Lesion = Absent on the series
            assert not groups
            [group] = content.get_image_measurement_groups()
            assert [q.value.meaning for q in group.get_qualitative_evaluations()] == ["Absent"]
            return
        assert len(groups) == len(found)
        for n, (group, d) in enumerate(zip(groups, found), start=1):  # tracking follows score order
            assert group.tracking_identifier == f"lesion {n}"
            [probability] = group.get_measurements(name=codes.DCM.Probability)
            assert probability.value == pytest.approx(d["score"], abs=1e-6)
            ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == d["sop_instance_uid"] == by_z[d["slice"]]
            assert ref.ReferencedSOPInstanceUID in sources and ref.ReferencedSOPClassUID == CT
            x0, y0, x1, y1 = d["box"]
            corners = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
            assert np.allclose(group.roi.value, corners, atol=1e-3), (group.roi.value, d["box"])
    finally:
        shutdown()
        pacs.stop()
