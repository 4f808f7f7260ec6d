"""Small helpers that turn rows and numbers into the text of a table cell: percentages,
intervals, spans, first-seen order and the best of a column."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from misentry.bench.results import ResultRow


def _best_of(scores: Mapping[str, float | None], decimals: int) -> set[str]:
    """The keys with the highest score rounded to ``decimals``; none when fewer than two
    values differ."""
    printed = {k: round(v, decimals) for k, v in scores.items() if v is not None}
    if len(set(printed.values())) < 2:
        return set()
    top = max(printed.values())
    return {k for k, v in printed.items() if v == top}


def _unique(values: Iterable[str]) -> list[str]:
    """The values in first-seen order, once each."""
    return list(dict.fromkeys(values))


def _span(values: Iterable[int]) -> str:
    found = sorted(set(values))
    if not found:
        return "–"
    return str(found[0]) if len(found) == 1 else f"{found[0]}–{found[-1]}"


def _rate(row: ResultRow) -> float:
    """The row's detection rate (rows that reach a plot or a detection table have one)."""
    if row.detection_rate is None:
        raise ValueError(f"report: row {row.key} has no detection rate")
    return row.detection_rate


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}"


def _num(value: Any, decimals: int) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{decimals}f}"


def _interval(row: ResultRow) -> str:
    if row.ci_low is None or row.ci_high is None:
        return "–"
    return f"{_pct(row.ci_low)}–{_pct(row.ci_high)}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
