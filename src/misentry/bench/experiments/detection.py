"""The detection table (the founding paper's Table 1): how often a check of N_S fingerprints of
each main bundle flags each tampered variant, and never the identity control.

Its rows come from the evaluation jobs of the main bundles (one per method, on every instance
of the preset's variants); its report section is the variants x methods table of DR@1 / DR@5
with their intervals and detection rate vs N_S per family of variants.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes

from misentry.bench.experiments.base import MAIN, RESULTS_NS, Experiment, Measured
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import interval, pct, rate_of, span, unique
from misentry.bench.report.plotting import figure_png, tex_safe
from misentry.bench.report.vocabulary import FAMILIES, PLOT_NS_MAX, TABLE_NS, variant_family
from misentry.bench.results import ResultRow, detection_rows


@dataclass(frozen=True)
class DetectionSpec(Experiment):
    """The detection table; it has no settings of its own (the preset's variants, instances
    and N_S are its settings) and always runs."""

    name = "detection"
    about = (
        "How often a check of N_S fingerprints flags each tampered variant of the target, and "
        "never the target itself (the identity control). Higher is better, except on identity, "
        "which must stay at 0."
    )
    optional = False

    def rows(self, measured: Measured) -> list[ResultRow]:
        """Per main bundle, variant and N_S (1..20 and the preset's), the mean exact rate."""
        ns_values = sorted(set(RESULTS_NS) | set(measured.built.setup.ns))
        rows: list[ResultRow] = []
        for method, fps in measured.built.main.items():
            d = measured.evaluated[(MAIN, method)]
            rows += detection_rows(measured.dataset, method, len(fps), d, ns_values)
        return rows

    @classmethod
    def section(cls, rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
        return _detection(rows, context.colors)


def _detection(rows: Sequence[ResultRow], colors: dict[str, str]) -> tuple[Block, ...]:
    methods = unique(r.method for r in rows)
    variants = sorted(
        unique(r.variant for r in rows), key=lambda v: FAMILIES.index(variant_family(v))
    )
    cell = {(r.method, r.variant, r.ns): r for r in rows}
    header = ("variant", "instances", *methods)
    rate_groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    ci_groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for variant in variants:
        found = [cell.get((m, variant, ns)) for m in methods for ns in TABLE_NS]
        n = span(r.n_instances for r in found if r is not None)
        best = _best(methods, variant, cell)
        rates, intervals = [], []
        for method in methods:
            at = [cell.get((method, variant, ns)) for ns in TABLE_NS]
            text = " / ".join(pct(r.detection_rate) if r else "–" for r in at)
            ci = " / ".join(interval(r) if r else "–" for r in at)
            rates.append(Cell(text, bold=method in best, tooltip=f"95 % interval: {ci}"))
            intervals.append(Cell(ci))
        rate_groups[variant_family(variant)].append((Cell(variant), Cell(n), *rates))
        ci_groups[variant_family(variant)].append((Cell(variant), Cell(n), *intervals))
    ns_text = " / ".join(f"DR@{ns}" for ns in TABLE_NS)
    blocks: list[Block] = [
        f"Detection rate in % per variant (rows) and method (columns), each cell {ns_text}: the "
        "mean over the variant's instances of the exact expected rate. Bold: the best method "
        "of the row (highest rate; lowest on the identity control, which must be 0).",
        Table(header, tuple((f, tuple(g)) for f, g in rate_groups.items()), "family"),
        f"95 % intervals of the means above ({ns_text}, in %).",
        Table(header, tuple((f, tuple(g)) for f, g in ci_groups.items()), "family"),
    ]
    png = _detection_plot(rows, methods, colors)
    if png is not None:
        caption = (
            f"Detection rate vs N_S (1..{PLOT_NS_MAX}) per family of variants, one line per "
            "method, mean over the family's variants."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)


def _best(
    methods: Sequence[str], variant: str, cell: dict[tuple[str, str, int], ResultRow]
) -> set[str]:
    """The methods with the best (DR@1, DR@5) as printed; none when all tie."""
    sign = -1.0 if variant == "identity" else 1.0
    scores = {}
    for method in methods:
        at = [cell.get((method, variant, ns)) for ns in TABLE_NS]
        if at[0] is not None:
            scores[method] = tuple(
                sign * round(100 * rate_of(r), 1) if r else -math.inf for r in at
            )
    if len(set(scores.values())) < 2:
        return set()
    top = max(scores.values())
    return {m for m, s in scores.items() if s == top}


def _detection_plot(
    rows: Sequence[ResultRow], methods: Sequence[str], colors: dict[str, str]
) -> bytes | None:
    curves: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    members: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        members[variant_family(row.variant)].add(row.variant)
        if row.ns <= PLOT_NS_MAX:
            curves[(variant_family(row.variant), row.method)][row.ns].append(rate_of(row))
    families = [f for f in FAMILIES if any((f, m) in curves for m in methods)]
    if not families:
        return None

    def draw(ax: Axes, family: str) -> None:
        for method in methods:
            points = curves.get((family, method))
            if points:
                xs = sorted(points)
                ys = [sum(points[x]) / len(points[x]) for x in xs]
                ax.plot(xs, ys, marker=".", color=colors[method], label=tex_safe(method))
        count = len(members[family])
        ax.set_title(f"{family} ({count} variant{'s' if count > 1 else ''})")
        ax.set_xlabel("N_S")
        ax.set_ylabel("detection rate")
        ax.set_ylim(-0.02, 1.02)

    return figure_png(families, draw)
