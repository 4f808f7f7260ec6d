"""The benchmark's job bookkeeping: content-addressed job folders, waves run on an executor.

A :class:`Job` is identified by its stage and its JSON config (its inputs' ids and hashes, never
paths); :class:`Jobs` runs a wave of them on an executor, reuses every job whose ``job.json``
matches, writes ``job.json`` in the driver once a job returned, counts progress per stage and
overall (and hands its progress callback to the executor, which passes it on to the jobs that run
in this process), and keeps the log that ``run.json`` holds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from misentry.atomic import write_text_atomic
from misentry.bench.jobs.task import Executor, Progress, Task, TaskFunction
from misentry.fingerprint.bundle import FingerprintSet
from misentry.models.record import canonical_json, json_ready

JOB_FILE = "job.json"


def job_key(stage: str, config: dict[str, Any]) -> str:
    """The folder name of a job: its stage and the first 16 hex digits of its config's hash."""
    digest = hashlib.sha256(canonical_json({"stage": stage, **config}).encode()).hexdigest()
    return f"{stage}-{digest[:16]}"


def function_name(function: TaskFunction) -> str:
    """How a :class:`Job` names its function: ``"package.module:function"``."""
    return f"{function.__module__}:{function.__qualname__}"


def _job_document(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(json_ready({"stage": stage, **config})))
    return document


@dataclass(frozen=True)
class Job:
    """One job of a wave: its stage (the progress bar it counts in), its identity (``config``,
    hashed into its folder), the function that runs it (``"package.module:function"``, see
    :func:`function_name`; the runner's in :mod:`misentry.bench.jobs.tasks`, each experiment's in
    its module) and the payload that function gets besides ``folder`` and ``root`` (paths of its
    inputs)."""

    stage: str
    config: dict[str, Any]
    function: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Jobs:
    """The job folders of one run, what happened to each (for ``run.json``), and the executor."""

    out: Path
    executor: Executor
    root: Path | None
    report: Progress
    """``report(stage, done, total)``: stages ``target``, ``instances``, ``zoo``,
    ``fingerprints``, ``evaluation``, each experiment's own (``leakage``, ``sensitivity``),
    ``results``, :data:`OVERALL`, and, with the local executor, ``<bundle>: <step>`` inside a
    bundle's generation."""
    log: list[dict[str, Any]] = field(default_factory=list)
    planned: int = 0
    """Jobs the whole run plans (for the overall bar); 0: unknown."""

    def folder(self, job: Job) -> Path:
        return self.out / "jobs" / job_key(job.stage, job.config)

    def finished(self, job: Job) -> bool:
        marker = self.folder(job) / JOB_FILE
        if not marker.is_file():
            return False
        try:
            stored = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False
        return bool(stored == _job_document(job.stage, job.config))

    def run_wave(self, wave: Sequence[Job]) -> list[Path]:
        """Run the unfinished jobs of ``wave`` on the executor; returns each job's folder."""
        unique: dict[Path, Job] = {}
        for job in wave:
            unique.setdefault(self.folder(job), job)
        totals: dict[str, int] = defaultdict(int)
        for job in unique.values():
            totals[job.stage] += 1
        done: dict[str, int] = defaultdict(int)

        def count(job: Job) -> None:
            done[job.stage] += 1
            self.report(_STAGE_NAMES.get(job.stage, job.stage), done[job.stage], totals[job.stage])
            self.report(OVERALL, len(self.log), max(self.planned, len(self.log)))

        tasks: list[Task] = []
        by_name: dict[str, tuple[Path, Job]] = {}
        for folder, job in unique.items():
            if self.finished(job):
                self._note(folder, job, "reused", 0.0)
                count(job)
                continue
            payload = {**job.payload, "folder": str(folder), "root": path_text(self.root)}
            task = Task(folder.name, job.function, json_ready(payload))
            tasks.append(task)
            by_name[task.name] = (folder, job)
        started = {name: time.perf_counter() for name in by_name}

        def on_done(task: Task, result: dict[str, Any]) -> None:
            folder, job = by_name[task.name]
            if result.get("unfinished"):  # it built nothing (a skipped variant): no marker
                self._note(folder, job, "skipped", time.perf_counter() - started[task.name])
                count(job)
                return
            folder.mkdir(parents=True, exist_ok=True)
            document = json.dumps(_job_document(job.stage, job.config), indent=1)
            write_text_atomic(folder / JOB_FILE, document)
            self._note(folder, job, "ran", time.perf_counter() - started[task.name])
            count(job)

        if tasks:
            self.executor.run(tasks, on_done, self.report)
        return [self.folder(job) for job in wave]

    def _note(self, folder: Path, job: Job, status: str, seconds: float) -> None:
        self.log.append(
            {"stage": job.stage, "job": folder.name, "status": status, "seconds": seconds}
        )


_STAGE_NAMES = {"instance": "instances", "bundle": "fingerprints"}

OVERALL = "all jobs"
"""The progress stage that counts every job of the run."""


def path_text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def bundle_hash(fps: FingerprintSet) -> str:
    """A bundle's identity in job configs: the sha256 of its images and labels."""
    digest = hashlib.sha256(fps.images.contiguous().numpy().tobytes())
    digest.update(fps.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()
