"""Detection data sets: 2D boxes on the slices of CT series, or on plain pictures.

Two layouts on disk:

* DICOM + Pascal VOC (TCIA Lung-PET-CT-Dx): ``ROOT/<patient>/<series folder>/*.dcm`` and
  ``ROOT/annotations/<patient>/<SOPInstanceUID>.xml``, one XML per annotated slice, naming
  the slice by its instance (not by file name or InstanceNumber: the series are read with
  :func:`medinfer.io.read_dicom_series`, whose slice order is along the slice normal).
* Pictures: ``ROOT/images/*.png|jpg`` and ``ROOT/boxes.json`` =
  ``{"<file name>": [{"box": [x0, y0, x1, y1], "label": "A"}, ...], ...}``; every picture is
  listed, ``[]`` for one without boxes. A picture becomes a one-slice series
  ``(C, rows, cols, 1)``, channels as read (RGB stays 3 channels), 1 mm pixel geometry.

Box corners are pixel indices as annotated (VOC ``xmin..xmax``): ``x`` = column, ``y`` = row.

Example:
    >>> root = write_synthetic_detection(tmp_path / "ct")
    >>> [s.name for s in load_detection_folder(root)]
    ['P1/1.000000-Chest  2.5mm', 'P2/1.000000-Chest  2.5mm']
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medinfer.data.synthetic import dicom_slice, write_dicom
from medinfer.errors import InputError
from medinfer.io import Image, read_dicom_series, read_image

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations"
"""Folder of a DICOM detection root holding ``<patient>/<SOPInstanceUID>.xml``."""
BOXES_JSON = "boxes.json"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
SYNTHETIC_SERIES = "1.000000-Chest  2.5mm"  # two spaces, as in TCIA series folder names
Shape2D = tuple[int, int]  # (rows, cols) of a slice, in pixels


@dataclass(frozen=True)
class Box:
    """One box on one slice, pixel corners as annotated: x = column, y = row (VOC xmin..xmax)."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str = "lesion"

    def as_array(self) -> np.ndarray:
        """float32 ``[x0, y0, x1, y1]``."""
        return np.array([self.x0, self.y0, self.x1, self.y1], np.float32)


@dataclass(frozen=True, eq=False)  # eq=False: an Image (numpy arrays) has no equality
class DetectionSeries:
    """One annotated series (or one picture of the pictures layout, as a 1-slice series).

    Attributes:
        name: ``"<patient>/<series folder>"``, or the picture's stem.
        patient: the patient folder's name, or the picture's stem.
        image: ``(C, rows, cols, slices)``; DICOM: float32 HU in LPS mm, ``instances[k]``
            is slice ``k``; a picture: ``(C, H, W, 1)`` as read, frame "pixel".
        boxes: slice index -> its boxes; only slices with at least one box.
        annotated: slices with an annotation (an XML, maybe without objects; every slice
            of a picture). Slices outside it are unlabelled, not known to be negative.
        sources: slice index -> its annotation XML (empty for pictures).
    """

    name: str
    patient: str
    image: Image
    boxes: dict[int, tuple[Box, ...]]
    annotated: frozenset[int]
    sources: dict[int, Path] = field(default_factory=dict)

    @property
    def n_boxes(self) -> int:
        """Number of boxes over all slices."""
        return sum(len(b) for b in self.boxes.values())

    def boxes_mm(self, k: int) -> np.ndarray:
        """World positions of the boxes' corners on slice ``k``.

        Returns:
            ``(n, 2, 3)`` float64: for each box the ``(x0, y0)`` and ``(x1, y1)`` corners at
            index ``(row=y, col=x, slice=k)`` through ``image.affine`` (LPS mm for DICOM).
        """
        if not 0 <= k < self.image.spatial_shape[2]:
            raise IndexError(f"slice {k} outside 0..{self.image.spatial_shape[2] - 1}")
        corners = np.array([[(b.y0, b.x0, k), (b.y1, b.x1, k)] for b in self.boxes.get(k, ())],
                           np.float64).reshape(-1, 2, 3)
        affine = self.image.affine
        return corners @ affine[:3, :3].T + affine[:3, 3]


def is_detection_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is a DICOM detection root, one patient folder of it, or a pictures
    folder (``images/`` + ``boxes.json``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if (folder / "images").is_dir() and (folder / BOXES_JSON).is_file():
        return True
    if (folder.parent / ANNOTATIONS / folder.name).is_dir():
        return True
    ann = folder / ANNOTATIONS
    return ann.is_dir() and any(p.is_dir() and (folder / p.name).is_dir() for p in ann.iterdir())


def read_voc(path: str | Path, shape: Shape2D | None = None) -> tuple[Box, ...]:
    """The boxes of one Pascal VOC XML file (``<object>`` with ``<name>`` and ``<bndbox>``).

    Args:
        path: the XML file.
        shape: ``(rows, cols)`` of the annotated image: every box must lie inside it, and
            ``<size>`` (when present) must agree with it. None: not checked.

    Raises:
        InputError: naming ``path``: malformed XML, an object without ``<bndbox>``, a
            missing or non-numeric corner, an empty box, or a box outside ``shape``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(path, f"not a readable Pascal VOC XML file ({exc})") from exc
    if root.tag != "annotation":
        raise InputError(path, f"root element <{root.tag}>, expected <annotation>")
    if shape is not None and root.find("size") is not None:
        size = tuple(_number(path, root.find("size"), t, "<size>") for t in ("height", "width"))
        if size != tuple(shape):
            raise InputError(path, f"<size> is {size[0]:g} x {size[1]:g} (rows x cols), "
                                   f"the image {shape[0]} x {shape[1]}")
    boxes = []
    for i, obj in enumerate(root.findall("object"), start=1):
        bnd = obj.find("bndbox")
        if bnd is None:
            raise InputError(path, f"object {i} has no <bndbox>")
        corners = [_number(path, bnd, t, f"object {i}") for t in ("xmin", "ymin", "xmax", "ymax")]
        label = (obj.findtext("name") or "").strip() or "lesion"
        boxes.append(_checked_box(path, corners, label, shape, f"object {i}"))
    return tuple(boxes)


def write_voc(path: str | Path, boxes: Sequence[Box], shape: Shape2D) -> Path:
    """Write ``boxes`` of one ``(rows, cols)`` slice as a Pascal VOC XML file; returns ``path``."""
    path = Path(path)
    root = ET.Element("annotation")
    size = ET.SubElement(root, "size")
    for tag, value in (("width", shape[1]), ("height", shape[0]), ("depth", 1)):
        ET.SubElement(size, tag).text = str(value)
    for box in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = box.label
        bnd = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (box.x0, box.y0, box.x1, box.y1)):
            ET.SubElement(bnd, tag).text = f"{value:g}"
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def load_detection_folder(folder: str | Path,
                          patients: Sequence[str] | None = None) -> list[DetectionSeries]:
    """Read every annotated series of a detection folder, sorted by name.

    Args:
        folder: a DICOM detection root (every patient folder with ``annotations/<patient>``;
            every folder holding ``.dcm`` files under it is a series), one patient folder
            ``ROOT/<patient>`` (annotations from ``ROOT/annotations/<patient>``), or a
            pictures folder.
        patients: keep only these patient ids (None: all).

    Raises:
        InputError: not a detection folder; a requested patient absent; a patient folder
            without DICOM files or annotations without a patient folder; an XML naming an
            instance no series of its patient has, or a box outside its image (naming the
            XML); a picture missing from ``boxes.json`` (naming the picture).
    """
    folder = Path(folder)
    wanted = None if patients is None else set(patients)
    if (folder / "images").is_dir() and (folder / BOXES_JSON).is_file():
        series = [s for s in _load_pictures(folder) if wanted is None or s.patient in wanted]
    elif (folder / ANNOTATIONS).is_dir():
        ann = folder / ANNOTATIONS
        names = sorted(p.name for p in ann.iterdir() if p.is_dir() and not p.name.startswith("."))
        series = [s for n in names if wanted is None or n in wanted
                  for s in _load_patient(folder / n, ann / n)]
    elif folder.is_dir() and (folder.parent / ANNOTATIONS / folder.name).is_dir():
        series = [] if wanted is not None and folder.name not in wanted else \
            _load_patient(folder, folder.parent / ANNOTATIONS / folder.name)
    else:
        raise InputError(folder, f"not a detection folder (expected <patient>/ folders and "
                                 f"{ANNOTATIONS}/<patient>/*.xml, a patient folder with "
                                 f"../{ANNOTATIONS}/<patient>, or images/ + {BOXES_JSON})")
    missing = sorted((wanted or set()) - {s.patient for s in series})
    if missing or not series:
        raise InputError(folder, f"no annotated patient {', '.join(missing)}" if missing
                         else "no annotated series in this folder")
    log.info("%s: %d series, %d boxes", folder, len(series), sum(s.n_boxes for s in series))
    return sorted(series, key=lambda s: s.name)


def _number(path: Path, element: ET.Element, tag: str, where: str) -> float:
    """The number in ``element``'s child ``tag``, else InputError naming ``path``."""
    text = element.findtext(tag)
    if text is None:
        raise InputError(path, f"{where} has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"{where}: <{tag}> is {text.strip()!r}, not a number") from None


def _checked_box(path: Path, corners: Sequence[float], label: str, shape: Shape2D | None,
                 where: str) -> Box:
    """A :class:`Box`, or InputError naming ``path`` if it is empty or outside ``shape``."""
    x0, y0, x1, y1 = corners
    if not all(math.isfinite(v) for v in corners):
        raise InputError(path, f"{where}: non-finite corner in {list(corners)}")
    if x0 >= x1 or y0 >= y1:
        raise InputError(path, f"{where}: empty box {list(corners)} (needs x0 < x1, y0 < y1)")
    if min(x0, y0) < 0 or (shape is not None and (x1 > shape[1] or y1 > shape[0])):
        inside = "" if shape is None else f" {shape[0]} x {shape[1]} (rows x cols)"
        raise InputError(path, f"{where}: box {list(corners)} lies outside the{inside} image")
    return Box(float(x0), float(y0), float(x1), float(y1), label)


def _series_folders(patient_dir: Path) -> list[Path]:
    """Every folder under ``patient_dir`` (itself included) that holds ``.dcm`` files."""
    return sorted({p.parent for p in patient_dir.rglob("*")
                   if p.suffix.lower() == ".dcm" and not p.name.startswith(".") and p.is_file()})


def _load_patient(patient_dir: Path, ann_dir: Path) -> list[DetectionSeries]:
    """The series of one patient folder, with the boxes of ``ann_dir``'s XML files."""
    patient = patient_dir.name
    if not patient_dir.is_dir():
        raise InputError(ann_dir, f"annotations of patient {patient}, but no folder {patient_dir}")
    folders = _series_folders(patient_dir)
    if not folders:
        raise InputError(patient_dir, "no DICOM series (no .dcm file) in this patient folder")
    images = {f: read_dicom_series(f) for f in folders}
    owner: dict[str, tuple[Path, int]] = {}
    for f, image in images.items():
        if len(image.instances) != image.spatial_shape[2]:
            raise InputError(f, "multi-frame DICOM: boxes name one instance per slice")
        for k, ds in enumerate(image.instances):
            uid = str(ds.SOPInstanceUID)
            if uid in owner:
                raise InputError(f, f"SOPInstanceUID {uid} also in {owner[uid][0]}")
            owner[uid] = (f, k)
    sources: dict[Path, dict[int, Path]] = {f: {} for f in folders}
    boxes: dict[Path, dict[int, tuple[Box, ...]]] = {f: {} for f in folders}
    for xml in sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file()):
        if xml.stem not in owner:
            raise InputError(xml, f"names SOPInstanceUID {xml.stem} which no DICOM file of "
                                  f"patient {patient} has")
        f, k = owner[xml.stem]
        sources[f][k] = xml
        rows, cols = images[f].spatial_shape[:2]
        found = read_voc(xml, (rows, cols))
        if found:
            boxes[f][k] = found
    out = []
    for f in folders:
        rel = f.relative_to(patient_dir).as_posix()
        if not sources[f]:
            log.warning("%s: no annotated slice", f)
        out.append(DetectionSeries(patient if rel == "." else f"{patient}/{rel}", patient,
                                   images[f], boxes[f], frozenset(sources[f]), sources[f]))
    return out


def _load_pictures(root: Path) -> list[DetectionSeries]:
    """The pictures layout: ``root/images/*`` with their boxes from ``root/boxes.json``."""
    listing = root / BOXES_JSON
    try:
        table = json.loads(listing.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(listing, f"not readable JSON ({exc})") from exc
    if not isinstance(table, dict):
        raise InputError(listing, 'expected {"<file name>": [{"box": [x0, y0, x1, y1]}, ...]}')
    pictures = sorted(p for p in (root / "images").iterdir() if p.is_file()
                      and p.suffix.lower() in PICTURE_SUFFIXES and not p.name.startswith("."))
    unknown = sorted(set(table) - {p.name for p in pictures})
    if unknown:
        raise InputError(listing, f"lists {', '.join(unknown)}, not a picture in images/")
    out, stems = [], set()
    for pic in pictures:
        if pic.name not in table:
            raise InputError(pic, f"not listed in {BOXES_JSON} (list every picture, [] for none)")
        if pic.stem in stems:
            raise InputError(pic, f"another picture has the name {pic.stem}")
        stems.add(pic.stem)
        image = _one_slice(read_image(pic))
        rows, cols = image.spatial_shape[:2]
        found = _json_boxes(listing, pic.name, table[pic.name], (rows, cols))
        out.append(DetectionSeries(pic.stem, pic.stem, image, {0: found} if found else {},
                                   frozenset({0})))
    return out


def _json_boxes(listing: Path, name: str, entries: object, shape: Shape2D) -> tuple[Box, ...]:
    """The boxes ``boxes.json`` lists for picture ``name``, checked against ``shape``."""
    if not isinstance(entries, list):
        raise InputError(listing, f"{name}: expected a list of boxes, got {entries!r}")
    out = []
    for i, entry in enumerate(entries, start=1):
        box = entry.get("box") if isinstance(entry, dict) else None
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise InputError(listing, f'{name} box {i}: expected {{"box": [x0, y0, x1, y1]}}')
        label = str(entry.get("label") or "lesion")  # type: ignore[union-attr]
        out.append(_checked_box(listing, box, label, shape, f"{name} box {i}"))
    return tuple(out)


def _one_slice(image: Image) -> Image:
    """A 2D ``(C, H, W)`` picture as a ``(C, H, W, 1)`` volume (1 mm slice, geometry extended)."""
    direction = np.eye(3)
    direction[:2, :2] = image.direction
    return replace(image, array=image.array[..., None], spacing=(*image.spacing, 1.0),
                   origin=(*image.origin, 0.0), direction=direction)


def write_synthetic_detection(root: str | Path, patients: Sequence[str] = ("P1", "P2"),
                              slices: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny DICOM detection data set: per patient one chest CT with a round tumour.

    Each patient gets ``ROOT/<patient>/1.000000-Chest  2.5mm/1-NN.dcm``: ``slices`` CT slices
    (``size``² pixels of 0.7 mm, 2.5 mm apart, stored HU + 1024 with RescaleIntercept -1024,
    one study), an ellipse of soft tissue holding two dark lungs. Slices ``1..slices-2`` (in
    array order) show a bright blob in the right lung, widest in the middle, with a VOC file
    ``ROOT/annotations/<patient>/<SOPInstanceUID>.xml`` boxing it tightly (label
    ``"lesion"``); the two end slices show none and have no file. Instances are numbered
    head to foot, as scanners do, so InstanceNumber falls as the array index grows.
    Deterministic for ``seed`` (pixels, boxes and UIDs).

    Returns:
        ``root``.
    """
    from pydicom.uid import CTImageStorage, generate_uid

    if slices < 3 or size < 16:
        raise ValueError(f"need slices >= 3 and size >= 16, got {slices}, {size}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for patient in patients:
        def uid(*parts: str, patient: str = patient) -> str:
            return generate_uid(entropy_srcs=[f"detection-{seed}", patient, *parts])

        centre = size * (0.5 + rng.uniform(-0.08, 0.08)), size * (0.28 + rng.uniform(-0.03, 0.03))
        for k in range(slices):
            hu, box = _synthetic_slice(size, k, slices, centre, rng)
            instance = slices - k
            ds = dicom_slice(np.round(hu + 1024).astype(np.uint16), spacing=(0.7, 0.7),
                             position=(-0.35 * size, -0.35 * size, 2.5 * k), instance=instance,
                             series_uid=uid("series"), study_uid=uid("study"), modality="CT",
                             sop_class=CTImageStorage, thickness=2.5, slope=1.0,
                             intercept=-1024.0, description="synthetic chest CT")
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid("slice", str(k))
            ds.PatientID = ds.PatientName = patient
            write_dicom(ds, root / patient / SYNTHETIC_SERIES / f"1-{instance:02d}.dcm")
            if box is not None:
                write_voc(root / ANNOTATIONS / patient / f"{ds.SOPInstanceUID}.xml", [box],
                          (size, size))
    return root


def _synthetic_slice(size: int, k: int, slices: int, centre: tuple[float, float],
                     rng: np.random.Generator) -> tuple[np.ndarray, Box | None]:
    """HU ``(size, size)`` of slice ``k`` and the tight box of its blob (None on end slices)."""
    r, c = np.mgrid[:size, :size].astype(np.float64)
    h = size / 2

    def ellipse(row: float, col: float, half_rows: float, half_cols: float) -> np.ndarray:
        return ((r - row) / (half_rows * size)) ** 2 + ((c - col) / (half_cols * size)) ** 2 <= 1

    hu = np.where(ellipse(h, h, 0.42, 0.47), 40.0, -1000.0)  # soft tissue in air
    for side in (-1, 1):
        hu[ellipse(h, h + side * 0.22 * size, 0.3, 0.17)] = -850.0  # the lungs
    box = None
    if 0 < k < slices - 1:
        n = slices - 2
        t = (k - 1 - (n - 1) / 2) / (n / 2 + 0.5)  # -1 < t < 1 over the annotated run
        radius = max(size / 10 * math.sqrt(1 - t * t), 2.0)
        blob = (r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius ** 2
        hu[blob] = 30.0
        rows, cols = np.nonzero(blob)
        box = Box(float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    hu = hu + rng.normal(0.0, 10.0, hu.shape)
    return np.clip(hu, -1024.0, 3071.0), box
