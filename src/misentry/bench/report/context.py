"""What an experiment's section needs besides its rows: the method colours, the results' and
report's folders, and the run's covertness samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from misentry.bench.experiments.covertness import (
    SAMPLES_NAME,
    CovertnessSamples,
    read_covertness_samples,
)


@dataclass(frozen=True)
class _Context:
    """What a section needs besides its rows: a colour per method, the results' folder, the
    report's folder, and the covertness samples (or why they could not be read)."""

    colors: dict[str, str]
    folder: Path
    out: Path
    samples: tuple[CovertnessSamples | None, str]


def _samples(folder: Path) -> tuple[CovertnessSamples | None, str]:
    """The run's covertness samples (None when it wrote none), or why they are unreadable."""
    if not (folder / SAMPLES_NAME).is_file():
        return None, ""
    try:
        return read_covertness_samples(folder / SAMPLES_NAME), ""
    except ValueError as err:
        return None, f"No confidence histograms: {err}."
