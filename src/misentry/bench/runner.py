"""Run a benchmark preset end to end on this machine, as resumable content-addressed jobs.

Stages: train the target, build the BIVBench instances, generate one fingerprint bundle per
method, count each instance's disagreements with each bundle (d), then write results.json/.csv
and the report. Every job writes into ``out/jobs/<stage>-<sha256 of its JSON config>/`` and
finishes by writing ``job.json`` (its config); a job whose ``job.json`` matches is reused, so a
rerun skips finished work and a killed run resumes where it stopped. The results stage writes
to ``out/results/`` under the same rule. ``out/run.json`` lists the jobs of the last run and
whether each ran or was reused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from misentry.atomic import write_text_atomic
from misentry.bench.covertness import covertness
from misentry.bench.metrics import disagreements
from misentry.bench.presets import Preset
from misentry.bench.report import build_report
from misentry.bench.results import ResultRow, detection_rows, measurement_row, write_results
from misentry.data import Pools, get_dataset
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.bundle import FingerprintSet, load_bundle, save_bundle
from misentry.fingerprint.registry import get_method
from misentry.models import Record, load_record, model_from_record, save_record, train_target
from misentry.models.record import canonical_json, json_ready
from misentry.models.target import target_record_stub
from misentry.tamper.builder import Bench, BuildConfig, build_all, instance_path
from misentry.tamper.namespace import Namespace
from misentry.tamper.registry import select

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: stages ``target``, ``instances``, ``fingerprints``,
``evaluation``, ``results``, and ``<method>: <step>`` inside a method's generation."""

JOB_FILE = "job.json"
RESULTS_NS = tuple(range(1, 21))
"""N_S values of the detection rows in results.json (those above N are left out)."""


def job_key(stage: str, config: dict[str, Any]) -> str:
    """The folder name of a job: its stage and the first 16 hex digits of its config's hash."""
    digest = hashlib.sha256(canonical_json({"stage": stage, **config}).encode()).hexdigest()
    return f"{stage}-{digest[:16]}"


@dataclass
class _Jobs:
    """The job folders of one run, and what happened to each (for ``run.json``)."""

    out: Path
    log: list[dict[str, Any]] = field(default_factory=list)

    def folder(self, stage: str, config: dict[str, Any]) -> Path:
        return self.out / "jobs" / job_key(stage, config)

    def finished(self, folder: Path, stage: str, config: dict[str, Any]) -> bool:
        marker = folder / JOB_FILE
        if not marker.is_file():
            return False
        try:
            stored = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False
        return bool(stored == _job_document(stage, config))

    def finish(self, folder: Path, stage: str, config: dict[str, Any]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / JOB_FILE, json.dumps(_job_document(stage, config), indent=1))

    def note(self, folder: Path, stage: str, reused: bool, started: float) -> None:
        self.log.append(
            {
                "stage": stage,
                "job": folder.name,
                "status": "reused" if reused else "ran",
                "seconds": time.perf_counter() - started,
            }
        )


def _job_document(stage: str, config: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(json.dumps(json_ready({"stage": stage, **config})))
    return document


def resolve(
    preset: Preset,
    *,
    methods: tuple[str, ...] | None = None,
    variants: str | tuple[str, ...] | None = None,
    instances: int | None = None,
    n_fingerprints: int | None = None,
    ns: tuple[int, ...] | None = None,
) -> Preset:
    """``preset`` with the given fields replaced (validated as a preset)."""
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("methods", methods),
            ("variants", variants),
            ("instances", instances),
            ("n_fingerprints", n_fingerprints),
            ("ns", ns),
        )
        if value is not None
    }
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
    root: Path | str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Run ``preset`` (with the given fields overridden) under ``out``; returns the results
    folder (``results.json``, ``results.csv``, ``report.md``, ``report.html``).

    ``root`` is the dataset folder of datasets read from disk; ``seed`` is the fingerprint
    generation seed of every method.
    """
    preset = resolve(
        preset,
        methods=methods,
        variants=variants,
        instances=instances,
        n_fingerprints=n_fingerprints,
        ns=ns,
    )
    preset.check_data_dir(root)
    select(preset.variant_spec)  # unknown variant slugs fail before any work
    report = progress or _quiet
    out = Path(out)
    jobs = _Jobs(out)
    target = _target(preset, root, jobs, report)
    built = _instances(preset, target, root, jobs, report)
    bundles = _bundles(preset, target, root, seed, jobs, report)
    d = _evaluate(bundles, built, jobs, report)
    results = _results(preset, target, root, bundles, d, out / "results", jobs, report)
    document = {"preset": preset.name, "seed": seed, "jobs": jobs.log}
    write_text_atomic(out / "run.json", json.dumps(json_ready(document), indent=1))
    return results


def _quiet(_stage: str, _done: int, _total: int) -> None:
    return None


def _target(preset: Preset, root: Path | str | None, jobs: _Jobs, report: Progress) -> Record:
    started = time.perf_counter()
    config = preset.target_config
    identity = {"record_id": target_record_stub(config).record_id}
    folder = jobs.folder("target", identity)
    reused = jobs.finished(folder, "target", identity)
    if reused:
        record = load_record(folder / "record")
        report("target", 1, 1)
    else:
        record = train_target(
            config,
            root,
            on_step=lambda state: report("target", state.step, state.total_steps),
        )
        save_record(record, folder / "record", overwrite=True)
        jobs.finish(folder, "target", identity)
    jobs.note(folder, "target", reused, started)
    return record


@dataclass(frozen=True)
class _Instance:
    variant: str
    index: int
    path: Path
    record_id: str
    observable: bool


def _instances(
    preset: Preset, target: Record, root: Path | str | None, jobs: _Jobs, report: Progress
) -> list[_Instance]:
    variants = select(preset.variant_spec)
    build = BuildConfig(namespace=Namespace("bench"))
    total = len(variants) * preset.instances
    bench: Bench | None = None  # loaded only when an instance must be built
    built: list[_Instance] = []
    for variant in variants:
        for index in range(preset.instances):
            started = time.perf_counter()
            config = {"target_id": target.record_id, "variant": variant.slug, "index": index}
            config["namespace"] = build.namespace.value
            folder = jobs.folder("instance", config)
            reused = jobs.finished(folder, "instance", config)
            if not reused:
                bench = bench or Bench.load(target, root)
                build_all(bench, [variant], [index], folder, build)
                jobs.finish(folder, "instance", config)
            path = instance_path(folder, variant.slug, index)
            record = load_record(path)
            observable = bool(record.metrics.get("observable", True))
            built.append(_Instance(variant.slug, index, path, record.record_id, observable))
            jobs.note(folder, "instance", reused, started)
            report("instances", len(built), total)
    return built


def _bundles(
    preset: Preset,
    target: Record,
    root: Path | str | None,
    seed: int,
    jobs: _Jobs,
    report: Progress,
) -> dict[str, FingerprintSet]:
    bundles: dict[str, FingerprintSet] = {}
    pools: Pools | None = None  # loaded only when a bundle must be generated
    for method in preset.methods:
        started = time.perf_counter()
        overrides = dict(preset.method_overrides.get(method, {}))
        config = {
            "target_id": target.record_id,
            "method": method,
            "params": overrides,
            "n": preset.n_fingerprints,
            "seed": seed,
        }
        folder = jobs.folder("bundle", config)
        reused = jobs.finished(folder, "bundle", config)
        if not reused:
            pools = pools or get_dataset(target.dataset).pools(target.data_seed, root)
            fps = _generate(method, overrides, target, pools, preset.n_fingerprints, seed, report)
            save_bundle(fps, folder / "bundle")
            jobs.finish(folder, "bundle", config)
        bundles[method] = load_bundle(folder / "bundle")
        jobs.note(folder, "bundle", reused, started)
        report("fingerprints", len(bundles), len(preset.methods))
    return bundles


def _generate(
    method: str,
    overrides: dict[str, Any],
    target: Record,
    pools: Pools,
    n: int,
    seed: int,
    report: Progress,
) -> FingerprintSet:
    def inner(stage: str, done: int, total: int) -> None:
        report(f"{method}: {stage}", done, total)

    model = model_from_record(target)
    generator = get_method(method, **overrides)
    normal = pools["test"].x
    context = SearchContext(normal=normal, pools=pools, record=target, progress=inner)
    manifest = {
        "target_id": target.record_id,
        "dataset": target.dataset,
        "architecture": target.architecture,
        "data_seed": target.data_seed,
        "n": n,
        "seed": seed,
    }
    return generator.generate(model, pools["source"], n, seed, normal, manifest, context)


def _evaluate(
    bundles: dict[str, FingerprintSet],
    built: list[_Instance],
    jobs: _Jobs,
    report: Progress,
) -> dict[str, dict[str, list[int]]]:
    """d per variant per method, over the observable instances and the identity control (as in
    benchmarks/detection.py: the benchmark holds observable instances only)."""
    kept = [i for i in built if i.observable or i.variant == "identity"]
    d: dict[str, dict[str, list[int]]] = {}
    for done, (method, fps) in enumerate(bundles.items(), start=1):
        started = time.perf_counter()
        config = {
            "method": method,
            "bundle": _bundle_hash(fps),
            "instances": [i.record_id for i in kept],
        }
        folder = jobs.folder("evaluation", config)
        reused = jobs.finished(folder, "evaluation", config)
        if not reused:
            rows = []
            for instance in kept:
                model = model_from_record(load_record(instance.path))
                count = disagreements(model, fps.x, fps.labels)
                rows.append({"variant": instance.variant, "index": instance.index, "d": count})
            folder.mkdir(parents=True, exist_ok=True)
            write_text_atomic(folder / "d.json", json.dumps({"method": method, "d": rows}))
            jobs.finish(folder, "evaluation", config)
        per_variant: dict[str, list[int]] = {}
        for row in json.loads((folder / "d.json").read_text())["d"]:
            per_variant.setdefault(row["variant"], []).append(int(row["d"]))
        d[method] = per_variant
        jobs.note(folder, "evaluation", reused, started)
        report("evaluation", done, len(bundles))
    return d


def _bundle_hash(fps: FingerprintSet) -> str:
    digest = hashlib.sha256(fps.images.contiguous().numpy().tobytes())
    digest.update(fps.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _results(
    preset: Preset,
    target: Record,
    root: Path | str | None,
    bundles: dict[str, FingerprintSet],
    d: dict[str, dict[str, list[int]]],
    folder: Path,
    jobs: _Jobs,
    report: Progress,
) -> Path:
    started = time.perf_counter()
    config = {"preset": preset.name, "ns": list(preset.ns), "d": d, "target_id": target.record_id}
    config["bundles"] = {method: _bundle_hash(fps) for method, fps in bundles.items()}
    reused = jobs.finished(folder, "results", config)
    if not reused:
        pools = get_dataset(target.dataset).pools(target.data_seed, root)
        rows = result_rows(preset, model_from_record(target), pools, bundles, d)
        write_results(rows, folder)
        build_report(folder)
        jobs.finish(folder, "results", config)
    jobs.note(folder, "results", reused, started)
    report("results", 1, 1)
    return folder


def result_rows(
    preset: Preset,
    target: torch.nn.Module,
    pools: Pools,
    bundles: dict[str, FingerprintSet],
    d: dict[str, dict[str, list[int]]],
) -> list[ResultRow]:
    """Detection rows (N_S 1..20 and the preset's), a cost row and a covertness row per method."""
    ns_values = sorted(set(RESULTS_NS) | set(preset.ns))
    rows: list[ResultRow] = []
    for method, fps in bundles.items():
        rows += bundle_rows(preset.dataset, method, fps, d[method], ns_values, target, pools)
    return rows


def bundle_rows(
    dataset: str,
    method: str,
    fps: FingerprintSet,
    d_per_variant: dict[str, list[int]],
    ns_values: Iterable[int],
    target: torch.nn.Module | None = None,
    pools: Pools | None = None,
) -> list[ResultRow]:
    """One bundle's rows: detection for each variant and N_S, its cost per fingerprint (seconds,
    forward and backward passes, zoo included) and, given the target and its pools, its
    covertness against the ``test`` pool."""
    m, n = fps.manifest, len(fps)
    rows = detection_rows(dataset, method, n, d_per_variant, ns_values)
    forward = m.get("forward_passes", 0) + m.get("zoo_forward_passes", 0)
    backward = m.get("backward_passes", 0) + m.get("zoo_backward_passes", 0)
    cost = {
        "seconds_per_fingerprint": m.get("generation_seconds", float("nan")) / n,
        "forward_per_fingerprint": forward / n,
        "backward_per_fingerprint": backward / n,
    }
    rows.append(measurement_row("cost", dataset, method, n, cost))
    if target is not None and pools is not None:
        measured = covertness(target, fps, pools["test"].x, pools["source"].x)
        rows.append(measurement_row("covertness", dataset, method, n, measured.to_row_extra()))
    return rows
