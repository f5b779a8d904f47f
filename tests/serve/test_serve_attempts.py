"""An attempt that does not complete its job leaves no files behind: its results folder goes
when its lease was lost (another attempt owns the job) or when writing failed half-way."""

from __future__ import annotations

from pathlib import Path

from serve_helpers import ThresholdPredictor, make_series

from medinfer.serve.ingest import Receiver
from medinfer.serve.models import Job, Result
from medinfer.serve.store import Store
from medinfer.serve.worker import Worker


def queued_job(cfg, store: Store) -> int:  # type: ignore[no-untyped-def]
    receiver = Receiver(cfg, store)
    for ds in make_series(2):
        study = receiver.accept_dataset(ds, "dimse", "MODALITY")
    [job] = receiver.close_study(study)
    return job


def attempt_dirs(cfg, job_id: int) -> list[Path]:  # type: ignore[no-untyped-def]
    root = cfg.storage / "results" / str(job_id)
    return sorted(root.iterdir()) if root.exists() else []


def test_an_attempt_whose_lease_was_lost_removes_its_files(make_config, store: Store,
                                                           monkeypatch) -> None:
    cfg = make_config()
    job_id = queued_job(cfg, store)
    monkeypatch.setattr(Store, "complete_job", lambda self, *a, **k: False)  # taken over
    assert Worker(cfg, store, "w", lambda a: ThresholdPredictor()).run_once()
    assert attempt_dirs(cfg, job_id) == []
    with store.session() as s:
        assert s.query(Result).count() == 0


class BrokenWriter(ThresholdPredictor):
    """Writes the first files, then fails (a full disk, a writer's error)."""

    def write(self, pred, image, out_dir, options):  # type: ignore[no-untyped-def]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "half.dcm").write_bytes(b"DICM")
        raise OSError("No space left on device")


def test_a_failed_attempt_removes_its_half_written_files_and_is_retried(
        make_config, store: Store) -> None:
    cfg = make_config()
    job_id = queued_job(cfg, store)
    assert Worker(cfg, store, "w", lambda a: BrokenWriter()).run_once()
    assert attempt_dirs(cfg, job_id) == []
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.state == "queued" and "OSError" in job.error  # retryable: tried again
    assert Worker(cfg, store, "w2", lambda a: ThresholdPredictor()).run_once()
    [kept] = attempt_dirs(cfg, job_id)  # the attempt that completed keeps its results
    with store.session() as s:
        assert s.get(Job, job_id).state == "done"
        assert {Path(r.path).parent for r in s.query(Result)} == {kept}
