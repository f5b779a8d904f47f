"""`medinfer serve token create` through the in-process CLI runner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medinfer.cli import app
from medinfer.serve.config import load_config
from medinfer.serve.store import Store


def test_token_create_prints_a_token_that_the_store_accepts(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("storage: data\n")
    runner = CliRunner()
    out = runner.invoke(app, ["serve", "token", "create", "--config", str(config), "--name",
                              "pacs-bot", "--scope", "submit", "--scope", "read"])
    assert out.exit_code == 0, out.output
    token = out.output.strip().splitlines()[-1]
    store = Store(load_config(config).db_url)
    assert store.check_token(token) == ("pacs-bot", frozenset({"submit", "read"}))
    store.close()
    bad = runner.invoke(app, ["serve", "token", "create", "--config", str(config),
                              "--scope", "root"])
    assert bad.exit_code == 2 and "scopes must be among" in bad.output


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("dicom: {port: 104}\n")
    out = CliRunner().invoke(app, ["serve", "--config", str(config)])
    assert out.exit_code == 2 and "allowed_calling_aets" in out.output
