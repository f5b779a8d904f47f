"""Benchmark: `medinfer serve` against a real Orthanc (S10). Not a test.

Three measurements, each recorded in one JSON file:

1. ``seg``: time to write a DICOM SEG for a 512x512x300 result with 5 segments
   (highdicom, binary SEG, from 300 synthetic single-frame source instances).
2. ``e2e``: the service started as users start it (``medinfer serve --config``, worker
   processes), Orthanc on loopback as the PACS, 2D endoscopy studies (Kvasir-SEG frames
   wrapped as VL Endoscopic DICOM) sent by C-STORE with 1 and 8 studies in flight,
   routed to the shipped ``models/polyp-resunet``; latency = last instance acknowledged ->
   SEG stored in Orthanc (C-STORE success recorded by the service); studies per minute;
   peak resident memory of the service and its workers together. "1 / 8 in flight" is a
   closed loop: 1 or 8 senders, each sending its next study once its previous study's SEG
   is in Orthanc. The latency includes the quiet time (``--quiet``, 1 s) after which a
   study counts as complete.
3. ``soak``: N studies (default 200) with a worker process killed (SIGKILL) every 20
   studies (open loop, 4 senders pushing without waiting); checks every study got exactly
   one done job, exactly one SEG delivery and exactly one SEG in Orthanc.

Usage (repository root, after `make install`; needs orthanc, orthanc-dicomweb):

    .venv/bin/python benchmarks/serve_bench.py --out benchmarks/results/serve_<date>.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rich.logging import RichHandler

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "serve"), str(REPO / "tests")]  # helpers + shared_data
from orthanc_pacs import Orthanc
from serve_helpers import free_port

log = logging.getLogger("serve_bench")


def bench_seg(shape: tuple[int, int, int] = (512, 512, 300), n_segments: int = 5,
              labelmap: bool = False) -> dict:
    """Seconds to write a binary SEG for a ``shape`` label map with ``n_segments`` labels."""
    from medinfer.data.synthetic import dicom_slice
    from medinfer.io.derived import write_seg

    rows, cols, n = shape
    study, series = generate_uid(), generate_uid()
    px = np.zeros((rows, cols), np.uint16)
    sources = [dicom_slice(px, position=(0.0, 0.0, 1.0 * k), instance=k + 1, series_uid=series,
                           study_uid=study) for k in range(n)]
    mask = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(0)
    for label in range(1, n_segments + 1):  # one ball-ish blob per segment
        c = rng.integers((64, 64, 40), (rows - 64, cols - 64, n - 40))
        x, y, z = np.ogrid[:rows, :cols, :n]
        mask[(x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) * 2) ** 2 < 50 ** 2] = label
    out = Path("runs/bench-serve/seg.dcm")
    t0 = time.perf_counter()
    path, _ = write_seg(sources, mask, {v: f"segment {v}" for v in range(1, n_segments + 1)},
                        out, "bench", "1", labelmap=labelmap)
    seconds = time.perf_counter() - t0
    from pydicom import dcmread

    frames = int(dcmread(path, stop_before_pixels=True).NumberOfFrames)
    return {"shape": list(shape), "segments": n_segments,
            "type": "LABELMAP" if labelmap else "BINARY", "seconds": round(seconds, 3),
            "frames_written": frames, "file_mb": round(path.stat().st_size / 2**20, 2)}


def endoscopy_study(jpeg: Path) -> Dataset:
    """One Kvasir frame as a VL Endoscopic Image (RGB) instance of a new study."""
    from PIL import Image

    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Bench^Patient", "B1", "20260101", "1200"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "ES", 1, 1, "bench"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return ds


class Sender:
    """C-STORE studies to medinfer from a pool of threads; records when each was acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: dict[str, float] = {}
        self.lock = threading.Lock()

    def send(self, ds: Dataset) -> None:
        from pynetdicom import AE

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="MEDINFER")
        assert assoc.is_established, "association refused"
        status = assoc.send_c_store(ds)
        t = time.time()
        assoc.release()
        assert status.Status == 0, f"C-STORE status {status.Status:#x}"
        with self.lock:
            self.acked[ds.StudyInstanceUID] = t

    def send_all(self, studies: list[Dataset], in_flight: int,
                 between: callable | None = None) -> None:
        """Open loop: ``in_flight`` senders push studies without waiting for results."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(in_flight) as pool:
            futures = []
            for i, ds in enumerate(studies):
                futures.append(pool.submit(self.send, ds))
                if between is not None:
                    between(i + 1)
            for f in futures:
                f.result()

    def send_closed_loop(self, studies: list[Dataset], in_flight: int, db_url: str) -> None:
        """Closed loop: ``in_flight`` senders, each sending its next study only when the
        previous one's SEG is stored in the PACS (so ``in_flight`` studies are in the system)."""
        from concurrent.futures import ThreadPoolExecutor

        def lane(batch: list[Dataset]) -> None:
            for ds in batch:
                self.send(ds)
                deadline = time.time() + 120
                while time.time() < deadline:
                    if stored_times(db_url, ds.StudyInstanceUID).get(ds.StudyInstanceUID,
                                                                     (0, 0, 0))[2]:
                        break
                    time.sleep(0.05)

        with ThreadPoolExecutor(in_flight) as pool:
            for f in [pool.submit(lane, studies[k::in_flight]) for k in range(in_flight)]:
                f.result()


_STORES: dict[str, object] = {}


def stored_times(db_url: str, only: str | None = None) -> dict[str, tuple[float, int, int]]:
    """study UID -> (SEG delivery sent_at, done jobs, SEG deliveries sent) from the job store."""
    from sqlalchemy import select

    from medinfer.serve.models import Delivery, Job, Result, Study
    from medinfer.serve.store import Store

    store = _STORES.get(db_url) or _STORES.setdefault(db_url, Store(db_url))
    out: dict[str, list] = {}
    with store.session() as s:
        q = (select(Study.study_uid, Job.state, Delivery.state, Delivery.sent_at)
             .join(Job, Job.study_id == Study.id)
             .outerjoin(Result, (Result.job_id == Job.id) & (Result.kind == "seg"))
             .outerjoin(Delivery, Delivery.result_id == Result.id))
        rows = s.execute(q.where(Study.study_uid == only) if only else q)
        for uid, job_state, d_state, sent_at in rows:
            entry = out.setdefault(uid, [0.0, 0, 0])
            entry[1] += job_state == "done"
            if d_state == "sent":
                entry[0] = max(entry[0], sent_at or 0.0)
                entry[2] += 1
    return {k: tuple(v) for k, v in out.items()}


class ServiceRun:
    """``medinfer serve`` as a subprocess, with peak-RSS sampling of its process tree."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.peak_rss = 0
        self._stop = threading.Event()

    def __enter__(self) -> ServiceRun:
        exe = Path(sys.executable).parent / "medinfer"
        self.log = open(self.config.parent / "service.log", "wb")
        self.proc = subprocess.Popen([str(exe), "serve", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        root = psutil.Process(self.proc.pid)
        while not self._stop.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            self.peak_rss = max(self.peak_rss, rss)

    def workers(self) -> list[psutil.Process]:
        """Live worker processes (spawned children; not the resource tracker, not zombies)."""
        out = []
        for p in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
                if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in cmd:
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_results(db_url: str, uids: list[str], timeout: float) -> dict[str, tuple]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        times = stored_times(db_url)
        if all(times.get(u, (0, 0, 0))[2] >= 1 for u in uids):
            return times
        time.sleep(0.5)
    return stored_times(db_url)


def run_service_bench(work: Path, jpegs: list[Path], counts: dict[int, int], soak: int,
                      kill_every: int, quiet: float, workers: int) -> dict:
    """End-to-end runs (1 and 8 in flight), then the soak with worker kills."""
    pacs = Orthanc(work / "orthanc", free_port(), free_port())
    pacs.start()
    dicom_port, http_port = free_port(), free_port()
    cfg = {"storage": str((work / "storage").resolve()), "quiet_seconds": quiet, "workers": workers,
           "lease_seconds": 5, "max_attempts": 5, "log_format": "json",
           "delivery_retry_seconds": 0.5,
           "http": {"port": http_port},
           "dicom": {"port": dicom_port, "allowed_calling_aets": ["MODALITY"]},
           "routes": [{"name": "endoscopy", "artifact": str(REPO / "models" / "polyp-resunet"),
                       "match": {"modality": ["ES"]}}],
           "destinations": [{"name": "orthanc", "kind": "dimse", "host": "127.0.0.1",
                             "port": pacs.dicom_port, "ae_title": pacs.ae_title,
                             "results": ["seg"]}]}
    config = work / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    db_url = f"sqlite:///{(work / 'storage' / 'medinfer.db').resolve()}"
    out: dict = {"quiet_seconds": quiet, "workers": workers, "runs": []}
    try:
        with ServiceRun(config) as svc:
            time.sleep(12)  # service + worker start, models opened (warm-up)
            sender = Sender(dicom_port)
            sender.send(endoscopy_study(jpegs[0]))  # warm the whole path once
            wait_results(db_url, list(sender.acked), 60)
            for in_flight, n in counts.items():
                studies = [endoscopy_study(jpegs[(i + 1) % len(jpegs)]) for i in range(n)]
                t0 = time.time()
                sender.send_closed_loop(studies, in_flight, db_url)
                uids = [ds.StudyInstanceUID for ds in studies]
                times = wait_results(db_url, uids, 300)
                lat = np.array([times[u][0] - sender.acked[u] for u in uids if times.get(u, (0, 0, 0))[2]])
                end = max(times[u][0] for u in uids if u in times)
                out["runs"].append({
                    "in_flight": in_flight, "studies": n, "delivered": int(lat.size),
                    "latency_p50_s": round(float(np.percentile(lat, 50)), 3),
                    "latency_p95_s": round(float(np.percentile(lat, 95)), 3),
                    "latency_max_s": round(float(lat.max()), 3),
                    "studies_per_min": round(60 * n / (end - t0), 1)})
                log.info("run %s", out["runs"][-1])
            out["peak_rss_mb_before_soak"] = round(svc.peak_rss / 2**20)
            if soak:
                out["soak"] = soak_run(svc, sender, db_url, pacs, jpegs, soak, kill_every)
            out["peak_rss_mb"] = round(svc.peak_rss / 2**20)
    finally:
        pacs.stop()
    return out


def soak_run(svc: ServiceRun, sender: Sender, db_url: str, pacs: Orthanc, jpegs: list[Path],
             n: int, kill_every: int) -> dict:
    """Send ``n`` studies; each time ``kill_every`` more of them are done, SIGKILL the worker
    process that holds a running job's lease (so it dies mid-job)."""
    from sqlalchemy import func, select

    from medinfer.serve.models import Job
    from medinfer.serve.store import Store

    studies = [endoscopy_study(jpegs[i % len(jpegs)]) for i in range(n)]
    store = Store(db_url)
    with store.session() as s:
        first_job = (s.scalar(select(func.max(Job.id))) or 0) + 1
    kills: list[int] = []
    finished = threading.Event()

    def killer() -> None:
        threshold = kill_every
        while not finished.is_set() and threshold < n:
            with store.session() as s:
                done = s.scalar(select(func.count()).select_from(Job).where(
                    Job.id >= first_job, Job.state == "done")) or 0
                running = s.scalars(select(Job.lease_owner).where(
                    Job.id >= first_job, Job.state == "running")).all()
            if done >= threshold and running:
                pid = int(str(running[0]).rsplit(":", 1)[1])
                if pid in {p.pid for p in svc.workers()}:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(done)
                    threshold += kill_every
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    t0 = time.time()
    sender.send_all(studies, 4)
    uids = [ds.StudyInstanceUID for ds in studies]
    times = wait_results(db_url, uids, 900)
    elapsed = time.time() - t0
    finished.set()
    thread.join()
    done_jobs = [times.get(u, (0, 0, 0))[1] for u in uids]
    sent = [times.get(u, (0, 0, 0))[2] for u in uids]
    in_pacs = {}
    for uid in uids:
        found = pacs.find(StudyInstanceUID=uid, Modality="SEG")
        in_pacs[uid] = len(found)
    counts = store.job_counts()
    with store.session() as s:
        retried = s.scalar(select(func.count()).select_from(Job).where(Job.attempts > 1))
    store.close()
    return {"studies": n, "workers_killed": len(kills), "killed_at_done_counts": kills,
            "seconds": round(elapsed, 1),
            "lost": sum(d == 0 for d in done_jobs), "duplicated_jobs": sum(d > 1 for d in done_jobs),
            "seg_in_orthanc_missing": sum(v == 0 for v in in_pacs.values()),
            "seg_in_orthanc_duplicated": sum(v > 1 for v in in_pacs.values()),
            "seg_deliveries_not_one": sum(x != 1 for x in sent),
            "jobs_retried_after_kill": int(retried), "job_states": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg/images"))
    ap.add_argument("--studies-1", type=int, default=20)
    ap.add_argument("--studies-8", type=int, default=40)
    ap.add_argument("--soak", type=int, default=200)
    ap.add_argument("--kill-every", type=int, default=20)
    ap.add_argument("--quiet", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-seg", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, handlers=[RichHandler(show_path=False)],
                        format="%(message)s")
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    import highdicom
    import pydicom
    import pynetdicom

    result: dict = {
        "benchmark": "serve", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "versions": {"python": platform.python_version(), "highdicom": highdicom.__version__,
                     "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__,
                     "orthanc": subprocess.run(["Orthanc", "--version"], capture_output=True,
                                               text=True).stdout.split("\n")[0]},
    }
    if not args.skip_seg:
        result["seg"] = bench_seg()
        result["seg_labelmap"] = bench_seg(labelmap=True)
        log.info("seg %s / %s", result["seg"], result["seg_labelmap"])
    jpegs = sorted(args.data.glob("*.jpg"))[:64]
    result["e2e"] = run_service_bench(args.work, jpegs, {1: args.studies_1, 8: args.studies_8},
                                      args.soak, args.kill_every, args.quiet, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
