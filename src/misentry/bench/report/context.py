"""What an experiment's report section needs besides its rows: the method colours and the
results' and report's folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ReportContext:
    """What a section needs besides its rows: a colour per method (the same in every section),
    the results' folder (where a run's other files lie, e.g. ``covertness.json``) and the
    report's folder (what markdown links are relative to)."""

    colors: dict[str, str]
    folder: Path
    out: Path
