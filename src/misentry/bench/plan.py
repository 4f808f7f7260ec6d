"""The jobs of one benchmark run, wave by wave (:mod:`misentry.bench.runner` describes the
waves): :class:`RunPlan` builds each wave's jobs from the preset, its experiments and the
previous waves' outputs, and runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from misentry.bench.experiments.base import (
    MAIN,
    Built,
    BuiltInstance,
    BundleSpec,
    Experiment,
    Measured,
)
from misentry.bench.jobs import tasks
from misentry.bench.jobs.graph import Job, Jobs, bundle_hash, function_name
from misentry.bench.presets import Preset
from misentry.bench.target import build_instance_or_skip, copy_target, skip_reason
from misentry.data import get_dataset
from misentry.fingerprint.bundle import FingerprintSet, load_bundle
from misentry.models import load_record, model_from_record
from misentry.models.target import target_record_stub
from misentry.tamper.builder import instance_path
from misentry.tamper.namespace import Namespace


class RunPlan:
    """The waves of one run of ``preset`` (generation seed ``seed``), run on ``jobs``.

    :meth:`build` runs the target, the instances and zoo models, and the bundles (waves 1-3);
    :meth:`measure` the evaluations and the experiments' own jobs (wave 4). The preset's
    experiments (:attr:`experiments`) say what a run holds besides the main bundles.
    """

    def __init__(self, preset: Preset, seed: int, jobs: Jobs) -> None:
        self.preset, self.seed, self.jobs = preset, seed, jobs
        self.setup = preset.setup
        self.experiments: tuple[Experiment, ...] = preset.specs
        self.bundle_specs = self._bundle_specs()

    def _bundle_specs(self) -> list[BundleSpec]:
        """One main bundle per method, then each experiment's own."""
        preset = self.preset
        specs = [
            BundleSpec(MAIN, m, m, dict(preset.method_overrides.get(m, {})), preset.n_fingerprints)
            for m in preset.methods
        ]
        for experiment in self.experiments:
            specs += experiment.bundles(self.setup)
        return specs

    def instance_keys(self) -> list[tuple[str, int]]:
        """(variant, index) of every instance: the detection table's, then the experiments'."""
        keys = [(v, i) for v in self.setup.variants for i in range(self.setup.instances)]
        for experiment in self.experiments:
            keys += experiment.instance_keys(self.setup)
        return list(dict.fromkeys(keys))

    def planned(self) -> int:
        """How many jobs the run will have, the results stage included (a job planned twice,
        e.g. an ablation configuration equal to a main bundle, runs once)."""
        bundles = len(self.bundle_specs)
        zoo = len({name for spec in self.bundle_specs for name in zoo_names(spec)})
        own = sum(experiment.planned_jobs(self.setup) for experiment in self.experiments)
        return 2 + len(self.instance_keys()) + zoo + 2 * bundles + own

    def build(self) -> Built:
        """Waves 1 to 3: the target, the instances and zoo models, the bundles."""
        self.jobs.planned = self.planned()
        target_path = self._target()
        target_id = load_record(target_path).record_id
        instances, zoo, skipped = self._instances_and_zoo(target_path, target_id)
        bundles, paths = self._bundles(target_path, target_id, zoo)
        return Built(
            self.setup,
            self.seed,
            self.jobs.root,
            target_path,
            target_id,
            instances,
            bundles,
            paths,
            skipped,
        )

    def _target(self) -> Path:
        """Wave 1: the target trained, or the given target record copied into the run."""
        if self.preset.target is not None:
            return self._given_target(self.preset.target)
        config = self.preset.target_config
        fields = {
            "dataset": config.dataset,
            "arch": config.arch,
            "data_seed": config.data_seed,
            "model_seed": config.model_seed,
            "train": config.recipe.to_json(),
        }
        identity = {"record_id": target_record_stub(config).record_id}
        job = Job("target", identity, function_name(tasks.train_target), {"target": fields})
        (folder,) = self.jobs.run_wave([job])
        return folder / "record"

    def _given_target(self, source: str) -> Path:
        """The target record at ``source`` (``--target``), copied into its job folder."""
        record_id = load_record(source).record_id
        identity = {"record_id": record_id, "given": True}
        payload = {"source": source, "record_id": record_id}
        job = Job("target", identity, function_name(copy_target), payload)
        (folder,) = self.jobs.run_wave([job])
        return folder / "record"

    def _instances_and_zoo(
        self, target_path: Path, target_id: str
    ) -> tuple[tuple[BuiltInstance, ...], dict[str, str], dict[str, str]]:
        """Wave 2: every instance, and every zoo model a bundle's generator builds. With a given
        target, a variant the builder cannot build is skipped: the third value maps it to the
        reason."""
        namespace = Namespace("bench").value
        given = self.preset.target is not None
        function = function_name(build_instance_or_skip if given else tasks.build_instance)
        instance_jobs = []
        for variant, index in self.instance_keys():
            config = {"target_id": target_id, "variant": variant, "index": index}
            config["namespace"] = namespace
            payload = {**config, "target_path": str(target_path)}
            instance_jobs.append(Job("instance", config, function, payload))
        zoo_jobs: dict[str, Job] = {}
        for name in sorted({name for s in self.bundle_specs for name in zoo_names(s)}):
            member, replicate = name.rsplit("#", 1)
            config = {"target_id": target_id, "member": member, "replicate": int(replicate)}
            payload = {**config, "target_path": str(target_path)}
            zoo_jobs[name] = Job("zoo", config, function_name(tasks.build_zoo_model), payload)
        folders = self.jobs.run_wave([*instance_jobs, *zoo_jobs.values()])
        built: list[BuiltInstance] = []
        skipped: dict[str, str] = {}
        for job, folder in zip(instance_jobs, folders[: len(instance_jobs)], strict=True):
            reason = skip_reason(folder) if given else None
            if reason is None:
                built.append(_built(job, folder))
            else:
                skipped.setdefault(job.config["variant"], reason)
        zoo = {
            name: str(folder / "record")
            for name, folder in zip(zoo_jobs, folders[len(instance_jobs) :], strict=True)
        }
        return tuple(built), zoo, skipped

    def _bundles(
        self, target_path: Path, target_id: str, zoo: dict[str, str]
    ) -> tuple[dict[str, dict[str, FingerprintSet]], dict[tuple[str, str], Path]]:
        """Wave 3: every bundle (by group and label) and its folder."""
        bundle_jobs = []
        for spec in self.bundle_specs:
            config = {
                "target_id": target_id,
                "method": spec.method,
                "params": dict(spec.params),
                "n": spec.n,
                "seed": self.seed,
            }
            if self.preset.band != "none" and _held(spec.method):
                config["band"] = self.preset.band
            tolerance = _tolerance(spec)
            if tolerance != "exact":  # an exact bundle hashes as before tolerances existed
                config["tolerance"] = tolerance
            label = spec.label if spec.group == MAIN else f"{spec.group} {spec.label}"
            payload = {**config, "target_path": str(target_path), "label": label}
            payload["zoo"] = {name: zoo[name] for name in zoo_names(spec)}
            bundle_jobs.append(Job("bundle", config, function_name(tasks.generate_bundle), payload))
        folders = self.jobs.run_wave(bundle_jobs)
        bundles: dict[str, dict[str, FingerprintSet]] = {s.group: {} for s in self.bundle_specs}
        paths = {}
        for spec, folder in zip(self.bundle_specs, folders, strict=True):
            bundles[spec.group][spec.label] = load_bundle(folder / "bundle")
            paths[(spec.group, spec.label)] = folder / "bundle"
        return bundles, paths

    def measure(self, built: Built) -> Measured:
        """Wave 4: each bundle evaluated on its instances (the main bundles on the detection
        table's, an experiment's on those it names), then the experiments' own jobs."""
        evaluations: list[tuple[tuple[str, str], Job]] = []
        for group, group_bundles in built.bundles.items():
            on = built.detection_instances
            for experiment in self.experiments:
                if experiment.name == group:
                    on = experiment.evaluated_on(built)
            for label, fps in group_bundles.items():
                evaluations.append(((group, label), _evaluation(built, group, label, fps, on)))
        own = [(e.name, job) for e in self.experiments for job in e.jobs(built)]
        folders = self.jobs.run_wave([job for _, job in evaluations] + [job for _, job in own])
        evaluated: dict[tuple[str, str], dict[str, list[int]]] = {}
        for (key, _), folder in zip(evaluations, folders, strict=False):
            per_variant: dict[str, list[int]] = {}
            for row in json.loads((folder / "d.json").read_text())["d"]:
                per_variant.setdefault(row["variant"], []).append(int(row["d"]))
            evaluated[key] = per_variant
        outputs: dict[str, list[tuple[Job, Path]]] = {}
        for (name, job), folder in zip(own, folders[len(evaluations) :], strict=True):
            outputs.setdefault(name, []).append((job, folder))
        record = load_record(built.target_path)
        pools = get_dataset(record.dataset).pools(record.data_seed, built.root)
        return Measured(built, evaluated, outputs, model_from_record(record), pools)


def _built(job: Job, folder: Path) -> BuiltInstance:
    """The instance an instance job built, as its record describes it."""
    variant, index = job.config["variant"], job.config["index"]
    path = instance_path(folder, variant, index)
    record = load_record(path)
    observable = bool(record.metrics.get("observable", True))
    seconds = float(record.metrics.get("build_seconds", math.nan))
    return BuiltInstance(variant, index, path, record.record_id, observable, seconds)


def _evaluation(
    built: Built, group: str, label: str, fps: FingerprintSet, on: list[BuiltInstance]
) -> Job:
    """The job that counts d of one bundle on the instances ``on``."""
    config = {
        "method": label if group == MAIN else f"{group}:{label}",
        "bundle": bundle_hash(fps),
        "instances": [i.record_id for i in on],
    }
    payload = {
        "bundle_path": str(built.bundle_paths[(group, label)]),
        "instances": [i.payload() for i in on],
    }
    return Job("evaluation", config, function_name(tasks.evaluate), payload)


def _tolerance(spec: BundleSpec) -> str:
    """The deployment tolerance ``spec`` is generated for: its own when it names one (the
    tolerance experiment's :class:`~misentry.bench.experiments.tolerance.ToleranceBundle`),
    else ``exact`` (the benchmark's bundles serve the float32 stack they were made on)."""
    tolerance: str = getattr(spec, "tolerance", "exact")
    return tolerance


def _held(method: str) -> bool:
    """Whether an output band holds ``method``'s bundles: every method but MiSentry's."""
    from misentry.fingerprint.methods.misentry import Profile

    return Profile.of_method(method) is None


def zoo_names(spec: BundleSpec) -> list[str]:
    """The zoo models (:func:`~misentry.fingerprint.methods.misentry.zoo.zoo_name`) a bundle's
    generator builds: MiSentry's meta-learning and screening zoos; none for the other methods.
    The method's parameters are checked here, before any work
    (:func:`~misentry.fingerprint.service.build_generator`)."""
    from misentry.fingerprint.methods.misentry import Misentry
    from misentry.fingerprint.methods.misentry.zoo import zoo_name
    from misentry.fingerprint.service import build_generator

    generator = build_generator(spec.method, spec.params)
    if not isinstance(generator, Misentry):
        return []
    p = generator.params
    replicates = p.zoo_replicates + (p.screening_replicates if p.screening else 0)
    return [zoo_name(member, r) for member in p.members for r in range(replicates)]
