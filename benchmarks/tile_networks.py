"""Benchmark: the seed's ResNet-50 against the small ResNet-10 the shipped S7 model uses, as
tile classifiers on 2 CPU cores. Not a test.

Both networks (``tile-resnet`` depth 50 width 64, the seed's; depth 10 width 16) take the
shipped model's 128 x 128 tiles; each runs as PyTorch eager FP32, OpenVINO FP32 and OpenVINO
INT8 (NNCF, calibrated on 64 real tiles of a mosaic slide), batch 32, rounds alternating
between the six engines. Speed only: the ResNet-50 is not trained here (a few epochs of it
on 2 cores would take hours); its weights are random, which does not change its speed.

Usage (repository root):

    .venv/bin/python benchmarks/tile_networks.py --slides runs/cyto-slides/val \\
        --out benchmarks/results/tile_networks_$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openvino as ov
import torch

from medinfer.data.preprocess import prepare_tiles
from medinfer.data.slide_sets import TileReader, read_slide_folder
from medinfer.data.spec import Preprocessing
from medinfer.io.slides import Slide
from medinfer.models import create_model
from medinfer.optimize.export import export_onnx, export_openvino
from medinfer.optimize.quantize import openvino_int8
from medinfer.runtime.bench import machine_info, versions

NETWORKS = {"resnet10-w16": {"depth": 10, "width": 16}, "resnet50-w64 (seed)": {"depth": 50, "width": 64}}
SPEC = Preprocessing(size=(128, 128), mean=(0.8, 0.75, 0.8), std=(0.15, 0.15, 0.15))


def real_tiles(folder: Path, n: int) -> np.ndarray:
    reader = TileReader(128, 2.0)
    tiles = []
    for case in read_slide_folder(folder):
        with Slide.open(case.path) as slide:
            grid = reader.grid(slide, 0.05)
            tiles += [reader.read(slide, *p) for p in grid[: n - len(tiles)]]
        if len(tiles) >= n:
            break
    return prepare_tiles(np.stack(tiles), SPEC)


def engines(name: str, kwargs: dict, calib: np.ndarray, work: Path, threads: int) -> dict[str, object]:
    net = create_model("tile-resnet", in_channels=3, out_channels=1, **kwargs).eval()
    onnx = export_onnx(net, torch.from_numpy(calib[:2]), work / f"{name}.onnx")
    xml = export_openvino(onnx, work / f"{name}.xml")
    int8 = openvino_int8(xml, work / f"{name}-int8.xml", calib)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    fp32_c, int8_c = (core.compile_model(str(p), "CPU", config) for p in (xml, int8))

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy()

    return {"torch-fp32": eager, "openvino-fp32": lambda x: fp32_c(x)[0], "openvino-int8": lambda x: int8_c(x)[0],
            "_params": sum(p.numel() for p in net.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiles = real_tiles(args.slides, 64)
    batch = tiles[np.arange(args.batch) % len(tiles)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: engines(name.split()[0], kw, tiles, Path(tmp), args.threads) for name, kw in NETWORKS.items()}
        times: dict[str, list[float]] = {f"{n} {e}": [] for n, r in runs.items() for e in r if not e.startswith("_")}
        for r in runs.values():
            for e, f in r.items():
                if not e.startswith("_"):
                    f(batch)  # warm-up
        for _ in range(args.rounds):
            for n, r in runs.items():
                for e, f in r.items():
                    if e.startswith("_"):
                        continue
                    t = time.perf_counter()
                    f(batch)
                    times[f"{n} {e}"].append((time.perf_counter() - t) * 1000 / args.batch)
        params = {n: r["_params"] for n, r in runs.items()}
    rows = {k: {"ms_per_tile_median": statistics.median(v), "ms_per_tile": v} for k, v in times.items()}
    result = {"benchmark": "tile_networks", "date": dt.date.today().isoformat(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "versions": versions(), "tile": "128 x 128 at 0.5 um/pixel (real mosaic tiles)", "batch": args.batch,
              "parameters": params, "engines": rows,
              "note": "speed only; the ResNet-50 has random weights (not trained here)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in rows.items():
        print(f"{k:36s} {v['ms_per_tile_median']:.3f} ms/tile")


if __name__ == "__main__":
    main()
