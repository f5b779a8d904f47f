"""Rich progress bars for long-running commands (one home for every stage's bars)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def status_progress(enabled: bool = True) -> Progress:
    """A progress display with a free-text ``status`` field per task (epochs, losses, files);
    drawing nothing when not ``enabled`` (the other ranks of a data-parallel run).

    Example::

        with status_progress() as bar:
            t = bar.add_task("epochs", total=10, status="")
            bar.update(t, advance=1, status="loss 0.31")
    """
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"), disable=not enabled)


@contextlib.contextmanager
def progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` callable; draws a bar on stderr when ``enabled`` (off in tests
    and worker ranks)."""
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
