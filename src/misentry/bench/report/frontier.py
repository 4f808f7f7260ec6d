"""The frontier section: detection of the subtle variants vs the confidence detector's AUC,
MiSentry's covertness sweep as a line."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes

from misentry.bench.report.context import _Context
from misentry.bench.report.document import Block, Cell, Plot
from misentry.bench.report.formatting import _num, _unique
from misentry.bench.report.plotting import _figure, _tex_safe
from misentry.bench.report.points import (
    RATE_COLUMNS,
    Column,
    _by_variant,
    _curve,
    _number_column,
    _of,
    _Point,
    _points,
)
from misentry.bench.report.vocabulary import AUC_COLUMNS, AUC_KEYS, PLOT_NS
from misentry.bench.results import ResultRow


def _frontier(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    points = _points(rows)
    sweep = sorted(
        (p for p in points if p.number("covertness") is not None),
        key=lambda p: (p.method, p.variant, p.number("covertness") or 0.0),
    )
    others = [p for p in points if p.number("covertness") is None]
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("covertness", lambda p: Cell(_num(p.number("covertness"), 3) if p in sweep else "–")),
        *(_number_column(name, key, 3) for key, name in AUC_COLUMNS),
        *RATE_COLUMNS,
    ]
    variants = _unique(str(p.extra.get("variants", "")) for p in points if p.extra.get("variants"))
    blocks: list[Block] = [_by_variant([*sweep, *others], columns, "variants")]
    if variants:
        blocks.append(f"Subtle variants averaged: {'; '.join(variants)}.")
    png = _frontier_plot(sweep, others, context.colors)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} on the subtle variants vs the AUC of the confidence detector; the "
            "MiSentry sweep as a line labelled with its covertness weight, other methods as points."
        )
        blocks.append(Plot(caption, png))
    blocks.append(
        "To pick an operating point, fix the largest AUC an observer may see (how far from 0.5 "
        "you can afford to be) and take the sweep point with the highest DR@5 left of it; a "
        "method below and to the right of the line is dominated by some covertness setting."
    )
    return tuple(blocks)


def _frontier_plot(
    sweep: Sequence[_Point], others: Sequence[_Point], colors: dict[str, str]
) -> bytes | None:
    drawn = [*sweep, *others]
    variants = [v for v in _unique(p.variant for p in drawn) if _curve(_of(drawn, v), AUC_KEYS[0])]
    if not variants:
        return None

    def draw(ax: Axes, variant: str) -> None:
        for method in _unique(p.method for p in sweep):
            line = [p for p in _of(sweep, variant) if p.method == method]
            xy = [(p.number(AUC_KEYS[0]), p.rate(PLOT_NS), p.number("covertness")) for p in line]
            kept = [(x, y, c) for x, y, c in xy if x is not None and y is not None]
            if kept:
                xs, ys = [x for x, _, _ in kept], [y for _, y, _ in kept]
                ax.plot(xs, ys, marker="o", color=colors[method], label=_tex_safe(method))
                for x, y, c in kept:
                    ax.annotate(
                        f"c={c:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                    )
        for point in _of(others, variant):
            px, py = point.number(AUC_KEYS[0]), point.rate(PLOT_NS)
            if px is not None and py is not None:
                color = colors[point.method]
                ax.scatter([px], [py], marker="s", color=color, label=_tex_safe(point.method))
                ax.annotate(
                    _tex_safe(point.method),
                    (px, py),
                    textcoords="offset points",
                    xytext=(4, -10),
                    fontsize=7,
                )
        ax.axvline(0.5, color="k", linestyle=":", linewidth=1)
        ax.set_title(_tex_safe(variant))
        ax.set_xlabel("AUC of the confidence detector")
        ax.set_ylabel(f"DR@{PLOT_NS}")
        ax.set_ylim(-0.02, 1.02)

    return _figure(variants, draw, width=5.5)
