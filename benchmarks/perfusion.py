"""Benchmark: CT perfusion (S5) speed and accuracy against known truth. Not a test.

Speed: a digital phantom series of 256x256 pixels x 16 slices x 40 frames (written as
640 DICOM files) runs through the whole pipeline with the NumPy reference and the batched
torch deconvolution, side by side in interleaved rounds: read (pydicom, sorting by
acquisition time), maps, lesions, the summary picture + JSON ("report"), and the full
result set (NIfTI maps, DICOM Parametric Maps + SEG + SR + SC, HTML report). The two
backends' core and penumbra masks are compared voxel for voxel.

Accuracy: the default phantom (128x128x8x40, Gaussian noise per voxel and frame) at
several noise levels and seeds: core / Tmax>6 s Dice and volume errors against the truth,
per-block CBF, CBV and Tmax errors (block interiors), CBF change between delay 0 and 3 s;
and the OSIPI DSC digital reference object (14 curves, their tolerances).

Usage (repository root):

    .venv/bin/python benchmarks/perfusion.py --rounds 3 \\
        --out benchmarks/results/perfusion_$(date +%F).json
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medinfer.io.perfusion import read_perfusion
from medinfer.perfusion import PerfusionConfig, PhantomConfig, make_phantom, write_phantom
from medinfer.perfusion.deconvolution import aif_basis, deconvolve
from medinfer.perfusion.figures import summary_page
from medinfer.progress import progress_bar
from medinfer.runtime.bench import machine_info, versions
from medinfer.tasks import WriteOptions
from medinfer.tasks.perfusion import Perfusion, case_scores, perfusion_artifact

REPO = Path(__file__).resolve().parent.parent
OSIPI = REPO.parent / "shared" / "data" / "perfusion-reference" / "osipi-dsc-dro" / "dsc_data.csv"


def speed(rounds: int, size: int, slices: int, frames: int) -> dict[str, object]:
    """Interleaved rounds of the whole pipeline for both backends (seconds per stage)."""
    phantom = make_phantom(PhantomConfig(size=size, slices=slices, frames=frames))
    times: dict[str, list[dict[str, float]]] = {"numpy": [], "torch": []}
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        series = write_phantom(phantom, Path(tmp) / "case") / "series"
        with progress_bar("perfusion speed", rounds * 2, True) as advance:
            for r in range(rounds):
                for backend in ("numpy", "torch"):
                    times[backend].append(_one(series, backend, Path(tmp) / f"out-{backend}-{r}", masks))
                    advance()
    same = bool(np.array_equal(masks["numpy"], masks["torch"]))
    summary = {b: {k: statistics.median(t[k] for t in rows) for k in rows[0]} for b, rows in times.items()}
    return {"series": {"rows": size, "cols": size, "slices": slices, "frames": frames,
                       "files": slices * frames},
            "median_s": summary, "rounds": times, "masks_identical": same,
            "torch_speedup_maps": summary["numpy"]["maps"] / summary["torch"]["maps"],
            "torch_speedup_pipeline": summary["numpy"]["pipeline"] / summary["torch"]["pipeline"]}


def _one(series: Path, backend: str, out: Path, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """One run: read, maps, lesions, summary picture + JSON, then every result file."""
    task = Perfusion(perfusion_artifact(), PerfusionConfig(backend=backend))
    t0 = time.perf_counter()
    image = read_perfusion(series)
    t1 = time.perf_counter()
    pred = task.predict(None, image, f"{backend}-fp64")
    t2 = time.perf_counter()
    out.mkdir(parents=True)
    picture = summary_page(pred.maps, pred.lesions)
    (out / "result.json").write_text(json.dumps(pred.summary(), default=str))
    t3 = time.perf_counter()
    task.write(pred, image, out / "all", WriteOptions())
    t4 = time.perf_counter()
    masks[backend] = pred.mask
    lesions = pred.seconds.get("lesions", 0.0)
    assert picture.ndim == 3
    return {"read": t1 - t0, "maps": t2 - t1 - lesions, "lesions": lesions, "report": t3 - t2,
            "pipeline": t3 - t0, "all_results": t4 - t3}


def accuracy(noises: list[float], seeds: list[int]) -> dict[str, object]:
    """Phantom validation per noise level (means and ranges over seeds)."""
    task = Perfusion(perfusion_artifact())
    rows = []
    with progress_bar("phantom accuracy", len(noises) * len(seeds), True) as advance:
        for noise in noises:
            for seed in seeds:
                ph = make_phantom(PhantomConfig(noise_hu=noise, seed=seed))
                maps, les = task.analyse(ph.image)
                out = np.stack([les.labels(), maps.brain, maps.cbf, maps.cbv, maps.tmax]).astype(np.float32)
                t = ph.truth
                truth = {"core": t.lesions.core, "penumbra": t.lesions.penumbra, "tissue": t.tissue,
                         "cbf": t.cbf, "cbv": t.cbv, "tmax": t.tmax}
                rows.append({"noise_hu": noise, "seed": seed, "cnr": _cnr(ph, noise),
                             **case_scores(out, truth), **_blocks(ph, maps),
                             "core_ml": les.core_ml, "true_core_ml": t.lesions.core_ml,
                             "penumbra_ml": les.penumbra_ml, "true_penumbra_ml": t.lesions.penumbra_ml})
                advance()
    return {"phantom": PhantomConfig().model_dump(), "cases": rows}


def _cnr(ph, noise: float) -> float | None:
    """Peak enhancement of normal tissue over the noise sigma (per voxel and frame)."""
    t = ph.truth
    normal = (t.cbf == 50) & (t.cbv == 4) & t.tissue
    base = ph.image.array[0, normal].mean()
    peak = float((ph.image.array[:, normal].mean(axis=1) - base).max())
    return round(peak / noise, 2) if noise > 0 else None


def _blocks(ph, maps) -> dict[str, object]:
    """Per-block medians over block interiors (eroded 2 pixels): error ranges, and the CBF
    change from the first slice (delay 0) to the last (delay max)."""
    t = ph.truth
    cbf_err, cbv_err, tmax_err, delay_change = [], [], [], []
    last = t.block.shape[2] - 1
    for b, (cbf, mtt) in enumerate(t.blocks, start=1):
        inner = ndimage.binary_erosion(t.block == b, structure=np.ones((5, 5, 1), bool)) & maps.brain
        per_slice = []
        for k in range(t.block.shape[2]):
            sel = inner[..., k]
            if sel.sum() < 3:
                continue
            c = float(np.median(maps.cbf[..., k][sel]))
            per_slice.append((k, c))
            cbf_err.append(c / cbf - 1)
            cbv_err.append(float(np.median(maps.cbv[..., k][sel])) / (cbf * mtt / 60) - 1)
            tmax_err.append(float(np.median(maps.tmax[..., k][sel] - t.tmax[..., k][sel])))
        ends = dict(per_slice)
        if 0 in ends and last in ends:
            delay_change.append(ends[last] / ends[0] - 1)

    def rng(v: list[float]) -> list[float]:
        return [round(min(v), 4), round(float(np.median(v)), 4), round(max(v), 4)] if v else []

    return {"block_cbf_error_min_median_max": rng(cbf_err), "block_cbv_error_min_median_max": rng(cbv_err),
            "block_tmax_error_s_min_median_max": rng(tmax_err),
            "block_cbf_change_delay0_to_max_min_median_max": rng(delay_change)}


def osipi() -> dict[str, object]:
    """Every DRO curve with both methods against OSIPI's tolerances."""
    cfg = PerfusionConfig()
    out = []
    for row in csv.DictReader(OSIPI.open()):
        ct = np.array(row["C_tis"].split(), float)
        ca = np.array(row["C_aif"].split(), float)
        basis = aif_basis(ca, float(row["tr"]))
        cbv = 100 * ct.sum() / ca.sum()
        for method in ("osvd", "bcsvd"):
            d = deconvolve(ct[None], basis, method, cfg.svd_threshold, cfg.osvd_thresholds, cfg.oscillation_index)
            cbf = float(d.peak[0] * 6000)
            true_cbf, true_cbv = float(row["cbf"]), float(row["cbv"])
            out.append({"label": row["label"], "method": method, "cbf": round(cbf, 3), "true_cbf": true_cbf,
                        "cbv": round(cbv, 3), "true_cbv": true_cbv,
                        "cbf_pass": abs(cbf - true_cbf) <= 15 + 0.1 * true_cbf,
                        "cbv_pass": abs(cbv - true_cbv) <= 1 + 0.1 * true_cbv})
    return {"curves": out, "all_pass": all(r["cbf_pass"] and r["cbv_pass"] for r in out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=16)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--noises", default="0,1.5,2,3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    result = {"benchmark": "perfusion", "date": dt.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "versions": versions(), "settings": PerfusionConfig().model_dump(mode="json"),
              "speed": speed(a.rounds, a.size, a.slices, a.frames),
              "accuracy": accuracy([float(v) for v in a.noises.split(",")], [int(v) for v in a.seeds.split(",")]),
              "osipi": osipi(),
              "note": "The phantom is synthetic (medinfer.perfusion.phantom): a layout with known truth, not "
                      "patients. OSIPI DRO: DSC-MRI curves, CNR 200, no delay or dispersion."}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({"speed": result["speed"]["median_s"], "masks_identical": result["speed"]["masks_identical"],
                      "osipi_all_pass": result["osipi"]["all_pass"]}, indent=2))


if __name__ == "__main__":
    main()
