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
    expires_days: Annotated[float | None, typer.Option(
        help="Refuse the token after this many days (default: never).")] = None,
) -> None:
    """Create an API token; prints it once (only its hash is stored)."""
    from medinfer.serve.store import Store

    cfg = _load(config)
    store = Store(cfg.db_url)
    try:
        token = store.create_token(name, scope, expires_days=expires_days)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    detail = " ".join(scope) + (f" expires-days={expires_days:g}" if expires_days else "")
    store.audit("cli", "create-token", f"token:{name}", detail)
    store.close()
    typer.echo(token)


def _when(t: float | None) -> str:
    import datetime as dt

    return "-" if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime(
        "%Y-%m-%d %H:%M UTC")


@token_app.command("list")
def token_list(config: ConfigOpt = Path("config/serve.example.yaml")) -> None:
    """List tokens: name, scopes, created, expires, last used, state (never the secret)."""
    import time

    from medinfer.serve.store import Store

    store = Store(_load(config).db_url)
    tokens = store.list_tokens()
    store.close()
    now = time.time()
    typer.echo(f"{'name':<24} {'scopes':<20} {'created':<20} {'expires':<20} "
               f"{'last used':<20} state")
    for t in tokens:
        state = ("revoked" if t.revoked else
                 "expired" if t.expires_at is not None and t.expires_at <= now else "active")
        typer.echo(f"{t.name:<24} {','.join(t.scopes):<20} {_when(t.created_at):<20} "
                   f"{_when(t.expires_at):<20} {_when(t.last_used_at):<20} {state}")


@token_app.command("revoke")
def token_revoke(
    config: ConfigOpt = Path("config/serve.example.yaml"),
    name: Annotated[str, typer.Option(help="Revoke every active token of this name.")] = "",
) -> None:
    """Revoke the tokens named NAME (and end their web sessions)."""
    from medinfer.serve.store import Store

    if not name:
        typer.echo("error: --name is required", err=True)
        raise typer.Exit(2)
    store = Store(_load(config).db_url)
    n = store.revoke_token(name)
    if n:
        store.audit("cli", "revoke-token", f"token:{name}", f"{n} token(s)")
    store.close()
    if not n:
        typer.echo(f"error: no active token named {name!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {n} token(s) named {name!r}")
