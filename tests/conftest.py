"""Session-wide test options and fixtures: where the shared public data sets live.

``--shared-data DIR`` names the folder of the public data sets (default:
``$MEDINFER_SHARED_DATA``, else the repository's sibling ``../shared/data``). A test that
needs a data set asks ``shared_path("kvasir-seg")`` (or ``shared_data / ...`` through
``shared_data.require``): it is skipped when the data is missing, and fails instead when
``CI=true``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import shared_data as shared


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shared-data", metavar="DIR", default=None,
        help=f"folder of the shared public data sets (default: ${shared.ENV_VAR}, "
             f"else the repository's sibling ../shared/data)")


def pytest_configure(config: pytest.Config) -> None:
    # Before collection: helper modules that read shared_data.SHARED_DATA at import time
    # then see the option too.
    option = config.getoption("--shared-data")
    if option:
        shared.set_root(Path(option).resolve())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (skipped when absent; a failure under ``CI=true``)."""
    return shared.require(shared.SHARED_DATA, "shared data folder")


@pytest.fixture(scope="session")
def shared_path(shared_data: Path) -> Callable[[str], Path]:
    """A function mapping a path relative to the shared data folder to a ``Path``.

    The test is skipped when that file or folder is missing (failed under ``CI=true``).
    """

    def get(rel: str) -> Path:
        return shared.require(shared_data / rel)

    return get
