"""Workers with the real Predictor on a tiny 3D artifact; a worker process killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from serve_helpers import MR_SERIES, make_artifact
from shared_data import require

from medinfer.serve.config import load_config
from medinfer.serve.ingest import Receiver
from medinfer.serve.models import Job, Result
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker


@pytest.fixture(scope="session")
def mr_artifact(tmp_path_factory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("art") / "brain-test", dims=3)


@pytest.fixture
def mr_files() -> list[Path]:
    return sorted(require(MR_SERIES).iterdir())


def write_config(tmp_path: Path, artifact: Path, **kw: object) -> Path:
    raw = {"storage": str(tmp_path / "storage"), "lease_seconds": 2, "quiet_seconds": 0.2,
           "log_format": "json",
           "routes": [{"name": "brain", "artifact": str(artifact), "match": {"modality": ["MR"]}}]}
    raw.update(kw)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def queue_mr_study(receiver: Receiver, files: list[Path]) -> int:
    for f in files:
        study = receiver.accept_dataset(dcmread(f), "dimse", "STORESCU")
    [job] = receiver.close_study(study)
    return job


def test_mr_series_through_the_real_predictor(tmp_path, mr_artifact, mr_files) -> None:
    cfg = load_config(write_config(tmp_path, mr_artifact))
    store = Store(cfg.db_url)
    job_id = queue_mr_study(Receiver(cfg, store), mr_files)
    assert Worker(cfg, store, "w").run_once()
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "done", job.error
        seg_path = s.query(Result).filter_by(job_id=job_id, kind="seg").one().path
    seg = dcmread(seg_path)
    source = dcmread(mr_files[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.SegmentSequence[0].SegmentLabel == "tumour"
    assert seg.Rows == source.Rows and seg.Columns == source.Columns
    refs = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg.PerFrameFunctionalGroupsSequence}
    assert refs <= {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in mr_files}
    assert job.summary["segments"]["tumour"] > 0
    store.close()


@pytest.mark.slow  # a `medinfer serve --worker` process, killed mid-job
def test_killed_worker_job_is_retried_and_completed_exactly_once(
        tmp_path, mr_artifact, mr_files, clock) -> None:
    config_path = write_config(tmp_path, mr_artifact)
    cfg = load_config(config_path)
    store = Store(cfg.db_url, clock=clock)
    job_id = queue_mr_study(Receiver(cfg, store), mr_files)
    medinfer = Path(sys.executable).parent / "medinfer"
    proc = subprocess.Popen([str(medinfer), "serve", "--config",
                             str(config_path), "--worker"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with store.session() as s:
                job = s.get(Job, job_id)
                if job.state != "queued":
                    break
            time.sleep(0.01)
        assert job.state == "running" and job.lease_owner.endswith(f":{proc.pid}")
        os.kill(proc.pid, signal.SIGKILL)  # dies mid-job: leased, results not recorded
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with store.session() as s:
        assert s.get(Job, job_id).state == "running"
    survivor = Worker(cfg, store, "survivor")
    assert not survivor.run_once()  # the dead worker's lease has not expired yet
    clock.advance(cfg.lease_seconds)  # now it has: no renewal since the kill
    assert survivor.run_once()
    assert not survivor.run_once()  # nothing left: the job is not run again
    with store.session() as s:
        job = s.get(Job, job_id)
        assert (job.state, job.attempts, job.lease_owner) == ("done", 2, "survivor")
        kinds = sorted(r.kind for r in s.query(Result).filter_by(job_id=job_id))
    assert kinds == ["json", "overlay", "sc", "seg"]  # one set of results, not two
    store.close()

