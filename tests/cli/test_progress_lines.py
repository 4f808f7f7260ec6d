"""Progress written to a log file (not a terminal) comes as plain, timestamped lines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from misentry.cli.common import LogLines, stage_bars


def test_a_log_gets_a_line_when_a_stage_starts_and_when_it_completes() -> None:
    buffer = io.StringIO()
    with stage_bars(Console(file=buffer)) as progress:
        progress("instances", 0, 3)
        progress("instances", 1, 3)
        progress("bundle a: search", 0, 5)
        progress("bundle a: search", 5, 5)
        progress("instances", 3, 3)
        progress("instances", 3, 3)
    lines = buffer.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "instances: 0/3",
        "bundle a: search: 5/5",
        "instances: 3/3",
    ]
    assert all(line.startswith("[0:") for line in lines)


def test_a_long_stage_reports_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 10.0, 31.0, 40.0, 62.0])
    monkeypatch.setattr("misentry.cli.common.time.monotonic", lambda: next(clock))
    buffer = io.StringIO()
    lines = LogLines(Console(file=buffer), interval=30.0)
    for done in range(5):
        lines("search", done, 10)
    assert [line.split("] ", 1)[1] for line in buffer.getvalue().splitlines()] == [
        "search: 0/10",
        "search: 2/10",
        "search: 4/10",
    ]
