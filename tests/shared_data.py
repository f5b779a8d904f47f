"""Where the shared public data sets live, for test modules that need the path at import time.

The folder is, in order: ``pytest --shared-data DIR`` (applied by ``tests/conftest.py``
before any test module is imported), the environment variable ``MEDINFER_SHARED_DATA``,
or the repository's sibling ``../shared/data`` (CI clones the repository with
``shared/`` beside it). A plain module rather than a conftest, so that helpers and
torchrun workers can import it.

Example:
    >>> from shared_data import SHARED_DATA, require
    >>> series = require(SHARED_DATA / "dicom-mr-brain-tumor-progression")  # skip/fail if absent
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENV_VAR = "MEDINFER_SHARED_DATA"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get(ENV_VAR) or DEFAULT_SHARED_DATA)


def set_root(path: str | Path) -> None:
    """Point ``SHARED_DATA`` at ``path`` (``--shared-data``; call before test modules import it)."""
    global SHARED_DATA
    SHARED_DATA = Path(path)


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``), where missing data is a failure."""
    return os.environ.get("CI", "").lower() == "true"


def require(path: Path, what: str = "staged data") -> Path:
    """Return ``path`` if it exists; otherwise skip the test, or fail it under ``CI=true``.

    A clone without the shared data skips the tests that need it, but cannot report
    green in CI.
    """
    if not path.exists():
        message = f"{what} not available: {path}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: the shared data must be present; "
                        f"pass --shared-data DIR or set {ENV_VAR})", pytrace=False)
        pytest.skip(message)
    return path
