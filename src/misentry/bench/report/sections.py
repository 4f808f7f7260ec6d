"""The report's sections from a run's rows: the run header, one section per experiment and
dataset in the order of :data:`misentry.bench.experiments.EXPERIMENTS` (each experiment writes
its own), a generic table for experiments it does not know."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from misentry.bench.report.context import ReportContext
from misentry.bench.report.document import Block, Cell, Section, Table
from misentry.bench.report.formatting import interval, pct, span, text_of, unique
from misentry.bench.results import ResultRow, read_skipped


def sections(rows: Sequence[ResultRow], path: Path, out: Path) -> list[Section]:
    """The report's sections for the rows of the results file at ``path``, written to ``out``:
    the run header, each experiment's section per dataset (each opening with what it
    measured), the variants a ``--target`` run skipped (when any) and the experiments not in
    this run."""
    from misentry.bench.experiments import EXPERIMENTS

    known = {experiment.name: experiment for experiment in EXPERIMENTS}
    methods = unique(r.method for r in rows)
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    context = ReportContext(colors, path.parent, out)
    present = unique(r.experiment for r in rows)
    order = [e for e in known if e in present] + sorted(set(present) - set(known))
    found = [_header(rows, path)]
    for name in order:
        mine = [r for r in rows if r.experiment == name]
        for dataset in unique(r.dataset for r in mine):
            of_dataset = [r for r in mine if r.dataset == dataset]
            title = f"{name.capitalize()} ({dataset})"
            experiment = known.get(name)
            if experiment is None:
                blocks = generic(of_dataset)
            else:
                blocks = (experiment.about, *experiment.section(of_dataset, context))
            found.append(Section(title, blocks))
    skipped = read_skipped(path.parent)
    if skipped:
        found.append(_skipped(skipped))
    missing = [e for e in known if e not in present]
    if missing:
        found.append(Section("Not in this run", (", ".join(missing),)))
    return found


def _skipped(skipped: dict[str, str]) -> Section:
    """The variants a ``--target`` run could not build from its target, each with the
    builder's reason (``skipped.json`` beside the results)."""
    body = tuple((Cell(variant), Cell(reason)) for variant, reason in sorted(skipped.items()))
    about = (
        "BIVBench variants that could not be built from this target, so that no row above "
        "measures them; each with the reason the tampering builder gave."
    )
    return Section("Skipped variants", (about, Table(("variant", "reason"), (("", body),))))


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
        ("datasets", ", ".join(unique(r.dataset for r in rows))),
        ("methods", ", ".join(unique(r.method for r in rows))),
        ("experiments", ", ".join(f"{e} ({n} rows)" for e, n in counts.items())),
        ("instances per cell", span(r.n_instances for r in rows)),
        ("fingerprints per bundle (N)", span(r.n_fingerprints for r in rows)),
    )
    table = Table(("", ""), (("", tuple((Cell(k, bold=True), Cell(v)) for k, v in facts)),))
    return Section("Run", (table,))


def generic(rows: Sequence[ResultRow]) -> tuple[Block, ...]:
    """A table of the rows, the ``extra`` fields as columns (an experiment this report does
    not know)."""
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
            *((Cell(str(r.ns)), Cell(pct(r.detection_rate)), Cell(interval(r))) if rated else ()),
            *(Cell(text_of(r.extra.get(k))) for k in keys),
        )
        for r in ordered
    )
    return (Table(header, (("", body),)),)
