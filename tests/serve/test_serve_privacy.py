"""Patient data stays out of the log, the job's error, the API and the web page; a
deterministic failure is not retried."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from fastapi.testclient import TestClient
from serve_helpers import ThresholdPredictor, make_series, to_bytes

from medinfer.errors import InputError
from medinfer.serve.api import create_app
from medinfer.serve.ingest import Receiver
from medinfer.serve.logs import PatientDataFilter, describe_failure, redact, setup_logging
from medinfer.serve.models import Job
from medinfer.serve.worker import Worker

BIRTH_DATE = "1970-01-31"  # ISO dashes: not a DICOM DA, which highdicom refuses to copy


@pytest.fixture
def warnings_to_log():
    """Python warnings reach logging (as ``setup_logging`` has them), every one shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pytest's config ignores UserWarning
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)


@pytest.fixture
def restored_logging():
    """Undo ``setup_logging`` (root handlers, levels, warning capture) after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in ("medinfer", "uvicorn.error", "pynetdicom")}
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.handlers[:] = handlers
            root.setLevel(level)
            for name, lvl in levels.items():
                logging.getLogger(name).setLevel(lvl)


def _texts_of(caplog) -> str:
    parts = []
    for r in caplog.records:
        parts.append(f"{r.getMessage()} {vars(r)}")
        if r.exc_text:
            parts.append(r.exc_text)
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["Doe^Jane", "Doe"])  # "Doe": highdicom warns, quoting it
def test_bad_birth_date_fails_once_and_no_value_is_logged_stored_or_shown(
        make_config, store, caplog, warnings_to_log, name) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(PatientDataFilter())  # as setup_logging installs it
    cfg = make_config()
    client = TestClient(create_app(cfg, store, Receiver(cfg, store)))
    token = {"Authorization": f"Bearer {store.create_token('reader', ['read', 'submit'])}"}
    series = make_series(2)
    for ds in series:
        ds.PatientName, ds.PatientBirthDate = name, BIRTH_DATE
    files = [("files", (f"{i}.dcm", to_bytes(ds), "application/dicom"))
             for i, ds in enumerate(series)]
    r = client.post("/api/v1/studies", headers=token, files=files)
    assert r.status_code == 202, r.text
    [job_id] = r.json()["jobs"]
    worker = Worker(cfg, store, "w", lambda art: ThresholdPredictor())
    while worker.run_once():
        pass
    with store.session() as s:
        job = s.get(Job, job_id)
    assert job.attempts == 1  # deterministic: not retried with a full inference each time
    if job.state == "failed":  # until the writers tolerate the value
        assert job.error == ("InvalidDicomAttribute: invalid DICOM attribute PatientBirthDate "
                             "(value withheld)")
    else:
        assert job.state == "done"
    shown = [client.get(f"/api/v1/jobs/{job_id}", headers=token).text,
             client.get("/api/v1/jobs", headers=token).text,
             client.get(f"/ui/jobs/{job_id}", headers=token).text,
             client.get("/ui/", headers=token).text, job.error]
    logged = _texts_of(caplog)
    for value in ("Doe", BIRTH_DATE):
        assert value not in logged
        assert not any(value in text for text in shown)
    assert "message withheld (may carry patient data)" in logged  # pydicom's DA warning
    if name == "Doe":
        assert "UserWarning at highdicom/base.py" in logged


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_setup_logging_withholds_library_text_and_exception_values(
        restored_logging, capsys, fmt) -> None:
    import highdicom.valuerep
    from pydicom.valuerep import DA

    setup_logging(fmt)
    highdicom.valuerep.check_person_name("Doe")  # a UserWarning quoting the name
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '%s'.", BIRTH_DATE)
    logging.getLogger("highdicom.seg.sop").warning("patient %s", "Doe^Jane")
    try:
        DA(BIRTH_DATE)
    except ValueError:
        logging.getLogger("medinfer.serve.worker").exception("writing failed")
    out = capsys.readouterr()
    err = out.err if fmt == "json" else out.out + out.err  # rich writes to stdout
    assert "Doe" not in err and BIRTH_DATE not in err
    assert "writing failed" in err and "ValueError: invalid DICOM data (value withheld)" in err
    assert "UserWarning at" in err
    if fmt == "json":
        lines = [json.loads(line) for line in err.splitlines()]
        withheld = [x for x in lines if x["message"].endswith("withheld (may carry patient data)")]
        assert {x["logger"] for x in withheld} == {"py.warnings", "pydicom", "highdicom.seg.sop"}
        assert all(len(x["digest"]) == 16 for x in withheld)
        assert "Traceback" in next(x for x in lines if x["message"] == "writing failed")["exception"]


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001  (an exception with its traceback)
        return caught


def _pydicom_value_error() -> BaseException:
    from pydicom.valuerep import DA

    try:
        DA(BIRTH_DATE)
    except ValueError as exc:
        return exc
    raise AssertionError("pydicom accepted an ISO date as DA")


@pytest.mark.parametrize("make, kind, retryable", [
    (lambda: _raised(InputError("a.dcm", "image size 20x20 differs from 16x16")), "InputError",
     False),
    (_pydicom_value_error, "InvalidDicomAttribute", False),
    (lambda: _raised(ValueError("mask has 3 slices but the series 2 instances")), "ValueError",
     False),
    (lambda: _raised(AttributeError("'Dataset' object has no attribute 'Rows'")),
     "AttributeError", False),
    (lambda: _raised(OSError(28, "No space left on device")), "OSError", True),
    (lambda: _raised(RuntimeError("CUDA out of memory")), "RuntimeError", True),
    (lambda: _raised(MemoryError()), "MemoryError", True),
])
def test_failures_are_classified_and_told_without_values(make, kind, retryable) -> None:
    failure = describe_failure(make())
    assert (failure.kind, failure.retryable) == (kind, retryable)
    assert BIRTH_DATE not in str(failure) and "'Dataset'" not in str(failure)


def test_redaction_keeps_paths_and_sizes() -> None:
    text = ("/srv/incoming/1234567890abcdef/b.dcm: image size 20x20 differs; uid 1.2.840.10008.5 "
            "date 19700131 name 'Doe^Jane'")
    assert redact(text) == ("/srv/incoming/1234567890abcdef/b.dcm: image size 20x20 differs; "
                            "uid <withheld> date <withheld> name <withheld>")
    assert redact("the model's mask doesn't fit") == "the model's mask doesn't fit"
