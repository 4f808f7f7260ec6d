"""The report's sections from a run's rows: the run header, one section per experiment and
dataset in :data:`EXPERIMENTS` order, a generic table for experiments it does not know."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from misentry.bench.report.ablation import _ablation
from misentry.bench.report.context import _Context, _samples
from misentry.bench.report.cost import _cost
from misentry.bench.report.covertness import _covertness
from misentry.bench.report.detection import _detection
from misentry.bench.report.document import Block, Cell, Section, Table
from misentry.bench.report.formatting import _interval, _pct, _span, _unique, _value
from misentry.bench.report.frontier import _frontier
from misentry.bench.report.knobs import _leakage, _sensitivity
from misentry.bench.report.vocabulary import ABOUT, EXPERIMENTS
from misentry.bench.results import ResultRow


def _sections(rows: Sequence[ResultRow], path: Path, out: Path) -> list[Section]:
    methods = _unique(r.method for r in rows)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    context = _Context(colors, path.parent, out, _samples(path.parent))
    present = _unique(r.experiment for r in rows)
    order = [e for e in EXPERIMENTS if e in present] + sorted(set(present) - set(EXPERIMENTS))
    sections = [_header(rows, path)]
    for experiment in order:
        mine = [r for r in rows if r.experiment == experiment]
        for dataset in _unique(r.dataset for r in mine):
            of_dataset = [r for r in mine if r.dataset == dataset]
            title = f"{experiment.capitalize()} ({dataset})"
            about = (ABOUT[experiment],) if experiment in ABOUT else ()
            if experiment == "detection":
                blocks = _detection(of_dataset, colors)
            else:
                blocks = BUILDERS.get(experiment, _generic)(of_dataset, context)
            sections.append(Section(title, (*about, *blocks)))
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


def _generic(rows: Sequence[ResultRow], context: _Context) -> tuple[Block, ...]:
    """A table of the rows, the ``extra`` fields as columns."""
    del context
    keys = sorted({k for r in rows for k in r.extra})
    rated = any(r.detection_rate is not None for r in rows)
    rate_header = ("N_S", "rate (%)", "95 % interval (%)") if rated else ()
    header = ("method", "variant", "setting", *rate_header, *keys)
    ordered = sorted(rows, key=lambda r: (r.method, r.variant, r.setting, r.ns))
    body = tuple(
        (
            Cell(r.method),
            Cell(r.variant),
            Cell(r.setting),
            *((Cell(str(r.ns)), Cell(_pct(r.detection_rate)), Cell(_interval(r))) if rated else ()),
            *(Cell(_value(r.extra.get(k))) for k in keys),
        )
        for r in ordered
    )
    return (Table(header, (("", body),)),)


BUILDERS: dict[str, Callable[[Sequence[ResultRow], _Context], tuple[Block, ...]]] = {
    "leakage": _leakage,
    "covertness": _covertness,
    "sensitivity": _sensitivity,
    "ablation": _ablation,
    "cost": _cost,
    "frontier": _frontier,
}
