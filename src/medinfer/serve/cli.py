"""``medinfer serve``: run the service, a lone worker, or manage API tokens (thin CLI)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

serve_app = typer.Typer(add_completion=False, invoke_without_command=True,
                        help="DICOM inference service (DIMSE + DICOMweb + REST + web page).")
token_app = typer.Typer(add_completion=False, no_args_is_help=True, help="API tokens.")
serve_app.add_typer(token_app, name="token")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Service config (YAML).")]


def _load(config: Path, **overrides: object):  # -> ServeConfig
    from medinfer.serve.config import load_config

    return load_config(config, **overrides)  # a MedinferError ends in the CLI's one handler


@serve_app.callback()
def serve(
    ctx: typer.Context,
    config: ConfigOpt = Path("config/serve.example.yaml"),
    host: Annotated[str | None, typer.Option(help="HTTP host.")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port.")] = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    worker: Annotated[bool, typer.Option("--worker", help="Run one worker only.")] = False,
) -> None:
    """Start the service (or, with --worker, one worker process) from CONFIG."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = _load(config, workers=workers)
    http = cfg.http.model_copy(update={k: v for k, v in (("host", host), ("port", port))
                                       if v is not None})
    dicom = cfg.dicom.model_copy(update={"port": dicom_port}) if dicom_port else cfg.dicom
    cfg = cfg.model_copy(update={"http": http, "dicom": dicom})
    from medinfer.serve.logs import setup_logging

    setup_logging(cfg.log_format)
    if worker:
        from medinfer.serve.worker import run_worker

        run_worker(cfg)
        return
    from medinfer.serve.service import Service

    logging.getLogger(__name__).info("web page: http://%s:%d/ui/", cfg.http.host, cfg.http.port)
    Service(cfg).serve_forever()


@token_app.command("create")
def token_create(
    config: ConfigOpt = Path("config/serve.example.yaml"),
    name: Annotated[str, typer.Option(help="Who or what uses the token.")] = "user",
    scope: Annotated[list[str], typer.Option(help="read | submit | admin (repeatable).")] = [
        "read"],  # noqa: B006  (typer reads the default, never mutates it)
) -> None:
    """Create an API token; prints it once (only its hash is stored)."""
    from medinfer.serve.store import Store

    cfg = _load(config)
    store = Store(cfg.db_url)
    try:
        token = store.create_token(name, scope)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    store.audit("cli", "create-token", f"token:{name}", " ".join(scope))
    store.close()
    typer.echo(token)
