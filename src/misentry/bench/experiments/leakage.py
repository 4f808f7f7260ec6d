"""The leakage experiment (the founding paper's Figure 4): an adaptive attacker who holds
``n_leaked`` of a bundle's fingerprints tampers while keeping their labels; detection is counted
on the fingerprints it did not see.

One job per attacked method, adaptive attack (:data:`ATTACKS`) and base instance; the attacks
themselves are :mod:`misentry.bench.experiments.leakage_attacks`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
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
from misentry.bench.experiments.leakage_attacks import ATTACKS
from misentry.bench.jobs.graph import Job, bundle_hash, function_name
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
class LeakageSpec(Experiment):
    """The leakage experiment's settings.

    Attributes:
        attacks: adaptive attacks (see :data:`ATTACKS`).
        n_leaked: fingerprints the attacker holds (each below the bundle's N).
        instances: base instances per attack (bench namespace, indices 0..instances-1).
        methods: the methods attacked; empty: every method of the preset.
    """

    attacks: tuple[str, ...] = ("adaptive_backdoor", "adaptive_ft_last")
    n_leaked: tuple[int, ...] = (0, 10, 25, 50)
    instances: int = 2
    methods: tuple[str, ...] = ()

    name = "leakage"
    about = (
        "An adaptive attacker holds n_leaked of the fingerprints and tampers while keeping their "
        "labels; detection is measured on the fingerprints it did not see (unleaked N). A flat "
        "line means leaking fingerprints does not help the attacker; 'leaked kept' is the share "
        "of leaked fingerprints whose labels the attack preserved."
    )

    def problems(self, n_fingerprints: int) -> list[str]:
        if any(k < 0 or k >= n_fingerprints for k in self.n_leaked):
            return [f"every n_leaked in {self.n_leaked} must lie in [0, n_fingerprints)"]
        return []

    def instance_keys(self, setup: Setup) -> list[tuple[str, int]]:
        """Each attack's base instances (of the variant it starts from)."""
        return [(ATTACKS[a], i) for a in self.attacks for i in range(self.instances)]

    def attacked(self, setup: Setup) -> tuple[str, ...]:
        """The methods attacked."""
        return self.methods or setup.methods

    def planned_jobs(self, setup: Setup) -> int:
        return len(self.attacked(setup)) * len(self.attacks) * self.instances

    def jobs(self, built: Built) -> list[Job]:
        """One job per attacked method, attack and base instance."""
        by_key = {(i.variant, i.index): i for i in built.instances}
        out = []
        for method in self.attacked(built.setup):
            fps = built.main[method]
            for attack in self.attacks:
                for index in range(self.instances):
                    base = by_key[(ATTACKS[attack], index)]
                    config = {
                        "attack": attack,
                        "bundle": bundle_hash(fps),
                        "instance": base.record_id,
                        "n_leaked": list(self.n_leaked),
                        "seed": built.seed,
                    }
                    payload = {
                        **config,
                        "method": method,
                        "index": index,
                        "target_path": str(built.target_path),
                        "instance_path": str(base.path),
                        "bundle_path": str(built.bundle_paths[("main", method)]),
                    }
                    out.append(Job(self.name, config, function_name(leakage_job), payload))
        return out

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per method, attack and n_leaked, detection on the unleaked fingerprints (means over
        the base instances of the attack's outcome)."""
        grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        for job, folder in outputs_of(measured, self.name):
            method, attack = job.payload["method"], job.config["attack"]
            for point in json.loads((folder / "leakage.json").read_text())["points"]:
                grouped[(method, attack, int(point["n_leaked"]))].append(point)
        rows = []
        for (method, attack, k), points in sorted(grouped.items()):
            n_unleaked = len(measured.built.main[method]) - k
            extra = {
                "n_leaked": k,
                "leaked_kept": mean_of(p["leaked_kept"] for p in points),
                "clean_accuracy": mean_of(p["clean_accuracy"] for p in points),
                "attack_success": mean_of(p["attack_success"] for p in points),
            }
            ds = {attack: [int(p["d"]) for p in points]}
            rows += detection_rows(
                measured.dataset,
                method,
                n_unleaked,
                ds,
                EXPERIMENT_NS,
                self.name,
                extra,
                f"n_leaked={k}",
            )
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        """Per attack, a table and DR@5 vs n_leaked, one line per method."""
        return _leakage(rows, context)


def leakage_job(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The adaptive attack ``attack`` on the instance at ``instance_path`` against the bundle at
    ``bundle_path``, for each ``n_leaked``: the attacker keeps the labels of a seeded random
    ``n_leaked`` of the fingerprints; d is counted on the others. Into ``folder/leakage.json``."""
    from misentry.bench.experiments.leakage_attacks import (
        adaptive_attack,
        leak_split,
        unleaked_disagreements,
    )
    from misentry.bench.jobs.tasks import load_workspace, write_json
    from misentry.fingerprint.bundle import load_bundle
    from misentry.models import load_record, model_from_record

    del progress
    workspace = load_workspace(payload)
    fps = load_bundle(payload["bundle_path"])
    tampered = model_from_record(load_record(payload["instance_path"]))
    points = []
    for n_leaked in payload["n_leaked"]:
        seed = payload["seed"] + 1000 * payload["index"] + n_leaked
        leaked, unleaked = leak_split(len(fps), n_leaked, seed)
        result = adaptive_attack(
            workspace, tampered, payload["attack"], fps.x[leaked], fps.labels[leaked], seed
        )
        points.append(
            {
                "n_leaked": n_leaked,
                "n_unleaked": len(unleaked),
                "d": unleaked_disagreements(result.model, fps, unleaked),
                "leaked_kept": result.leaked_kept,
                "clean_accuracy": result.clean_accuracy,
                "attack_success": result.attack_success,
                "steps": result.steps,
                "seconds": result.seconds,
            }
        )
    write_json(Path(payload["folder"]), "leakage.json", {"points": points})
    return {"points": len(points)}


def _leakage(rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
    points = ordered(points_of(rows), "n_leaked")
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("n_leaked", lambda p: Cell(text_of(p.extra.get("n_leaked", p.setting)))),
        ("unleaked N", lambda p: Cell(str(next(iter(p.rows.values())).n_fingerprints))),
        *RATE_COLUMNS,
        ("leaked kept (%)", lambda p: Cell(pct(p.number("leaked_kept")))),
    ]
    blocks: list[Block] = [by_variant(points, columns, "attack")]
    png = curves_plot(points, "n_leaked", "leaked fingerprints", context.colors, log_x=False)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} on the unleaked fingerprints vs the number leaked to the attacker, one "
            "panel per adaptive attack, one line per method."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)
