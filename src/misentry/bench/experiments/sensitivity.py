"""The sensitivity experiment (the founding paper's Figure 6): detection against the number of
training steps of a tampering that starts from the untampered target.

One job per swept variant and instance: the tampering's trajectory, cut at each step count
(:mod:`misentry.bench.experiments.sensitivity_trajectory`), and every main bundle counted on the
model at each cut.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from misentry.bench.experiments.base import (
    EXPERIMENT_NS,
    Built,
    Experiment,
    Measured,
    Setup,
    mean_of,
    outputs_of,
)
from misentry.bench.experiments.sensitivity_trajectory import SENSITIVITY_VARIANTS
from misentry.bench.jobs.graph import Job, bundle_hash, function_name, path_text
from misentry.bench.jobs.task import Progress
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot
from misentry.bench.report.formatting import pct, text_of
from misentry.bench.report.points import (
    RATE_COLUMNS,
    Column,
    by_variant,
    curves_plot,
    ordered,
    points_of,
)
from misentry.bench.report.vocabulary import PLOT_NS
from misentry.bench.results import ResultRow, detection_rows


@dataclass(frozen=True)
class SensitivitySpec(Experiment):
    """The sensitivity experiment's settings.

    Attributes:
        variants: the tamperings swept.
        steps: per variant, the step counts; a variant not named takes
            :func:`misentry.bench.experiments.sensitivity_trajectory.default_steps`.
        instances: trajectories per variant (bench namespace, indices 0..instances-1).
    """

    variants: tuple[str, ...] = SENSITIVITY_VARIANTS
    steps: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    instances: int = 1

    name = "sensitivity"
    about = (
        "Detection rate as the tampering proceeds, after s training steps of the attack from "
        "the untampered model. A curve that rises at fewer steps detects smaller changes."
    )

    def planned_jobs(self, setup: Setup) -> int:
        return len(self.variants) * self.instances

    def jobs(self, built: Built) -> list[Job]:
        """One job per variant and instance, every main bundle counted at each step count."""
        out = []
        for variant in self.variants:
            steps = self.steps.get(variant) or self.default_steps(built, variant)
            for index in range(self.instances):
                config = {
                    "target_id": built.target_id,
                    "variant": variant,
                    "index": index,
                    "steps": list(steps),
                    "bundles": {m: bundle_hash(fps) for m, fps in built.main.items()},
                }
                payload = {
                    "variant": variant,
                    "index": index,
                    "steps": list(steps),
                    "target_path": str(built.target_path),
                    "bundles": {m: str(built.bundle_paths[("main", m)]) for m in built.main},
                }
                out.append(Job(self.name, config, function_name(sensitivity_job), payload))
        return out

    @staticmethod
    def default_steps(built: Built, variant: str) -> tuple[int, ...]:
        """The default grid of ``variant`` on the run's target."""
        from misentry.bench.experiments.sensitivity_trajectory import default_steps
        from misentry.bench.jobs.tasks import load_workspace

        payload = {"target_path": str(built.target_path), "root": path_text(built.root)}
        return tuple(default_steps(variant, load_workspace(payload)))

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per variant, step count, method and N_S of :data:`EXPERIMENT_NS`, the mean rate over
        the variant's trajectories (and their clean accuracy and attack success)."""
        grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for job, folder in outputs_of(measured, self.name):
            for point in json.loads((folder / "sensitivity.json").read_text())["points"]:
                grouped[(job.config["variant"], int(point["steps"]))].append(point)
        rows = []
        for (variant, steps), points in sorted(grouped.items()):
            extra = {
                "steps": steps,
                "clean_accuracy": mean_of(p["clean_accuracy"] for p in points),
                "attack_success": mean_of(p["attack_success"] for p in points),
            }
            for method, fps in measured.built.main.items():
                ds = {variant: [int(p["d"][method]) for p in points]}
                setting = f"steps={steps}"
                rows += detection_rows(
                    measured.dataset, method, len(fps), ds, EXPERIMENT_NS, self.name, extra, setting
                )
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """Per variant, a table and DR@5 vs training steps, one line per method."""
        return _sensitivity(rows, context)


def sensitivity_job(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """``variant`` (instance ``index``) trained for each of ``steps`` optimizer steps from the
    target at ``target_path``; d of each bundle of ``bundles`` (``{method: path}``) at each step
    count. Into ``folder/sensitivity.json``."""
    from misentry.bench.experiments.sensitivity_trajectory import tamper_at_steps_many
    from misentry.bench.jobs.tasks import load_workspace, write_json
    from misentry.bench.metrics import disagreements
    from misentry.fingerprint.bundle import load_bundle

    del progress
    workspace = load_workspace(payload)
    bundles = {method: load_bundle(path) for method, path in payload["bundles"].items()}
    results = tamper_at_steps_many(
        workspace, payload["variant"], payload["index"], payload["steps"]
    )
    points = []
    for result in results:
        d = {m: disagreements(result.model, fps.x, fps.labels) for m, fps in bundles.items()}
        points.append(
            {
                "steps": result.steps,
                "d": d,
                "n": {m: len(fps) for m, fps in bundles.items()},
                "clean_accuracy": result.clean_accuracy,
                "attack_success": result.attack_success,
            }
        )
    write_json(Path(payload["folder"]), "sensitivity.json", {"points": points})
    return {"points": len(points)}


def _sensitivity(rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
    points = ordered(points_of(rows), "steps")
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("steps", lambda p: Cell(text_of(p.extra.get("steps", p.setting)))),
        *RATE_COLUMNS,
        ("clean accuracy (%)", lambda p: Cell(pct(p.number("clean_accuracy")))),
        ("attack success (%)", lambda p: Cell(pct(p.number("attack_success")))),
    ]
    blocks: list[Block] = [by_variant(points, columns, "variant")]
    png = curves_plot(points, "steps", "training steps", context.colors, log_x=True)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} vs training steps of the tampering (log scale), one panel per "
            "variant, one line per method."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)
