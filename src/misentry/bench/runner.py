"""Run a benchmark preset end to end, as resumable content-addressed jobs on an executor.

The run is a graph of jobs in five waves; the jobs of one wave are independent of each other, so
an executor may run them side by side (:mod:`misentry.bench.jobs.executors`):

1. ``target``: train the target.
2. ``instance`` (each BIVBench instance: the detection table's, and the leakage experiment's
   base instances) and ``zoo`` (each model of MiSentry's zoos, in the ``zoo`` namespace, built
   once and shared by every MiSentry bundle that uses it).
3. ``bundle``: one per method, plus the ablation's and the frontier's MiSentry configurations.
4. ``evaluation`` (d, the fingerprints an instance labels differently, per bundle and instance),
   ``leakage`` (adaptive attacks per method, attack and base instance) and ``sensitivity`` (one
   truncated tampering trajectory per variant and instance, every main bundle counted at each
   step count).
5. ``results``: ``results.json``/``.csv``, ``covertness.json``, ``examples.png`` and the report,
   rebuilt from the jobs' outputs on every run (seconds).

Every job writes into ``out/jobs/<stage>-<sha256 of its JSON config>/``; the runner writes the
job's ``job.json`` (its config) once the job returned, and a job whose ``job.json`` matches is
reused, so a rerun skips finished work and a killed run resumes where it stopped, whatever the
executor. ``out/run.json`` lists the jobs of the last run and whether each ran or was reused.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from misentry.atomic import write_text_atomic
from misentry.bench.experiments.covertness import (
    Covertness,
    covertness,
    example_grid,
    write_covertness_samples,
)
from misentry.bench.jobs import tasks as job_functions
from misentry.bench.jobs.executors import Executor, make_executor
from misentry.bench.jobs.graph import OVERALL, Job, Jobs, Progress, bundle_hash, path_text
from misentry.bench.presets import Preset
from misentry.bench.report import build_report
from misentry.bench.results import ResultRow, detection_rows, write_results
from misentry.bench.rows import (
    EXPERIMENT_NS,
    RESULTS_NS,
    bundle_rows,
    changes_text,
    leakage_rows,
    sensitivity_rows,
    tampering_cost_rows,
)
from misentry.data import Pools, get_dataset
from misentry.fingerprint.bundle import FingerprintSet, load_bundle
from misentry.models import load_record, model_from_record
from misentry.models.record import json_ready
from misentry.models.target import target_record_stub
from misentry.tamper.builder import instance_path
from misentry.tamper.namespace import Namespace
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
            ("experiments", experiments),
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
    experiments: tuple[str, ...] | None = None,
    root: Path | str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> Path:
    """Run ``preset`` (with the given fields overridden) under ``out``; returns the results
    folder (``results.json``, ``results.csv``, ``report.md``, ``report.html``).

    ``root`` is the dataset folder of datasets read from disk; ``seed`` is the fingerprint
    generation seed of every method; ``executor`` runs the jobs (default: one after another in
    this process; an executor given here is not closed).
    """
    preset = resolve(
        preset,
        methods=methods,
        variants=variants,
        instances=instances,
        n_fingerprints=n_fingerprints,
        ns=ns,
        experiments=experiments,
    )
    preset.check_data_dir(root)
    select(preset.variant_spec)  # unknown variant slugs fail before any work
    out = Path(out).resolve()
    own = executor is None
    runner = executor or make_executor("local")
    try:
        plan = _Plan(preset, root, seed, Jobs(out, runner, _path(root), progress or _quiet))
        results = plan.run()
    finally:
        if own:
            runner.close()
    document = {
        "preset": preset.name,
        "seed": seed,
        "executor": runner.name,
        "target": str(plan.target_path),
        "bundles": {
            label: str(path)
            for (group, label), path in plan.bundle_paths.items()
            if group == "main"
        },
        "instances": [i.payload() for i in plan.built],
        "jobs": plan.jobs.log,
    }
    write_text_atomic(out / "run.json", json.dumps(json_ready(document), indent=1))
    return results


def _path(root: Path | str | None) -> Path | None:
    return None if root is None else Path(root).resolve()


def _quiet(_stage: str, _done: int, _total: int) -> None:
    return None


@dataclass(frozen=True)
class _Instance:
    variant: str
    index: int
    path: Path
    record_id: str
    observable: bool
    build_seconds: float

    def payload(self) -> dict[str, Any]:
        return {"variant": self.variant, "index": self.index, "path": str(self.path)}


@dataclass(frozen=True)
class _BundleSpec:
    """A bundle to generate: ``label`` names it in results (the method for main bundles)."""

    label: str
    method: str
    params: Mapping[str, Any]
    n: int


class _Plan:
    """The waves of one run, built from the preset and the previous waves' outputs."""

    def __init__(self, preset: Preset, root: Path | str | None, seed: int, jobs: Jobs) -> None:
        self.preset, self.root, self.seed, self.jobs = preset, root, seed, jobs
        self.on = set(preset.experiments)

    def run(self) -> Path:
        self.jobs.planned = self._planned()
        self.target_path = target_path = self._target()
        instances, bundles = self._instances_and_bundles(target_path)
        self.built = instances
        evaluated, leaked, swept = self._measurements(target_path, instances, bundles)
        return self._results(target_path, instances, bundles, evaluated, leaked, swept)

    def _planned(self) -> int:
        """How many jobs the run will have, the results stage included (a job planned twice,
        e.g. an ablation configuration equal to a main bundle, runs once)."""
        preset = self.preset
        specs = [spec for group in self._bundle_specs().values() for spec in group]
        bundles = len(specs)
        zoo = len({name for spec in specs for name in _zoo_names(spec)})
        leakage = sensitivity = 0
        if "leakage" in self.on:
            spec = preset.leakage
            leakage = len(spec.methods or preset.methods) * len(spec.attacks) * spec.instances
        if "sensitivity" in self.on:
            sensitivity = len(preset.sensitivity.variants) * preset.sensitivity.instances
        return 2 + len(self._instance_keys()) + zoo + 2 * bundles + leakage + sensitivity

    # --- wave 1 ---------------------------------------------------------------------------------

    def _target(self) -> Path:
        config = self.preset.target_config
        fields = {
            "dataset": config.dataset,
            "arch": config.arch,
            "data_seed": config.data_seed,
            "model_seed": config.model_seed,
            "train": config.recipe.to_json(),
        }
        job = Job("target", {"record_id": target_record_stub(config).record_id}, "train_target")
        job = replace(job, payload={"target": fields})
        (folder,) = self.jobs.run_wave([job])
        return folder / "record"

    # --- wave 2 ---------------------------------------------------------------------------------

    def _bundle_specs(self) -> dict[str, list[_BundleSpec]]:
        preset = self.preset
        misentry = dict(preset.method_overrides.get("misentry", {}))
        specs: dict[str, list[_BundleSpec]] = {"main": [], "ablation": [], "frontier": []}
        for method in preset.methods:
            overrides = dict(preset.method_overrides.get(method, {}))
            specs["main"].append(_BundleSpec(method, method, overrides, preset.n_fingerprints))
        if "ablation" in self.on:
            for name, changes in preset.ablation.configs:
                params = {**misentry, **changes}
                n = preset.ablation.n_fingerprints
                specs["ablation"].append(_BundleSpec(name, "misentry", params, n))
        if "frontier" in self.on:
            n = preset.frontier.n_fingerprints or preset.n_fingerprints
            for c in preset.frontier.covertness:
                params = {**misentry, "covertness": c}
                specs["frontier"].append(_BundleSpec(f"covertness={c:g}", "misentry", params, n))
        return specs

    def _instance_keys(self) -> list[tuple[str, int]]:
        preset = self.preset
        keys = [(v.slug, i) for v in select(preset.variant_spec) for i in range(preset.instances)]
        if "leakage" in self.on:
            from misentry.bench.experiments.leakage import ATTACKS

            for attack in preset.leakage.attacks:
                keys += [(ATTACKS[attack], i) for i in range(preset.leakage.instances)]
        return list(dict.fromkeys(keys))

    def _instances_and_bundles(
        self, target_path: Path
    ) -> tuple[list[_Instance], dict[str, dict[str, FingerprintSet]]]:
        """Wave 2 (the instances and MiSentry's zoo models) and wave 3 (the bundles)."""
        target = load_record(target_path)
        namespace = Namespace("bench").value
        instance_jobs = []
        for variant, index in self._instance_keys():
            config = {"target_id": target.record_id, "variant": variant, "index": index}
            config["namespace"] = namespace
            payload = {**config, "target_path": str(target_path)}
            instance_jobs.append(Job("instance", config, "build_instance", payload))
        specs = self._bundle_specs()
        flat = [(group, spec) for group, group_specs in specs.items() for spec in group_specs]
        needs = {(group, spec.label): _zoo_names(spec) for group, spec in flat}
        zoo_jobs: dict[str, Job] = {}
        for name in sorted({name for names in needs.values() for name in names}):
            member, replicate = name.rsplit("#", 1)
            config = {"target_id": target.record_id, "member": member, "replicate": int(replicate)}
            payload = {**config, "target_path": str(target_path)}
            zoo_jobs[name] = Job("zoo", config, "build_zoo_model", payload)
        folders = self.jobs.run_wave([*instance_jobs, *zoo_jobs.values()])
        built = []
        for job, folder in zip(instance_jobs, folders[: len(instance_jobs)], strict=True):
            variant, index = job.config["variant"], job.config["index"]
            path = instance_path(folder, variant, index)
            record = load_record(path)
            observable = bool(record.metrics.get("observable", True))
            seconds = float(record.metrics.get("build_seconds", math.nan))
            built.append(_Instance(variant, index, path, record.record_id, observable, seconds))
        zoo = {
            name: str(folder / "record")
            for name, folder in zip(zoo_jobs, folders[len(instance_jobs) :], strict=True)
        }
        bundle_jobs = []
        for group, spec in flat:
            config = {
                "target_id": target.record_id,
                "method": spec.method,
                "params": dict(spec.params),
                "n": spec.n,
                "seed": self.seed,
            }
            label = spec.label if group == "main" else f"{group} {spec.label}"
            payload = {**config, "target_path": str(target_path), "label": label}
            payload["zoo"] = {name: zoo[name] for name in needs[(group, spec.label)]}
            bundle_jobs.append(Job("bundle", config, "generate_bundle", payload))
        folders = self.jobs.run_wave(bundle_jobs)
        bundles: dict[str, dict[str, FingerprintSet]] = {group: {} for group in specs}
        for (group, spec), folder in zip(flat, folders, strict=True):
            bundles[group][spec.label] = load_bundle(folder / "bundle")
        self.bundle_paths = {
            (group, spec.label): folder / "bundle"
            for (group, spec), folder in zip(flat, folders, strict=True)
        }
        return built, bundles

    # --- wave 3 ---------------------------------------------------------------------------------

    def _detection_instances(self, built: list[_Instance]) -> list[_Instance]:
        """The detection table's instances: the preset's variants, observable ones and the
        identity control (the benchmark holds observable instances only)."""
        wanted = {v.slug for v in select(self.preset.variant_spec)}
        return [
            i
            for i in built
            if i.variant in wanted
            and i.index < self.preset.instances
            and (i.observable or i.variant == "identity")
        ]

    def _measurements(
        self,
        target_path: Path,
        built: list[_Instance],
        bundles: dict[str, dict[str, FingerprintSet]],
    ) -> tuple[
        dict[tuple[str, str], dict[str, list[int]]],
        dict[tuple[str, str, int], list[dict[str, Any]]],
        dict[tuple[str, int], list[dict[str, Any]]],
    ]:
        kept = self._detection_instances(built)
        frontier_variants = set(self.preset.frontier.variants)
        frontier_instances = [i for i in kept if i.variant in frontier_variants]
        evaluations: list[tuple[tuple[str, str], Job]] = []
        for group, group_bundles in bundles.items():
            on = frontier_instances if group == "frontier" else kept
            for label, fps in group_bundles.items():
                config = {
                    "method": label if group == "main" else f"{group}:{label}",
                    "bundle": bundle_hash(fps),
                    "instances": [i.record_id for i in on],
                }
                payload = {
                    "bundle_path": str(self.bundle_paths[(group, label)]),
                    "instances": [i.payload() for i in on],
                }
                evaluations.append(((group, label), Job("evaluation", config, "evaluate", payload)))
        leakage_jobs = self._leakage_jobs(target_path, built, bundles["main"])
        sensitivity_jobs = self._sensitivity_jobs(target_path, bundles["main"])
        wave = [job for _, job in evaluations] + [j for _, j in leakage_jobs]
        wave += [j for _, j in sensitivity_jobs]
        folders = self.jobs.run_wave(wave)
        evaluated: dict[tuple[str, str], dict[str, list[int]]] = {}
        for (key, _), folder in zip(evaluations, folders, strict=False):
            per_variant: dict[str, list[int]] = {}
            for row in json.loads((folder / "d.json").read_text())["d"]:
                per_variant.setdefault(row["variant"], []).append(int(row["d"]))
            evaluated[key] = per_variant
        rest = folders[len(evaluations) :]
        leaked: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for (lkey, _), folder in zip(leakage_jobs, rest[: len(leakage_jobs)], strict=True):
            leaked[lkey] = json.loads((folder / "leakage.json").read_text())["points"]
        swept: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for (skey, _), folder in zip(sensitivity_jobs, rest[len(leakage_jobs) :], strict=True):
            swept[skey] = json.loads((folder / "sensitivity.json").read_text())["points"]
        return evaluated, leaked, swept

    def _leakage_jobs(
        self, target_path: Path, built: list[_Instance], main: dict[str, FingerprintSet]
    ) -> list[tuple[tuple[str, str, int], Job]]:
        if "leakage" not in self.on:
            return []
        from misentry.bench.experiments.leakage import ATTACKS

        spec = self.preset.leakage
        by_key = {(i.variant, i.index): i for i in built}
        out = []
        for method in spec.methods or self.preset.methods:
            fps = main[method]
            for attack in spec.attacks:
                for index in range(spec.instances):
                    base = by_key[(ATTACKS[attack], index)]
                    config = {
                        "attack": attack,
                        "bundle": bundle_hash(fps),
                        "instance": base.record_id,
                        "n_leaked": list(spec.n_leaked),
                        "seed": self.seed,
                    }
                    payload = {
                        **config,
                        "index": index,
                        "target_path": str(target_path),
                        "instance_path": str(base.path),
                        "bundle_path": str(self.bundle_paths[("main", method)]),
                    }
                    job = Job("leakage", config, "leakage", payload)
                    out.append(((method, attack, index), job))
        return out

    def _sensitivity_jobs(
        self, target_path: Path, main: dict[str, FingerprintSet]
    ) -> list[tuple[tuple[str, int], Job]]:
        if "sensitivity" not in self.on:
            return []
        spec = self.preset.sensitivity
        target = load_record(target_path)
        out = []
        for variant in spec.variants:
            steps = spec.steps.get(variant) or self._default_steps(target_path, variant)
            for index in range(spec.instances):
                config = {
                    "target_id": target.record_id,
                    "variant": variant,
                    "index": index,
                    "steps": list(steps),
                    "bundles": {m: bundle_hash(fps) for m, fps in main.items()},
                }
                payload = {
                    "variant": variant,
                    "index": index,
                    "steps": list(steps),
                    "target_path": str(target_path),
                    "bundles": {m: str(self.bundle_paths[("main", m)]) for m in main},
                }
                out.append(((variant, index), Job("sensitivity", config, "sensitivity", payload)))
        return out

    def _default_steps(self, target_path: Path, variant: str) -> tuple[int, ...]:
        from misentry.bench.experiments.sensitivity import default_steps

        bench = job_functions.load_workspace(
            {"target_path": str(target_path), "root": path_text(self.jobs.root)}
        )
        return tuple(default_steps(variant, bench))

    # --- wave 4 ---------------------------------------------------------------------------------

    def _results(
        self,
        target_path: Path,
        built: list[_Instance],
        bundles: dict[str, dict[str, FingerprintSet]],
        evaluated: dict[tuple[str, str], dict[str, list[int]]],
        leaked: dict[tuple[str, str, int], list[dict[str, Any]]],
        swept: dict[tuple[str, int], list[dict[str, Any]]],
    ) -> Path:
        started = time.perf_counter()
        folder = self.jobs.out / "results"
        preset, dataset = self.preset, self.preset.dataset
        target_record = load_record(target_path)
        target = model_from_record(target_record)
        pools = get_dataset(target_record.dataset).pools(target_record.data_seed, self.root)
        measured = {
            label: covertness(target, fps, pools["test"].x, pools["source"].x)
            for label, fps in bundles["main"].items()
        }
        ns_values = sorted(set(RESULTS_NS) | set(preset.ns))
        rows: list[ResultRow] = []
        for method, fps in bundles["main"].items():
            d = evaluated[("main", method)]
            rows += bundle_rows(dataset, method, fps, d, ns_values, measured=measured[method])
        rows += tampering_cost_rows(
            dataset, [(i.variant, i.build_seconds) for i in self._detection_instances(built)]
        )
        rows += leakage_rows(dataset, bundles["main"], leaked)
        rows += sensitivity_rows(dataset, bundles["main"], swept)
        for name, changes in preset.ablation.configs if "ablation" in self.on else ():
            rows += detection_rows(
                dataset,
                "misentry",
                len(bundles["ablation"][name]),
                evaluated[("ablation", name)],
                EXPERIMENT_NS,
                "ablation",
                {"config": name, "changes": changes_text(changes)},
                name,
            )
        if "frontier" in self.on:
            rows += self._frontier_rows(target, pools, bundles, evaluated, measured)
        write_results(rows, folder)
        write_covertness_samples(folder, measured, dataset)
        example_grid(bundles["main"], pools["source"], folder / "examples.png")
        build_report(folder)
        self.jobs.log.append(
            {
                "stage": "results",
                "job": "results",
                "status": "ran",
                "seconds": time.perf_counter() - started,
            }
        )
        self.jobs.report("results", 1, 1)
        self.jobs.report(OVERALL, len(self.jobs.log), len(self.jobs.log))
        return folder

    def _frontier_rows(
        self,
        target: torch.nn.Module,
        pools: Pools,
        bundles: dict[str, dict[str, FingerprintSet]],
        evaluated: dict[tuple[str, str], dict[str, list[int]]],
        measured: dict[str, Covertness],
    ) -> list[ResultRow]:
        spec, dataset = self.preset.frontier, self.preset.dataset
        wanted = [
            v for v in spec.variants if v in {x.slug for x in select(self.preset.variant_spec)}
        ]
        names = ",".join(wanted)
        rows: list[ResultRow] = []
        points: list[tuple[str, str, FingerprintSet, dict[str, list[int]], Covertness, Any]] = []
        for method, fps in bundles["main"].items():
            c = {"misentry": 0.0, "misentry-covert": 1.0}.get(method)
            setting = "" if c is None else f"covertness={c:g}"
            d = evaluated[("main", method)]
            points.append((method, setting, fps, d, measured[method], c))
        for label, fps in bundles["frontier"].items():
            sweep_c = float(label.split("=", 1)[1])
            cov = covertness(target, fps, pools["test"].x, pools["source"].x)
            d = evaluated[("frontier", label)]
            points.append(("misentry", label, fps, d, cov, sweep_c))
        for method, setting, fps, d, cov, c in points:
            pooled = [count for variant in wanted for count in d.get(variant, [])]
            if not pooled:
                continue
            extra = {
                "covertness": c,
                "auc_confidence": cov.auc_confidence,
                "auc_entropy": cov.auc_entropy,
                "variants": names,
            }
            rows += detection_rows(
                dataset,
                method,
                len(fps),
                {"subtle": pooled},
                EXPERIMENT_NS,
                "frontier",
                extra,
                setting,
            )
        return rows


def _zoo_names(spec: _BundleSpec) -> list[str]:
    """The zoo models (:func:`~misentry.fingerprint.methods.misentry.zoo.zoo_name`) a bundle's
    generator builds:
    MiSentry's meta-learning and screening zoos; none for the other methods."""
    from misentry.fingerprint.methods.misentry import Misentry
    from misentry.fingerprint.methods.misentry.zoo import zoo_name
    from misentry.fingerprint.registry import get_method

    generator = get_method(spec.method, **spec.params)
    if not isinstance(generator, Misentry):
        return []
    p = generator.params
    replicates = p.zoo_replicates + (p.screening_replicates if p.screening else 0)
    return [zoo_name(member, r) for member in p.members for r in range(replicates)]
