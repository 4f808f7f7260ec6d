"""Run a benchmark preset end to end, as resumable content-addressed jobs on an executor.

The run is a graph of jobs in five waves; the jobs of one wave are independent of each other, so
an executor may run them side by side (:mod:`misentry.bench.jobs.executors`):

1. ``target``: train the target.
2. ``instance`` (each BIVBench instance: the detection table's, and those an experiment adds,
   e.g. the leakage experiment's base instances) and ``zoo`` (each model of MiSentry's zoos, in
   the ``zoo`` namespace, built once and shared by every MiSentry bundle that uses it).
3. ``bundle``: one per method, plus those an experiment adds (the ablation's and the frontier's
   MiSentry configurations).
4. ``evaluation`` (d, the fingerprints an instance labels differently, per bundle and instance)
   and each experiment's own jobs (``leakage``: adaptive attacks per method, attack and base
   instance; ``sensitivity``: one truncated tampering trajectory per variant and instance, every
   main bundle counted at each step count).
5. ``results``: each experiment's rows in ``results.json``/``.csv``, its own files (the
   covertness samples ``covertness.json``, ``examples.png``) and the report, rebuilt from the
   jobs' outputs on every run (seconds).

What a run holds besides the main bundles comes from its experiments
(:mod:`misentry.bench.experiments`): the runner asks each for its instances, bundles, jobs, rows
and files. Every job writes into ``out/jobs/<stage>-<sha256 of its JSON config>/``; the runner
writes the job's ``job.json`` (its config) once the job returned, and a job whose ``job.json``
matches is reused, so a rerun skips finished work and a killed run resumes where it stopped,
whatever the executor. ``out/run.json`` lists the jobs of the last run and whether each ran or
was reused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from misentry.atomic import write_text_atomic
from misentry.bench.experiments.base import MAIN, Measured
from misentry.bench.jobs.executors import Executor, make_executor
from misentry.bench.jobs.graph import OVERALL, Jobs
from misentry.bench.jobs.task import Progress
from misentry.bench.plan import RunPlan
from misentry.bench.presets import Preset
from misentry.bench.report import build_report
from misentry.bench.results import ResultRow, write_results, write_skipped
from misentry.models.record import json_ready
from misentry.tamper.registry import select


def resolve(
    preset: Preset,
    *,
    methods: tuple[str, ...] | None = None,
    variants: str | tuple[str, ...] | None = None,
    instances: int | None = None,
    n_fingerprints: int | None = None,
    ns: tuple[int, ...] | None = None,
    experiments: tuple[str, ...] | None = None,
    band: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Preset:
    """``preset`` with the given fields replaced (validated as a preset); ``overrides`` (method
    -> parameter -> value) are merged into its ``method_overrides``, parameter by parameter."""
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("methods", methods),
            ("variants", variants),
            ("instances", instances),
            ("n_fingerprints", n_fingerprints),
            ("ns", ns),
            ("experiments", experiments),
            ("band", band),
        )
        if value is not None
    }
    if overrides:
        merged = {method: dict(params) for method, params in preset.method_overrides.items()}
        for method, params in overrides.items():
            merged[method] = {**merged.get(method, {}), **params}
        changes["method_overrides"] = merged
    return replace(preset, **changes) if changes else preset


def run_bench(
    preset: Preset,
    out: Path | str,
    *,
    methods: tuple[str, ...] | None = None,
    variants: str | tuple[str, ...] | None = None,
    instances: int | None = None,
    n_fingerprints: int | None = None,
    ns: tuple[int, ...] | None = None,
    experiments: tuple[str, ...] | None = None,
    band: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    root: Path | str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> Path:
    """Run ``preset`` (with the given fields overridden, see :func:`resolve`) under ``out``;
    returns the results folder (``results.json``, ``results.csv``, ``report.md``,
    ``report.html``).

    ``band`` holds every method but MiSentry to an output band (``covert``, see
    :class:`~misentry.bench.presets.Preset`); ``overrides`` change single parameters of a
    method (checked against the method's parameters before any work); ``root`` is the dataset
    folder of datasets read from disk; ``seed`` is the fingerprint generation seed of every
    method; ``executor`` runs the jobs (default: one after another in this process; an executor
    given here is not closed).
    """
    preset = resolve(
        preset,
        methods=methods,
        variants=variants,
        instances=instances,
        n_fingerprints=n_fingerprints,
        ns=ns,
        experiments=experiments,
        band=band,
        overrides=overrides,
    )
    preset.check_data_dir(root)
    select(preset.variant_spec)  # unknown variant slugs fail before any work
    out = Path(out).resolve()
    own = executor is None
    runner = executor or make_executor("local")
    try:
        jobs = Jobs(out, runner, _path(root), progress or _quiet)
        plan = RunPlan(preset, seed, jobs)
        built = plan.build()
        results = _results(plan, plan.measure(built))
    finally:
        if own:
            runner.close()
    document = {
        "preset": preset.name,
        "seed": seed,
        "executor": runner.name,
        "target": str(built.target_path),
        "bundles": {
            label: str(path) for (group, label), path in built.bundle_paths.items() if group == MAIN
        },
        "instances": [i.payload() for i in built.instances],
        "jobs": jobs.log,
    }
    if preset.target is not None:
        document["given_target"] = preset.target
        document["skipped"] = dict(built.skipped)
    write_text_atomic(out / "run.json", json.dumps(json_ready(document), indent=1))
    return results


def _path(root: Path | str | None) -> Path | None:
    return None if root is None else Path(root).resolve()


def _quiet(_stage: str, _done: int, _total: int) -> None:
    return None


def _results(plan: RunPlan, measured: Measured) -> Path:
    """Wave 5: every experiment's rows, its files, and the report."""
    started = time.perf_counter()
    jobs = plan.jobs
    folder = jobs.out / "results"
    rows: list[ResultRow] = []
    for experiment in plan.experiments:
        rows += experiment.rows(measured)
    write_results(rows, folder)
    write_skipped(measured.built.skipped, folder)
    for experiment in plan.experiments:
        experiment.write(measured, folder)
    build_report(folder)
    jobs.log.append(
        {
            "stage": "results",
            "job": "results",
            "status": "ran",
            "seconds": time.perf_counter() - started,
        }
    )
    jobs.report("results", 1, 1)
    jobs.report(OVERALL, len(jobs.log), len(jobs.log))
    return folder
