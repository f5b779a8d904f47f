"""The service configuration: one validated pydantic object, loaded from YAML and passed down.

Relative paths in the YAML file (storage, artifacts) are resolved against the
folder holding the file, so a config works from any working directory.

Example (see ``config/serve.example.yaml``)::

    storage: ../runs/serve
    http: {host: 127.0.0.1, port: 8042}
    dicom: {ae_title: MEDINFER, port: 11112, allowed_calling_aets: [STORESCU, ORTHANC]}
    quiet_seconds: 5
    routes:
      - name: brain-mr
        artifact: ../models/brain-unet3d
        match: {modality: [MR]}
    destinations:
      - name: pacs
        kind: dimse
        host: 127.0.0.1
        port: 4242
        ae_title: ORTHANC
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medinfer.errors import InputError
from medinfer.io.limits import ReadLimits
from medinfer.serve.tls import ClientTls, DicomTls, HttpTls, check_tls_files, resolve_paths

__all__ = [
    "RESULT_KINDS",
    "DestinationConfig",
    "DicomConfig",
    "HttpConfig",
    "LimitsConfig",
    "MatchRule",
    "RouteConfig",
    "ServeConfig",
    "load_config",
]


ResultKind = Literal["seg", "sr", "sc", "pm"]
RESULT_KINDS: tuple[ResultKind, ...] = ("seg", "sr", "sc", "pm")
"""DICOM result kinds a job writes: SEG, SR, Secondary Capture, Parametric Map."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchRule(_Strict):
    """Conditions a series must meet (all given ones; an empty rule matches everything).

    Attributes:
        modality: accepted Modality values (e.g. ``[CR, DX]``); uploads of PNG/JPEG
            have modality ``"XC"`` unless the request says otherwise, NIfTI ``"OT"``.
        body_part: accepted BodyPartExamined values (case-insensitive).
        series_description: regular expression searched in SeriesDescription
            (case-insensitive).
        sop_class_uid: accepted SOP Class UIDs.
        formats: accepted source formats: ``dicom``, ``png``, ``jpeg``, ``nifti``,
            ``slide`` (a whole-slide image uploaded to ``POST /api/v1/slides``). Only a
            rule naming ``slide`` takes slides (a rule without ``formats`` does not), so a
            slide never reaches a model made for other images.
        temporal: ``true``: only series holding several time points of one slice position
            (CT perfusion: two or more DICOM instances at the same ImagePositionPatient, or a
            multi-frame instance with NumberOfTemporalPositions > 1); ``false``: only series
            without; unset: either. Read from the stored files' headers when the study closes.
    """

    modality: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)
    series_description: str | None = None
    sop_class_uid: list[str] = Field(default_factory=list)
    formats: list[Literal["dicom", "png", "jpeg", "nifti", "slide"]] = Field(default_factory=list)
    temporal: bool | None = None

    @field_validator("series_description")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class RouteConfig(_Strict):
    """One routing rule: series matching ``match`` go to the model in ``artifact``.

    ``priority``: workers take the queued jobs of higher priorities first (then the
    oldest first), e.g. endoscopy frames a clinician waits for during the procedure before
    an MR series read later; equal priorities are first come, first served.
    """

    name: str
    artifact: Path
    match: MatchRule = Field(default_factory=MatchRule)
    priority: int = 0


class DestinationConfig(_Strict):
    """Where results are sent.

    Attributes:
        name: label used in the job store and logs.
        kind: ``dimse`` (C-STORE SCU to ``host:port``/``ae_title``) or ``stow``
            (DICOMweb STOW-RS POST to ``url``).
        results: result kinds sent there (``seg``, ``sr``, ``sc``, ``pm``: the Parametric
            Maps of a perfusion analysis); default all.
        deidentify: an outside service: send it a de-identified copy of each result
            (pseudonymous patient, IDs, dates and UIDs, the same for every object of a
            study; see ``serve/deid.py``), never the stored file. False (a clinical
            PACS): the result as stored, in the source study with the real patient.
        tls: DICOM TLS to a ``dimse`` destination (:class:`~medinfer.serve.tls.ClientTls`).
    """

    name: str
    kind: Literal["dimse", "stow"]
    host: str | None = None
    port: int | None = None
    ae_title: str | None = None
    url: str | None = None
    results: list[ResultKind] = Field(default_factory=lambda: list(RESULT_KINDS))
    deidentify: bool = False
    tls: ClientTls | None = None

    @model_validator(mode="after")
    def _complete(self) -> DestinationConfig:
        if self.kind == "dimse" and not (self.host and self.port and self.ae_title):
            raise ValueError(f"destination {self.name!r}: dimse needs host, port and ae_title")
        if self.kind == "stow" and not self.url:
            raise ValueError(f"destination {self.name!r}: stow needs url")
        if self.kind == "stow" and self.tls is not None:
            raise ValueError(f"destination {self.name!r}: tls is for dimse (stow: an "
                             "https url)")
        return self


class HttpConfig(_Strict):
    """HTTP front door; HTTPS when ``tls`` is set (:class:`~medinfer.serve.tls.HttpTls`).

    Attributes:
        max_upload_mb: the largest request body (MiB), whole-slide uploads excepted.
        max_slide_upload_mb: the largest body of ``POST /api/v1/slides`` (MiB): a
            whole-slide image is streamed to the storage folder, never held in memory,
            so this bounds disk, not memory.
    """

    host: str = "127.0.0.1"
    port: int = 8042
    max_upload_mb: float = 512.0
    max_slide_upload_mb: float = Field(default=4096.0, gt=0)
    tls: HttpTls | None = None


class LimitsConfig(_Strict):
    """The largest input the service decodes, checked from the header before any decoding.

    An input over a limit is refused at the front door with the size and the limit (a
    C-STORE failure status, a 400 for REST, a failed instance for STOW-RS), so a few
    kilobytes of RLE, Deflate, PNG or gzip cannot expand into gigabytes in the service.

    Attributes:
        max_pixels: pixels (rows x columns) of one 2D image or frame (default 64 Mi, i.e.
            8192 x 8192). Pillow's own guard also refuses pictures over
            ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 MP).
        max_voxels: voxels of one volume: rows x columns x frames of a multi-frame
            instance, or the first three axes of a NIfTI file (default 512^3).
        max_frames: frames of one multi-frame instance or third axis of a NIfTI volume
            (default 2048).
        max_decoded_mb: decoded size of one input in MiB (voxels x samples x bytes per
            sample; default 2048); also what a Deflated DICOM instance may inflate to
            (plus 64 MiB).
    """

    max_pixels: int | None = Field(default=64 * 1024 * 1024, gt=0)
    max_voxels: int | None = Field(default=512 ** 3, gt=0)
    max_frames: int | None = Field(default=2048, gt=0)
    max_decoded_mb: float | None = Field(default=2048.0, gt=0)

    def read_limits(self) -> ReadLimits:
        """The same limits as the readers take them (:class:`medinfer.io.limits.ReadLimits`)."""
        mb = self.max_decoded_mb
        return ReadLimits(max_pixels=self.max_pixels, max_voxels=self.max_voxels,
                          max_frames=self.max_frames,
                          max_bytes=None if mb is None else int(mb * 1024 * 1024))


class DicomConfig(_Strict):
    """DIMSE front door (disabled while ``port`` is None).

    Attributes:
        allowed_calling_aets: the only calling AE titles whose associations are
            accepted; required when the front door is enabled.
        calling_ae_title: the AE title medinfer uses when it sends (C-STORE SCU).
        tls: DICOM TLS on the front door (:class:`~medinfer.serve.tls.DicomTls`).
    """

    ae_title: str = "MEDINFER"
    host: str = "127.0.0.1"
    port: int | None = None
    allowed_calling_aets: list[str] = Field(default_factory=list)
    calling_ae_title: str = "MEDINFER"
    tls: DicomTls | None = None

    @model_validator(mode="after")
    def _allow_list(self) -> DicomConfig:
        if self.port is not None and not self.allowed_calling_aets:
            raise ValueError("dicom.allowed_calling_aets must name at least one AE title "
                             "when the DICOM port is enabled")
        return self


class ServeConfig(_Strict):
    """Everything ``medinfer serve`` needs.

    Attributes:
        storage: folder for received instances, results and the SQLite database.
        database_url: SQLAlchemy URL; default ``sqlite:///<storage>/medinfer.db``.
            PostgreSQL: ``postgresql+psycopg://user@host/db``.
        quiet_seconds: a study is complete when nothing arrived for this long.
        late_seconds: an instance of a closed study (same StudyInstanceUID, source and
            sender) arriving within this long of the study's last instance rejoins it: a
            series it changes is routed again and its earlier job is superseded
            (``Store.finalize_study``); an identical re-sent instance changes nothing.
            0: every instance after closing starts a new study.
        hold_results: deliver a job's results only once ``late_seconds`` passed since the
            study's last instance, so that a late instance supersedes them before any
            reaches the PACS (at the cost of that much latency).
        workers: worker processes.
        lease_seconds: how long a worker's job lease lasts without renewal; a dead
            worker's job is retried after this.
        max_attempts: a job failing (or its worker dying) this often is marked failed.
        deidentify: deprecated; ``true`` sets ``deidentify`` on every destination, so
            nothing leaves identified (the safer reading of the old key). Instances are
            no longer de-identified at storage: results for a clinical PACS stay in the
            source study; set ``deidentify`` per destination instead.
        seg_type: ``binary`` SEG (read by every SEG viewer) or ``labelmap`` (DICOM 2024;
            about twice as fast to write for many segments, larger uncompressed).
        limits: the largest input decoded (:class:`LimitsConfig`).
        delivery_retry_seconds: first retry delay; doubles up to ``delivery_retry_max_seconds``.
        delivery_threads: sends in flight at once, split evenly among the destinations
            (at least one each), so a destination that hangs holds only its own share.
        delivery_lease_seconds: how long a sender's claim on a delivery lasts, so that
            several service processes on one database never send one result twice; longer
            than the longest send (a C-STORE times out after 30 s per network step, a
            STOW-RS POST after 60 s). A delivery whose sender died is sent again after it.
        delivery_probe_seconds: while a destination is unreachable, nothing is sent to it;
            it is probed (a TCP connection) this often, and once it answers every delivery
            waiting for it is sent at once, whatever its own retry delay.
    """

    storage: Path = Path("runs/serve")
    database_url: str | None = None
    http: HttpConfig = Field(default_factory=HttpConfig)
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    quiet_seconds: float = 5.0
    late_seconds: float = Field(default=60.0, ge=0)
    hold_results: bool = False
    routes: list[RouteConfig] = Field(default_factory=list)
    destinations: list[DestinationConfig] = Field(default_factory=list)
    workers: int = Field(default=1, ge=0)
    lease_seconds: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    deidentify: bool = False
    seg_type: Literal["binary", "labelmap"] = "binary"
    delivery_retry_seconds: float = 2.0
    delivery_retry_max_seconds: float = 60.0
    delivery_threads: int = Field(default=4, ge=1)
    delivery_lease_seconds: float = Field(default=180.0, gt=0)
    delivery_probe_seconds: float = Field(default=1.0, gt=0)
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="before")
    @classmethod
    def _deidentify_everywhere(cls, data: object) -> object:
        # The deprecated top-level key: every destination gets de-identified copies.
        if not (isinstance(data, dict) and data.get("deidentify")):
            return data
        dests = [d.model_copy(update={"deidentify": True}) if isinstance(d, DestinationConfig)
                 else {**d, "deidentify": True} if isinstance(d, dict) else d
                 for d in data.get("destinations") or []]
        return {**data, "destinations": dests}

    @property
    def db_url(self) -> str:
        """The database URL actually used."""
        return self.database_url or f"sqlite:///{self.storage / 'medinfer.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.http.max_upload_mb * 1024 * 1024)

    @property
    def max_slide_upload_bytes(self) -> int:
        return int(self.http.max_slide_upload_mb * 1024 * 1024)

    def resolved(self, base: Path) -> ServeConfig:
        """A copy with relative storage, artifact and certificate paths made absolute
        against ``base``."""
        def absolute(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        def with_tls(section: _Strict) -> _Strict:
            tls = getattr(section, "tls", None)
            return section if tls is None else section.model_copy(
                update={"tls": resolve_paths(tls, base)})

        routes = [r.model_copy(update={"artifact": absolute(r.artifact)}) for r in self.routes]
        return self.model_copy(update={
            "storage": absolute(self.storage), "routes": routes,
            "http": with_tls(self.http), "dicom": with_tls(self.dicom),
            "destinations": [with_tls(d) for d in self.destinations]})

    def check_tls(self) -> None:
        """Load every configured certificate, key and CA file once.

        Raises:
            InputError: a file is missing or does not load (the message names it).
        """
        sections = [self.http, self.dicom, *self.destinations]
        for tls in (s.tls for s in sections):
            if tls is not None:
                check_tls_files(tls)


def load_config(path: str | Path, **overrides: object) -> ServeConfig:
    """Read and validate a YAML config; ``overrides`` replace top-level fields.

    Raises:
        InputError: the file is missing, not YAML, or fails validation (the message
            names the offending fields), or a TLS certificate, key or CA file it names is
            missing or does not load (the message names that file and the config).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(path, "config must be a mapping")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = ServeConfig.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(path, f"invalid config: {errors}") from exc
    cfg = cfg.resolved(path.parent.resolve())
    try:
        cfg.check_tls()
    except InputError as exc:
        raise InputError(exc.path, f"{exc.reason} (in config {path})") from exc
    return cfg
