"""Read the BBBC021 per-well profiles and their annotations into one typed object.

Three files in one folder (the Ljosa et al. 2013 release):

* ``ljosa_jbiomolscreen_2013_per_well_mean.csv.gz``: one row per well, keys
  ``Image_Metadata_Plate`` and ``Image_Metadata_Well``, then the CellProfiler features.
* ``BBBC021_v1_image.csv.gz``: one row per field of view with plate, well, compound and
  concentration (joined to the wells by plate + well).
* ``BBBC021_v1_moa.csv``: the MoA of each annotated (compound, concentration).
"""

from __future__ import annotations

import csv
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medinfer.errors import InputError

__all__ = ["CONTROL", "IMAGE_FILE", "MOA_FILE", "PROFILE_FILE", "WellProfiles", "read_profiles"]

PROFILE_FILE = "ljosa_jbiomolscreen_2013_per_well_mean.csv.gz"
IMAGE_FILE = "BBBC021_v1_image.csv.gz"
MOA_FILE = "BBBC021_v1_moa.csv"
CONTROL = "DMSO"
_KEYS = ("Image_Metadata_Plate", "Image_Metadata_Well")


@dataclass(frozen=True)
class WellProfiles:
    """Per-well profiles with their annotations; every array has one entry per well.

    Attributes:
        features: ``(n_wells, n_features)`` float64 feature values.
        feature_names: the ``n_features`` CellProfiler feature names.
        plate: plate names, e.g. ``"Week1_22123"``.
        well: well names, e.g. ``"B02"``.
        compound: compound names (``"DMSO"`` for the negative controls).
        concentration: concentrations in µM.
        moa: MoA labels (``"DMSO"`` for controls, ``""`` where the treatment is not annotated).
        batch: the plate's week prefix, e.g. ``"Week1"``.
    """

    features: np.ndarray
    feature_names: tuple[str, ...]
    plate: np.ndarray
    well: np.ndarray
    compound: np.ndarray
    concentration: np.ndarray
    moa: np.ndarray
    batch: np.ndarray

    @property
    def n_wells(self) -> int:
        return int(self.features.shape[0])

    @property
    def is_control(self) -> np.ndarray:
        """``(n_wells,)`` bool: the DMSO wells."""
        return self.compound == CONTROL

    def with_features(self, features: np.ndarray, names: tuple[str, ...]) -> WellProfiles:
        """The same wells with other features (``(n_wells, len(names))``)."""
        if features.shape != (self.n_wells, len(names)):
            raise ValueError(f"features of shape {features.shape} for {self.n_wells} wells x {len(names)} names")
        return WellProfiles(features, names, self.plate, self.well, self.compound,
                            self.concentration, self.moa, self.batch)


def batch_of(plate: str) -> str:
    """The week prefix of a plate name: ``"Week10_40111"`` -> ``"Week10"``."""
    return plate.split("_", 1)[0]


def _rows(path: Path) -> list[list[str]]:
    """All CSV rows of ``path`` (gzip when it ends in ``.gz``); InputError naming it otherwise."""
    if not path.is_file():
        raise InputError(path, "file does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", newline="") as f:
            rows = list(csv.reader(f, strict=True))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read as CSV ({type(exc).__name__}: {exc})") from exc
    if len(rows) < 2:
        raise InputError(path, "no data rows")
    width = len(rows[0])
    short = sum(len(r) != width for r in rows[1:])
    if short:
        raise InputError(path, f"{short} row(s) without {width} fields (truncated?)")
    return rows


def _columns(path: Path, header: list[str], names: tuple[str, ...]) -> list[int]:
    missing = [n for n in names if n not in header]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    return [header.index(n) for n in names]


def _conc_key(value: str) -> float:
    # The two files write concentrations differently ("3.000000" vs "3"): compare as numbers.
    return round(float(value), 6)


def _read_treatments(path: Path) -> dict[tuple[str, str], tuple[str, float]]:
    rows = _rows(path)
    plate, well, comp, conc = _columns(path, rows[0], (
        "Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI",
        "Image_Metadata_Compound", "Image_Metadata_Concentration"))
    out: dict[tuple[str, str], tuple[str, float]] = {}
    try:
        for r in rows[1:]:
            value = (r[comp], _conc_key(r[conc]))
            if out.setdefault((r[plate], r[well]), value) != value:
                raise InputError(path, f"well {r[plate]} {r[well]} has two treatments")
    except (IndexError, ValueError) as exc:
        raise InputError(path, f"malformed row ({exc})") from exc
    return out


def _read_moa(path: Path) -> dict[tuple[str, float], str]:
    rows = _rows(path)
    comp, conc, moa = _columns(path, rows[0], ("compound", "concentration", "moa"))
    try:
        table = {(r[comp], _conc_key(r[conc])): r[moa] for r in rows[1:]}
    except (IndexError, ValueError) as exc:
        raise InputError(path, f"malformed row ({exc})") from exc
    if any(not c or not m for (c, _), m in table.items()):
        raise InputError(path, "a row without compound or MoA (truncated?)")
    return table


def read_profiles(folder: str | Path) -> WellProfiles:
    """Read and join the three BBBC021 profile files of ``folder``.

    Args:
        folder: the folder holding :data:`PROFILE_FILE`, :data:`IMAGE_FILE` and :data:`MOA_FILE`.

    Returns:
        One :class:`WellProfiles` row per well of the profile file, in its order.

    Raises:
        InputError: naming the file that is missing, truncated or malformed, or a well of the
            profile file that the image table does not describe.
    """
    folder = Path(folder)
    treatments = _read_treatments(folder / IMAGE_FILE)
    moas = _read_moa(folder / MOA_FILE)
    path = folder / PROFILE_FILE
    rows = _rows(path)
    header = rows[0]
    _columns(path, header, _KEYS)
    if header[:2] != list(_KEYS):
        raise InputError(path, f"the first two columns must be {', '.join(_KEYS)}")
    keys = [(r[0], r[1]) for r in rows[1:]]
    unknown = [k for k in keys if k not in treatments]
    if unknown:
        raise InputError(path, f"{len(unknown)} well(s) not in {IMAGE_FILE}, e.g. {unknown[0]}")
    try:
        features = np.array([[float(v) for v in r[2:]] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise InputError(path, f"non-numeric feature value ({exc})") from exc
    comp = [treatments[k][0] for k in keys]
    conc = [treatments[k][1] for k in keys]
    moa = [CONTROL if c == CONTROL else moas.get((c, x), "") for c, x in zip(comp, conc)]
    plates = [k[0] for k in keys]
    return WellProfiles(
        features=features, feature_names=tuple(header[2:]),
        plate=np.array(plates), well=np.array([k[1] for k in keys]),
        compound=np.array(comp), concentration=np.array(conc, dtype=np.float64),
        moa=np.array(moa), batch=np.array([batch_of(p) for p in plates]))
