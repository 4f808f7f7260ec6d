"""Named benchmark runs: which target, which fingerprint methods, which BIVBench variants.

A :class:`Preset` holds everything :func:`misentry.bench.runner.run_bench` needs besides the
output folder, each experiment's settings among them (the specs of
:mod:`misentry.bench.experiments`); the CLI (``misentry bench --preset NAME``) overrides single
fields. ``digits-smoke``
runs in well under a minute on a laptop CPU and is what the tests run; ``mnist5k`` is the
embedded benchmark; the ``*-paper`` presets read their dataset from a folder (``--data-dir``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from misentry.bench.experiments import EXPERIMENTS as KINDS
from misentry.bench.experiments import (
    NAMES,
    OPTIONAL,
    AblationSpec,
    Experiment,
    FrontierSpec,
    LeakageSpec,
    SensitivitySpec,
    ToleranceSpec,
)
from misentry.bench.experiments.base import Setup
from misentry.bench.jobs.tasks import BANDS
from misentry.data import get_dataset
from misentry.fingerprint.registry import METHODS
from misentry.models import TargetConfig
from misentry.models.target import TARGET_RECIPES
from misentry.models.train import TrainConfig
from misentry.tamper.registry import select

__all__ = [
    "CHEAP_ZOO",
    "COLOUR_METHODS",
    "DEMO_EXPERIMENTS",
    "DEMO_INSTANCES",
    "EXPERIMENTS",
    "OPTIONAL_EXPERIMENTS",
    "PRESETS",
    "AblationSpec",
    "FrontierSpec",
    "LeakageSpec",
    "Preset",
    "SensitivitySpec",
    "ToleranceSpec",
    "get_preset",
]

EXPERIMENTS = NAMES
"""The benchmark's experiments, in report order. ``detection``, ``covertness`` and ``cost`` come
from the main bundles and always run; the others add jobs of their own and can be left out."""

OPTIONAL_EXPERIMENTS = OPTIONAL
"""The experiments a preset may leave out."""


@dataclass(frozen=True)
class Preset:
    """One benchmark run's recipe.

    Attributes:
        name: the preset's name (``--preset``).
        dataset: the registered dataset (see ``misentry data list``).
        arch: the target's architecture; None takes the dataset's target architecture.
        train: :class:`~misentry.models.train.TrainConfig` fields that override the dataset's
            target recipe (empty: the recipe as it is).
        methods: fingerprint methods of the registry, one bundle each.
        method_overrides: per method, parameter values that override its defaults.
        variants: ``"all"`` or the BIVBench variant slugs to build.
        instances: instances built per variant (bench namespace, indices 0..instances-1).
        n_fingerprints: fingerprints per bundle (N).
        ns: fingerprints drawn per check (N_S) shown in the detection table; results.json
            holds N_S 1..20 as well.
        data_label: how errors name the dataset (e.g. ``CIFAR-10``); empty: the dataset name.
        experiments: the optional experiments to run (of :data:`OPTIONAL_EXPERIMENTS`);
            detection, covertness and cost always run.
        leakage, sensitivity, ablation, frontier, tolerance: each optional experiment's
            settings (a field named after the experiment).
        band: ``none``, or ``covert``: every method but MiSentry keeps only its fingerprints
            inside the covert output band, to compare methods at equal covertness (see
            :func:`misentry.bench.jobs.tasks.hold_to_covert_band`).
        target: None (train the target of :attr:`target_config`), or the folder of a target
            record that exists (``misentry bench --target``, see
            :func:`misentry.bench.target.target_preset`): nothing is trained, and a variant
            that cannot be built from it is skipped with the reason.
    """

    name: str
    dataset: str
    arch: str | None = None
    train: Mapping[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = tuple(METHODS)
    method_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    variants: str | tuple[str, ...] = "all"
    instances: int = 10
    n_fingerprints: int = 100
    ns: tuple[int, ...] = (1, 5)
    data_label: str = ""
    experiments: tuple[str, ...] = OPTIONAL_EXPERIMENTS
    leakage: LeakageSpec = field(default_factory=LeakageSpec)
    sensitivity: SensitivitySpec = field(default_factory=SensitivitySpec)
    ablation: AblationSpec = field(default_factory=AblationSpec)
    frontier: FrontierSpec = field(default_factory=FrontierSpec)
    tolerance: ToleranceSpec = field(default_factory=ToleranceSpec)
    band: str = "none"
    target: str | None = None

    def __post_init__(self) -> None:
        problems = []
        unknown_experiments = [e for e in self.experiments if e not in OPTIONAL_EXPERIMENTS]
        if unknown_experiments:
            problems.append(
                f"unknown experiments {unknown_experiments}; optional experiments: "
                f"{', '.join(OPTIONAL_EXPERIMENTS)}"
            )
        for spec in self.specs:
            problems += spec.problems(self.n_fingerprints)
        if self.band not in BANDS:
            problems.append(f"unknown band {self.band!r}; bands: {', '.join(BANDS)}")
        if self.instances < 1 or self.n_fingerprints < 1:
            problems.append("instances and n_fingerprints must be at least 1")
        if not self.ns or any(ns < 1 or ns > self.n_fingerprints for ns in self.ns):
            problems.append(f"every N_S in {self.ns} must lie in [1, n_fingerprints]")
        if not self.methods:
            problems.append("give at least one method")
        unknown = [m for m in (*self.methods, *self.method_overrides) if m not in METHODS]
        if unknown:
            problems.append(f"unknown methods {unknown}; methods: {', '.join(METHODS)}")
        if problems:
            raise ValueError(f"preset {self.name}: {'; '.join(problems)}")

    @property
    def specs(self) -> tuple[Experiment, ...]:
        """The experiments this preset runs, in report order, each with its settings (the field
        named after it; the experiments without settings, a default instance)."""
        specs = []
        for kind in KINDS:
            if kind.optional and kind.name not in self.experiments:
                continue
            spec = getattr(self, kind.name, None)
            specs.append(spec if isinstance(spec, kind) else kind())
        return tuple(specs)

    @property
    def setup(self) -> Setup:
        """What the experiments read of the preset (its variant slugs resolved: a KeyError names
        an unknown one)."""
        return Setup(
            dataset=self.dataset,
            methods=self.methods,
            method_overrides=self.method_overrides,
            variants=tuple(v.slug for v in select(self.variant_spec)),
            instances=self.instances,
            n_fingerprints=self.n_fingerprints,
            ns=self.ns,
        )

    @property
    def target_config(self) -> TargetConfig:
        """The target to train: the dataset's recipe with :attr:`train` applied (seeds 0)."""
        recipe = TARGET_RECIPES.get(self.dataset, TrainConfig())
        return TargetConfig(
            dataset=self.dataset, arch=self.arch, train=replace(recipe, **self.train)
        )

    @property
    def variant_spec(self) -> str:
        """:attr:`variants` as :func:`misentry.tamper.registry.select` takes it."""
        return self.variants if isinstance(self.variants, str) else ",".join(self.variants)

    def check_data_dir(self, root: Path | str | None) -> None:
        """Fail with what to pass when the dataset is read from a folder and none is given."""
        info = get_dataset(self.dataset)
        if info.needs_root and root is None:
            label = self.data_label or self.dataset
            raise ValueError(
                f"preset {self.name} reads {label} from --data-dir; none given. "
                f"Pass --data-dir DIR with this layout:\n{info.layout}"
            )


CHEAP_ZOO = {"steps": 5, "refine_rounds": 10, "zoo": ("ft_last:1e-4x1",), "pool_factor": 2}
"""MiSentry settings that run in seconds on digits (the quality tests use the real ones)."""

COLOUR_METHODS = tuple(m for m in METHODS if m != "ssf_bo")
"""Every method but SSF-BO, whose autoencoder takes 1-channel images only (as in its paper)."""

DEMO_INSTANCES = 3
"""Instances per variant of ``mnist5k-demo`` (what ``misentry demo`` runs: its benchmark took
901 s on 2 cores)."""

DEMO_EXPERIMENTS = tuple(e for e in OPTIONAL_EXPERIMENTS if e != "tolerance")
"""The optional experiments of ``mnist5k-demo``: all but the tolerance sweep (four more
MiSentry bundles and the benign matrix on every bundle, time the demo does not spend)."""

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="digits-smoke",
            dataset="digits",
            train={"epochs": 3, "batch_size": 16, "augment_shift": 0},
            methods=("natural", "noise", "misentry"),
            method_overrides={"misentry": CHEAP_ZOO},
            variants=("ft_last_lr1e-3", "pruning", "identity"),
            instances=1,
            n_fingerprints=20,
            ns=(1, 5),
            leakage=LeakageSpec(attacks=("adaptive_ft_last",), n_leaked=(0, 5), instances=1),
            sensitivity=SensitivitySpec(
                variants=("ft_last_lr1e-5",), steps={"ft_last_lr1e-5": (2, 8)}
            ),
            ablation=AblationSpec(
                configs=(("default", {}), ("no meta-learning", {"meta_learning": False})),
                n_fingerprints=10,
            ),
            frontier=FrontierSpec(covertness=(0.5,), variants=("ft_last_lr1e-3", "pruning")),
            tolerance=ToleranceSpec(tolerances=("exact", "tf32", "bf16")),
        ),
        Preset(name="mnist5k", dataset="mnist5k", arch="lenet5"),
        Preset(
            name="mnist5k-demo",
            dataset="mnist5k",
            arch="lenet5",
            instances=DEMO_INSTANCES,
            experiments=DEMO_EXPERIMENTS,
            leakage=LeakageSpec(instances=1),
            ablation=AblationSpec(n_fingerprints=20),
            frontier=FrontierSpec(n_fingerprints=50),
        ),
        Preset(
            name="mnist5k-color",
            dataset="mnist5k-color",
            arch="resnet20",
            methods=COLOUR_METHODS,
            data_label="mnist5k-color (coloured digits, 3x32x32)",
        ),
        Preset(
            name="cifar10-paper", dataset="cifar10", methods=COLOUR_METHODS, data_label="CIFAR-10"
        ),
        Preset(name="gtsrb-paper", dataset="gtsrb", methods=COLOUR_METHODS, data_label="GTSRB"),
        Preset(
            name="imagenet-paper",
            dataset="imagenet",
            methods=COLOUR_METHODS,
            data_label="ImageNet",
        ),
    )
}
"""The named presets, by name."""


def get_preset(name: str) -> Preset:
    """The preset ``name``, or a KeyError that lists the presets."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None
