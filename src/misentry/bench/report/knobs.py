"""The leakage and sensitivity sections: detection rate along a knob (fingerprints leaked,
training steps of the tampering), per attack."""

from __future__ import annotations

from collections.abc import Sequence

from misentry.bench.report.context import _Context
from misentry.bench.report.document import Block, Cell, Plot
from misentry.bench.report.formatting import _pct, _value
from misentry.bench.report.points import (
    RATE_COLUMNS,
    Column,
    _by_variant,
    _curves_plot,
    _ordered,
    _points,
)
from misentry.bench.report.vocabulary import PLOT_NS
from misentry.bench.results import ResultRow


def _leakage(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    points = _ordered(_points(rows), "n_leaked")
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("n_leaked", lambda p: Cell(_value(p.extra.get("n_leaked", p.setting)))),
        ("unleaked N", lambda p: Cell(str(next(iter(p.rows.values())).n_fingerprints))),
        *RATE_COLUMNS,
        ("leaked kept (%)", lambda p: Cell(_pct(p.number("leaked_kept")))),
    ]
    blocks: list[Block] = [_by_variant(points, columns, "attack")]
    png = _curves_plot(points, "n_leaked", "leaked fingerprints", context.colors, log_x=False)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} on the unleaked fingerprints vs the number leaked to the attacker, one "
            "panel per adaptive attack, one line per method."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)


def _sensitivity(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    points = _ordered(_points(rows), "steps")
    columns: list[Column] = [
        ("method", lambda p: Cell(p.method)),
        ("steps", lambda p: Cell(_value(p.extra.get("steps", p.setting)))),
        *RATE_COLUMNS,
        ("clean accuracy (%)", lambda p: Cell(_pct(p.number("clean_accuracy")))),
        ("attack success (%)", lambda p: Cell(_pct(p.number("attack_success")))),
    ]
    blocks: list[Block] = [_by_variant(points, columns, "variant")]
    png = _curves_plot(points, "steps", "training steps", context.colors, log_x=True)
    if png is not None:
        caption = (
            f"DR@{PLOT_NS} vs training steps of the tampering (log scale), one panel per "
            "variant, one line per method."
        )
        blocks.append(Plot(caption, png))
    return tuple(blocks)
