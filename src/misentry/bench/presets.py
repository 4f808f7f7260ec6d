"""Named benchmark runs: which target, which fingerprint methods, which BIVBench variants.

A :class:`Preset` holds everything :func:`misentry.bench.runner.run_bench` needs besides the
output folder; the CLI (``misentry bench --preset NAME``) overrides single fields. ``digits-smoke``
runs in well under a minute on a laptop CPU and is what the tests run; ``mnist5k`` is the
embedded benchmark; the ``*-paper`` presets read their dataset from a folder (``--data-dir``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from misentry.data import get_dataset
from misentry.fingerprint.registry import METHODS
from misentry.models import TargetConfig
from misentry.models.target import TARGET_RECIPES
from misentry.models.train import TrainConfig

EXPERIMENTS = ("detection", "leakage", "covertness", "sensitivity", "ablation", "cost", "frontier")
"""The benchmark's experiments. ``detection``, ``covertness`` and ``cost`` come from the main
bundles and always run; the others add jobs of their own and can be left out."""

OPTIONAL_EXPERIMENTS = ("leakage", "sensitivity", "ablation", "frontier")

SUBTLE_VARIANTS = (
    "ft_last_lr1e-5",
    "ft_last_lr1e-4",
    "ft_all_lr1e-5",
    "ft_all_lr1e-4",
    "pruning",
    "quantization",
    "unlearning",
)
"""The variants the frontier measures detection on: those natural images miss on mnist5k
(DR@5 of natural fingerprints 0.000 on each, 10 instances per variant)."""

ABLATIONS: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("default", {}),
    ("zoo: ft_last only", {"zoo": ("ft_last:1e-4x4",)}),
    ("zoo: ft_all only", {"zoo": ("ft_all:1e-5x4", "ft_all:1e-4x4")}),
    ("zoo: retrain only", {"zoo": ("retrain_last",)}),
    ("no meta-learning", {"meta_learning": False}),
    ("no entropy band", {"band": False}),
    ("no screening", {"screening": False}),
    ("L2 (eps 2.0)", {"norm": "l2", "eps": 2.0}),
)
"""MiSentry configurations of the ablation (the paper's Table 2), as overrides of the strict
profile; ``default`` is the profile itself. The default zoo mixes all three kinds."""


@dataclass(frozen=True)
class LeakageSpec:
    """The leakage experiment (the paper's Figure 4).

    Attributes:
        attacks: adaptive attacks (see :data:`misentry.bench.experiments.leakage.ATTACKS`).
        n_leaked: fingerprints the attacker holds (each below the bundle's N).
        instances: base instances per attack (bench namespace, indices 0..instances-1).
        methods: the methods attacked; empty: every method of the preset.
    """

    attacks: tuple[str, ...] = ("adaptive_backdoor", "adaptive_ft_last")
    n_leaked: tuple[int, ...] = (0, 10, 25, 50)
    instances: int = 2
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class SensitivitySpec:
    """The sensitivity experiment (the paper's Figure 6): detection against the tampering's
    training steps.

    Attributes:
        variants: the tamperings swept.
        steps: per variant, the step counts; a variant not named takes
            :func:`misentry.bench.experiments.sensitivity.default_steps`.
        instances: trajectories per variant (bench namespace, indices 0..instances-1).
    """

    variants: tuple[str, ...] = ("ft_last_lr1e-5", "targeted", "backdoor")
    steps: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    instances: int = 1


@dataclass(frozen=True)
class AblationSpec:
    """The ablation (the paper's Table 2): one MiSentry bundle per configuration, evaluated on
    the detection table's instances.

    Attributes:
        configs: (name, overrides of the strict profile) pairs.
        n_fingerprints: fingerprints per ablation bundle (fewer than the main bundles: eight
            configurations of the costliest generator).
    """

    configs: tuple[tuple[str, Mapping[str, Any]], ...] = ABLATIONS
    n_fingerprints: int = 30


@dataclass(frozen=True)
class FrontierSpec:
    """The covertness/sensitivity frontier: MiSentry's ``covertness`` swept between the strict
    profile (0) and the covert one, each point's confidence-detector AUC against its DR@5 on
    the subtle variants, beside every other method's point.

    Attributes:
        covertness: the sweep's inner points (the strict and covert profiles are the main
            ``misentry`` and ``misentry-covert`` bundles). Denser near 1: on mnist5k the
            confidence detector's AUC stays at 0.996 or above up to 0.75 and falls from there
            (0.93 at 0.9, 0.89 at 0.95, 0.80 at 0.98, 0.70 for the covert profile).
        variants: the variants detection is measured on (those the preset builds).
        n_fingerprints: fingerprints per sweep bundle; None: the preset's.
    """

    covertness: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 0.95)
    variants: tuple[str, ...] = SUBTLE_VARIANTS
    n_fingerprints: int | None = None


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
        leakage, sensitivity, ablation, frontier: each optional experiment's settings.
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
    leakage: LeakageSpec = LeakageSpec()
    sensitivity: SensitivitySpec = SensitivitySpec()
    ablation: AblationSpec = AblationSpec()
    frontier: FrontierSpec = FrontierSpec()

    def __post_init__(self) -> None:
        problems = []
        unknown_experiments = [e for e in self.experiments if e not in OPTIONAL_EXPERIMENTS]
        if unknown_experiments:
            problems.append(
                f"unknown experiments {unknown_experiments}; optional experiments: "
                f"{', '.join(OPTIONAL_EXPERIMENTS)}"
            )
        if "leakage" in self.experiments and any(
            k < 0 or k >= self.n_fingerprints for k in self.leakage.n_leaked
        ):
            problems.append(
                f"every n_leaked in {self.leakage.n_leaked} must lie in [0, n_fingerprints)"
            )
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
"""Instances per variant of ``mnist5k-demo`` (what ``misentry demo`` runs in under 15 minutes
on 2 cores)."""

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
        ),
        Preset(name="mnist5k", dataset="mnist5k", arch="lenet5"),
        Preset(
            name="mnist5k-demo",
            dataset="mnist5k",
            arch="lenet5",
            instances=DEMO_INSTANCES,
            leakage=LeakageSpec(instances=1),
            ablation=AblationSpec(n_fingerprints=20),
            frontier=FrontierSpec(n_fingerprints=50),
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
