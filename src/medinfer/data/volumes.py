"""3D image/mask volumes in two layouts.

* NIfTI: ``DIR/images/<name>.nii.gz`` with ``DIR/masks/<name>.nii.gz`` (label maps).
* DICOM cases (the 3D-IRCADb layout): ``DIR/<case>/ct/`` holds one CT series and
  ``DIR/<case>/masks/<structure>/`` one mask series per structure (8-bit, 0 / 255), read in
  place (no converted copy is written). The case's mask series are merged into one binary
  label (IRCADb: the liver and its tumours make the whole liver); their slices must have
  the CT's geometry. ``DIR`` may also be one case folder itself.

Volumes keep their own voxel grid (no resampling): networks see them through a sliding
window, so every volume is scored and returned at full resolution. A pair may name a
slab (a fraction range of the last axis): a data set of one volume is split into a
training part and a held-out slab that way (:class:`VolumePair`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medinfer.data.spec import Preprocessing
from medinfer.errors import InputError
from medinfer.io import Image, read_image

VOLUME_SUFFIXES = (".nii.gz", ".nii")
DICOM_CASE_IMAGE = "ct"
"""Sub-folder of a DICOM case holding its image series."""
DICOM_CASE_MASKS = "masks"
"""Sub-folder of a DICOM case holding one mask series per structure."""


@dataclass(frozen=True)
class VolumePair:
    """One image volume and its labels.

    Attributes:
        name: case name (file stem or case folder name).
        image: NIfTI file or DICOM series folder.
        mask: NIfTI label map or DICOM mask series folder.
        extra_masks: more mask series merged with ``mask`` into label 1 (DICOM cases).
        binary: every nonzero mask value is label 1 (DICOM masks store 0 / 255).
        slab: ``(start, stop)`` fractions of the last axis to keep (None: all of it), e.g.
            ``(0.75, 1.0)`` for the last quarter of the slices.
    """

    name: str
    image: Path
    mask: Path
    extra_masks: tuple[Path, ...] = ()
    binary: bool = False
    slab: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        """The name with its slab fractions, e.g. ``ircadb01_01[z 0.75-1.00]`` (a split record)."""
        return self.name if self.slab is None else f"{self.name}[z {self.slab[0]:.2f}-{self.slab[1]:.2f}]"

    def slab_slices(self, depth: int) -> tuple[int, int]:
        """The slab as slice indices ``[z0, z1)`` of a volume ``depth`` slices deep."""
        a, b = self.slab or (0.0, 1.0)
        return int(round(a * depth)), int(round(b * depth))

    def in_slab(self, start: float, stop: float) -> VolumePair:
        """This pair restricted to the ``start``-``stop`` fractions of its last axis."""
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(f"slab fractions must satisfy 0 <= start < stop <= 1, got {start}, {stop}")
        return replace(self, slab=(start, stop))


@dataclass
class VolumeSet:
    """Prepared volumes held in memory: ``images[i]`` float32 (C, X, Y, Z), ``masks[i]``
    uint8 label maps (X, Y, Z): 0 background, 1..K the segments (binary masks are 0/1)."""

    names: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int]) -> VolumeSet:
        return VolumeSet([self.names[i] for i in index], [self.images[i] for i in index],
                         [self.masks[i] for i in index])


def _stem(path: Path) -> str:
    name = path.name
    for suf in VOLUME_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _dicom_cases(root: Path) -> list[Path]:
    """Case folders of the DICOM layout under ``root`` (``root`` itself when it is one)."""
    if not root.is_dir():
        return []
    if (root / DICOM_CASE_IMAGE).is_dir():
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / DICOM_CASE_IMAGE).is_dir())


def is_volume_folder(root: str | Path) -> bool:
    """Whether ``root`` holds 3D segmentation data: NIfTI volumes in ``images/`` or DICOM cases."""
    images = Path(root) / "images"
    if images.is_dir():
        return any(p.name.endswith(VOLUME_SUFFIXES) for p in images.iterdir())
    return bool(_dicom_cases(Path(root)))


def _dicom_pairs(cases: list[Path]) -> list[VolumePair]:
    out = []
    for case in cases:
        masks_dir = case / DICOM_CASE_MASKS
        masks = sorted(d for d in masks_dir.iterdir() if d.is_dir()) if masks_dir.is_dir() else []
        if not masks:
            raise InputError(masks_dir, "no mask series (one folder per structure) for this case")
        out.append(VolumePair(case.name, case / DICOM_CASE_IMAGE, masks[0], tuple(masks[1:]), binary=True))
    return out


def find_volume_pairs(root: str | Path) -> list[VolumePair]:
    """The volume pairs of ``root``: ``images/*.nii[.gz]`` matched with ``masks/`` by name, or
    DICOM cases (``<case>/ct/`` + ``<case>/masks/<structure>/``).

    Raises:
        InputError: no ``images/`` or ``masks/`` folder (and no DICOM case), no volumes, a
            volume without a mask, or a DICOM case without mask series.
    """
    root = Path(root)
    if not (root / "images").is_dir() and (cases := _dicom_cases(root)):
        return _dicom_pairs(cases)
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(root, f"no {sub}/ folder: not a volume data folder")
    masks = {_stem(p): p for p in (root / "masks").iterdir() if p.name.endswith(VOLUME_SUFFIXES)}
    out = []
    for p in sorted((root / "images").iterdir()):
        if not p.name.endswith(VOLUME_SUFFIXES):
            continue
        if _stem(p) not in masks:
            raise InputError(p, "no matching mask under masks/")
        out.append(VolumePair(_stem(p), p, masks[_stem(p)]))
    if not out:
        raise InputError(root / "images", "no NIfTI volumes")
    return out


def prepare_volume(array: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Raw (C, X, Y, Z) intensities -> float32 network input on the same grid.

    ``spec.window`` (when set) clips the raw values first (a CT window in HU).
    ``zscore``: per channel, over the nonzero voxels (the background of a skull-stripped
    or masked MR stays at its own value); ``scale``: ``x * scale`` then ``spec`` mean/std.
    """
    x = np.asarray(array, np.float32)
    if x.shape[0] != spec.channels:
        raise ValueError(f"volume has {x.shape[0]} channels, the model takes {spec.channels}")
    if spec.window is not None:  # a CT window: HU outside it carry no information the model uses
        x = np.clip(x, spec.window[0], spec.window[1])
    if spec.intensity == "zscore":
        out = np.empty_like(x)
        for c in range(x.shape[0]):
            fg = x[c][x[c] != 0]
            mu, sd = (float(fg.mean()), float(fg.std())) if fg.size else (0.0, 1.0)
            out[c] = (x[c] - mu) / max(sd, 1e-6)
        return out
    mean = np.asarray(spec.mean[: x.shape[0]], np.float32).reshape(-1, 1, 1, 1)
    std = np.asarray(spec.std[: x.shape[0]], np.float32).reshape(-1, 1, 1, 1)
    return (x * spec.scale - mean) / std


def load_volumes(pairs: Sequence[VolumePair], spec: Preprocessing,
                 progress: Callable[[int], None] | None = None) -> VolumeSet:
    """Read and prepare volume pairs (images normalized; masks as uint8 label maps, a
    float mask rounded: some data sets store labels 0/1/2 as float32).

    Raises:
        InputError: a mask of another shape than its image, or with values that are not
            labels 0..255.
    """
    names, images, masks = [], [], []
    for pair in pairs:
        image = read_image(pair.image)
        mask = _read_label(pair.mask, image, pair.binary)
        for extra in pair.extra_masks:
            mask |= _read_label(extra, image, True)
        x = prepare_volume(image.array, spec)
        name = pair.name
        if pair.slab is not None:
            z0, z1 = pair.slab_slices(x.shape[-1])
            if z1 - z0 < 1:
                raise InputError(pair.image, f"slab {pair.slab} of {x.shape[-1]} slices holds no slice")
            x, mask, name = x[..., z0:z1], mask[..., z0:z1], f"{pair.name}[z {z0}:{z1}]"
        names.append(name)
        images.append(np.ascontiguousarray(x))
        masks.append(np.ascontiguousarray(mask))
        if progress:
            progress(1)
    return VolumeSet(names, images, masks)


def _read_label(path: Path, image: Image, binary: bool) -> np.ndarray:
    """``path``'s label map (uint8) on ``image``'s grid; ``binary``: nonzero -> 1."""
    read = read_image(path)
    raw = read.array[0]
    if raw.shape != image.spatial_shape:
        raise InputError(path, f"mask shape {raw.shape} differs from image {image.spatial_shape}")
    if binary:
        if not (np.allclose(read.origin, image.origin, atol=1e-3)
                and np.allclose(read.spacing, image.spacing, atol=1e-3)):
            raise InputError(path, f"mask series geometry (origin {tuple(read.origin)}, spacing "
                                   f"{tuple(read.spacing)}) differs from the image's (origin "
                                   f"{tuple(image.origin)}, spacing {tuple(image.spacing)})")
        return (raw > 0).astype(np.uint8)
    mask = np.rint(raw).astype(np.uint8)
    if raw.size and (raw.min() < 0 or raw.max() > 255 or not np.allclose(raw, mask)):
        raise InputError(path, "mask values are not integer labels 0..255")
    return mask


def pad_to(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Zero-pad a (C, *S) array at the far end of each spatial axis up to ``size``."""
    pad = [(0, 0)] + [(0, max(int(s) - d, 0)) for d, s in zip(x.shape[1:], size)]
    return np.pad(x, pad) if any(p[1] for p in pad) else x


def window_at(image: np.ndarray, centre: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """The (C, *size) window of ``image`` centred on ``centre`` (clipped to the volume,
    zero-padded where the volume is smaller), and its spatial slices."""
    shape, size_ = np.array(image.shape[1:]), np.array(size)
    lo = np.clip(np.asarray(centre) - size_ // 2, 0, np.maximum(shape - size_, 0))
    sl = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(lo, size_))
    return pad_to(image[(slice(None), *sl)], size), sl


def sample_windows(data: VolumeSet, size: tuple[int, ...], n: int, fg_prob: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows (image (n, C, *size), labels (n, 1, *size) as float32) from
    random volumes.

    With probability ``fg_prob`` a window is centred on a random foreground voxel (tumours
    are a small fraction of a brain), else anywhere; windows are clipped to the volume.
    """
    xs, ys = [], []
    for _ in range(n):
        v = int(rng.integers(len(data)))
        image, mask = data.images[v], data.masks[v]
        if rng.random() < fg_prob and mask.any():
            fg = np.argwhere(mask)
            centre = fg[rng.integers(len(fg))]
        else:
            centre = np.array([rng.integers(s) for s in mask.shape])
        x, sl = window_at(image, centre, size)
        xs.append(x)
        ys.append(pad_to(mask[sl][None].astype(np.float32), size))
    return np.stack(xs), np.stack(ys)


def slab_split(pairs: Sequence[VolumePair], start: float, stop: float
               ) -> tuple[list[VolumePair], list[VolumePair]]:
    """(train, val): every volume's ``start``-``stop`` slab held out, the slices before and
    after it trained on as separate pieces (no seam where the slab was cut out)."""
    val = [p.in_slab(start, stop) for p in pairs]
    train = [p.in_slab(a, b) for p in pairs for a, b in ((0.0, start), (stop, 1.0)) if b > a]
    return train, val


def _series_files(folder: Path) -> list[Path]:
    """The files of a DICOM series folder in the reader's slice order (the volume's last axis)."""
    return [Path(ds.filename) for ds in read_image(folder).instances]


def _write_dicom_slabs(pairs: Sequence[VolumePair], dest: Path) -> Path:
    """DICOM cases of ``pairs`` under ``dest``, each slab as its own case folder of symlinks
    to the slab's slice files (image and every mask series): the source files unmodified."""
    for p in pairs:
        files = _series_files(p.image)
        z0, z1 = p.slab_slices(len(files))
        case = dest / (p.name if p.slab is None else f"{p.name}_z{z0}-{z1}")
        for src, sub in ((p.image, DICOM_CASE_IMAGE),
                         *((m, f"{DICOM_CASE_MASKS}/{m.name}") for m in (p.mask, *p.extra_masks))):
            folder = case / sub
            folder.mkdir(parents=True, exist_ok=True)
            for f in (files if src == p.image else _series_files(src))[z0:z1]:
                link = folder / f.name
                if not link.exists():
                    os.symlink(f.resolve(), link)
    return dest


def write_volume_subset(pairs: Sequence[VolumePair], dest: str | Path) -> Path:
    """Make ``dest`` a volume folder of ``pairs`` (files symlinked; DICOM cases as case
    folders, a slab holding only its slices' files)."""
    dest = Path(dest)
    if any(p.image.is_dir() for p in pairs):
        return _write_dicom_slabs(pairs, dest)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for p in pairs:
        for sub, src in (("images", p.image), ("masks", p.mask)):
            link = dest / sub / src.name
            if not link.exists():
                os.symlink(src.resolve(), link)
    return dest
