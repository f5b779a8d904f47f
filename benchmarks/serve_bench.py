"""Benchmark: `medinfer serve` against a real Orthanc (S10). Not a test.

Four measurements (``--only``, default all), each recorded in one JSON file:

1. ``seg``: time to write a DICOM SEG for a 512x512x300 result with 5 segments
   (highdicom, binary and labelmap SEG, from 300 synthetic single-frame source instances).
2. ``e2e``: 2D endoscopy studies (Kvasir-SEG frames wrapped as VL Endoscopic DICOM) sent by
   C-STORE with 1 and 8 senders, routed to ``models/polyp-resunet``; closed loop (each
   sender sends its next study once its previous study's SEG is in Orthanc); latency =
   last instance acknowledged -> SEG stored in Orthanc (C-STORE success recorded by the
   service), quiet time included; studies per minute; peak resident memory.
3. ``soak``: ``--soak`` studies (200) mixing VL Endoscopic studies and 24-slice MR series by
   C-STORE and REST uploads of Kvasir JPEGs (``--mix``), sent by ``--senders`` (8)
   closed-loop senders: each sends its next study once its previous one's job is done (the
   result made; its SEG is queued for the PACS, not waited for, so senders keep going
   through the outage). A worker process holding a job is SIGKILLed every ``--kill-every``
   (20) done jobs; Orthanc is stopped for ``--outage`` (60) s once ``--outage-at`` (half)
   of the studies were sent, then started again on the same ports and storage. Reported
   per type: lost, duplicated, partial and late results, latency p50/p95 outside and
   during the outage, and the memory of the service and its workers over the run.
4. ``warm``: a fresh service (new storage): seconds from process start to ``/health`` ok and
   to each "worker started" log line, then one 24-slice MR series sent at once and
   ``--warm-later`` (5) more one after the other: last instance -> SEG in Orthanc each.
5. ``ct``: a real abdominal CT series (``--ct``: the 129 slices of 512x512 of
   liver-ct-ircadb, read in place) sent by C-STORE ``--ct-repeats`` (3) times one after the
   other, each as a new study, to a warm service routing CT to ``models/liver-ct-unet3d``:
   last instance acknowledged -> liver SEG stored in Orthanc, and the job's stage times.
   The copies sent carry BodyPartExamined ABDOMEN, which the IRCADb files lack.

Every service runs as users run it (``medinfer serve --config``, worker processes, SQLite
under its storage folder) with the routes ES -> polyp-resunet, MR -> brain-unet3d,
PNG/JPEG uploads -> polyp-resunet, and Orthanc on loopback as the PACS (SEG only).

Usage (repository root, after `make install`; needs orthanc, orthanc-dicomweb):

    .venv/bin/python benchmarks/serve_bench.py --out benchmarks/results/serve_<date>.json

See benchmarks/README.md for the JSON keys.
"""

from __future__ import annotations

import argparse
import copy
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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Self

import httpx
import numpy as np
import psutil
import yaml
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rich.logging import RichHandler
from rich.progress import Progress

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "serve"), str(REPO / "tests")]  # helpers + shared_data
from orthanc_pacs import Orthanc
from serve_helpers import free_port

from medinfer.serve.store import Store

log = logging.getLogger("serve_bench")

MR_DIR = Path("../shared/data/dicom-mr-brain-tumor-progression/PGBM-001/11-T1post-80644")
CT_DIR = Path("../shared/data/liver-ct-ircadb/ircadb01_01/ct")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16")
KINDS = ("endo", "mr", "upload")


# --------------------------------------------------------------------------- the record

def rel(path: Path | str) -> str:
    """``path`` relative to the repository when it lies under it or beside it, so the JSON
    never holds an absolute path of this machine."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return os.path.relpath(p.resolve(), REPO)
    except ValueError:
        return p.name


def machine() -> dict:
    """Platform, CPU model and the ISA flags that matter for inference, cores, memory."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags],
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def versions() -> dict:
    """Versions of Python, the runtimes, the DICOM stack and Orthanc (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("medinfer", "torch", "openvino", "onnxruntime", "pynetdicom", "pydicom",
                 "highdicom", "sqlalchemy", "uvicorn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["orthanc"] = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True,
                                        timeout=10, check=False).stdout.split("\n")[0].strip() or None
    except (OSError, subprocess.SubprocessError):
        out["orthanc"] = None
    return out


def git_revision() -> dict:
    """``git rev-parse HEAD`` and whether the working tree differs from it (read-only: no
    index lock taken)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=30, check=False).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def command_line() -> str:
    """The command as run, with absolute paths made relative to the repository."""
    args = [rel(a) if os.path.isabs(a) else a for a in sys.argv]
    return " ".join([".venv/bin/python" if ".venv" in sys.executable else "python", *args])


def quantiles(values: list[float]) -> dict:
    """n, p50, p95 and max of ``values`` (seconds), rounded; only n when empty."""
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": int(a.size), "p50_s": round(float(np.percentile(a, 50)), 3),
            "p95_s": round(float(np.percentile(a, 95)), 3), "max_s": round(float(a.max()), 3)}


# --------------------------------------------------------------------------- studies

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


def load_mr_slices(folder: Path) -> list[Dataset]:
    """The slices of a real MR series (24 slices of 320x260 for the shipped PGBM-001 T1post),
    read once; :func:`mr_study` gives each study its own UIDs."""
    slices = [dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    if not slices:
        raise SystemExit(f"no MR slices in {folder}")
    return slices


def load_ct_slices(folder: Path) -> list[Dataset]:
    """The slices of the IRCADb CT (files ``image_<N>`` without extension), in N order, with
    BodyPartExamined ABDOMEN added to the copies (the files have none; a modality sets it)."""
    files = sorted(folder.glob("image_*"), key=lambda p: int(p.name.split("_")[-1]))
    if not files:
        raise SystemExit(f"no CT slices in {folder}")
    slices = [dcmread(p) for p in files]
    for ds in slices:
        ds.BodyPartExamined = "ABDOMEN"
    return slices


def mr_study(slices: list[Dataset]) -> list[Dataset]:
    """A copy of the MR series as a new study: new study, series, frame-of-reference and
    SOP instance UIDs, pixels and geometry unchanged."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for src in slices:
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out.append(ds)
    return out


# --------------------------------------------------------------------------- senders

class Sender:
    """C-STORE studies to medinfer from a pool of threads; records when each was acknowledged."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: dict[str, float] = {}
        self.lock = threading.Lock()

    def send(self, study: Dataset | list[Dataset]) -> float:
        """C-STORE the instances of one study in one association; returns (and records
        under its StudyInstanceUID) the time the last one was acknowledged."""
        from pynetdicom import AE

        instances = study if isinstance(study, list) else [study]
        ae = AE(ae_title="MODALITY")
        for sop_class in {ds.SOPClassUID for ds in instances}:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="MEDINFER")
        assert assoc.is_established, "association refused"
        try:
            for ds in instances:
                status = assoc.send_c_store(ds)
                assert status and status.Status == 0, f"C-STORE status {status}"
            t = time.time()
        finally:
            assoc.release()
        with self.lock:
            self.acked[instances[0].StudyInstanceUID] = t
        return t

    def send_closed_loop(self, studies: list[Dataset], in_flight: int, db_url: str) -> None:
        """Closed loop: ``in_flight`` senders, each sending its next study only when the
        previous one's SEG is stored in the PACS (so ``in_flight`` studies are in the system)."""
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


def upload(http_port: int, token: str, jpeg: Path) -> tuple[int, float]:
    """POST one JPEG to ``/api/v1/studies``; returns (study id, time the 202 came back)."""
    r = httpx.post(f"http://127.0.0.1:{http_port}/api/v1/studies",
                   headers={"Authorization": f"Bearer {token}"},
                   files={"files": (jpeg.name, jpeg.read_bytes(), "image/jpeg")}, timeout=60)
    t = time.time()
    r.raise_for_status()
    return int(r.json()["study_id"]), t


# --------------------------------------------------------------------------- job store

_STORES: dict[str, object] = {}


def stored_times(db_url: str, only: str | None = None) -> dict[str, tuple[float, int, int]]:
    """study UID -> (SEG delivery sent_at, done jobs, SEG deliveries sent) from the job store."""
    from sqlalchemy import select

    from medinfer.serve.models import Delivery, Job, Result, Study

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


@dataclass
class StudyState:
    """What the job store says of one received study (a C-STORE study or an upload)."""

    uid: str
    jobs: dict[int, tuple[str, float | None]] = field(default_factory=dict)  # id -> state, end
    seg_sent: int = 0
    seg_sent_at: float = 0.0
    results: int = 0  # result files of done jobs

    @property
    def done(self) -> list[float]:
        """finished_at of each done job."""
        return [end or 0.0 for state, end in self.jobs.values() if state == "done"]


class Tracker:
    """One thread reads every study's jobs and SEG deliveries from the job store every
    ``period`` seconds (one query for all senders, instead of one poll each on SQLite)."""

    def __init__(self, db_url: str, period: float = 0.25) -> None:
        self.store, self.period = Store(db_url), period
        self.by_id: dict[int, StudyState] = {}
        self.ids_of: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self.refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.store.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001  (a locked SQLite read: try again next period)
                log.debug("tracker read failed: %s", exc)

    def refresh(self) -> None:
        """Read the store once."""
        from sqlalchemy import select

        from medinfer.serve.models import Delivery, Job, Result, Study

        q = (select(Study.id, Study.study_uid, Job.id, Job.state, Job.finished_at,
                    Result.kind, Delivery.state, Delivery.sent_at)
             .join(Job, Job.study_id == Study.id)
             .outerjoin(Result, Result.job_id == Job.id)
             .outerjoin(Delivery, Delivery.result_id == Result.id))
        by_id: dict[int, StudyState] = {}
        with self.store.session() as s:
            for sid, uid, jid, jstate, end, kind, dstate, sent_at in s.execute(q):
                st = by_id.setdefault(sid, StudyState(uid))
                st.jobs[jid] = (jstate, end)
                st.results += kind is not None and jstate == "done"
                if kind == "seg" and dstate == "sent":
                    st.seg_sent += 1
                    st.seg_sent_at = max(st.seg_sent_at, sent_at or 0.0)
        ids_of: dict[str, list[int]] = {}
        for sid, st in by_id.items():
            ids_of.setdefault(st.uid, []).append(sid)
        self.by_id, self.ids_of = by_id, ids_of

    def study(self, key: str | int) -> StudyState | None:
        """The state of a study by StudyInstanceUID (C-STORE) or study id (upload); a UID
        received as more than one study merges them (which would itself be a finding)."""
        if isinstance(key, int):
            return self.by_id.get(key)
        ids = self.ids_of.get(key, [])
        if not ids:
            return None
        merged = StudyState(key)
        for sid in ids:
            st = self.by_id[sid]
            merged.jobs.update(st.jobs)
            merged.seg_sent += st.seg_sent
            merged.seg_sent_at = max(merged.seg_sent_at, st.seg_sent_at)
            merged.results += st.results
        return merged


# --------------------------------------------------------------------------- the service

@dataclass
class Setup:
    """One service's config file, ports and database."""

    config: Path
    http_port: int
    dicom_port: int
    db_url: str
    workers: int


def service_setup(work: Path, pacs: Orthanc, quiet: float, workers: int,
                  retry_max: float) -> Setup:
    """Write a service config under ``work`` (fresh storage) with the three routes and
    Orthanc as the SEG destination."""
    work.mkdir(parents=True, exist_ok=True)
    storage = (work / "storage").resolve()
    http_port, dicom_port = free_port(), free_port()
    models = REPO / "models"
    cfg = {"storage": str(storage), "quiet_seconds": quiet, "workers": workers,
           "lease_seconds": 5, "max_attempts": 5, "log_format": "json",
           "delivery_retry_seconds": 0.5, "delivery_retry_max_seconds": retry_max,
           "http": {"port": http_port},
           "dicom": {"port": dicom_port, "allowed_calling_aets": ["MODALITY"]},
           # as config/serve.example.yaml: frames a clinician waits for go before MR
           "routes": [{"name": "endoscopy", "artifact": str(models / "polyp-resunet"),
                       "match": {"modality": ["ES"]}, "priority": 10},
                      {"name": "brain-mr", "artifact": str(models / "brain-unet3d"),
                       "match": {"modality": ["MR"]}},
                      {"name": "endoscopy-upload", "artifact": str(models / "polyp-resunet"),
                       "match": {"formats": ["png", "jpeg"]}, "priority": 10},
                      *([{"name": "liver-ct", "artifact": str(models / "liver-ct-unet3d"),
                          "match": {"modality": ["CT"], "body_part": ["ABDOMEN"]}}]
                        if (models / "liver-ct-unet3d").is_dir() else [])],
           "destinations": [{"name": "orthanc", "kind": "dimse", "host": "127.0.0.1",
                             "port": pacs.dicom_port, "ae_title": pacs.ae_title,
                             "results": ["seg"]}]}
    config = work / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return Setup(config, http_port, dicom_port, f"sqlite:///{storage / 'medinfer.db'}", workers)


class ServiceRun:
    """``medinfer serve`` as a subprocess, with RSS sampling of its whole process tree
    (service + workers, every 0.2 s: ``peak_rss``; every 5 s kept in ``rss_timeline``) and
    the arrival time of each "worker started" log line."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.peak_rss = 0
        self.rss_timeline: list[tuple[float, int]] = []
        self.worker_started: list[float] = []
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        exe = Path(sys.executable).parent / "medinfer"
        self.log_path = self.setup.config.parent / "service.log"
        self.log = open(self.log_path, "wb")  # kept open for the process
        self.t_start = time.time()
        self.proc = subprocess.Popen([str(exe), "serve", "--config", str(self.setup.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        threading.Thread(target=self._sample, daemon=True).start()
        threading.Thread(target=self._follow_log, daemon=True).start()
        return self

    def _sample(self) -> None:
        root, last = psutil.Process(self.proc.pid), 0.0
        while not self._stop.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
            except psutil.Error:
                continue
            self.peak_rss = max(self.peak_rss, rss)
            if time.time() - last >= 5:
                last = time.time()
                self.rss_timeline.append((last - self.t_start, rss))

    def _follow_log(self) -> None:
        """Stamp each "worker started" line as it appears (the log's own times are whole
        seconds)."""
        with open(self.log_path, "rb") as f:
            while not self._stop.is_set():
                line = f.readline()
                if not line:
                    time.sleep(0.05)
                elif b'"worker started"' in line:
                    self.worker_started.append(time.time())

    def wait_ready(self, timeout: float = 180, workers: bool = True) -> float:
        """Wait for ``/health`` to answer and (``workers``) for every worker's "worker
        started"; returns when /health first answered (UNIX seconds)."""
        deadline, t_health = time.time() + timeout, 0.0
        url = f"http://127.0.0.1:{self.setup.http_port}/health"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited; see {rel(self.log_path)}")
            if not t_health:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        t_health = time.time()
                except httpx.HTTPError:
                    pass
            if t_health and (not workers or len(self.worker_started) >= self.setup.workers):
                return t_health
            time.sleep(0.05)
        raise RuntimeError("service not ready in time")

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

    def memory(self) -> dict:
        """Peak RSS and the 5 s timeline of the process tree, in MiB."""
        return {"peak_rss_mb": round(self.peak_rss / 2**20),
                "rss_mb_timeline": [[round(t), round(r / 2**20)] for t, r in self.rss_timeline]}

    def log_warnings(self) -> dict[str, int]:
        """Count of the service log's WARNING/ERROR lines by level and message."""
        counts: Counter[str] = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            level = str(rec.get("level", "")).lower() if isinstance(rec, dict) else ""
            if level not in ("", "info", "debug"):
                counts[f"{rec.get('level')}: {rec.get('message')}"] += 1
        return dict(counts)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_results(db_url: str, uids: list[str], timeout: float) -> dict[str, tuple]:
    """Wait until every study in ``uids`` has a SEG delivery sent (or ``timeout`` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        times = stored_times(db_url)
        if all(times.get(u, (0, 0, 0))[2] >= 1 for u in uids):
            return times
        time.sleep(0.5)
    return stored_times(db_url)


# --------------------------------------------------------------------------- seg, e2e

def bench_seg(shape: tuple[int, int, int] = (512, 512, 300), n_segments: int = 5,
              labelmap: bool = False) -> dict:
    """Seconds to write a binary SEG for a ``shape`` label map with ``n_segments`` labels."""
    from medinfer.data.synthetic import dicom_slice
    from medinfer.io.derived import write_seg

    rows, cols, n = shape
    study, series = generate_uid(), generate_uid()
    px = np.zeros((rows, cols), np.uint16)
    sources = [dicom_slice(px, position=(0.0, 0.0, 1.0 * k), instance=k + 1, series_uid=series,
                           study_uid=study, thickness=1.0) for k in range(n)]
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
    frames = int(dcmread(path, stop_before_pixels=True).NumberOfFrames)
    return {"shape": list(shape), "segments": n_segments,
            "type": "LABELMAP" if labelmap else "BINARY", "seconds": round(seconds, 3),
            "frames_written": frames, "file_mb": round(path.stat().st_size / 2**20, 2)}


def run_e2e(setup: Setup, jpegs: list[Path], counts: dict[int, int]) -> dict:
    """Closed-loop 2D endoscopy runs with 1 and 8 senders on one fresh service."""
    out: dict = {"runs": []}
    with ServiceRun(setup) as svc:
        svc.wait_ready()
        sender = Sender(setup.dicom_port)
        sender.send(endoscopy_study(jpegs[0]))  # warm the whole path once
        wait_results(setup.db_url, list(sender.acked), 60)
        for in_flight, n in counts.items():
            studies = [endoscopy_study(jpegs[(i + 1) % len(jpegs)]) for i in range(n)]
            t0 = time.time()
            sender.send_closed_loop(studies, in_flight, setup.db_url)
            uids = [ds.StudyInstanceUID for ds in studies]
            times = wait_results(setup.db_url, uids, 300)
            lat = [times[u][0] - sender.acked[u] for u in uids if times.get(u, (0, 0, 0))[2]]
            end = max(times[u][0] for u in uids if u in times)
            q = quantiles(lat)
            out["runs"].append({
                "in_flight": in_flight, "studies": n, "delivered": q["n"],
                "latency_p50_s": q.get("p50_s"), "latency_p95_s": q.get("p95_s"),
                "latency_max_s": q.get("max_s"), "studies_per_min": round(60 * n / (end - t0), 1)})
            log.info("e2e %s", out["runs"][-1])
        out.update(svc.memory())
        out["log_warnings"] = svc.log_warnings()
    return out


# --------------------------------------------------------------------------- soak

@dataclass
class Sent:
    """One study the soak sent: its kind, how it is found in the store (StudyInstanceUID or
    upload study id), when its last instance was acknowledged, how many instances."""

    kind: str
    key: str | int | None = None
    acked: float = 0.0
    instances: int = 0
    error: str = ""


@dataclass
class SoakPlan:
    """What the soak sends and does to the service."""

    n: int
    mix: list[str]
    senders: int
    kill_every: int
    outage: float
    outage_at: float
    late_after: float
    wait: float = 300.0


def worker_killer(svc: ServiceRun, store: Store, n: int, every: int,
                  finished: threading.Event, kills: list[dict]) -> None:
    """Each time ``every`` more jobs are done, SIGKILL the worker process holding a running
    job's lease (so it dies mid-job). ``kills`` gets, per kill, the done count, the job and
    whether the job was still unfinished after the kill (a short job may end between the
    read and the signal: then no work was lost)."""
    from sqlalchemy import func, select

    from medinfer.serve.models import Job

    threshold = every
    while not finished.is_set() and threshold < n:
        try:
            with store.session() as s:
                done = s.scalar(select(func.count()).select_from(Job).where(
                    Job.state == "done")) or 0
                running = s.execute(select(Job.id, Job.lease_owner).where(
                    Job.state == "running")).first()
        except Exception:  # noqa: BLE001  (a locked SQLite read: next round)
            time.sleep(0.1)
            continue
        if done >= threshold and running:
            job, owner = running
            pid = int(str(owner).rsplit(":", 1)[1])
            if pid in {p.pid for p in svc.workers()}:
                os.kill(pid, signal.SIGKILL)
                threshold += every
                time.sleep(0.3)
                with store.session() as s:
                    state = s.scalar(select(Job.state).where(Job.id == job))
                kills.append({"done": done, "job": job, "mid_job": state != "done"})
        time.sleep(0.02)


def pacs_outage(pacs: Orthanc, sent_count: Callable[[], int], at: int, seconds: float,
                window: dict[str, float], finished: threading.Event) -> None:
    """Once ``at`` studies were sent, stop Orthanc for ``seconds``, then start it again on
    the same ports and storage; ``window`` gets the ``down`` and ``up`` times."""
    while sent_count() < at and not finished.is_set():
        time.sleep(0.1)
    if finished.is_set() or seconds <= 0:
        return
    pacs.stop()
    window["down"] = time.time()
    log.info("PACS stopped for %.0f s", seconds)
    time.sleep(seconds)
    pacs.start(append_log=True)
    window["up"] = time.time()
    log.info("PACS back")


def soak_lane(plan: SoakPlan, items: list[tuple[int, str]], sender: Sender, setup: Setup,
              token: str, tracker: Tracker, sources: dict, record: list[Sent],
              on_sent: Callable[[], None]) -> None:
    """One closed-loop sender: send each study, then wait until its job is done."""
    for i, kind in items:
        s = record[i]
        try:
            if kind == "upload":
                jpeg = sources["jpegs"][i % len(sources["jpegs"])]
                s.key, s.acked = upload(setup.http_port, token, jpeg)
                s.instances = 1
            else:
                study = (mr_study(sources["mr"]) if kind == "mr"
                         else [endoscopy_study(sources["jpegs"][i % len(sources["jpegs"])])])
                s.key, s.instances = str(study[0].StudyInstanceUID), len(study)
                s.acked = sender.send(study)
        except Exception as exc:  # noqa: BLE001  (recorded as a send failure; the lane goes on)
            s.error = f"{type(exc).__name__}: {exc}"
            log.warning("study %d (%s) not sent: %s", i, kind, s.error)
            continue
        finally:
            on_sent()
        deadline = time.time() + plan.wait
        while time.time() < deadline:
            st = tracker.study(s.key)
            if st is not None and st.done:
                break
            time.sleep(0.1)


def seg_references(pacs: Orthanc, uid: str) -> list[int]:
    """For each SEG Orthanc holds in study ``uid``: how many source instances it
    references (ReferencedSeriesSequence -> ReferencedInstanceSequence)."""
    out = []
    for inst in pacs.find(StudyInstanceUID=uid, Modality="SEG"):
        tags = pacs.instance_tags(inst["ID"])
        out.append(sum(len(r.get("ReferencedInstanceSequence") or [])
                       for r in tags.get("ReferencedSeriesSequence") or []))
    return out


def instance_counts(db_url: str) -> dict[int, int]:
    """study id -> instances stored for it."""
    from sqlalchemy import func, select

    from medinfer.serve.models import Instance

    store = Store(db_url)
    with store.session() as s:
        rows = {sid: n for sid, n in s.execute(
            select(Instance.study_id, func.count()).group_by(Instance.study_id))}
    store.close()
    return rows


def judge(s: Sent, st: StudyState | None, refs: list[int] | None, stored: int,
          window: dict[str, float], late_after: float) -> dict:
    """One study's outcome: lost / duplicated / partial flags, latency, whether its interval
    overlapped the outage, and whether it was late (more than ``late_after`` s after the
    later of its acknowledgement and the PACS's return)."""
    dicom = s.kind != "upload"
    done = st.done if st else []
    if dicom:
        t_result = st.seg_sent_at if st and st.seg_sent else 0.0
    else:
        t_result = max(done) if done else 0.0
    lost = not t_result or (dicom and not refs)
    dup = len(done) > 1 or (dicom and ((st.seg_sent if st else 0) > 1 or len(refs or []) > 1))
    partial = stored < s.instances or (dicom and bool(refs) and min(refs) < s.instances) or (
        not dicom and bool(done) and st is not None and st.results == 0)
    out = {"lost": bool(lost), "duplicated": bool(dup), "partial": bool(partial)}
    if t_result:
        down, up = window.get("down"), window.get("up")
        overlap = down is not None and s.acked <= (up or t_result) and t_result >= down
        # a result the PACS could not take before ``up`` is late only counted from ``up``;
        # uploads never wait for the PACS
        start = max(s.acked, up) if dicom and overlap and up else s.acked
        out.update(latency=t_result - s.acked, outage=overlap, late=t_result - start > late_after,
                   t_result=t_result)
    return out


def soak_report(plan: SoakPlan, record: list[Sent], tracker: Tracker, pacs: Orthanc,
                db_url: str, window: dict[str, float], t0: float) -> dict:
    """Per kind: sent, send failures, lost, duplicated, partial, late, latency outside and
    during the outage; the studies that went wrong, by index and kind; and every study as
    ``[kind, acknowledged at s, latency s, overlapped the outage]`` (times from ``t0``)."""
    tracker.refresh()
    stored = instance_counts(db_url)
    per: dict[str, dict] = {}
    problems, rows = [], []
    for i, s in enumerate(record):
        p = per.setdefault(s.kind, {"sent": 0, "send_failed": 0, "lost": 0, "duplicated": 0,
                                    "partial": 0, "late": 0, "_out": [], "_in": []})
        if s.error or s.key is None:
            p["send_failed"] += 1
            problems.append({"study": i, "kind": s.kind, "send_error": s.error})
            continue
        p["sent"] += 1
        st = tracker.study(s.key)
        refs = seg_references(pacs, str(s.key)) if s.kind != "upload" else None
        ids = [s.key] if isinstance(s.key, int) else tracker.ids_of.get(s.key, [])
        v = judge(s, st, refs, sum(stored.get(k, 0) for k in ids), window, plan.late_after)
        for flag in ("lost", "duplicated", "partial"):
            p[flag] += v[flag]
        rows.append([s.kind, round(s.acked - t0, 2), round(v["latency"], 2) if "latency" in v
                     else None, v.get("outage")])
        if "latency" in v:
            p["late"] += v["late"]
            p["_in" if v["outage"] else "_out"].append(v["latency"])
        if v["lost"] or v["duplicated"] or v["partial"]:
            problems.append({"study": i, "kind": s.kind, **{k: v[k] for k in
                             ("lost", "duplicated", "partial")},
                             "done_jobs": len(st.done) if st else 0,
                             "seg_deliveries_sent": st.seg_sent if st else 0,
                             "seg_in_orthanc_refs": refs, "instances_sent": s.instances})
    for p in per.values():
        p["latency_outside_outage"] = quantiles(p.pop("_out"))
        p["latency_during_outage"] = quantiles(p.pop("_in"))
    return {"by_kind": per, "problems": problems, "studies_timeline": rows}


def run_soak(setup: Setup, pacs: Orthanc, plan: SoakPlan, sources: dict) -> dict:
    """The soak on a fresh service: closed-loop senders over the mix, worker kills, the
    PACS outage; then the per-kind report, job/delivery states and memory."""
    kinds = [plan.mix[i % len(plan.mix)] for i in range(plan.n)]
    record = [Sent(k) for k in kinds]
    store = Store(setup.db_url)
    token = store.create_token("bench", ["submit", "read"])
    finished, window = threading.Event(), {}
    kills: list[dict] = []
    sent = [0]
    lock = threading.Lock()

    def on_sent() -> None:
        with lock:
            sent[0] += 1
            progress.advance(task)

    with ServiceRun(setup) as svc, Tracker(setup.db_url) as tracker, Progress() as progress:
        svc.wait_ready()
        task = progress.add_task("soak: studies sent", total=plan.n)
        threads = [threading.Thread(target=worker_killer, daemon=True,
                                    args=(svc, store, plan.n, plan.kill_every, finished, kills)),
                   threading.Thread(target=pacs_outage, daemon=True,
                                    args=(pacs, lambda: sent[0], int(plan.n * plan.outage_at),
                                          plan.outage, window, finished))]
        for t in threads:
            t.start()
        t0 = time.time()
        sender = Sender(setup.dicom_port)
        items = list(enumerate(kinds))
        with ThreadPoolExecutor(plan.senders) as pool:
            lanes = [pool.submit(soak_lane, plan, items[k::plan.senders], sender, setup, token,
                                 tracker, sources, record, on_sent) for k in range(plan.senders)]
            for f in lanes:
                f.result()
        t_sent = time.time()
        threads[1].join()  # the PACS is back before waiting for the backlog
        deadline = time.time() + plan.wait
        while time.time() < deadline and not all_delivered(record, tracker):
            time.sleep(0.5)
        elapsed = time.time() - t0
        finished.set()
        threads[0].join()
        time.sleep(2)  # a duplicate delivery would land now
        report = soak_report(plan, record, tracker, pacs, setup.db_url, window, t0)
        report.update(soak_summary(plan, record, tracker, store, kills, window,
                                   {"t0": t0, "sent": t_sent, "end": t0 + elapsed}))
        report.update(svc.memory())
        report["log_warnings"] = svc.log_warnings()
    store.close()
    return report


def soak_summary(plan: SoakPlan, record: list[Sent], tracker: Tracker, store: Store,
                 kills: list[dict], window: dict[str, float], t: dict[str, float]) -> dict:
    """The run as a whole: durations, kills, the outage window and how long after the PACS
    came back the last SEG went out, retried jobs, job and delivery states."""
    from sqlalchemy import func, select

    from medinfer.serve.models import Job

    with store.session() as s:
        retried = s.scalar(select(func.count()).select_from(Job).where(Job.attempts > 1))
    results = [tracker.study(r.key) for r in record if r.kind != "upload" and r.key]
    last = max((st.seg_sent_at for st in results if st and st.seg_sent), default=0.0)

    def since_t0(key: str) -> float | None:
        return round(window[key] - t["t0"], 1) if key in window else None

    elapsed = t["end"] - t["t0"]
    return {
        "studies": plan.n, "mix": plan.mix, "senders": plan.senders, "loop": "closed",
        "seconds": round(elapsed, 1), "seconds_sending": round(t["sent"] - t["t0"], 1),
        "studies_per_min": round(60 * plan.n / elapsed, 1),
        "workers_killed": len(kills), "kills": kills,
        "kills_mid_job": sum(k["mid_job"] for k in kills),
        "outage": {"seconds": plan.outage, "at_fraction": plan.outage_at,
                   "down_at_s": since_t0("down"), "up_at_s": since_t0("up"),
                   "last_seg_after_up_s": round(last - window["up"], 1)
                   if "up" in window and last else None},
        "late_after_s": plan.late_after, "jobs_retried": int(retried or 0),
        "job_states": store.job_counts(), "delivery_states": store.delivery_counts()}


def all_delivered(record: list[Sent], tracker: Tracker) -> bool:
    """Every sent study has its result: a SEG delivery sent (C-STORE) or a done job (upload)."""
    for s in record:
        if s.key is None:
            continue
        st = tracker.study(s.key)
        if st is None or not (st.done if s.kind == "upload" else st.seg_sent):
            return False
    return True


# --------------------------------------------------------------------------- warm start

def send_until_seg(sender: Sender, tracker: Tracker, study: list[Dataset],
                   timeout: float) -> tuple[str, float, float | None]:
    """C-STORE ``study`` and wait until its SEG is stored in the PACS: (study UID, time the
    last instance was acknowledged, time the SEG was stored or None after ``timeout`` s)."""
    acked = sender.send(study)
    uid = str(study[0].StudyInstanceUID)
    deadline, st = time.time() + timeout, None
    while time.time() < deadline:
        st = tracker.study(uid)
        if st is not None and st.seg_sent:
            break
        time.sleep(0.05)
    return uid, acked, st.seg_sent_at if st and st.seg_sent else None


def done_job_seconds(tracker: Tracker) -> dict[str, dict]:
    """Study UID -> the stage seconds of its done job."""
    from sqlalchemy import select

    from medinfer.serve.models import Job, Study

    with tracker.store.session() as s:
        return {uid: sec for uid, sec in s.execute(
            select(Study.study_uid, Job.seconds).join(Job, Job.study_id == Study.id)
            .where(Job.state == "done"))}


def run_warm(setup: Setup, mr: list[Dataset], later: int) -> dict:
    """Start a fresh service; time /health and each worker's "worker started"; send one MR
    series as soon as /health answers (not waiting for the workers: what a modality would
    do) and ``later`` more one after the other (closed loop)."""
    with ServiceRun(setup) as svc:
        t_health = svc.wait_ready(workers=False)
        tracker = Tracker(setup.db_url, 0.05).__enter__()  # the service made the database
        sender = Sender(setup.dicom_port)
        studies = [send_until_seg(sender, tracker, mr_study(mr), 180) for _ in range(1 + later)]
        seconds = done_job_seconds(tracker)
        tracker.__exit__()
        rows = [{"latency_s": round(end - acked, 3) if end else None,
                 "job_seconds": seconds.get(uid, {})} for uid, acked, end in studies]
        out = {"series": {"slices": len(mr), "rows": int(mr[0].Rows), "columns": int(mr[0].Columns),
                          "source": rel(MR_DIR)},
               "health_ok_after_start_s": round(t_health - svc.t_start, 2),
               "worker_started_after_start_s": [round(t - svc.t_start, 2)
                                                for t in svc.worker_started],
               "first_study": rows[0], "later_studies": rows[1:],
               "later_latency": quantiles([r["latency_s"] for r in rows[1:] if r["latency_s"]])}
        out["first_acknowledged_after_start_s"] = round(studies[0][1] - svc.t_start, 2)
        out["workers_started_before_first_sent"] = sum(
            t <= studies[0][1] for t in svc.worker_started)
        out.update(svc.memory())
    log.info("warm start: health %.1f s, workers %s, first %s, later %s",
             out["health_ok_after_start_s"], out["worker_started_after_start_s"],
             rows[0]["latency_s"], out["later_latency"])
    return out


# --------------------------------------------------------------------------- real CT

def run_ct(setup: Setup, ct: list[Dataset], repeats: int) -> dict:
    """A warm service; the CT series sent ``repeats`` times one after the other (closed loop):
    last instance acknowledged -> SEG stored in Orthanc, with the job's stage seconds."""
    with ServiceRun(setup) as svc:
        svc.wait_ready()
        tracker = Tracker(setup.db_url, 0.05).__enter__()
        sender = Sender(setup.dicom_port)
        studies = []
        for _ in range(repeats):  # mr_study: new UIDs, pixels and geometry unchanged
            studies.append(send_until_seg(sender, tracker, mr_study(ct), 600))
            log.info("CT study: %.1f s from last C-STORE to SEG in the PACS",
                     (studies[-1][2] or float("nan")) - studies[-1][1])
        seconds = done_job_seconds(tracker)
        tracker.__exit__()
        rows = [{"latency_s": round(end - acked, 3) if end else None,
                 "job_seconds": seconds.get(uid, {})} for uid, acked, end in studies]
        out = {"series": {"slices": len(ct), "rows": int(ct[0].Rows), "columns": int(ct[0].Columns),
                          "source": rel(CT_DIR)},
               "model": "models/liver-ct-unet3d", "studies": rows,
               "latency": quantiles([r["latency_s"] for r in rows if r["latency_s"]])}
        out.update(svc.memory())
    return out


# --------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--only", default="seg,e2e,soak,warm",
                    help="comma-separated measurements: seg, e2e, soak, warm, ct")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-serve"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg/images"))
    ap.add_argument("--mr", type=Path, default=MR_DIR, help="folder of one MR series")
    ap.add_argument("--studies-1", type=int, default=20, help="e2e studies with 1 sender")
    ap.add_argument("--studies-8", type=int, default=40, help="e2e studies with 8 senders")
    ap.add_argument("--soak", type=int, default=200, help="soak studies")
    ap.add_argument("--mix", default="endo,mr,upload",
                    help="soak kinds in turn (repeat one to weight it): endo, mr, upload")
    ap.add_argument("--senders", type=int, default=8, help="soak closed-loop senders")
    ap.add_argument("--kill-every", type=int, default=20, help="SIGKILL a worker every N done jobs")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the PACS is stopped")
    ap.add_argument("--outage-at", type=float, default=0.5,
                    help="fraction of the soak studies sent when the PACS stops")
    ap.add_argument("--late", type=float, default=5.0,
                    help="a result is late this many s after max(ack, PACS back)")
    ap.add_argument("--warm-later", type=int, default=5, help="warm: MR studies after the first")
    ap.add_argument("--ct", type=Path, default=CT_DIR, help="folder of one CT series (image_<N>)")
    ap.add_argument("--ct-repeats", type=int, default=3, help="ct: times the CT study is sent")
    ap.add_argument("--quiet", type=float, default=1.0, help="service quiet_seconds")
    ap.add_argument("--workers", type=int, default=2, help="service worker processes")
    ap.add_argument("--retry-max", type=float, default=60.0,
                    help="service delivery_retry_max_seconds (its default: 60)")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    args.mix = args.mix.split(",")
    if not args.only <= {"seg", "e2e", "soak", "warm", "ct"} or not set(args.mix) <= set(KINDS):
        ap.error("unknown --only or --mix entry")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, handlers=[RichHandler(show_path=False)],
                        format="%(message)s")
    for noisy in ("pynetdicom", "httpx", "highdicom"):  # a line per C-STORE, request, module
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    result: dict = {
        "benchmark": "serve", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(), "revision": git_revision(), "machine": machine(),
        "versions": versions(),
        "service": {"quiet_seconds": args.quiet, "workers": args.workers, "lease_seconds": 5,
                    "delivery_retry_seconds": 0.5, "delivery_retry_max_seconds": args.retry_max,
                    "routes": {"ES": "models/polyp-resunet", "MR": "models/brain-unet3d",
                               "png/jpeg upload": "models/polyp-resunet",
                               "CT ABDOMEN": "models/liver-ct-unet3d (when present)"}}}
    if "seg" in args.only:
        result["seg"] = bench_seg()
        result["seg_labelmap"] = bench_seg(labelmap=True)
        log.info("seg %s / %s", result["seg"], result["seg_labelmap"])
    jpegs = sorted(args.data.glob("*.jpg"))[:64]
    mr = load_mr_slices(args.mr) if {"soak", "warm"} & args.only else []
    pacs = Orthanc(args.work / "orthanc", free_port(), free_port())
    pacs.start()
    try:
        def setup(name: str) -> Setup:
            return service_setup(args.work / name, pacs, args.quiet, args.workers, args.retry_max)

        if "e2e" in args.only:
            result["e2e"] = run_e2e(setup("e2e"), jpegs, {1: args.studies_1, 8: args.studies_8})
        if "soak" in args.only:
            plan = SoakPlan(args.soak, args.mix, args.senders, args.kill_every, args.outage,
                            args.outage_at, args.late, wait=300 + args.outage)
            result["soak"] = run_soak(setup("soak"), pacs, plan, {"jpegs": jpegs, "mr": mr})
            log.info("soak %s", json.dumps(result["soak"]["by_kind"]))
        if "warm" in args.only:
            result["warm_start"] = run_warm(setup("warm"), mr, args.warm_later)
        if "ct" in args.only:
            result["ct"] = run_ct(setup("ct"), load_ct_slices(args.ct), args.ct_repeats)
    finally:
        pacs.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
