"""How the bench tests run a benchmark and read what it did."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from misentry.bench.jobs.executors import make_executor
from misentry.bench.jobs.graph import JOB_FILE
from misentry.bench.presets import PRESETS, Preset
from misentry.bench.runner import run_bench

SMOKE = PRESETS["digits-smoke"]


@dataclass
class Run:
    out: Path
    results: Path
    seconds: float
    stages: list[tuple[str, int, int]]

    @property
    def jobs(self) -> list[dict[str, object]]:
        jobs: list[dict[str, object]] = json.loads((self.out / "run.json").read_text())["jobs"]
        return jobs


def run(
    preset: Preset,
    out: Path,
    methods: tuple[str, ...] | None = None,
    n_fingerprints: int | None = None,
    executor: str = "local",
) -> Run:
    stages: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        stages.append((stage, done, total))

    started = time.perf_counter()
    # one torch thread per job on every executor, so their float sums agree bit for bit
    workers = None if executor == "local" else 2
    with make_executor(executor, workers=workers, threads=1) as jobs:  # type: ignore[arg-type]
        results = run_bench(
            preset,
            out,
            methods=methods,
            n_fingerprints=n_fingerprints,
            progress=progress,
            executor=jobs,
        )
    return Run(out, results, time.perf_counter() - started, stages)


def job_runs(run: Run) -> list[dict[str, object]]:
    """The run's jobs but the results stage, which is rebuilt on every run."""
    return [job for job in run.jobs if job["stage"] != "results"]


def markers(out: Path) -> dict[Path, int]:
    """Every finished job's marker with its modification time (ns)."""
    return {path: path.stat().st_mtime_ns for path in out.rglob(JOB_FILE)}
