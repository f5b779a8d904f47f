"""The `medinfer` command. Each subcommand parses flags and calls one stage's API."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from medinfer.errors import MedinferError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast, verified, hospital-ready inference for medical-imaging models.")
console = Console(stderr=True)


def _wide() -> Console:
    """Stdout console; tables keep their columns when output is not a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    # Libraries (ONNX Runtime's quantizer logs through the root logger) stay at WARNING;
    # medinfer's own messages at INFO, or DEBUG with --verbose.
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    logging.getLogger("medinfer").setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(exc: MedinferError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


def _emit_json(payload: dict, out: Path | None) -> None:
    text = json.dumps(payload, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Kvasir layout (images/, masks/) or a labeled folder (labels.csv, images/).")],
    out: Annotated[Path, typer.Option(help="Artifact folder to write.")],
    model: Annotated[Optional[str], typer.Option(help="Registered architecture (default: resunet, or densenet121 for a labeled folder).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Classification: network input side in pixels.")] = None,
    channels: Annotated[Optional[str], typer.Option(help="Comma-separated channels per level.")] = None,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    lr_step: int = 30,
    lr_gamma: float = 0.5,
    loss: Annotated[str, typer.Option(help="dice | dicece")] = "dice",
    val_fraction: float = 0.2,
    seed: int = 0,
    threads: int = 2,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop after this much time.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N pairs (tests).")] = None,
) -> None:
    """Train a model and save its best epoch as an artifact.

    A folder with ``labels.csv`` trains a multi-label classifier (CheXNet recipe, best
    epoch by validation mean AUC); image/mask folders train a segmentation model
    (DQ-ResUNet recipe, best epoch by validation Dice).
    """
    from medinfer.data.labels import is_labeled_folder
    from medinfer.train import TrainConfig, train_segmentation

    kwargs: dict[str, object] = {}
    if channels:
        kwargs["channels"] = tuple(int(c) for c in channels.split(","))
    command = "medinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    from medinfer.data.volumes import is_volume_folder

    if is_volume_folder(data):
        _train_volumes(data, out, model or "unet3d", kwargs, epochs, lr, seed, threads, max_minutes, command)
        return
    if is_labeled_folder(data):
        _train_classifier(data, out, model or "densenet121", kwargs, size, epochs, batch_size, lr,
                          seed, threads, max_minutes, limit, command)
        return
    cfg = TrainConfig(data=data, out=out, architecture=model or "resunet", arch_kwargs=kwargs, epochs=epochs,
                      batch_size=batch_size, lr=lr, lr_step=lr_step, lr_gamma=lr_gamma, loss=loss,
                      val_fraction=val_fraction, seed=seed, threads=threads,
                      max_minutes=max_minutes, limit=limit)
    try:
        result = train_segmentation(cfg, command=command)
    except MedinferError as exc:
        raise _fail(exc) from exc
    m = result.artifact.spec.metrics
    console.print(f"best epoch {result.best_epoch}: val Dice {m['dice']:.4f} IoU {m['iou']:.4f} -> {out}")


def _train_classifier(data: Path, out: Path, model: str, kwargs: dict[str, object], size: int | None,
                      epochs: int, batch_size: int, lr: float, seed: int, threads: int,
                      max_minutes: float | None, limit: int | None, command: str) -> None:
    from medinfer.train.classify import train_classification
    from medinfer.train.config import ClassifyConfig

    extra: dict[str, object] = {}
    if size:
        extra["preprocessing"] = ClassifyConfig.model_fields["preprocessing"].default.model_copy(
            update={"size": (size, size)})
    cfg = ClassifyConfig(data=data, out=out, architecture=model, arch_kwargs=kwargs, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, threads=threads,
                         max_minutes=max_minutes, limit=limit, **extra)
    try:
        result = train_classification(cfg, command=command)
    except MedinferError as exc:
        raise _fail(exc) from exc
    m = result.artifact.spec.metrics
    console.print(f"best epoch {result.best_epoch}: val mean AUC {m['mean_auc']:.4f} "
                  f"abnormal AUC {m['abnormal_auc']:.4f} -> {out}")


def _train_volumes(data: Path, out: Path, model: str, kwargs: dict[str, object], epochs: int, lr: float,
                   seed: int, threads: int, max_minutes: float | None, command: str) -> None:
    from medinfer.train.volume import VolumeTrainConfig, train_volume_segmentation

    cfg = VolumeTrainConfig(data=data, out=out, architecture=model, arch_kwargs=kwargs, epochs=epochs,
                            lr=lr, seed=seed, threads=threads, max_minutes=max_minutes)
    try:
        art = train_volume_segmentation(cfg, command=command)
    except MedinferError as exc:
        raise _fail(exc) from exc
    console.print(f"best epoch {art.spec.training['best_epoch']}: held-out Dice {art.spec.metrics['dice']:.4f} -> {out}")


def _load_artifact(path: Path):
    from medinfer.artifact import ModelArtifact

    return ModelArtifact.load(path)


BackendOpt = Annotated[Optional[str], typer.Option(help="torch | onnxruntime | openvino (default: the artifact's chosen variant).")]
PrecisionOpt = Annotated[Optional[str], typer.Option(help="fp32 | int8 | int8-dynamic | int8-ac.")]


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model artifact folder.")],
    data: Annotated[Path, typer.Option(help="Data folder in the model's layout: images/+masks/ (2D or NIfTI volumes) or labels.csv+images/.")],
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the JSON here.")] = None,
    threads: int = 2,
    bootstrap: Annotated[int, typer.Option(help="Classification: bootstrap resamples for the 95% intervals.")] = 1000,
) -> None:
    """The task's metrics of one variant over a folder, printed as JSON.

    Segmentation: ``{dice, iou, n, backend, precision}``. Classification: mean AUC over the
    findings present, abnormal AUC, per-finding AUC (``auc/<finding>``), each with a
    bootstrap 95% interval under ``intervals``.
    """
    from medinfer.apps.evaluate import evaluate_folder
    from medinfer.runtime import EngineOptions

    try:
        result = evaluate_folder(_load_artifact(model), data, backend, precision, EngineOptions(threads=threads),
                                 n_boot=bootstrap)
    except MedinferError as exc:
        raise _fail(exc) from exc
    _emit_json(result, json_out)


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image or volume files (PNG/JPEG/DICOM/NIfTI).")],
    model: Annotated[Path, typer.Option(help="Model artifact folder.")],
    out: Annotated[Path, typer.Option(help="Output folder for masks and overlays.")],
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    threads: int = 2,
) -> None:
    """Run a model on files: masks + overlays (2D), NIfTI masks (3D) or finding scores (JSON)."""
    from medinfer.apps.predict import predict_files
    from medinfer.runtime import EngineOptions

    try:
        written = predict_files(_load_artifact(model), inputs, out, backend, precision,
                                EngineOptions(threads=threads))
    except MedinferError as exc:
        raise _fail(exc) from exc
    console.print(f"wrote results for {len(written)} of {len(inputs)} inputs to {out}")
    if len(written) < len(inputs):
        raise typer.Exit(code=1)


@app.command()
def optimize(
    model: Annotated[Path, typer.Option(help="Model artifact folder (variants are written into it).")],
    calib: Annotated[Path, typer.Option(help="Calibration data (training data, never validation).")],
    val: Annotated[Path, typer.Option(help="Folder the gate evaluates on, in the model's data layout.")],
    tune: Annotated[Optional[Path], typer.Option(help="Labeled folder for accuracy-controlled INT8 (not --val).")] = None,
    max_drop: Annotated[float, typer.Option(help="Largest allowed drop of the task's metric (Dice, mean AUC) vs PyTorch FP32.")] = 0.005,
    max_class_drop: Annotated[float, typer.Option(help="Classification: largest allowed drop of any one class's AUC.")] = 0.02,
    calib_limit: Optional[int] = None,
    val_limit: Optional[int] = None,
    tune_limit: Optional[int] = None,
    threads: int = 2,
) -> None:
    """Build every variant, gate each on the task's metric, store them and choose the fastest that passes."""
    from medinfer.optimize.pipeline import OptimizeConfig
    from medinfer.optimize.pipeline import optimize as run
    from medinfer.runtime import EngineOptions

    cfg = OptimizeConfig(calib=calib, val=val, tune=tune, max_drop=max_drop, max_class_drop=max_class_drop,
                         calib_limit=calib_limit, val_limit=val_limit, tune_limit=tune_limit,
                         options=EngineOptions(threads=threads))
    try:
        art = _load_artifact(model)
        with console.status("optimizing") as status:
            records = run(art, cfg, step=lambda s: status.update(f"optimize: {s}"))
    except MedinferError as exc:
        raise _fail(exc) from exc
    _print_variants(records, art.spec.chosen)


def _print_variants(records, chosen: str | None) -> None:
    from rich.table import Table

    keys = ["dice", "iou"] if "dice" in records[0].metrics else ["mean_auc", "abnormal_auc"]
    table = Table(title=f"variants ({keys[0]} gate vs torch-fp32)")
    for c in ("variant", *keys, "gate", "latency ms", "size MB", "FP32 layers"):
        table.add_column(c)
    for r in records:
        gate = "pass" if r.passed else f"REJECT: {r.reason}"
        table.add_row(r.name + (" ★" if r.name == chosen else ""),
                      *(f"{r.metrics.get(k, float('nan')):.4f}" for k in keys), gate,
                      f"{r.latency_ms:.1f}", f"{r.size_mb:.1f}",
                      str(len(r.float_layers)) if r.precision == "int8-ac" else "")
    _wide().print(table)
    _wide().print(f"chosen: [bold]{chosen or 'none passed'}[/bold]")


def _bench_end_to_end(model: Path, variants: str | None, inputs: list[Path], threads: int,
                      json_out: Path | None, markdown: Path | None) -> None:
    from rich.progress import Progress

    from medinfer.apps.e2e import end_to_end, speedups
    from medinfer.report.tables import e2e_markdown, e2e_table
    from medinfer.runtime import EngineOptions
    from medinfer.runtime.bench import machine_info, versions

    try:
        if not inputs:
            raise MedinferError("--end-to-end needs input files to predict (e.g. a few images or volumes)")
        art = _load_artifact(model)
        names = variants.split(",") if variants else list(dict.fromkeys(["torch-fp32", art.spec.chosen or "torch-fp32"]))
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("end to end", total=len(names) * len(inputs))
            rows = end_to_end(art, names, inputs, EngineOptions(threads=threads), on_input=lambda: bar.advance(task))
    except MedinferError as exc:
        raise _fail(exc) from exc
    table = speedups(rows)
    _wide().print(e2e_table(table))
    payload = {"artifact": str(model), "command": "medinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "machine": machine_info(), "versions": versions(), "threads": threads,
               "inputs": [str(p) for p in inputs], "variants": table}
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if markdown:
        markdown.write_text(e2e_markdown(table) + "\n")


@app.command()
def bench(
    model: Annotated[Path, typer.Option(help="Optimized model artifact folder.")],
    variants: Annotated[Optional[str], typer.Option(help="Comma-separated variant names.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result JSON here.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Write the ladder table (Markdown) here.")] = None,
    threads: int = 2,
    in_flight: int = 4,
    runs_batch: int = 10,
    runs_single: int = 30,
    requests: int = 64,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds over all variants; medians over rounds.")] = 1,
    end_to_end: Annotated[bool, typer.Option("--end-to-end", help="Time read/preprocess/infer/postprocess/write on INPUTS.")] = False,
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="--end-to-end: image/volume files to predict.")] = None,
) -> None:
    """Measure variants side by side, each in its own process: latency, throughput, memory.

    With ``--end-to-end``, time every stage of whole predictions on real files instead,
    so the model's speed-up is shown next to the whole request's.
    """
    from medinfer.report.tables import ladder_markdown, ladder_table
    from medinfer.runtime.bench import DEFAULT_VARIANTS, run_bench
    from medinfer.runtime.measure import MeasureSettings

    if end_to_end:
        _bench_end_to_end(model, variants, inputs or [], threads, json_out, markdown)
        return
    names = tuple(variants.split(",")) if variants else DEFAULT_VARIANTS
    settings = MeasureSettings(threads=threads, in_flight=in_flight, runs_batch=runs_batch,
                               runs_single=runs_single, requests=requests)
    command = "medinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        with console.status("benchmarking") as status:
            result = run_bench(_load_artifact(model), names, settings, command,
                               on_variant=lambda n: status.update(f"bench: {n} (own process)"),
                               rounds=rounds)
    except MedinferError as exc:
        raise _fail(exc) from exc
    _wide().print(ladder_table(result))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(result.to_json() + "\n")
    if markdown:
        markdown.write_text(ladder_markdown(result) + "\n")


@app.command()
def report(
    model: Annotated[Path, typer.Option(help="Optimized model artifact folder.")],
    bench_json: Annotated[Path, typer.Option("--bench", help="JSON written by `medinfer bench`.")],
    val: Annotated[Path, typer.Option(help="Validation folder for the overlays.")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("runs/report.html"),
    overlays: int = 4,
) -> None:
    """Write the self-contained HTML report (tables, ladder chart, learning curve, overlays)."""
    from medinfer.report.build import build_report
    from medinfer.runtime.bench import BenchmarkResult

    try:
        result = BenchmarkResult.from_json(bench_json.read_text())
        path = build_report(_load_artifact(model), result, val, out, overlays)
    except (OSError, ValueError) as exc:
        raise _fail(MedinferError(f"{bench_json}: {exc}")) from exc
    except MedinferError as exc:
        raise _fail(exc) from exc
    console.print(f"report: {path}")



@app.command()
def explain(
    inputs: Annotated[Optional[list[Path]], typer.Argument(help="Image files to explain.")] = None,
    model: Annotated[Path, typer.Option(help="Classification model artifact folder.")] = ...,
    out: Annotated[Path, typer.Option(help="Output folder (heat-map PNGs, one JSON per input).")] = ...,
    top: Annotated[int, typer.Option(help="Explain this many most probable findings (and all above threshold).")] = 3,
    k: Annotated[int, typer.Option(help="Nearest training images per distance.")] = 5,
    train_data: Annotated[Optional[Path], typer.Option(help="Training images (labeled folder) if the artifact's recorded ones are not readable.")] = None,
    false_positives: Annotated[Optional[Path], typer.Option(help="Labeled folder: also write OUT/false_positives.html for its most confident false positives.")] = None,
    fp_count: Annotated[int, typer.Option(help="False positives shown.")] = 4,
    gradcam_layer: Annotated[str, typer.Option(help="Network submodule Grad-CAM explains; features.denseblock3 doubles the resolution of the default.")] = "features",
    threads: int = 2,
) -> None:
    """Grad-CAM and LRP heat-maps per finding, and the nearest training images (Euclidean, cosine, Mahalanobis)."""
    import torch

    from medinfer.apps.explain import explain_files
    from medinfer.report.explain import false_positive_report

    if not inputs and false_positives is None:
        raise _fail(MedinferError("give image files to explain, or --false-positives DATA_DIR"))
    torch.set_num_threads(threads)
    try:
        art = _load_artifact(model)
        if inputs:
            run = explain_files(art, inputs, out, top, k, train_data, gradcam_layer)
            console.print(f"explained {len(run.written)} of {len(inputs)} inputs into {out}"
                          + (f" ({len(run.kept)} kept from before)" if run.kept else ""))
        if false_positives is not None:
            page = false_positive_report(art, false_positives, out / "false_positives.html", fp_count, k,
                                         train_data, gradcam_layer)
            console.print(f"false positives: {page}")
    except MedinferError as exc:
        raise _fail(exc) from exc
    if inputs and run.errors:
        raise typer.Exit(code=1)


@app.command()
def demo(
    model: Annotated[Path, typer.Option(help="Committed model artifact.")] = Path("models/polyp-resunet"),
    data: Annotated[Path, typer.Option(help="Kvasir-SEG folder.")] = Path("../shared/data/kvasir-seg"),
    work: Annotated[Path, typer.Option(help="Working folder for the demo's outputs.")] = Path("runs/demo"),
    calib: Annotated[int, typer.Option(help="Calibration images from the training split.")] = 128,
    val: Annotated[int, typer.Option(help="Validation images (the split has 160).")] = 160,
    threads: int = 2,
) -> None:
    """The main job: optimize -> verify Dice -> benchmark the ladder -> HTML report, in minutes."""
    from medinfer.apps.demo import DemoConfig, run_demo

    cfg = DemoConfig(model=model, data=data, work=work, n_calib=calib, n_val=val, threads=threads)
    try:
        run_demo(cfg, console)
    except MedinferError as exc:
        raise _fail(exc) from exc


@app.command()
def partition(
    volume: Annotated[Path, typer.Argument(metavar="INPUT.nii.gz", help="NIfTI volume to segment.")],
    model: Annotated[Path, typer.Option(help="Model artifact folder (a 3D network).")],
    out: Annotated[Path, typer.Option(help="Label map to write (.nii.gz).")],
    mesh: Annotated[str, typer.Option(help="Ranks per axis, e.g. 2x2x1 (torchrun when > 1).")] = "1x1x1",
    memory_budget_mb: Annotated[Optional[float], typer.Option(help="Budget of one-process tiling (MiB).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="torch threads per process.")] = None,
) -> None:
    """Exact whole-volume segmentation, tiled within a memory budget or split over ranks."""
    from medinfer.partition.app import PartitionJob, run_job
    from medinfer.partition.distributed import Mesh

    try:
        spatial = Mesh.parse(mesh).spatial
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mesh") from exc
    if len(spatial) != 3:
        raise typer.BadParameter(f"{mesh!r} needs three axes", param_hint="--mesh")
    job = PartitionJob(model, volume, out, spatial, memory_budget_mb, threads)  # type: ignore[arg-type]
    try:
        path = run_job(job)
    except MedinferError as exc:
        raise _fail(exc) from exc
    console.print(f"wrote {path}")


# `medinfer serve ...`: the DICOM inference service (imports its libraries only when run).
from medinfer.serve.cli import serve_app  # noqa: E402

app.add_typer(serve_app, name="serve")
