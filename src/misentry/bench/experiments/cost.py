"""The cost of the benchmark (the founding paper's Table 3): seconds (and forward and backward
passes) per fingerprint per method, and seconds per tampered instance per variant.

Its rows come from the main bundles' manifests (the zoo a bundle used counted in, also a zoo
built by jobs of its own) and from the detection instances' records.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from matplotlib.axes import Axes

from misentry.bench.experiments.base import Experiment, Measured
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import fixed, number, text_of
from misentry.bench.report.plotting import figure_png, log_x_axis, tex_safe
from misentry.bench.report.vocabulary import FAMILIES, variant_family
from misentry.bench.results import ResultRow, measurement_row
from misentry.fingerprint.bundle import FingerprintSet


@dataclass(frozen=True)
class CostSpec(Experiment):
    """The cost rows; no settings of their own, always measured."""

    name = "cost"
    about = (
        "Time to generate one fingerprint (and the forward and backward passes it took) per "
        "method, and time to build one tampered instance per variant, in seconds on this run's "
        "machine."
    )
    optional = False

    def rows(self, measured: Measured) -> list[ResultRow]:
        """One row per main bundle, then one per variant of the detection table."""
        rows = [
            generation_cost_row(measured.dataset, m, fps) for m, fps in measured.built.main.items()
        ]
        built = [(i.variant, i.build_seconds) for i in measured.built.detection_instances]
        return rows + tampering_cost_rows(measured.dataset, built)

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        del context
        return _cost(rows)


def generation_cost_row(dataset: str, method: str, fps: FingerprintSet) -> ResultRow:
    """A bundle's cost per fingerprint: seconds, forward and backward passes, its zoo included
    (also a zoo built by jobs of its own)."""
    m, n = fps.manifest, len(fps)
    forward = m.get("forward_passes", 0) + m.get("zoo_forward_passes", 0)
    backward = m.get("backward_passes", 0) + m.get("zoo_backward_passes", 0)
    seconds = m.get("generation_seconds", float("nan")) + m.get("zoo_prebuilt_seconds", 0.0)
    cost = {
        "seconds_per_fingerprint": seconds / n,
        "forward_per_fingerprint": forward / n,
        "backward_per_fingerprint": backward / n,
    }
    return measurement_row("cost", dataset, method, n, cost)


def tampering_cost_rows(dataset: str, built: Iterable[tuple[str, float]]) -> list[ResultRow]:
    """Per variant, the time to build its instances: ``built`` holds (variant, build seconds
    from the instance's record) pairs; NaN (not recorded) is left out."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for variant, value in built:
        if math.isfinite(value):
            seconds[variant].append(value)
    rows = []
    for variant, values in seconds.items():
        extra = {
            "build_seconds_mean": sum(values) / len(values),
            "build_seconds_max": max(values),
            "instances": len(values),
        }
        row = measurement_row("cost", dataset, "tampering", 1, extra, variant=variant)
        rows.append(replace(row, n_instances=len(values)))
    return rows


def _cost(rows: Sequence[ResultRow]) -> tuple[Block, ...]:
    generation = [r for r in rows if r.method != "tampering"]
    building = sorted(
        (r for r in rows if r.method == "tampering"),
        key=lambda r: FAMILIES.index(variant_family(r.variant)),
    )
    blocks: list[Block] = []
    if generation:
        keys = ("seconds_per_fingerprint", "forward_per_fingerprint", "backward_per_fingerprint")
        body = tuple(
            (Cell(r.method), *(Cell(fixed(r.extra.get(k), 3)) for k in keys)) for r in generation
        )
        header = ("method", "seconds", "forward passes", "backward passes")
        blocks += ["Fingerprint generation, per fingerprint.", Table(header, (("", body),))]
    if building:
        groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
        for r in building:
            groups[variant_family(r.variant)].append(
                (
                    Cell(r.variant),
                    Cell(text_of(r.extra.get("instances"))),
                    Cell(fixed(r.extra.get("build_seconds_mean"), 3)),
                    Cell(fixed(r.extra.get("build_seconds_max"), 3)),
                )
            )
        header = ("variant", "instances", "mean seconds", "max seconds")
        table = Table(header, tuple((f, tuple(g)) for f, g in groups.items()), "family")
        blocks += ["Building one tampered instance, per variant.", table]
    bars = {
        "seconds per fingerprint": [
            (r.method, number(r.extra.get("seconds_per_fingerprint"))) for r in generation
        ],
        "seconds per tampered instance": [
            (r.variant, number(r.extra.get("build_seconds_mean"))) for r in building
        ],
    }
    panels = [name for name, found in bars.items() if any(v is not None for _, v in found)]
    if panels:

        def draw(ax: Axes, panel: str) -> None:
            found = [(label, v) for label, v in bars[panel] if v is not None]
            ax.barh(range(len(found)), [v for _, v in found], color="C0")
            ax.set_yticks(range(len(found)))
            ax.set_yticklabels([tex_safe(label) for label, _ in found], fontsize=7)
            ax.invert_yaxis()
            if all(v > 0 for _, v in found):
                log_x_axis(ax)
            ax.set_xlabel(panel)

        caption = "Seconds per fingerprint per method and per tampered instance per variant (log)."
        blocks.append(Plot(caption, figure_png(panels, draw)))
    return tuple(blocks)
