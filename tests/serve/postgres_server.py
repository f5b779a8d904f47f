"""A throwaway PostgreSQL server for the job-store tests: Debian's ``postgresql`` package,
a fresh cluster in a temporary folder, listening on loopback only, stopped at the end.

``.ci/run`` installs the package when it is missing. Without it the PostgreSQL tests are
skipped, or fail under ``CI=true`` (as missing shared data does). PostgreSQL refuses to
run as root, so under root the cluster belongs to the ``postgres`` system user the
package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from serve_helpers import free_port
from shared_data import in_ci

__all__ = ["PostgresServer", "find_bin_dir", "require_postgres"]


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def require_postgres() -> Path:
    """The PostgreSQL binaries' folder; skip the test without them (fail under CI=true)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries not installed (Debian package postgresql)"
        if in_ci():
            pytest.fail(f"{message}; .ci/run installs it", pytrace=False)
        pytest.skip(message)
    return bin_dir


class PostgresServer:
    """One cluster on ``127.0.0.1:<free port>``, trust authentication for loopback.

    Example:
        >>> with PostgresServer(require_postgres()) as pg:
        ...     url = pg.new_database("t1")   # postgresql+psycopg://postgres@127.0.0.1:port/t1
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="medinfer-pg-"))
        self.data = self.root / "data"
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._names: set[str] = set()

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120)

    def start(self) -> PostgresServer:
        if self._as_user:
            shutil.chown(self.root, "postgres")
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-instructions")
        # loopback TCP only; the socket lives in the temporary folder, not /run/postgresql
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   f"-c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create an empty database ``name`` (unique within this server); its URL."""
        import psycopg

        assert name.isidentifier() and name not in self._names, name
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._names.add(name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                      "stop")
        except subprocess.CalledProcessError:
            pass  # never started, or already gone
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
