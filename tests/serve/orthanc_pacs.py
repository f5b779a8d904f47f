"""A real Orthanc PACS (Debian package) on loopback for tests and benchmarks."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


class Orthanc:
    """Start Orthanc with its own storage in ``root``, DICOMweb enabled, no authentication.

    Attributes:
        url: REST base URL; ``dicom_port``/``ae_title``: its DIMSE address.
    """

    def __init__(self, root: Path, http_port: int, dicom_port: int, ae_title: str = "ORTHANC",
                 modalities: dict[str, list] | None = None) -> None:
        self.root, self.http_port, self.dicom_port, self.ae_title = root, http_port, dicom_port, ae_title
        self.url = f"http://127.0.0.1:{http_port}"
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30, append_log: bool = False) -> None:
        """Start Orthanc and wait until its REST API answers.

        Called again after :meth:`stop`, it serves the same ports and storage, so what it
        stored before is still there (a PACS back from an outage). ``append_log`` keeps
        the earlier ``orthanc.log`` instead of starting a new one.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medinfer-test", "StorageDirectory": str(self.root / "db"),
            "IndexDirectory": str(self.root / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomModalities": self.modalities,
            "Plugins": [str(PLUGIN)] if PLUGIN.is_file() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpServerEnabled": True, "StableAge": 1, "ConcurrentJobs": 1,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        mode = "ab" if append_log else "wb"
        log = open(self.root / "orthanc.log", mode)  # noqa: SIM115  (kept open for the process)
        self.proc = subprocess.Popen([orthanc_binary() or "Orthanc", str(path)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("Orthanc did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def get(self, path: str) -> object:
        r = httpx.get(self.url + path, timeout=10)
        r.raise_for_status()
        return r.json()

    def find(self, **query: str) -> list[dict]:
        r = httpx.post(self.url + "/tools/find", json={"Level": "Instance", "Query": query,
                                                       "Expand": True}, timeout=10)
        r.raise_for_status()
        return r.json()

    def instance_tags(self, orthanc_id: str) -> dict:
        """All tags of one stored instance, simplified (name -> value; sequences as lists
        of dicts), e.g. ``ReferencedSeriesSequence`` of a SEG."""
        return self.get(f"/instances/{orthanc_id}/tags?simplify")  # type: ignore[return-value]


def wait_for(check, timeout: float, what: str, poll: float = 0.1):
    """``check()``'s first truthy value within ``timeout`` seconds, else AssertionError."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def worker_thread(worker, stop):
    """Start a daemon thread running ``worker.run_once()`` until ``stop`` is set."""
    import threading
    import time

    def work() -> None:
        while not stop.is_set():
            if not worker.run_once():
                time.sleep(0.1)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def start_service(cfg):
    """The service of ``cfg`` in the background and one worker on a thread (the stand-in for
    ``medinfer serve``); returns the service and the function that stops both."""
    import threading

    from medinfer.serve.service import Service
    from medinfer.serve.worker import Worker

    service = Service(cfg, tick_seconds=0.1)
    service.start_background()
    stop = threading.Event()
    thread = worker_thread(Worker(cfg, service.store, "in-test"), stop)

    def shutdown() -> None:
        stop.set()
        thread.join(30)
        service.stop()

    return service, shutdown
