"""CT perfusion (S5, the eStroke case): a 4D series -> CBF, CBV, MTT, Tmax, TTP maps ->
ischaemic core, hypoperfusion, mismatch, DEFUSE-3 -> NIfTI maps and masks, or DICOM
Parametric Maps + SEG + Comprehensive SR + a summary Secondary Capture.

The "model" is the analysis method and its settings (:class:`PerfusionConfig`), stored in
an artifact (``task: perfusion``, ``architecture: perfusion-<method>``, the settings in
``arch_kwargs``), so the service routes studies to it like to any model and a site can
version its thresholds. There is no network: the accelerated path is the batched torch
deconvolution (``--backend torch``), the reference is NumPy (``--backend numpy``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medinfer.artifact import ArtifactSpec, InputSpec, ModelArtifact
from medinfer.data.spec import Preprocessing
from medinfer.errors import BackendUnavailableError, InputError
from medinfer.io import Image, write_image_nifti, write_mask_nifti
from medinfer.io.derived import (
    SrGroup,
    SrMeasurement,
    write_measurements_sr,
    write_parametric_map,
    write_png,
    write_sc,
    write_seg,
)
from medinfer.io.limits import ReadLimits
from medinfer.io.perfusion import read_perfusion
from medinfer.metrics import mean_interval
from medinfer.perfusion.aif import check_vessels
from medinfer.perfusion import (
    MAP_NAMES,
    Lesions,
    PerfusionConfig,
    PerfusionMaps,
    PhantomConfig,
    compute_maps,
    curves_figure,
    find_lesions,
    left_right,
    make_phantom,
    maps_figure,
    summary_page,
)
from medinfer.runtime import Engine, EngineOptions
from medinfer.tasks.base import Infer, Prediction, Task, WriteOptions, WrittenFile

__all__ = ["BACKENDS", "Perfusion", "PerfusionPrediction", "SEGMENTS", "perfusion_artifact"]

log = logging.getLogger(__name__)

SEGMENTS = {1: "ischemic core", 2: "hypoperfused tissue outside the core"}
BACKENDS = ("torch", "numpy")
_MAP_FILES = ("cbf", "cbv", "mtt", "tmax", "ttp")


def perfusion_artifact(root: str | Path = "ct-perfusion",
                       config: PerfusionConfig = PerfusionConfig()) -> ModelArtifact:
    """A perfusion artifact (in memory; ``.save()`` writes its ``artifact.json``)."""
    spec = ArtifactSpec(task="perfusion", architecture=f"perfusion-{config.method}",
                        arch_kwargs=config.model_dump(mode="json"), in_channels=0, out_channels=len(MAP_NAMES),
                        input=InputSpec(channels=0, spatial=(0, 0, 0)),
                        preprocessing=Preprocessing(size=(0, 0, 0), channels=0, scale=1.0, mean=(0.0,),
                                                    std=(1.0,)),
                        segments=dict(SEGMENTS))
    return ModelArtifact(Path(root), spec)


@dataclass(frozen=True, eq=False)
class PerfusionPrediction(Prediction):
    """A :class:`Prediction` with the maps and lesions (``mask``: 1 core, 2 hypoperfused
    tissue outside the core; ``extra``: the JSON contract of ``medinfer perfusion``)."""

    maps: PerfusionMaps | None = None
    lesions: Lesions | None = None


@dataclass(frozen=True)
class PerfusionCase:
    """One evaluation case: the series and its true maps and masks (``truth.npz``)."""

    name: str
    image: Image
    truth: dict[str, np.ndarray]


class Perfusion(Task):
    """The CT perfusion task (see the module docstring)."""

    name: ClassVar[str] = "perfusion"
    primary: ClassVar[str] = "core_dice"
    columns: ClassVar[tuple[tuple[str, str], ...]] = (
        ("core_dice", "core Dice"), ("penumbra_dice", "Tmax>6 s Dice"),
        ("core_volume_error", "core volume error"), ("penumbra_volume_error", "Tmax>6 s volume error"),
        ("cbf_error", "CBF median rel. error"), ("cbv_error", "CBV median rel. error"),
        ("tmax_error", "Tmax median error, s"))
    layout: ClassVar[str] = ("perfusion cases: <case>/series/ (a 4D DICOM series) and <case>/truth.npz "
                             "(medinfer.perfusion.write_phantom)")

    def __init__(self, art: ModelArtifact, config: PerfusionConfig | None = None,
                 aif_mask: np.ndarray | None = None, aif_mask_path: str = "") -> None:
        super().__init__(art)
        self.config = config or PerfusionConfig.model_validate(art.spec.arch_kwargs)
        self.aif_mask, self.aif_mask_path = aif_mask, aif_mask_path

    @classmethod
    def handles(cls, art: ModelArtifact) -> bool:
        return art.spec.task == "perfusion"

    def open_engine(self, backend: str | None, precision: str | None,
                    options: EngineOptions) -> tuple[Engine | None, str]:
        """No network to load: ``backend`` picks the deconvolution (torch or numpy)."""
        backend = backend or self.config.backend
        if backend not in BACKENDS or precision not in (None, "fp64"):
            raise BackendUnavailableError(f"perfusion runs on {' or '.join(BACKENDS)} (fp64); "
                                          f"got {backend}/{precision or 'default'}")
        self.config = self.config.model_copy(update={"backend": backend})
        return None, f"{backend}-fp64"

    def read_input(self, paths: Sequence[Path], limits: ReadLimits | None = None) -> Image:
        """A perfusion series from its files (a 4D NIfTI needs frame times beside it)."""
        return read_perfusion(paths[0] if len(paths) == 1 else list(paths), limits=limits)

    def check_image(self, image: Image) -> None:
        src = image.source or "<series>"
        if image.ndim_spatial != 3:
            raise InputError(src, f"{image.ndim_spatial}D image; perfusion needs a 4D series "
                                  "(time x rows x columns x slices)")
        if not image.meta.get("frame_times"):
            raise InputError(src, "no frame times: read the series with medinfer.io.perfusion."
                                  "read_perfusion, or give --frame-times for NIfTI")

    def blank_input(self) -> Image:
        """A tiny phantom series: its analysis pays the imports of torch and SciPy and the
        first SVD before the first stroke study."""
        return make_phantom(PhantomConfig(size=48, slices=2, frames=16, dt=2.0), self.config).image

    # -- one series ------------------------------------------------------------------
    def prepare(self, image: Image) -> np.ndarray:
        """The series as float32 HU ``(T, rows, cols, slices)``."""
        return np.asarray(image.array, np.float32)

    def infer(self, engine: Engine, x: np.ndarray) -> np.ndarray:
        raise InputError("<perfusion>", "perfusion maps need the series' geometry and frame "
                                        "times: call predict() with the Image")

    def postprocess(self, outputs: np.ndarray, image: Image) -> Prediction:
        raise InputError("<perfusion>", "perfusion has no network outputs: call predict()")

    def analyse(self, image: Image) -> tuple[PerfusionMaps, Lesions]:
        """Maps and lesions of one series."""
        maps = compute_maps(image, self.config, self.aif_mask, self.aif_mask_path)
        side = left_right(maps.brain, image.affine, str(image.meta.get("frame", "LPS")))
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        return maps, find_lesions(maps.cbf, maps.tmax, maps.brain, side, voxel_ml, self.config)

    def predict(self, engine: Engine | None, image: Image, variant: str = "") -> Prediction:
        self.check_image(image)
        t0 = time.perf_counter()
        maps, lesions = self.analyse(image)
        t1 = time.perf_counter()
        extra = {**lesions.summary(), "aif": {**maps.aif.record(image.affine), "scale": round(maps.aif_scale, 4)},
                 "vof": maps.vof.record(image.affine) if maps.vof is not None else None,
                 "method": self.method_record(maps), "frames": len(maps.times),
                 "frame_interval_s": round(float(np.median(np.diff(maps.times))), 4),
                 "baseline_frames": maps.arrival + 1, "brain_ml": round(float(maps.brain.sum()) *
                                                                       float(np.prod(image.spacing)) / 1000, 2),
                 "warnings": check_vessels(maps.aif, maps.vof, maps.times)}
        for warning in extra["warnings"]:
            log.warning("%s: %s", image.source or "perfusion series", warning)
        return PerfusionPrediction(task=self.name, mask=lesions.labels(), segments=dict(SEGMENTS),
                                   artifact=self.art.root.name, variant=variant,
                                   seconds={**{k: v for k, v in maps.seconds.items()},
                                            "lesions": t1 - t0 - sum(maps.seconds.values())},
                                   extra=extra, maps=maps, lesions=lesions)

    def method_record(self, maps: PerfusionMaps) -> dict[str, Any]:
        """What ran: deconvolution, thresholds (the SVD threshold used: its range and median
        over the brain), corrections and lesion rules."""
        c = self.config
        used = maps.threshold[maps.brain]
        return {"deconvolution": "oSVD (block-circulant, oscillation index)" if c.method == "osvd"
                else "bcSVD (block-circulant, fixed threshold)", "name": c.method,
                "svd_threshold": {"fixed": c.svd_threshold} if c.method == "bcsvd" else
                {"tried": list(c.osvd_thresholds), "max_oscillation_index": c.oscillation_index},
                "svd_threshold_used": {k: round(float(f(used)), 4) if used.size else None
                                       for k, f in (("median", np.median), ("min", np.min), ("max", np.max))},
                "bias_correction": c.bias_correction, "venous_correction": c.venous_correction,
                "tail_extrapolation": c.tail_extrapolation, "kh": c.kh, "rho": c.rho,
                "smoothing_mm": c.smoothing_mm, "core": f"rCBF < {c.core_rcbf:g}" +
                (f" and Tmax > {c.core_min_tmax:g} s" if c.core_within_hypoperfusion else ""),
                "penumbra": f"Tmax > {c.penumbra_tmax:g} s", "backend": c.backend}

    # -- results ---------------------------------------------------------------------
    def write_files(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """NIfTI maps and masks in the input's geometry, and the summary, maps and curves PNGs."""
        assert isinstance(pred, PerfusionPrediction) and pred.maps and pred.lesions
        maps, les = pred.maps, pred.lesions
        grid = Image(np.zeros((1, *maps.brain.shape), np.float32), image.spacing, image.origin,
                     image.direction, None, {"frame": image.meta.get("frame", "LPS")})
        files = []
        for name in _MAP_FILES:
            path = write_image_nifti(Image(maps.get(name)[None], grid.spacing, grid.origin, grid.direction,
                                           None, grid.meta), out_dir / options.name(f"{name}.nii.gz"))
            files.append(WrittenFile(name, path, "application/gzip"))
        for name, mask in (("core", les.core), ("penumbra", les.penumbra)):
            files.append(WrittenFile(name, write_mask_nifti(mask, out_dir / options.name(f"{name}.nii.gz"),
                                                            reference=grid), "application/gzip"))
        if options.overlay:
            for name, picture in (("summary", summary_page(maps, les)), ("maps", maps_figure(maps, les)),
                                  ("curves", curves_figure(maps, self.tissue_curves(image, maps, les)))):
                files.append(WrittenFile(name, write_png(picture, out_dir / options.name(f"{name}.png")),
                                         "image/png"))
        return files

    def tissue_curves(self, image: Image, maps: PerfusionMaps, les: Lesions) -> dict[str, np.ndarray]:
        """Mean enhancement of the core, the hypoperfused tissue and the rest of the brain."""
        hu = np.asarray(image.array, np.float32)
        base = maps.baseline
        out = {}
        for label, mask in (("core", les.core), ("Tmax > 6 s", les.penumbra & ~les.core),
                            ("other brain", maps.brain & ~les.penumbra)):
            if mask.any():
                out[label] = (hu[:, mask] - base[mask]).mean(axis=1)
        return out

    def write_dicom(self, pred: Prediction, image: Image, out_dir: Path,
                    options: WriteOptions) -> list[WrittenFile]:
        """Parametric Maps (CBF, CBV, MTT, Tmax, TTP), a SEG of core and hypoperfused tissue,
        a Comprehensive SR of the volumes and DEFUSE-3 criteria, and the summary page as a
        Secondary Capture, all referencing the series' first time point."""
        assert isinstance(pred, PerfusionPrediction) and pred.maps and pred.lesions
        maps, les = pred.maps, pred.lesions
        name, version = self.art.root.name, pred.variant or "perfusion"
        files = []
        for q in _MAP_FILES:
            path, uid = write_parametric_map(image.instances, maps.get(q), out_dir / options.name(f"pm_{q}.dcm"),
                                             quantity=q, algorithm=name, version=version)
            files.append(WrittenFile("pm", path, "application/dicom", uid))
        if pred.mask is not None and pred.mask.any():
            path, uid = write_seg(image.instances, pred.mask, pred.segments, out_dir / options.name("seg.dcm"), name, version,
                                  labelmap=options.labelmap)
            files.append(WrittenFile("seg", path, "application/dicom", uid))
        path, uid = write_measurements_sr(image.instances, sr_groups(les, self.config), out_dir / options.name("sr.dcm"),
                                          name, version)
        files.append(WrittenFile("sr", path, "application/dicom", uid))
        path, uid = write_sc(image.instances[0], summary_page(maps, les), out_dir / options.name("sc.dcm"), name)
        files.append(WrittenFile("sc", path, "application/dicom", uid))
        return files

    # -- evaluation on cases with known truth ----------------------------------------
    def is_layout(self, folder: Path) -> bool:
        return any((d / "truth.npz").is_file() and (d / "series").is_dir() for d in Path(folder).iterdir()
                   if d.is_dir())

    def load_eval(self, folder: Path, limit: int | None = None) -> list[PerfusionCase]:
        cases = sorted(d for d in Path(folder).iterdir() if d.is_dir() and (d / "truth.npz").is_file())
        out = []
        for d in cases[:limit]:
            with np.load(d / "truth.npz") as z:
                truth = {k: z[k] for k in z.files}
            out.append(PerfusionCase(d.name, read_perfusion(d / "series"), truth))
        return out

    def load_calib(self, folder: Path, limit: int | None = None) -> np.ndarray:
        raise InputError(folder, "a perfusion analysis has no network to calibrate or quantize")

    def subset(self, data: Any, index: list[int]) -> Any:
        return [data[i] for i in index]

    def outputs(self, infer: Infer | None, data: list[PerfusionCase]) -> list[np.ndarray]:
        """Per case ``(5, rows, cols, slices)``: labels, brain, CBF, CBV, Tmax."""
        out = []
        for case in data:
            maps, les = self.analyse(case.image)
            out.append(np.stack([les.labels(), maps.brain, maps.cbf, maps.cbv, maps.tmax]).astype(np.float32))
        return out

    def score(self, engine: Engine | None, data: Any, n_boot: int = 0) -> dict[str, Any]:
        return self.metrics(self.outputs(None, data), data, n_boot)

    def metrics(self, outputs: list[np.ndarray], data: list[PerfusionCase], n_boot: int = 0) -> dict[str, Any]:
        """Dice and volume error of core and Tmax > 6 s against the truth, and median map
        errors over the tissue both analyse; means over cases (with intervals when ``n_boot``)."""
        rows = [case_scores(o, c.truth) for o, c in zip(outputs, data)]
        out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
        out["n"] = len(rows)
        if n_boot and len(rows) > 1:
            out["intervals"] = {k: mean_interval(np.array([r[k] for r in rows]), n_boot) for k in rows[0]}
        return out


def case_scores(output: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, float]:
    """One case's lesion Dice / volume errors and median map errors (see :meth:`Perfusion.metrics`)."""
    labels, brain = output[0].astype(np.uint8), output[1] > 0
    core, pen = labels == 1, labels > 0

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = a.sum() + b.sum()
        return float(2 * (a & b).sum() / total) if total else 1.0

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float((a.sum() - b.sum()) / b.sum()) if b.sum() else float(a.sum() > 0)

    t_core, t_pen = truth["core"].astype(bool), truth["penumbra"].astype(bool)
    both = brain & truth["tissue"].astype(bool) & (truth["cbf"] > 0)
    return {"core_dice": dice(core, t_core), "penumbra_dice": dice(pen, t_pen),
            "core_volume_error": rel(core, t_core), "penumbra_volume_error": rel(pen, t_pen),
            "cbf_error": float(np.median(output[2][both] / truth["cbf"][both] - 1)),
            "cbv_error": float(np.median(output[3][both] / truth["cbv"][both] - 1)),
            "tmax_error": float(np.median(output[4][both] - truth["tmax"][both]))}


def sr_groups(les: Lesions, config: PerfusionConfig) -> list[SrGroup]:
    """The SR's measurement groups: core, hypoperfusion and mismatch volumes, the mismatch
    ratio and the DEFUSE-3 imaging criteria."""
    ml = ("ml", "milliliter")
    groups = [SrGroup("ischemic core", (SrMeasurement("volume", les.core_ml, *ml),)),
              SrGroup(f"hypoperfusion (Tmax > {config.penumbra_tmax:g} s)",
                      (SrMeasurement("volume", les.penumbra_ml, *ml),))]
    mismatch = [SrMeasurement("volume", les.mismatch_ml, *ml)]
    if les.mismatch_ratio is not None:
        mismatch.append(SrMeasurement("volume ratio", les.mismatch_ratio, "{ratio}", "ratio"))
    groups.append(SrGroup("mismatch", tuple(mismatch)))
    groups.append(SrGroup("DEFUSE-3 eligibility", evaluations=(("eligible", les.defuse3_eligible),)))
    return groups
