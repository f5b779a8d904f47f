"""The `medinfer` command. Each subcommand parses flags and calls one stage's API."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.markup import escape
from rich.console import Console
from typer.core import TyperGroup
from rich.logging import RichHandler

from medinfer.errors import MedinferError

console = Console(stderr=True)


class _Commands(TyperGroup):
    """The one place a medinfer error becomes one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MedinferError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)  # one line
            raise typer.Exit(code=2) from exc


app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Fast, verified, hospital-ready inference for medical-imaging models.")


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


def _emit_json(payload: dict, out: Path | None) -> None:
    text = json.dumps(payload, indent=2)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


@app.command()
def train(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option(help="YAML training config (see config/train.polyp.yaml); flags typed with it override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: KEY=VALUE, dotted, VALUE as YAML (e.g. preprocessing.size=[64,64]); repeatable.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Kvasir layout (images/, masks/), a labeled folder (labels.csv, images/) or NIfTI volumes (images/, masks/).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Artifact folder to write.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Registered architecture (default: resunet, densenet121 for a labeled folder, unet3d for volumes).")] = None,
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
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when it is there.")] = False,
    nproc_per_node: Annotated[int, typer.Option(help="Data-parallel processes on this machine (torchrun when > 1).")] = 1,
    nnodes: Annotated[int, typer.Option(help="Machines in the run; each runs this command with the same --rdzv-endpoint.")] = 1,
    rdzv_endpoint: Annotated[Optional[str], typer.Option(help="HOST:PORT of the rendezvous of a multi-machine run.")] = None,
    rdzv_id: Annotated[str, typer.Option(help="The run's name at the rendezvous (the same on every machine).")] = "medinfer",
    max_restarts: Annotated[int, typer.Option(help="Times torchrun restarts failed ranks (they resume from the checkpoint).")] = 0,
) -> None:
    """Train a model and save its best epoch as an artifact.

    With ``--config FILE.yaml`` the file describes the run (``--set`` and typed flags
    override it). Otherwise the flags do, and the data layout picks the recipe: a folder
    with ``labels.csv`` trains a multi-label classifier (CheXNet recipe, best epoch by
    validation mean AUC), NIfTI volumes a 3D U-Net on random windows, image/mask folders
    a 2D segmentation model (DQ-ResUNet recipe, best epoch by validation Dice).

    With ``--nproc-per-node N`` (and ``--nnodes``/``--rdzv-endpoint`` on several machines)
    the run is data-parallel on torchrun: each process steps on its shard of every batch
    (``batch_size`` per process; the learning rate scaled by ``lr_scaling`` with
    ``warmup_epochs``), and rank 0 writes the artifact.
    """
    from click.core import ParameterSource

    from medinfer.runtime.launch import Launch
    from medinfer.train import run_training
    from medinfer.train.cli_config import build_config, flags_from_params, summary
    from medinfer.train.distributed import launch_training, threads_per_rank

    flags = flags_from_params(ctx.params)
    given = [n for n in ctx.params if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    cfg = build_config(config, set_ or [], flags, given)
    if resume:
        cfg = cfg.model_copy(update={"resume": True})
    launch = Launch(nproc_per_node, nnodes, rdzv_endpoint, rdzv_id, max_restarts)
    if not launch.distributed:
        result = run_training(cfg, command=_command())
        console.print(summary(result.artifact, result.best_epoch))
        return
    if "threads" not in given:
        cfg = cfg.model_copy(update={"threads": threads_per_rank(cfg, launch)})
    done = launch_training(cfg, launch, _command())
    if done is None:
        console.print(f"done; rank 0 ran on another machine and wrote {cfg.out} there")
    else:
        console.print(summary(done.artifact, done.best_epoch))


@app.command()
def federated(
    config: Annotated[Path, typer.Option(help="YAML training config (the task, network, data and settings of every site).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: KEY=VALUE (as for train).")] = None,
    sites: Annotated[int, typer.Option(help="Hospitals taking part.")] = 3,
    rounds: Annotated[int, typer.Option(help="Rounds of local training and averaging.")] = 10,
    local_epochs: Annotated[int, typer.Option(help="Epochs each hospital trains per round.")] = 1,
    min_sites: Annotated[Optional[int], typer.Option(help="Updates a round needs (default: a majority).")] = None,
    round_timeout: Annotated[float, typer.Option(help="Seconds a round waits for the sites.")] = 1800.0,
    role: Annotated[str, typer.Option(help="all (server and sites on this machine) | server | client.")] = "all",
    site: Annotated[Optional[int], typer.Option(help="--role client: this hospital's number, 0 to sites-1.")] = None,
    address: Annotated[str, typer.Option(help="--role server: HOST:PORT to listen on; --role client: the server's.")] = "0.0.0.0:8080",
    tls_ca: Annotated[Optional[Path], typer.Option(help="PEM CA certificate: gRPC over TLS (the sites check the server against it).")] = None,
    tls_cert: Annotated[Optional[Path], typer.Option(help="Server: its PEM certificate (TLS).")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="Server: its PEM private key (TLS).")] = None,
) -> None:
    """Federated training on Flower: hospitals train one model together; no image leaves a site.

    ``--role all`` starts the server here and one process per site on loopback, each with
    its share of the config's data. In use, the server runs ``--role server`` and each
    hospital ``--role client --site K --address SERVER:PORT`` with its own ``data``. The
    server writes the global model to the config's ``out``: an artifact like any other.
    """
    from medinfer.train.cli_config import build_config, flags_from_params
    from medinfer.train.federated import FederatedPlan, run_client, run_federated, run_server

    cfg = build_config(config, set_ or [], flags_from_params({}), [])
    plan = FederatedPlan(sites=sites, rounds=rounds, local_epochs=local_epochs, min_sites=min_sites,
                         round_timeout=round_timeout, tls=(tls_ca, tls_cert, tls_key) if tls_ca else None)
    if role == "client":
        if site is None:
            raise MedinferError("--role client needs --site K (0 to sites-1)")
        run_client(cfg, plan, site, address)
        return
    if role not in ("all", "server"):
        raise typer.BadParameter(f"{role!r}: expected all, server or client", param_hint="--role")
    run = run_federated(cfg, plan, _command()) if role == "all" else run_server(cfg, plan, address, _command())
    rec = run.artifact.spec.training
    scores = " ".join(f"{k} {v:.4f}" for k, v in run.metrics.items() if "/" not in k)
    console.print(f"{rec.epochs_run} rounds, {plan.sites} sites: val (sample-weighted) {scores} -> {run.artifact.root}")


def _load_artifact(path: Path):
    from medinfer.artifact import ModelArtifact

    return ModelArtifact.load(path)


def _command() -> str:
    return "medinfer " + " ".join(shlex.quote(a) for a in sys.argv[1:])


BackendOpt = Annotated[Optional[str], typer.Option(help="torch | onnxruntime | openvino (default: the artifact's chosen variant).")]
PrecisionOpt = Annotated[Optional[str], typer.Option(help="fp32 | int8 | int8-dynamic | int8-ac | bf16.")]


@app.command()
def evaluate(
    model: Annotated[Path, typer.Option(help="Model artifact folder.")],
    data: Annotated[Path, typer.Option(help="Data folder in the model's layout: images/+masks/ (2D or NIfTI volumes), DICOM cases (<case>/ct/ + <case>/masks/<structure>/) or labels.csv+images/.")],
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the JSON here.")] = None,
    threads: int = 2,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (of images or volumes) for the 95% intervals; 0: none.")] = 1000,
) -> None:
    """The task's metrics of one variant over a folder, printed as JSON.

    Segmentation: ``{dice, iou, n, intervals, backend, precision}`` (intervals over the
    images or volumes). Classification: mean AUC over the
    findings present, abnormal AUC, per-finding AUC (``auc/<finding>``), each with a
    bootstrap 95% interval under ``intervals``.
    """
    from medinfer.apps.evaluate import evaluate_folder
    from medinfer.runtime import EngineOptions

    _emit_json(evaluate_folder(_load_artifact(model), data, backend, precision,
                               EngineOptions(threads=threads), n_boot=bootstrap), json_out)


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image or volume files (PNG/JPEG/DICOM/NIfTI).")],
    model: Annotated[Path, typer.Option(help="Model artifact folder.")],
    out: Annotated[Path, typer.Option(help="Output folder for masks and overlays.")],
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    threads: int = 2,
    dicom: Annotated[bool, typer.Option(help="DICOM inputs: also write the DICOM results (SEG / SR with regions / Secondary Capture) the service sends to a PACS.")] = False,
) -> None:
    """Run a model on files or DICOM series folders: masks + overlays (2D), NIfTI masks (3D),
    finding scores or lesion boxes (JSON)."""
    from medinfer.apps.predict import predict_files
    from medinfer.runtime import EngineOptions

    written = predict_files(_load_artifact(model), inputs, out, backend, precision,
                            EngineOptions(threads=threads), dicom=dicom)
    console.print(f"wrote results for {len(written)} of {len(inputs)} inputs to {out}")
    if len(written) < len(inputs):
        raise typer.Exit(code=1)


@app.command()
def slide(
    slide_file: Annotated[Path, typer.Argument(metavar="SLIDE", help="A whole-slide image (pyramidal TIFF, SVS, NDPI, MRXS, ... anything OpenSlide or tiffslide reads).")],
    model: Annotated[Path, typer.Option(help="A cytology artifact (tile classifier + cell detector).")],
    out: Annotated[Path, typer.Option(help="Results folder: <slide>_heatmap.png, <slide>_cells.geojson (QuPath), <slide>.json.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the JSON summary here.")] = None,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    threads: int = 2,
    in_flight: Annotated[int, typer.Option(help="Tile batches in flight at once (asynchronous requests of OpenVINO / ONNX Runtime).")] = 2,
    heatmap_side: Annotated[int, typer.Option(help="Longer side (pixels) of the picture the heat-map is drawn on; read from the smallest slide level at least that big.")] = 2048,
) -> None:
    """One whole slide through the cytology pipeline: tiles where there are cells, stage 1
    (tile classifier, the chosen variant), slide fusion, stage 2 (cell-centre detector) on
    the most suspicious tiles of a flagged slide. Prints the JSON (slide_score, abnormal,
    tiles, cells with class, score and level-0 x/y, seconds)."""
    from medinfer.apps.slides import run_slide
    from medinfer.runtime import EngineOptions

    summary = run_slide(_load_artifact(model), slide_file, out, backend, precision,
                        EngineOptions(threads=threads, in_flight=in_flight), thumbnail=heatmap_side)
    _emit_json(summary, json_out)


@app.command()
def mosaic(
    out: Annotated[Path, typer.Argument(help="Folder to write train/, val/ and test/ slide folders into.")],
    crops: Annotated[Path, typer.Option(help="CRIC crops (labels.csv + images/).")] = Path("../shared/data/cervical-cytology-cric"),
    seed: int = 0,
    quick: Annotated[bool, typer.Option(help="A small set (4 + 4 slides per part, 2048^2) for trying the pipeline.")] = False,
) -> None:
    """Mosaic whole slides of real CRIC cells on a synthetic layout: train/val/test folders
    (labels.csv, pyramidal TIFFs, each slide's cells as JSON), composed from disjoint crops."""
    from medinfer.apps.slides import DEFAULT_SETS, SetPlan, make_slide_sets

    plans = {k: SetPlan(4, 4, 2048, v.abnormal_fraction) for k, v in DEFAULT_SETS.items()} if quick else None
    folders = make_slide_sets(out, crops, plans, seed)
    console.print(f"wrote {', '.join(str(f) for f in folders.values())}")


@app.command()
def perfusion(
    inputs: Annotated[list[Path], typer.Argument(help="A CT perfusion series: its folder or files (DICOM, one file per slice and time point, or one enhanced multi-frame file), or a 4D NIfTI.")],
    out: Annotated[Path, typer.Option(help="Results folder: cbf/cbv/mtt/tmax/ttp/core/penumbra .nii.gz (DICOM input: Parametric Maps, SEG, SR, Secondary Capture), PNGs, report.html, result.json.")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the JSON summary here.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="A perfusion artifact (its settings); default: the built-in settings.")] = None,
    aif_mask: Annotated[Optional[Path], typer.Option("--aif-mask", help="Arterial voxels (NIfTI in the series' geometry, or .npy rows x cols x slices) overriding the automatic AIF.")] = None,
    frame_times: Annotated[Optional[str], typer.Option(help="Seconds of each frame, comma-separated (NIfTI without a JSON sidecar).")] = None,
    frame_interval: Annotated[Optional[float], typer.Option(help="NIfTI: seconds between frames (instead of --frame-times).")] = None,
    resample: Annotated[bool, typer.Option(help="Put an unevenly sampled series on an even time grid instead of refusing it.")] = False,
    method: Annotated[Optional[str], typer.Option(help="osvd (default: per-voxel threshold by oscillation index) | bcsvd (one fixed threshold).")] = None,
    svd_threshold: Annotated[Optional[float], typer.Option(help="bcsvd: truncation threshold (fraction of the largest singular value).")] = None,
    core_rcbf: Annotated[Optional[float], typer.Option(help="Core: CBF below this fraction of the normal hemisphere (default 0.30).")] = None,
    penumbra_tmax: Annotated[Optional[float], typer.Option(help="Hypoperfusion: Tmax above this many seconds (default 6).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="torch (batched, default) | numpy (reference).")] = None,
    report: Annotated[bool, typer.Option(help="Write report.html.")] = True,
) -> None:
    """CBF, CBV, MTT, Tmax and TTP maps, ischaemic core (rCBF < 30 %), hypoperfusion
    (Tmax > 6 s), mismatch and DEFUSE-3 criteria of a CT perfusion series; prints the JSON
    (core_ml, penumbra_ml, mismatch_ml, mismatch_ratio, defuse3_eligible, aif, method, ...)."""
    from medinfer.apps.perfusion import run_perfusion

    times = None
    if frame_times:
        try:
            times = [float(v) for v in frame_times.split(",")]
        except ValueError as exc:
            raise typer.BadParameter(f"--frame-times: {exc}") from exc
    settings = {k: v for k, v in (("method", method), ("svd_threshold", svd_threshold),
                                   ("core_rcbf", core_rcbf), ("penumbra_tmax", penumbra_tmax)) if v is not None}
    with console.status("perfusion: reading, maps, lesions, results"):
        summary = run_perfusion(inputs, out, model=model, settings=settings, aif_mask=aif_mask,
                                frame_times=times, frame_interval=frame_interval, resample=resample,
                                backend=backend, report=report)
    _emit_json(summary, json_out)


@app.command()
def moa(
    out: Annotated[Path, typer.Option(help="Results folder: confusion_nsc.png, confusion_nscb.png, embedding_pca.png, moa.json.")],
    data: Annotated[Optional[Path], typer.Option(help="Folder of the BBBC021 per-well profiles (ljosa_jbiomolscreen_2013_per_well_mean.csv.gz, BBBC021_v1_image.csv.gz, BBBC021_v1_moa.csv); default: the repository's sibling shared/data/hcs-bbbc021/profiles.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the JSON summary here.")] = None,
) -> None:
    """Mechanism-of-action profiling of BBBC021: per-plate DMSO normalisation, treatment
    profiles, 1-NN (cosine) MoA accuracy under the NSC, NSCB and random protocols; prints the JSON."""
    from medinfer.apps.moa import run_moa

    with console.status("moa: reading profiles, normalising, nearest neighbours, figures"):
        summary = run_moa(data, out)
    _emit_json(summary, json_out)


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
    from medinfer.report.tables import variants_table
    from medinfer.runtime import EngineOptions
    from medinfer.tasks import task_for

    cfg = OptimizeConfig(calib=calib, val=val, tune=tune, max_drop=max_drop, max_class_drop=max_class_drop,
                         calib_limit=calib_limit, val_limit=val_limit, tune_limit=tune_limit,
                         options=EngineOptions(threads=threads))
    art = _load_artifact(model)
    with console.status("optimizing") as status:
        records = run(art, cfg, step=lambda s: status.update(f"optimize: {s}"))
    _wide().print(variants_table(records, art.spec.chosen, task_for(art).columns))
    _wide().print(f"chosen: [bold]{art.spec.chosen or 'none passed'}[/bold]")


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
    from rich.progress import Progress

    from medinfer.report.tables import e2e_markdown, e2e_table, ladder_markdown, ladder_table
    from medinfer.runtime import EngineOptions
    from medinfer.runtime.bench import DEFAULT_VARIANTS, run_bench
    from medinfer.runtime.measure import MeasureSettings
    from medinfer.tasks import task_for

    art = _load_artifact(model)
    if end_to_end:
        from medinfer.apps.e2e import end_to_end_report

        if not inputs:
            raise MedinferError("--end-to-end needs input files to predict (e.g. a few images or volumes)")
        with Progress(console=console, transient=True) as bar:
            names = variants.split(",") if variants else None
            task = bar.add_task("end to end", total=(len(names) if names else 2) * len(inputs))
            payload = end_to_end_report(art, names, inputs, EngineOptions(threads=threads), _command(),
                                        on_input=lambda: bar.advance(task))
        _wide().print(e2e_table(payload["variants"]))
        _write(json_out, json.dumps(payload, indent=2))
        _write(markdown, e2e_markdown(payload["variants"]))
        return
    settings = MeasureSettings(threads=threads, in_flight=in_flight, runs_batch=runs_batch,
                               runs_single=runs_single, requests=requests)
    with console.status("benchmarking") as status:
        result = run_bench(art, tuple(variants.split(",")) if variants else DEFAULT_VARIANTS, settings,
                           _command(), on_variant=lambda n: status.update(f"bench: {n} (own process)"),
                           rounds=rounds, metric_columns=task_for(art).columns)
    _wide().print(ladder_table(result))
    _write(json_out, result.to_json())
    _write(markdown, ladder_markdown(result))


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


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
    except (OSError, ValueError) as exc:
        raise MedinferError(f"{bench_json}: {exc}") from exc
    console.print(f"report: {build_report(_load_artifact(model), result, val, out, overlays)}")


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
        raise MedinferError("give image files to explain, or --false-positives DATA_DIR")
    torch.set_num_threads(threads)
    art = _load_artifact(model)
    if inputs:
        run = explain_files(art, inputs, out, top, k, train_data, gradcam_layer)
        console.print(f"explained {len(run.written)} of {len(inputs)} inputs into {out}"
                      + (f" ({len(run.kept)} kept from before)" if run.kept else ""))
    if false_positives is not None:
        page = false_positive_report(art, false_positives, out / "false_positives.html", fp_count, k,
                                     train_data, gradcam_layer)
        console.print(f"false positives: {page}")
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

    run_demo(DemoConfig(model=model, data=data, work=work, n_calib=calib, n_val=val, threads=threads), console)


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
    from medinfer.apps.partition import PartitionJob, run_job
    from medinfer.partition.distributed import Mesh

    try:
        spatial = Mesh.parse(mesh).spatial
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mesh") from exc
    if len(spatial) != 3:
        raise typer.BadParameter(f"{mesh!r} needs three axes", param_hint="--mesh")
    path = run_job(PartitionJob(model, volume, out, spatial, memory_budget_mb, threads))  # type: ignore[arg-type]
    console.print(f"wrote {path}")


# `medinfer serve ...`: the DICOM inference service (imports its libraries only when run).
from medinfer.serve.cli import serve_app  # noqa: E402

app.add_typer(serve_app, name="serve")
