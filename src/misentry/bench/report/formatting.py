"""Small helpers that turn rows and numbers into the text of a table cell: percentages,
intervals, spans, first-seen order and the best of a column."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from misentry.bench.results import ResultRow


def best_of(scores: Mapping[str, float | None], decimals: int) -> set[str]:
    """The keys with the highest score rounded to ``decimals``; none when fewer than two
    values differ."""
    printed = {k: round(v, decimals) for k, v in scores.items() if v is not None}
    if len(set(printed.values())) < 2:
        return set()
    top = max(printed.values())
    return {k for k, v in printed.items() if v == top}


def unique(values: Iterable[str]) -> list[str]:
    """The values in first-seen order, once each."""
    return list(dict.fromkeys(values))


def span(values: Iterable[int]) -> str:
    """The range of ``values``: ``3``, ``1–10`` or ``–``."""
    found = sorted(set(values))
    if not found:
        return "–"
    return str(found[0]) if len(found) == 1 else f"{found[0]}–{found[-1]}"


def rate_of(row: ResultRow) -> float:
    """The row's detection rate (rows that reach a plot or a detection table have one)."""
    if row.detection_rate is None:
        raise ValueError(f"report: row {row.key} has no detection rate")
    return row.detection_rate


def pct(rate: float | None) -> str:
    """A rate in % with one decimal; ``–`` for none."""
    return "–" if rate is None else f"{100 * rate:.1f}"


def fixed(value: Any, decimals: int) -> str:
    """A number with ``decimals`` decimals; ``–`` for anything else."""
    found = number(value)
    return "–" if found is None else f"{found:.{decimals}f}"


def interval(row: ResultRow) -> str:
    """The row's 95 % interval in %; ``–`` when it has none."""
    if row.ci_low is None or row.ci_high is None:
        return "–"
    return f"{pct(row.ci_low)}–{pct(row.ci_high)}"


def number(value: Any) -> float | None:
    """``value`` as a float when it is a number (not a bool, not NaN); else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def text_of(value: Any) -> str:
    """A JSON value as a table cell's text."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
