"""The tolerance experiment's report section (:mod:`.tolerance`): the price table (one line per
bundle: detection means, DR@5 per family, false alarms per serving level), detection per
variant and bundle, and the plot of strict MiSentry's detection and false alarms against the
tolerance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes

from misentry.bench.experiments.base import mean_of
from misentry.bench.experiments.frontier import SUBTLE_VARIANTS
from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Plot, Table
from misentry.bench.report.formatting import best_of, number, pct, span, text_of, unique
from misentry.bench.report.plotting import figure_png, tex_safe
from misentry.bench.report.vocabulary import FAMILIES, PLOT_NS, TABLE_NS, variant_family
from misentry.bench.results import ResultRow
from misentry.fingerprint.tolerance import SAFETY
from misentry.models.stacks import LEVELS

STRICT = "misentry"
"""The method the experiment sweeps over tolerances: MiSentry's strict profile."""


@dataclass(frozen=True)
class Line:
    """One bundle of the table: its rows by (variant, N_S) and its false alarms by level."""

    method: str
    tolerance: str
    rows: dict[tuple[str, int], ResultRow]

    @property
    def name(self) -> str:
        return f"{self.method} @{self.tolerance}"

    @property
    def n(self) -> int:
        return next(iter(self.rows.values())).n_fingerprints

    def alarms(self, level: str) -> float | None:
        return number(next(iter(self.rows.values())).extra.get(f"false_alarms_{level}"))

    def rate(self, variant: str, ns: int) -> float | None:
        row = self.rows.get((variant, ns))
        return None if row is None else row.detection_rate

    def mean(self, variants: Sequence[str], ns: int) -> float | None:
        return mean_of(self.rate(v, ns) for v in variants) if variants else None


def lines_of(rows: Sequence[ResultRow]) -> list[Line]:
    """The rows grouped by bundle (method, tolerance), in first-seen order."""
    grouped: dict[tuple[str, str], dict[tuple[str, int], ResultRow]] = {}
    for row in rows:
        tolerance = str(row.extra.get("tolerance", row.setting.rpartition("=")[2]))
        grouped.setdefault((row.method, tolerance), {})[(row.variant, row.ns)] = row
    return [Line(method, tolerance, by) for (method, tolerance), by in grouped.items()]


def tolerance_section(rows: Sequence[ResultRow], context: ReportContext) -> tuple[Block, ...]:
    del context
    lines = lines_of(rows)
    variants = sorted(
        unique(r.variant for r in rows), key=lambda v: FAMILIES.index(variant_family(v))
    )
    tested = [v for v in variants if v != "identity"]
    subtle = [v for v in tested if v in SUBTLE_VARIANTS]
    blocks: list[Block] = [_price_table(lines, tested, subtle), _explanation(lines, tested, subtle)]
    summary = _summary(lines, tested)
    if summary:
        blocks.append(summary)
    blocks += [
        "Detection rate in % per variant (rows) and bundle (columns), each cell "
        + " / ".join(f"DR@{ns}" for ns in TABLE_NS)
        + ", counted as in the detection table (the identity control must stay at 0).",
        _variant_table(lines, variants),
    ]
    png = _plot(lines, tested)
    if png is not None:
        caption = (
            f"Left: strict MiSentry's mean DR@{PLOT_NS} per family of variants against the "
            "tolerance it was generated for. Right: its fingerprints that the untampered model "
            "labels differently against the level it is served at, one line per tolerance."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)


def _pair(line: Line, variants: Sequence[str]) -> str:
    return " / ".join(pct(line.mean(variants, ns)) for ns in TABLE_NS)


def _price_table(lines: Sequence[Line], tested: Sequence[str], subtle: Sequence[str]) -> Table:
    families = unique(variant_family(v) for v in tested)
    means: list[tuple[str, list[str], int]] = [("subtle", list(subtle), TABLE_NS[-1])]
    means.append(("all", list(tested), TABLE_NS[-1]))
    means += [(f, [v for v in tested if variant_family(v) == f], PLOT_NS) for f in families]
    best = [best_of({ln.name: ln.mean(group, ns) for ln in lines}, 3) for _, group, ns in means]
    body = []
    for line in lines:
        cells = [Cell(line.method), Cell(line.tolerance)]
        cells += [
            Cell(_pair(line, group) if i < 2 else pct(line.mean(group, ns)), line.name in best[i])
            for i, (_, group, ns) in enumerate(means)
        ]
        cells.append(Cell(text_of(_count(line.alarms(line.tolerance)))))
        cells += [Cell(text_of(_count(line.alarms(level)))) for level in LEVELS]
        body.append(tuple(cells))
    ns_text = " / ".join(f"DR@{ns}" for ns in TABLE_NS)
    header = (
        "method",
        "tolerance",
        f"subtle {ns_text} (%)",
        f"all {ns_text} (%)",
        *(f"{family} DR@{PLOT_NS} (%)" for family in families),
        "false alarms own",
        *(f"false alarms {level}" for level in LEVELS),
    )
    return Table(header, (("", tuple(body)),))


def _count(value: float | None) -> int | None:
    return None if value is None else int(value)


def _explanation(lines: Sequence[Line], tested: Sequence[str], subtle: Sequence[str]) -> str:
    others = ", ".join(unique(ln.method for ln in lines if ln.method != STRICT))
    subtle_text = ", ".join(subtle) if subtle else "none in this run"
    return (
        f"One line per bundle: strict MiSentry generated for each deployment tolerance (its "
        f"margin window moved up to {SAFETY:g}x the largest logit change that the level's "
        "serving stacks make on the owner's normal images), then every other method's bundle "
        f"of the detection table ({others or 'none in this run'}), generated for the exact "
        f"stack. Detection in %: the mean over the subtle variants ({subtle_text}) and over "
        f"all {len(tested)} tampered variants, each variant weighing the same, then DR@{PLOT_NS} "
        "per family of variants; bold: the best of each column. False alarms: of each bundle's "
        f"N = {span(ln.n for ln in lines)} fingerprints, how many the untampered target labels "
        "differently on at least one stack of a level or of a stricter one (the levels are "
        "cumulative, so a line's counts never fall from exact to bf16); 'own' is the level the "
        "bundle was generated for, the serving freedom it promises to tolerate without an alarm."
    )


def _summary(lines: Sequence[Line], tested: Sequence[str]) -> str:
    """Strict MiSentry's mean DR@5 and its false alarms at the loosest level, per tolerance,
    from the rows."""
    strict = [ln for ln in lines if ln.method == STRICT]
    if len(strict) < 2 or not tested:
        return ""
    ns, loosest = TABLE_NS[-1], LEVELS[-1]
    rates = ", ".join(f"{ln.tolerance} {pct(ln.mean(tested, ns))}" for ln in strict)
    alarms = ", ".join(f"{ln.tolerance} {text_of(_count(ln.alarms(loosest)))}" for ln in strict)
    return (
        f"Strict MiSentry's mean DR@{ns} over the tampered variants by tolerance: {rates} (%). "
        f"Its false alarms when served on the {loosest} stacks: {alarms}. Reading down the "
        "MiSentry lines gives what each degree of serving freedom costs in sensitivity; "
        "reading along a line, how far its bundle may be served before the untampered model "
        "raises alarms."
    )


def _variant_table(lines: Sequence[Line], variants: Sequence[str]) -> Table:
    groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for variant in variants:
        found = [r for ln in lines for (v, _), r in ln.rows.items() if v == variant]
        cells = [Cell(variant), Cell(span(r.n_instances for r in found))]
        for line in lines:
            rates = [line.rate(variant, ns) for ns in TABLE_NS]
            cells.append(Cell(" / ".join(pct(r) for r in rates)))
        groups[variant_family(variant)].append(tuple(cells))
    header = ("variant", "instances", *(ln.name for ln in lines))
    return Table(header, tuple((f, tuple(g)) for f, g in groups.items()), "family")


def _plot(lines: Sequence[Line], tested: Sequence[str]) -> bytes | None:
    strict = [ln for ln in lines if ln.method == STRICT]
    if not strict or not tested:
        return None
    families = unique(variant_family(v) for v in tested)
    groups = [(f, [v for v in tested if variant_family(v) == f]) for f in families]
    groups.append(("all tampered", list(tested)))

    def draw(ax: Axes, panel: str) -> None:
        if panel == "detection":
            xs = [LEVELS.index(ln.tolerance) for ln in strict]
            for i, (label, members) in enumerate(groups):
                ys = [ln.mean(members, PLOT_NS) for ln in strict]
                style = "--" if label == "all tampered" else "-"
                color = "k" if label == "all tampered" else f"C{i % 10}"
                kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
                ax.plot(*zip(*kept, strict=True), style, marker="o", color=color, label=label)
            ax.set_xlabel("tolerance the bundle was generated for")
            ax.set_ylabel(f"mean DR@{PLOT_NS}")
            ax.set_ylim(-0.02, 1.02)
        else:
            shades = [0.15 + 0.7 * i / max(1, len(strict) - 1) for i in range(len(strict))]
            for line, shade in zip(strict, shades, strict=True):
                counts = [line.alarms(level) or 0.0 for level in LEVELS]
                rgb = (shade, 0.2, 1 - shade)
                ax.plot(
                    range(len(LEVELS)), counts, marker="s", color=rgb, label=tex_safe(line.name)
                )
            ax.set_xlabel("level the untampered model is served at")
            ax.set_ylabel("false alarms (fingerprints)")
        ax.set_xticks(range(len(LEVELS)))
        ax.set_xticklabels(LEVELS)

    return figure_png(["detection", "false alarms"], draw, width=5.0)
