"""The benchmark report, rebuilt from a run's ``results.json``.

:func:`build_report` reads the rows (:mod:`misentry.bench.results`) and writes ``report.md`` and
a self-contained ``report.html`` (inline CSS, plots as base64 PNG data URIs, no script, nothing
fetched). Both come from one list of sections, so they always say the same thing:

- a header: the results file, its sha256 and time, the datasets, methods and instance counts;
- the detection table (variants x methods, ``DR@1 / DR@5`` in %, the best method per variant in
  bold, the identity control last in its own group), its 95 % intervals, and detection rate vs
  N_S per family of variants;
- one generic section per other experiment (a table of its rows with the ``extra`` fields as
  columns; a line plot against ``n_leaked`` for leakage and ``steps`` for sensitivity, a scatter
  of ``auc`` vs detection for covertness, when those fields exist);
- the experiments not in this run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from misentry.atomic import write_text_atomic
from misentry.bench.results import ResultRow, read_results

EXPERIMENTS = (
    "detection",
    "leakage",
    "covertness",
    "sensitivity",
    "ablation",
    "cost",
    "frontier",
)
"""The benchmark's experiments, in report order."""

FAMILIES = (
    "fine-tuning",
    "retraining / transfer",
    "poisoning / backdoor",
    "compression",
    "others",
    "control",
)
"""Variant families, in table order; ``control`` (the identity) is always last."""

TABLE_NS = (1, 5)
"""The N_S values of the detection table's cells."""

PLOT_NS_MAX = 20
"""The detection plots run N_S from 1 to this."""

X_FIELD = {"leakage": "n_leaked", "sensitivity": "steps"}
"""The ``extra`` field each experiment's line plot puts on the x axis."""

_RETRAINING = {"transfer_learning", "independent_retrain", "different_arch", "distillation"}
_POISONING = {"backdoor", "trojan", "clean_label", "targeted"}
_COMPRESSION = {"pruning", "quantization"}


def variant_family(variant: str) -> str:
    """The family of a BIVBench variant slug (one of :data:`FAMILIES`)."""
    if variant == "identity":
        return "control"
    if variant.startswith("ft_"):
        return "fine-tuning"
    if variant.startswith("retrain_") or variant in _RETRAINING:
        return "retraining / transfer"
    if variant in _POISONING or variant.startswith("degradation_"):
        return "poisoning / backdoor"
    if variant in _COMPRESSION:
        return "compression"
    return "others"


# --- the document: sections of text, tables and plots, rendered twice --------------------------


@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False
    tooltip: str = ""


@dataclass(frozen=True)
class Table:
    """Rows in labelled groups; ``group_header`` names the column the labels sit in (md)."""

    header: tuple[str, ...]
    groups: tuple[tuple[str, tuple[tuple[Cell, ...], ...]], ...]
    group_header: str | None = None


@dataclass(frozen=True)
class Plot:
    caption: str
    png: bytes


Block = str | Table | Plot
"""A paragraph, a table or a plot."""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]


def build_report(results_dir: Path | str, out_dir: Path | str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for the ``results.json`` in ``results_dir`` (or
    that file itself) into ``out_dir`` (default: the results' folder), each atomically.

    Returns the two paths. Raises FileNotFoundError when there is no results file and
    ValueError when it is not a readable, non-empty misentry results file.
    """
    path = Path(results_dir)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"build_report: no results file at {path}; run a benchmark with --results "
            f"{path.parent} first, or give the folder that holds its results.json"
        )
    rows = read_results(path)
    if not rows:
        raise ValueError(f"build_report: {path} holds no rows; the run wrote nothing to report")
    sections = _sections(rows, path)
    title = "misentry benchmark report"
    out = Path(out_dir) if out_dir is not None else path.parent
    md = write_text_atomic(out / "report.md", _markdown(title, sections))
    page = write_text_atomic(out / "report.html", _html(title, sections))
    return md, page


def _sections(rows: Sequence[ResultRow], path: Path) -> list[Section]:
    methods = _unique(r.method for r in rows)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    present = _unique(r.experiment for r in rows)
    order = [e for e in EXPERIMENTS if e in present] + sorted(set(present) - set(EXPERIMENTS))
    sections = [_header(rows, path)]
    for experiment in order:
        mine = [r for r in rows if r.experiment == experiment]
        for dataset in _unique(r.dataset for r in mine):
            of_dataset = [r for r in mine if r.dataset == dataset]
            title = f"{experiment.capitalize()} ({dataset})"
            if experiment == "detection":
                sections.append(Section(title, _detection(of_dataset, colors)))
            else:
                sections.append(Section(title, _generic(experiment, of_dataset, colors)))
    missing = [e for e in EXPERIMENTS if e not in present]
    if missing:
        sections.append(Section("Not in this run", (", ".join(missing),)))
    return sections


def _header(rows: Sequence[ResultRow], path: Path) -> Section:
    stat = path.stat()
    when = datetime.fromtimestamp(stat.st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row.experiment] += 1
    facts = (
        ("results", f"{path} ({len(rows)} rows)"),
        ("sha256", sha),
        ("generated", f"{when} (the results file's time)"),
        ("datasets", ", ".join(_unique(r.dataset for r in rows))),
        ("methods", ", ".join(_unique(r.method for r in rows))),
        ("experiments", ", ".join(f"{e} ({n} rows)" for e, n in counts.items())),
        ("instances per cell", _span(r.n_instances for r in rows)),
        ("fingerprints per bundle (N)", _span(r.n_fingerprints for r in rows)),
    )
    table = Table(("", ""), (("", tuple((Cell(k, bold=True), Cell(v)) for k, v in facts)),))
    return Section("Run", (table,))


# --- detection ----------------------------------------------------------------------------------


def _detection(rows: Sequence[ResultRow], colors: dict[str, str]) -> tuple[Block, ...]:
    methods = _unique(r.method for r in rows)
    variants = sorted(
        _unique(r.variant for r in rows), key=lambda v: FAMILIES.index(variant_family(v))
    )
    cell = {(r.method, r.variant, r.ns): r for r in rows}
    header = ("variant", "instances", *methods)
    rate_groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    ci_groups: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for variant in variants:
        found = [cell.get((m, variant, ns)) for m in methods for ns in TABLE_NS]
        n = _span(r.n_instances for r in found if r is not None)
        best = _best(methods, variant, cell)
        rates, intervals = [], []
        for method in methods:
            at = [cell.get((method, variant, ns)) for ns in TABLE_NS]
            text = " / ".join(_pct(r.detection_rate) if r else "–" for r in at)
            ci = " / ".join(_interval(r) if r else "–" for r in at)
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
            scores[method] = tuple(sign * round(100 * _rate(r), 1) if r else -math.inf for r in at)
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
            curves[(variant_family(row.variant), row.method)][row.ns].append(_rate(row))
    families = [f for f in FAMILIES if any((f, m) in curves for m in methods)]
    if not families:
        return None

    def draw(ax: Axes, family: str) -> None:
        for method in methods:
            points = curves.get((family, method))
            if points:
                xs = sorted(points)
                ys = [sum(points[x]) / len(points[x]) for x in xs]
                ax.plot(xs, ys, marker=".", color=colors[method], label=_tex_safe(method))
        count = len(members[family])
        ax.set_title(f"{family} ({count} variant{'s' if count > 1 else ''})")
        ax.set_xlabel("N_S")
        ax.set_ylabel("detection rate")
        ax.set_ylim(-0.02, 1.02)

    return _figure(families, draw)


# --- the other experiments ----------------------------------------------------------------------


def _generic(
    experiment: str, rows: Sequence[ResultRow], colors: dict[str, str]
) -> tuple[Block, ...]:
    keys = sorted({k for r in rows for k in r.extra})
    rated = any(r.detection_rate is not None for r in rows)  # cost, covertness: no rate
    rate_header = ("N_S", "rate (%)", "95 % interval (%)") if rated else ()
    header = ("method", "variant", *rate_header, *keys)
    ordered = sorted(rows, key=lambda r: (r.method, r.variant, r.ns, _sort_key(r.extra)))
    body = tuple(
        (
            Cell(r.method),
            Cell(r.variant),
            *((Cell(str(r.ns)), Cell(_pct(r.detection_rate)), Cell(_interval(r))) if rated else ()),
            *(Cell(_value(r.extra.get(k))) for k in keys),
        )
        for r in ordered
    )
    blocks: list[Block] = [Table(header, (("", body),))]
    x_field = X_FIELD.get(experiment)
    if x_field is not None:
        png = _line_plot(rows, x_field, colors)
        if png is not None:
            blocks.append(Plot(f"Detection rate vs {x_field}, one line per method.", png))
    if experiment == "covertness":
        png = _scatter_plot(rows, "auc", colors)
        if png is not None:
            blocks.append(Plot("Detection rate vs AUC of a covertness detector.", png))
    return tuple(blocks)


def _line_plot(rows: Sequence[ResultRow], x_field: str, colors: dict[str, str]) -> bytes | None:
    """One line per method (per method and N_S when a method has several), the mean rate at
    each value of ``extra[x_field]``; None when no row has a number there."""
    usable = [
        r
        for r in rows
        if _number(r.extra.get(x_field)) is not None and r.detection_rate is not None
    ]
    if not usable:
        return None
    ns_of: dict[str, set[int]] = defaultdict(set)
    for row in usable:
        ns_of[row.method].add(row.ns)
    lines: dict[tuple[str, int], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in usable:
        x = _number(row.extra[x_field])
        assert x is not None
        lines[(row.method, row.ns)][x].append(_rate(row))

    def draw(ax: Axes, _: str) -> None:
        for (method, ns), points in sorted(lines.items()):
            label = method if len(ns_of[method]) == 1 else f"{method}, N_S={ns}"
            xs = sorted(points)
            ys = [sum(points[x]) / len(points[x]) for x in xs]
            ax.plot(xs, ys, marker="o", color=colors[method], label=_tex_safe(label))
        ax.set_xlabel(x_field)
        ax.set_ylabel("detection rate")
        ax.set_ylim(-0.02, 1.02)

    return _figure([""], draw)


def _scatter_plot(rows: Sequence[ResultRow], x_field: str, colors: dict[str, str]) -> bytes | None:
    usable = [
        r
        for r in rows
        if _number(r.extra.get(x_field)) is not None and r.detection_rate is not None
    ]
    if not usable:
        return None

    def draw(ax: Axes, _: str) -> None:
        for method in _unique(r.method for r in usable):
            mine = [r for r in usable if r.method == method]
            xs = [float(r.extra[x_field]) for r in mine]
            ys = [_rate(r) for r in mine]
            ax.scatter(xs, ys, color=colors[method], label=_tex_safe(method))
        ax.set_xlabel(x_field)
        ax.set_ylabel("detection rate")
        ax.set_ylim(-0.02, 1.02)

    return _figure([""], draw)


def _figure(panels: Sequence[str], draw: Callable[[Axes, str], None]) -> bytes:
    """A PNG of one panel per name, ``draw`` filling each, one legend for all."""
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * lines + 0.6), dpi=100, layout="constrained")
    axes = figure.subplots(lines, columns, squeeze=False).ravel()
    for ax, name in zip(axes, panels, strict=False):
        draw(ax, name)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# --- rendering ----------------------------------------------------------------------------------


def _markdown(title: str, sections: Sequence[Section]) -> str:
    out = [f"# {_md(title)}", ""]
    for section in sections:
        out += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                out += [_md(block), ""]
            elif isinstance(block, Plot):
                out += [f"*Plot in report.html: {_md(block.caption)}*", ""]
            else:
                out += [*_md_table(block), ""]
    return "\n".join(out)


def _md_table(table: Table) -> list[str]:
    header = list(table.header)
    if table.group_header is not None:
        header.insert(0, table.group_header)
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    for label, rows in table.groups:
        for i, row in enumerate(rows):
            cells = [f"**{_md(c.text)}**" if c.bold and c.text else _md(c.text) for c in row]
            if table.group_header is not None:
                cells.insert(0, _md(label) if i == 0 else "")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _md(text: str) -> str:
    """Text that markdown shows as written (no tags, links, emphasis or cell breaks)."""
    for char in "\\`*<>[]|":
        text = text.replace(char, "\\" + char)
    return text


STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
thead th { background: #eee; }
tbody th.group { background: #f6f6f6; font-style: italic; }
td.best { font-weight: bold; background: #eef7ee; }
td[title] { cursor: help; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
code { font-size: 0.95em; }
"""


def _html(title: str, sections: Sequence[Section]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>\n{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<section><h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block)}</p>")
            elif isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{e(block.caption)}">'
                    f"<figcaption>{e(block.caption)}</figcaption></figure>"
                )
            else:
                out.append(_html_table(block))
        out.append("</section>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _html_table(table: Table) -> str:
    e = html.escape
    out = ["<table>"]
    if any(table.header):
        out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>")
        out.append("</thead>")
    for label, rows in table.groups:
        out.append("<tbody>")
        if label:
            span = len(table.header)
            out.append(f'<tr><th class="group" colspan="{span}">{e(label)}</th></tr>')
        for row in rows:
            cells = []
            for c in row:
                attrs = ' class="best"' if c.bold else ""
                attrs += f' title="{e(c.tooltip)}"' if c.tooltip else ""
                cells.append(f"<td{attrs}>{e(c.text)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody>")
    out.append("</table>")
    return "\n".join(out)


# --- small helpers ------------------------------------------------------------------------------


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


def _sort_key(extra: Any) -> str:
    return json.dumps(extra, sort_keys=True, default=str)


def _tex_safe(label: str) -> str:
    """A legend label matplotlib shows as written (``$`` would start mathtext)."""
    return label.replace("$", r"\$")
