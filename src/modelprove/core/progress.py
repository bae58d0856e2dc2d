"""Progress bars for long runs (rich), silent when output is not a terminal unless asked."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# Logs and CI have no terminal to measure; give tables room rather than rich's 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def make_progress(enabled: bool = True) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


@contextmanager
def task(description: str, total: int, enabled: bool = True) -> Iterator["Tracker"]:
    """A progress bar with a free-text status field: ``with task('train', n) as t: t.advance(status=..)``."""
    with make_progress(enabled) as progress:
        task_id = progress.add_task(description, total=total, status="")
        yield Tracker(progress, task_id)


class Tracker:
    def __init__(self, progress: Progress, task_id):
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: int = 1, status: str | None = None) -> None:
        fields = {"status": status} if status is not None else {}
        self._progress.update(self._task_id, advance=n, **fields)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = total if total is not None else len(items)  # type: ignore[arg-type]
    with task(description, total, enabled) as t:
        for item in items:
            yield item
            t.advance()


def progress_default() -> bool:
    """Show bars on a terminal; logs and CI get none unless a command asks for them."""
    return sys.stderr.isatty()
