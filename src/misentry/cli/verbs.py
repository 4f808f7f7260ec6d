"""What a command module needs to add its verb to the CLI without importing ``misentry.cli``
(which imports the command modules): the subparsers type and the signature of ``cli._verb``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeAlias

from rich.console import Console

Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]


class MakeVerb(Protocol):
    """The signature of :func:`misentry.cli._verb`: add a subcommand parser with a handler and
    a description."""

    def __call__(
        self,
        verbs: Verbs,
        name: str,
        help_text: str,
        handler: Handler | None = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser: ...


@contextmanager
def stage_bars(
    console: Console, *, width: int = 10, transient: bool = False
) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars, one per stage, driven by the ``progress(stage, done, total)``
    callbacks of the library (``SearchContext.progress``, ``run_bench(progress=...)``). A stage
    named ``job: step`` (one job's inner stage, e.g. a bundle's search) goes once complete."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=transient) as progress:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)
            if ": " in stage and done >= total:  # a job's inner stage: gone once complete
                progress.remove_task(tasks.pop(stage))

        yield on_progress
