"""The price of robustness: strict MiSentry generated at each deployment tolerance
(:mod:`misentry.fingerprint.tolerance`), its detection of every variant beside the other
methods', and the false alarms of every bundle over the benign re-deployment matrix
(:mod:`misentry.models.stacks`).

Its bundles: one strict MiSentry bundle per tolerance other than ``exact`` (the main bundle's
n, seed, parameters and zoo models; the ``exact`` one IS the main ``misentry`` bundle), each
evaluated on the detection table's instances as the main bundles are. Its jobs: one per bundle,
the main bundles' and its own, that serves the untampered target's fingerprints on every stack
of the matrix and counts, per level, the fingerprints whose label changes on some stack of that
level or a stricter one. Its report section lives in :mod:`.tolerance_section`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.bench.experiments.base import (
    EXPERIMENT_NS,
    MAIN,
    Built,
    BundleSpec,
    Experiment,
    Measured,
    Setup,
    outputs_of,
)
from misentry.bench.experiments.tolerance_section import STRICT, tolerance_section
from misentry.bench.jobs.graph import Job, bundle_hash, function_name
from misentry.bench.jobs.task import Progress
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block
from misentry.bench.results import ResultRow, detection_rows
from misentry.fingerprint.bundle import FingerprintSet
from misentry.models.stacks import ALL_STACKS, LEVELS

if TYPE_CHECKING:
    from torch import nn

EXACT = LEVELS[0]
"""The tolerance of every main bundle (the benchmark's bundles are generated for the exact
float32 stack)."""

FILE = "false_alarms.json"
"""What a false-alarm job writes into its folder."""


@dataclass(frozen=True)
class ToleranceBundle(BundleSpec):
    """A bundle generated for a deployment ``tolerance`` (a level of
    :data:`~misentry.models.stacks.LEVELS`); the runner puts a tolerance other than ``exact``
    into the bundle job's config and payload, so an ``exact`` one hashes as a main bundle."""

    tolerance: str = EXACT


@dataclass(frozen=True)
class BundleAt:
    """A bundle of the table: its method, the tolerance it was generated for, and where the run
    holds it (``group``, ``label``)."""

    method: str
    tolerance: str
    group: str
    label: str


@dataclass(frozen=True)
class ToleranceSpec(Experiment):
    """The tolerance experiment's settings.

    Attributes:
        tolerances: the deployment tolerances strict MiSentry is generated at (levels of
            :data:`~misentry.models.stacks.LEVELS`). ``exact`` is the main ``misentry`` bundle
            (generated here only when the run has no main ``misentry`` bundle).
    """

    tolerances: tuple[str, ...] = LEVELS

    name = "tolerance"
    about = (
        "What each degree of serving freedom costs in sensitivity: strict MiSentry generated "
        "for each deployment tolerance (how differently the owner may serve the same weights "
        "without a false alarm), its detection of every variant beside the other methods', and "
        "how many fingerprints of each bundle the untampered model labels differently when "
        "served on the benign stacks of each level (false alarms)."
    )

    def problems(self, n_fingerprints: int) -> list[str]:
        del n_fingerprints
        unknown = [t for t in self.tolerances if t not in LEVELS]
        if unknown:
            return [f"unknown tolerances {unknown}; tolerances: {', '.join(LEVELS)}"]
        if not self.tolerances:
            return ["give at least one tolerance (of " + ", ".join(LEVELS) + ")"]
        return []

    def bundles(self, setup: Setup) -> list[BundleSpec]:
        """One strict MiSentry bundle per tolerance, the preset's MiSentry overrides and N kept;
        ``exact`` only when the run has no main ``misentry`` bundle (else it is that one)."""
        params = dict(setup.method_overrides.get(STRICT, {}))
        return [
            ToleranceBundle(self.name, t, STRICT, params, setup.n_fingerprints, tolerance=t)
            for t in self.own(setup)
        ]

    def own(self, setup: Setup) -> list[str]:
        """The tolerances it generates bundles for, strictest first."""
        wanted = set(self.tolerances)
        if STRICT in setup.methods:
            wanted.discard(EXACT)
        return [t for t in LEVELS if t in wanted]

    def table(self, setup: Setup) -> list[BundleAt]:
        """The table's bundles: strict MiSentry per tolerance (strictest first), then every
        other main bundle (at ``exact``)."""
        mine = [BundleAt(STRICT, t, self.name, t) for t in self.own(setup)]
        main = [BundleAt(m, EXACT, MAIN, m) for m in setup.methods]
        strict = [b for b in main if b.method == STRICT]
        return strict + mine + [b for b in main if b.method != STRICT]

    def planned_jobs(self, setup: Setup) -> int:
        return len(self.table(setup))

    def jobs(self, built: Built) -> list[Job]:
        """One false-alarm job per bundle of the table (the same bundle twice runs once)."""
        stacks = [[stack.name, stack.level, stack.draws] for stack in ALL_STACKS]
        out = []
        for at in self.table(built.setup):
            fps = built.bundles[at.group][at.label]
            config = {"target_id": built.target_id, "bundle": bundle_hash(fps), "stacks": stacks}
            payload = {
                "target_path": str(built.target_path),
                "bundle_path": str(built.bundle_paths[(at.group, at.label)]),
                "group": at.group,
                "label": at.label,
            }
            out.append(Job(self.name, config, function_name(false_alarm_job), payload))
        return out

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per bundle of the table, variant and N_S of :data:`EXPERIMENT_NS`, the mean exact
        rate (as the detection table counts it), with the bundle's false alarms per level."""
        alarms: dict[tuple[str, str], dict[str, int]] = {}
        for job, folder in outputs_of(measured, self.name):
            levels = json.loads((folder / FILE).read_text())["levels"]
            alarms[(job.payload["group"], job.payload["label"])] = levels
        rows: list[ResultRow] = []
        for at in self.table(measured.built.setup):
            fps = measured.built.bundles[at.group][at.label]
            counts = alarms[(at.group, at.label)]
            extra: dict[str, Any] = {"tolerance": at.tolerance}
            extra.update({f"false_alarms_{level}": counts[level] for level in LEVELS})
            extra["false_alarms_own"] = counts[at.tolerance]
            rows += detection_rows(
                measured.dataset,
                at.method,
                len(fps),
                measured.evaluated[(at.group, at.label)],
                EXPERIMENT_NS,
                self.name,
                extra,
                f"tolerance={at.tolerance}",
            )
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """The price table (one line per bundle), detection per variant, and the plot."""
        return tolerance_section(rows, context)


def label_changes(model: nn.Module, fps: FingerprintSet) -> dict[str, Any]:
    """Every stack of the matrix on ``fps`` served by ``model``: per stack, the fingerprints
    whose label changed (a tie counts, as in :func:`~misentry.fingerprint.tolerance.stability`:
    a server may break it either way) or why the stack could not run, and per level the
    fingerprints whose label changed on some stack of that level or a stricter one (so the
    counts never fall)."""
    from misentry.fingerprint.tolerance import Tolerance, run_stacks

    runs = run_stacks(model, fps.x, fps.labels, Tolerance.BF16)
    changed: set[int] = set()
    levels: dict[str, int] = {}
    stacks = []
    for level in LEVELS:
        for run in (r for r in runs if r.level == level):
            flipped = (run.margins <= 0).any(0) if run.margins.numel() else None
            indices = [] if flipped is None else flipped.nonzero().flatten().tolist()
            changed.update(indices)
            entry = {"stack": run.stack, "level": level, "changed": indices}
            stacks.append({**entry, "unavailable": run.unavailable})
        levels[level] = len(changed)
    return {"n": len(fps), "levels": levels, "stacks": stacks}


def false_alarm_job(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The fingerprints of the bundle at ``bundle_path`` served by the untampered target at
    ``target_path`` on every stack of the benign matrix (:func:`label_changes`), into
    ``folder/false_alarms.json``."""
    from misentry.bench.jobs.tasks import write_json
    from misentry.fingerprint.bundle import load_bundle
    from misentry.models import load_record, model_from_record

    del progress
    model = model_from_record(load_record(payload["target_path"]))
    document = label_changes(model, load_bundle(payload["bundle_path"]))
    write_json(Path(payload["folder"]), FILE, document)
    return {"levels": document["levels"]}
