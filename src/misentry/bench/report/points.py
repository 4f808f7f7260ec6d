"""Points of an experiment (one per method, variant and setting, its rows by N_S), the tables
of points per variant, and the plot of detection rate along a knob."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.axes import Axes

from misentry.bench.report.document import Cell, Table
from misentry.bench.report.formatting import fixed, interval, number, pct, unique
from misentry.bench.report.plotting import figure_png, log_x_axis, tex_safe
from misentry.bench.report.vocabulary import PLOT_NS, TABLE_NS
from misentry.bench.results import ResultRow


@dataclass(frozen=True)
class Point:
    method: str
    variant: str
    setting: str
    rows: Mapping[int, ResultRow]

    @property
    def extra(self) -> Mapping[str, Any]:
        return next(iter(self.rows.values())).extra

    def number(self, key: str) -> float | None:
        return number(self.extra.get(key))

    def rate(self, ns: int) -> float | None:
        row = self.rows.get(ns)
        return None if row is None else row.detection_rate

    def cell(self, ns: int) -> Cell:
        row = self.rows.get(ns)
        if row is None or row.detection_rate is None:
            return Cell("–")
        return Cell(pct(row.detection_rate), tooltip=f"95 % interval: {interval(row)}")


def points_of(rows: Sequence[ResultRow]) -> list[Point]:
    """The rows grouped by (method, variant, setting), in first-seen order."""
    grouped: dict[tuple[str, str, str], dict[int, ResultRow]] = {}
    for row in rows:
        grouped.setdefault((row.method, row.variant, row.setting), {})[row.ns] = row
    return [Point(*key, by_ns) for key, by_ns in grouped.items()]


Column = tuple[str, Callable[[Point], Cell]]
"""A table column: its header and how a point fills it."""


def _rate_column(ns: int) -> Column:
    return f"DR@{ns} (%)", lambda p: p.cell(ns)


def number_column(header: str, key: str, decimals: int) -> Column:
    return header, lambda p: Cell(fixed(p.number(key), decimals))


RATE_COLUMNS = tuple(_rate_column(ns) for ns in TABLE_NS)


def by_variant(points: Sequence[Point], columns: Sequence[Column], group: str) -> Table:
    """A table of the points, one group per variant, one line per point."""
    groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for point in points:
        groups[point.variant].append(tuple(fill(point) for _, fill in columns))
    header = tuple(name for name, _ in columns)
    return Table(header, tuple((v, tuple(lines)) for v, lines in groups.items()), group)


def ordered(points: Sequence[Point], x_key: str) -> list[Point]:
    """By variant and method (first-seen order), then by ``extra[x_key]``."""
    variants, methods = unique(p.variant for p in points), unique(p.method for p in points)

    def key(p: Point) -> tuple[int, int, float]:
        x = p.number(x_key)
        return variants.index(p.variant), methods.index(p.method), math.inf if x is None else x

    return sorted(points, key=key)


def curve(points: Iterable[Point], x_key: str) -> list[tuple[float, float]]:
    """(extra[x_key], DR@PLOT_NS) of the points that have both, sorted by x."""
    found = []
    for point in points:
        x, y = point.number(x_key), point.rate(PLOT_NS)
        if x is not None and y is not None:
            found.append((x, y))
    return sorted(found)


def curves_plot(
    points: Sequence[Point], x_key: str, xlabel: str, colors: dict[str, str], log_x: bool
) -> bytes | None:
    """One panel per variant, one line per method: DR@PLOT_NS against ``extra[x_key]``."""
    variants = [v for v in unique(p.variant for p in points) if curve(of_variant(points, v), x_key)]
    if not variants:
        return None

    def draw(ax: Axes, variant: str) -> None:
        mine = of_variant(points, variant)
        for method in unique(p.method for p in mine):
            xy = curve((p for p in mine if p.method == method), x_key)
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, marker="o", color=colors[method], label=tex_safe(method))
        if log_x:
            lowest = min(x for x, _ in curve(mine, x_key))
            log_x_axis(ax, symlog=lowest <= 0)
        ax.set_title(tex_safe(variant))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"DR@{PLOT_NS}")
        ax.set_ylim(-0.02, 1.02)

    return figure_png(variants, draw)


def of_variant(points: Sequence[Point], variant: str) -> list[Point]:
    return [p for p in points if p.variant == variant]
