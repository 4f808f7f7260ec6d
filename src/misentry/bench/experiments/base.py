"""What an experiment is, and what the runner hands it at each step of a run.

An experiment is a frozen dataclass of its settings (the preset's ``leakage``, ``ablation``, ...;
none for the experiments that only read the main bundles) that subclasses :class:`Experiment`
and overrides what it needs of these steps, in run order:

1. :meth:`~Experiment.instance_keys` and :meth:`~Experiment.bundles`: the BIVBench instances and
   the fingerprint bundles it needs besides the detection table's (given a :class:`Setup`);
2. :meth:`~Experiment.evaluated_on`: the built instances its own bundles are evaluated on;
3. :meth:`~Experiment.jobs`: its own jobs, in the measurement wave (given the :class:`Built`
   instances and bundles); :meth:`~Experiment.planned_jobs` counts them beforehand;
4. :meth:`~Experiment.rows`: its result rows (given the :class:`Measured` run), and
   :meth:`~Experiment.write`: any file of its own in the results folder;
5. :meth:`~Experiment.section`: its section of the report, from its rows alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from misentry.bench.jobs.graph import Job
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block
from misentry.bench.results import ResultRow
from misentry.fingerprint.bundle import FingerprintSet

if TYPE_CHECKING:
    from torch import nn

    from misentry.bench.experiments.covertness_measure import Covertness
    from misentry.data import Pools

MAIN = "main"
"""The bundle group of the preset's methods (one bundle each); every other group is named after
the experiment that asked for its bundles."""

RESULTS_NS = tuple(range(1, 21))
"""N_S values of the detection rows in results.json (those above N are left out)."""

EXPERIMENT_NS = (1, 5)
"""N_S values of the leakage, sensitivity, ablation and frontier rows."""


@dataclass(frozen=True)
class Setup:
    """What the experiments read of a run's preset.

    Attributes:
        dataset: the registered dataset.
        methods: the main bundles' methods.
        method_overrides: per method, its parameter overrides.
        variants: the detection table's variant slugs.
        instances: instances per variant of the detection table.
        n_fingerprints: fingerprints per main bundle.
        ns: the N_S values the table shows.
    """

    dataset: str
    methods: tuple[str, ...]
    method_overrides: Mapping[str, Mapping[str, Any]]
    variants: tuple[str, ...]
    instances: int
    n_fingerprints: int
    ns: tuple[int, ...]


@dataclass(frozen=True)
class BundleSpec:
    """A bundle to generate: ``label`` names it in results (the method for main bundles);
    ``group`` is :data:`MAIN` or the experiment that asked for it."""

    group: str
    label: str
    method: str
    params: Mapping[str, Any]
    n: int


@dataclass(frozen=True)
class BuiltInstance:
    """A BIVBench instance built by the run: its record and what its record says."""

    variant: str
    index: int
    path: Path
    record_id: str
    observable: bool
    build_seconds: float

    def payload(self) -> dict[str, Any]:
        return {"variant": self.variant, "index": self.index, "path": str(self.path)}


@dataclass(frozen=True)
class Built:
    """A run after its target, instances and bundles: what the measurement jobs are made of.

    Attributes:
        setup: the preset's settings.
        seed: the fingerprint generation seed.
        root: the dataset folder (datasets read from disk).
        target_path: the target's record folder.
        target_id: its record id.
        instances: every instance built, the experiments' own included.
        bundles: group -> label -> bundle.
        bundle_paths: (group, label) -> bundle folder.
        skipped: the variants that could not be built from a given target (``--target``),
            each with the builder's reason; none in a preset's run.
    """

    setup: Setup
    seed: int
    root: Path | None
    target_path: Path
    target_id: str
    instances: tuple[BuiltInstance, ...]
    bundles: Mapping[str, Mapping[str, FingerprintSet]]
    bundle_paths: Mapping[tuple[str, str], Path]
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def main(self) -> Mapping[str, FingerprintSet]:
        """The main bundles, by method."""
        return self.bundles[MAIN]

    @property
    def detection_instances(self) -> list[BuiltInstance]:
        """The detection table's instances: the preset's variants, observable ones and the
        identity control (the benchmark holds observable instances only)."""
        wanted = set(self.setup.variants)
        return [
            i
            for i in self.instances
            if i.variant in wanted
            and i.index < self.setup.instances
            and (i.observable or i.variant == "identity")
        ]


class Measured:
    """A run after its measurement jobs: what the rows are made of.

    Attributes:
        built: the run's instances and bundles.
        evaluated: (group, label) -> variant -> d of each instance the bundle was evaluated on.
        outputs: experiment name -> its jobs with their folders, in the order it planned them.
        target: the untampered model.
        pools: the target's pools.
    """

    def __init__(
        self,
        built: Built,
        evaluated: Mapping[tuple[str, str], Mapping[str, list[int]]],
        outputs: Mapping[str, Sequence[tuple[Job, Path]]],
        target: nn.Module,
        pools: Pools,
    ) -> None:
        self.built, self.evaluated, self.outputs = built, evaluated, outputs
        self.target, self.pools = target, pools

    @property
    def dataset(self) -> str:
        return self.built.setup.dataset

    @functools.cached_property
    def covertness(self) -> dict[str, Covertness]:
        """Each main bundle's covertness against the ``test`` pool, measured once."""
        return {label: self.measure(fps) for label, fps in self.built.main.items()}

    def measure(self, fps: FingerprintSet) -> Covertness:
        """The covertness of ``fps`` against the ``test`` pool (sources: the ``source`` pool)."""
        from misentry.bench.experiments.covertness_measure import covertness

        return covertness(self.target, fps, self.pools["test"].x, self.pools["source"].x)


class Experiment:
    """One experiment of the benchmark; see the module docstring. Subclasses set :attr:`name`
    (its rows' ``experiment``), :attr:`about` (what its report section opens with) and
    :attr:`optional` (False: it runs on every run)."""

    name: ClassVar[str]
    about: ClassVar[str]
    optional: ClassVar[bool] = True

    def problems(self, n_fingerprints: int) -> list[str]:
        """What is wrong with these settings for main bundles of ``n_fingerprints``."""
        del n_fingerprints
        return []

    def instance_keys(self, setup: Setup) -> list[tuple[str, int]]:
        """(variant, index) of the instances it needs besides the detection table's."""
        del setup
        return []

    def bundles(self, setup: Setup) -> list[BundleSpec]:
        """The bundles it needs besides the main ones (its group: its name)."""
        del setup
        return []

    def evaluated_on(self, built: Built) -> list[BuiltInstance]:
        """The instances its own bundles are evaluated on (default: the detection table's)."""
        return built.detection_instances

    def planned_jobs(self, setup: Setup) -> int:
        """How many jobs :meth:`jobs` will return."""
        del setup
        return 0

    def jobs(self, built: Built) -> list[Job]:
        """Its own jobs in the measurement wave."""
        del built
        return []

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Its result rows."""
        raise NotImplementedError

    def write(self, measured: Measured, folder: Path) -> None:
        """Write its own files into the results ``folder`` (before the report is built)."""
        del measured, folder

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """Its report section's blocks, from its rows of one dataset."""
        raise NotImplementedError


def outputs_of(measured: Measured, name: str) -> Sequence[tuple[Job, Path]]:
    """The jobs of experiment ``name`` with their folders (none when it planned none)."""
    return measured.outputs.get(name, ())


def mean_of(values: Iterable[Any]) -> float | None:
    """The mean of the values that are not None; None when none is."""
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None
