"""Tiny synthetic data sets in every on-disk layout medinfer reads, for tests and demos.

Every writer is deterministic for a given ``seed`` and returns what it wrote:

- :func:`write_kvasir_pairs`: 2D image/mask pairs, ``DIR/images`` + ``DIR/masks``
  (read by :func:`medinfer.data.pairs.find_pairs`);
- :func:`write_labeled_folder`: multi-label classification, ``DIR/labels.csv`` + ``DIR/images``
  (read by :func:`medinfer.data.labels.read_labels`);
- :func:`write_volume_pairs`: NIfTI volumes, ``DIR/images/*.nii.gz`` + ``DIR/masks``
  (read by :func:`medinfer.data.volumes.find_volume_pairs`);
- :func:`mr_series` / :func:`write_mr_series`: a DICOM MR series, in memory or as files
  (read by :func:`medinfer.io.read_dicom_series`), built from :func:`dicom_slice`;
- :func:`endoscopy_frame`: one RGB endoscopy frame as an endoscope's video processor sends
  it (VL Endoscopic or Video Endoscopic Image Storage, no patient geometry).

Only numpy and Pillow are imported here; nibabel and pydicom are imported by the functions
that need them, and torch never is.

Example:
    >>> from medinfer.data.synthetic import write_kvasir_pairs
    >>> root = write_kvasir_pairs(tmp_path / "ds", ["a", "b"], size=(32, 32))
    >>> sorted(p.name for p in (root / "masks").iterdir())
    ['a.png', 'b.png']
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Size2D = tuple[int, int]  # (rows, columns) of a picture, in pixels
Shape3D = tuple[int, int, int]  # (X, Y, Z) voxels of a volume
LabeledRow = tuple[str, str, str | int]  # (file name, NIH 'Finding Labels', patient id)

NO_FINDING = "No Finding"  # as medinfer.data.labels.NO_FINDING (not imported: keeps this light)


def box_mask(index: int, size: Size2D) -> np.ndarray:
    """The 0/255 uint8 (H, W) mask of pair ``index``: a box that shifts a little with ``index``."""
    h, w = size
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h // 2 + index % 3, w // 4 + index % 4: 3 * w // 4] = 255
    return m


def write_kvasir_pairs(root: str | Path, names: Sequence[str], size: Size2D = (32, 32), *,
                       seed: int = 0, colour: tuple[int, int, int] = (220, 60, 60),
                       image_suffix: str = ".png", mask_suffix: str = ".png") -> Path:
    """Write RGB noise images with a coloured box and their 0/255 box masks (Kvasir layout).

    Args:
        root: the data folder; ``images/`` and ``masks/`` are created (or added to).
        names: file stems, one pair each; pair ``i`` has the mask :func:`box_mask` ``(i, size)``.
        size: (H, W) of every image and mask, in pixels.
        seed: seed of the image noise.
        colour: RGB of the box in the image.
        image_suffix: ``.png`` or ``.jpg``/``.jpeg`` (the format follows the suffix).
        mask_suffix: likewise for the greyscale masks.

    Returns:
        ``root``.
    """
    root = Path(root)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        mask = box_mask(i, size)
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        img[mask > 0] = colour
        Image.fromarray(img, "RGB").save(root / "images" / f"{name}{image_suffix}")
        Image.fromarray(mask, "L").save(root / "masks" / f"{name}{mask_suffix}")
    return root


def write_labeled_folder(root: str | Path, rows: Sequence[LabeledRow], side: int = 16, *,
                         seed: int = 0) -> Path:
    """Write a multi-label classification folder: one RGB noise PNG per row and ``labels.csv``.

    Args:
        root: the data folder; ``images/`` is created.
        rows: ``(file name, findings, patient id)``; findings as NIH's 'Finding Labels'
            (``"Effusion|Mass"``, or ``"No Finding"``), ``abnormal`` is derived from them.
        side: width and height of every image, in pixels.
        seed: seed of the image noise.

    Returns:
        ``root``, holding ``labels.csv`` with columns ``image,abnormal,findings,patient_id``.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with (root / "labels.csv").open("w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["image", "abnormal", "findings", "patient_id"])
        for name, findings, patient in rows:
            pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / "images" / name)
            abnormal = 0 if findings in ("", NO_FINDING) else 1
            out.writerow([name, abnormal, findings or NO_FINDING, patient])
    return root


def volume_box(index: int, shape: Shape3D) -> tuple[slice, slice, slice]:
    """The box of volume ``index``: the middle half of every axis, shifted by ``index`` along X."""
    return tuple(slice(n // 4 + (index if axis == 0 else 0), n - n // 4)
                 for axis, n in enumerate(shape))  # type: ignore[return-value]


def write_volume_pairs(root: str | Path, names: Sequence[str] = ("v0", "v1"),
                       shape: Shape3D = (20, 18, 9), *, seed: int = 0,
                       affine: np.ndarray | None = None) -> Path:
    """Write int16 noise volumes (mean 100, sd 10) with a box 60 brighter, and its 0/1 mask.

    Args:
        root: the data folder; ``images/`` and ``masks/`` are created (or added to).
        names: file stems; ``<name>.nii.gz`` in both folders, volume ``i`` with the mask
            :func:`volume_box` ``(i, shape)``.
        shape: (X, Y, Z) voxels.
        seed: seed of the noise.
        affine: 4x4 voxel-to-world matrix (mm); identity (1 mm voxels) by default.

    Returns:
        ``root``.
    """
    import nibabel as nib

    root = Path(root)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = np.eye(4) if affine is None else np.asarray(affine, np.float64)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        img = rng.normal(100, 10, shape).astype(np.int16)
        mask = np.zeros(shape, np.uint8)
        mask[volume_box(i, shape)] = 1
        img[mask > 0] += 60
        nib.save(nib.Nifti1Image(img, affine), root / "images" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(mask, affine), root / "masks" / f"{name}.nii.gz")
    return root


def _add_patient_and_study(ds: Dataset, study_uid: str, description: str) -> None:
    """Patient, study and series modules with made-up identifying values (de-identification
    has something to remove)."""
    from pydicom.uid import generate_uid

    ds.StudyInstanceUID = study_uid
    ds.PatientName, ds.PatientID = "Doe^Jane", "P123"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "A1", "S1"
    ds.ReferringPhysicianName, ds.InstitutionName = "Who^Doctor", "General Hospital"
    ds.SeriesNumber, ds.SeriesDescription, ds.Manufacturer = 1, description, "test"
    # One frame of reference per study, derived from its UID (appending to the UID could
    # pass the 64-character limit of the UI value representation).
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study_uid, "frame-of-reference"])


def dicom_slice(pixels: np.ndarray, *,
                position: Sequence[float] | None = (0.0, 0.0, 0.0),
                orientation: Sequence[float] | None = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                spacing: Sequence[float] = (1.0, 1.0), instance: int | None = 1,
                series_uid: str | None = None, study_uid: str | None = None, modality: str = "MR",
                sop_class: str | None = None, thickness: float | None = None,
                slope: float | None = None, intercept: float | None = None,
                description: str = "T1 post") -> Dataset:
    """One uncompressed 16-bit MONOCHROME2 slice (explicit VR little endian file meta).

    Args:
        pixels: (rows, columns) values in 0..65535.
        position: ImagePositionPatient (mm); ``None`` leaves it out.
        orientation: ImageOrientationPatient (row then column direction); ``None`` leaves it out.
        spacing: PixelSpacing (row, column), mm.
        instance: InstanceNumber; ``None`` leaves it out.
        series_uid: SeriesInstanceUID (a new UID by default).
        study_uid: with it, also the study, patient and frame-of-reference modules, as a
            modality would send them; without it, only the image and its geometry.
        modality: Modality.
        sop_class: SOPClassUID (MR Image Storage by default).
        thickness: SliceThickness (mm); ``None`` leaves it out.
        slope: RescaleSlope; ``None`` leaves it out.
        intercept: RescaleIntercept; ``None`` leaves it out.
        description: SeriesDescription (with ``study_uid`` only).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID = sop_class or MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if study_uid is not None:
        _add_patient_and_study(ds, study_uid, description)
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(s) for s in spacing]
    if thickness is not None:
        ds.SliceThickness = thickness
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return ds


VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"  # VL Endoscopic Image Storage (single frame)
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # Video Endoscopic Image Storage


def endoscopy_frame(pixels: np.ndarray, *, study_uid: str | None = None,
                    sop_class: str = VL_ENDOSCOPIC, number_of_frames: bool | None = None,
                    series_uid: str | None = None) -> Dataset:
    """One uncompressed RGB endoscopy frame (Modality ES), as a video processor sends it.

    No frame of reference, ImagePositionPatient/Orientation or PixelSpacing: endoscopy
    images have no patient geometry.

    Args:
        pixels: ``(rows, columns, 3)`` uint8 RGB.
        study_uid: StudyInstanceUID (a new UID by default); patient and study modules are
            filled as :func:`dicom_slice` fills them.
        sop_class: :data:`VL_ENDOSCOPIC` (single frame) or :data:`VIDEO_ENDOSCOPIC` (a
            multi-frame IOD, here with one frame).
        number_of_frames: write NumberOfFrames = 1; default: for the Video class only.
        series_uid: SeriesInstanceUID (a new UID by default).
    """
    from pydicom.uid import generate_uid

    rgb = np.ascontiguousarray(pixels, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"endoscopy_frame needs (rows, columns, 3) RGB, got {rgb.shape}")
    ds = dicom_slice(rgb[..., 0], position=None, orientation=None, series_uid=series_uid,
                     study_uid=study_uid or generate_uid(), modality="ES", sop_class=sop_class,
                     description="colonoscopy")
    del ds.FrameOfReferenceUID, ds.PixelSpacing
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "COLON"
    if number_of_frames if number_of_frames is not None else sop_class == VIDEO_ENDOSCOPIC:
        ds.NumberOfFrames = 1
        ds.FrameTime, ds.FrameIncrementPointer = 40.0, 0x00181063  # Cine module: 25 frames/s
    ds.PixelData = rgb.tobytes()
    return ds


def write_dicom(ds: Dataset, path: str | Path, *, file_meta: bool = True) -> Path:
    """Save ``ds`` as a DICOM file, or with ``file_meta=False`` as a bare implicit VR little
    endian dataset (no preamble, no file meta), as some old modalities write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:
        bare = ds.copy()
        del bare.file_meta
        bare.save_as(path, implicit_vr=True, little_endian=True)
    return path


def mr_series(n: int = 4, size: int = 16, *, modality: str = "MR", study_uid: str | None = None,
              sizes: Sequence[int] | None = None) -> list[Dataset]:
    """``n`` slices of one series of one study: a bright square (200) on a dark (10) background.

    Slices are 2 mm apart along Z (1 mm pixels, 2 mm thick), with full patient and study
    modules, as a modality sends them.

    Args:
        n: number of slices.
        size: rows and columns of every slice.
        modality: Modality of every slice (the SOP class stays MR Image Storage).
        study_uid: StudyInstanceUID (a new UID by default).
        sizes: per-slice sizes instead of ``size`` (to make an inconsistent series).
    """
    from pydicom.uid import generate_uid

    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for i in range(n):
        s = (sizes or [size] * n)[i]
        px = np.full((s, s), 10, np.uint16)
        px[s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 200
        out.append(dicom_slice(px, position=(0.0, 0.0, 2.0 * i), instance=i + 1,
                               series_uid=series_uid, study_uid=study_uid, modality=modality,
                               thickness=2.0))
    return out


def write_mr_series(folder: str | Path, n: int = 4, size: int = 16, **kwargs: object) -> Path:
    """Write :func:`mr_series` ``(n, size, **kwargs)`` as ``folder/IM0001.dcm``, ...

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    for i, ds in enumerate(mr_series(n, size, **kwargs)):  # type: ignore[arg-type]
        write_dicom(ds, folder / f"IM{i + 1:04d}.dcm")
    return folder
