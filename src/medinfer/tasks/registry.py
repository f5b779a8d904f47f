"""The task registry: an artifact -> the task that runs it.

Tasks are registered explicitly (the three built-in ones by :mod:`medinfer.tasks`, a new
seed system by its own module, a test task by the test suite) and chosen by their
:meth:`~medinfer.tasks.base.Task.handles`; the most recently registered task that handles
an artifact wins, so a plug-in can specialise a built-in one.
"""

from __future__ import annotations

from typing import Any

from medinfer.artifact import ModelArtifact
from medinfer.errors import ArtifactError
from medinfer.tasks.base import Task

_TASKS: list[type[Task]] = []


def register_task(cls: type[Task]) -> type[Task]:
    """Register a task class (usable as a decorator); registering it again is a no-op."""
    if cls not in _TASKS:
        _TASKS.append(cls)
    return cls


def unregister_task(cls: type[Task]) -> None:
    """Remove a registered task (tests that register their own)."""
    if cls in _TASKS:
        _TASKS.remove(cls)


def list_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return [t.name for t in _TASKS]


def task_for(art: ModelArtifact, **options: Any) -> Task:
    """The task that runs ``art``; ``options`` go to its constructor (e.g. the 3D task's
    ``inference=VolumeInference(strategy="exact")``).

    Raises:
        ArtifactError: no registered task handles the artifact's task and input.
    """
    for cls in reversed(_TASKS):
        if cls.handles(art):
            return cls(art, **options)
    dims = len(art.spec.input.spatial)
    raise ArtifactError(art.root, f"no task for {art.spec.task!r} with {dims} spatial axes "
                                  f"(registered: {', '.join(list_tasks())})")
