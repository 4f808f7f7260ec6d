"""The benchmark's experiments, one module each: its settings (a frozen dataclass that the preset
holds), the bundles, instances and jobs it adds to a run, its result rows and its report section
(see :class:`~misentry.bench.experiments.base.Experiment`). The runner, the presets and the
report iterate over :data:`EXPERIMENTS`.

Each experiment's science sits beside it: :mod:`.leakage_attacks` (the adaptive attacks),
:mod:`.sensitivity_trajectory` (tampering cut at exact step counts),
:mod:`.covertness_measure` (output and input covertness, the example grid) and
:mod:`.tolerance_section` (the tolerance experiment's report section).
"""

from misentry.bench.experiments.ablation import AblationSpec
from misentry.bench.experiments.base import Experiment
from misentry.bench.experiments.cost import CostSpec
from misentry.bench.experiments.covertness import CovertnessSpec
from misentry.bench.experiments.detection import DetectionSpec
from misentry.bench.experiments.frontier import FrontierSpec
from misentry.bench.experiments.leakage import LeakageSpec
from misentry.bench.experiments.sensitivity import SensitivitySpec
from misentry.bench.experiments.tolerance import ToleranceSpec

__all__ = [
    "EXPERIMENTS",
    "NAMES",
    "OPTIONAL",
    "AblationSpec",
    "CostSpec",
    "CovertnessSpec",
    "DetectionSpec",
    "Experiment",
    "FrontierSpec",
    "LeakageSpec",
    "SensitivitySpec",
    "ToleranceSpec",
]

EXPERIMENTS: tuple[type[Experiment], ...] = (
    DetectionSpec,
    LeakageSpec,
    CovertnessSpec,
    SensitivitySpec,
    AblationSpec,
    CostSpec,
    FrontierSpec,
    ToleranceSpec,
)
"""The benchmark's experiments, in report order: the order of their rows in ``results.json``, of
their own bundles and of their own jobs in a run."""

NAMES = tuple(experiment.name for experiment in EXPERIMENTS)
"""The experiments' names (their rows' ``experiment``), in report order."""

OPTIONAL = tuple(experiment.name for experiment in EXPERIMENTS if experiment.optional)
"""The experiments that add jobs of their own and can be left out of a run; the others
(detection, covertness, cost) come from the main bundles and always run."""
