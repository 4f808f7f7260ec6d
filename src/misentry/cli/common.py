"""What every verb module shares: how a verb is registered, the two consoles, progress bars,
the error a verb raises, and argument types used by more than one verb.

A verb module ``misentry/cli/<verb>.py`` exposes ``add(verbs)``, which registers its parser with
:func:`add_verb`, and ``run(args)``, which returns the exit status.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

from rich.console import Console

Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""The subparsers of ``misentry`` (or of a verb with subcommands) that verbs are added to."""

Run: TypeAlias = Callable[[argparse.Namespace], int]
"""A verb's ``run(args)``: does the work and returns the exit status."""

console = Console()
"""Standard output: results, tables."""

err_console = Console(stderr=True)
"""Standard error: progress, warnings, errors."""


class CliError(Exception):
    """A user-facing error with a one-line message: printed as ``error: ...`` without a
    traceback, exit status 1. ``reason`` classifies it where a verb reports reasons
    (``misentry verify``: bundle, model, oracle, usage, ...)."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def add_verb(
    verbs: Verbs,
    name: str,
    help: str,
    run: Run,
    *,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Register the verb ``name`` on ``verbs``: ``help`` is its line in the verb list,
    ``description`` (default ``help``) and ``epilog`` its help page, and ``run`` what it does."""
    parser = verbs.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def add_group(verbs: Verbs, name: str, help: str) -> Verbs:
    """Register the verb ``name`` whose work is done by subcommands (``misentry data list``);
    alone it prints its help. Returns the subparsers to add the subcommands to."""

    def print_help(_args: argparse.Namespace) -> int:
        group.print_help()
        return 0

    group = add_verb(verbs, name, help, print_help)
    return group.add_subparsers(title="subcommands", metavar="SUBCOMMAND")


@contextmanager
def stage_bars(
    console: Console, *, width: int = 10, transient: bool = False
) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars, one per stage, driven by the ``progress(stage, done, total)``
    callbacks of the library (``SearchContext.progress``, ``run_bench(progress=...)``). A stage
    named ``job: step`` (one job's inner stage, e.g. a bundle's search) goes once complete. The
    bars show from the first report on, so a command that fails before prints only its error.
    When ``console`` is not a terminal (a log file, a pipe), plain lines replace the bars."""
    if not console.is_terminal:
        yield LogLines(console)
        return
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
    progress = Progress(*columns, console=console, transient=transient)
    tasks: dict[str, TaskID] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if not progress.live.is_started:  # started by the first report: nothing shows before
            progress.start()
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)
        if ": " in stage and done >= total:  # a job's inner stage: gone once complete
            progress.remove_task(tasks.pop(stage))

    try:
        yield on_progress
    finally:
        if progress.live.is_started:
            progress.stop()


class LogLines:
    """Progress for a log file: one line when a stage starts and when it completes, and one
    every ``interval`` seconds while it runs (a job's inner stage, ``job: step``, only the
    periodic and final lines), each with the elapsed time."""

    def __init__(self, console: Console, interval: float = 30.0) -> None:
        self.console = console
        self.interval = interval
        self.started = time.monotonic()
        self.last: dict[str, float] = {}
        self.done: set[str] = set()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        inner = ": " in stage
        first = stage not in self.last
        finished = done >= total and stage not in self.done
        if first:
            self.last[stage] = now
        due = now - self.last[stage] >= self.interval
        if (first and not inner) or finished or due:
            self.last[stage] = now
            if finished:
                self.done.add(stage)
            elapsed = int(now - self.started)
            self.console.print(
                f"[{elapsed // 60:d}:{elapsed % 60:02d}] {stage}: {done}/{total}",
                markup=False,
                highlight=False,
            )


# --- argument types ---------------------------------------------------------------------------


def names(text: str) -> tuple[str, ...]:
    """Comma-separated names, e.g. ``natural,misentry`` (at least one)."""
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


def integers(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. ``1,5,20`` (at least one)."""
    try:
        return tuple(int(part) for part in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def fraction(text: str) -> float:
    """A float, or a fraction such as ``8/255``."""
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text!r}")
    return number
