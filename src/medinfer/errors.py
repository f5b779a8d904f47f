"""medinfer's error types.

Every failure caused by the user's input (a file, a folder, an artifact, a flag)
is raised as a :class:`MedinferError` subclass whose message names the offending
path and the reason, so the CLI can print one clear line instead of a library
traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedinferError(Exception):
    """Base class of every error medinfer raises on purpose."""


class InputError(MedinferError):
    """A file or folder given as input cannot be used.

    Args:
        path: the offending file or folder.
        reason: why it cannot be used, in plain words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ArtifactError(InputError):
    """A model artifact is missing, incomplete or inconsistent."""


class BackendUnavailableError(MedinferError):
    """A runtime backend or precision was asked for that is not installed or not built."""
