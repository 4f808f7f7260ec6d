"""The ``misentry report`` verb: rebuild a run's benchmark report from its ``results.json``.

Kept apart from :mod:`misentry.cli` and wired in there with :func:`add_report`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from misentry.cli.verbs import MakeVerb, Verbs

REPORT_DESCRIPTION = """\
Rebuild the benchmark report of a run from its results.json (written by the benchmarks with
--results DIR): report.md and a self-contained report.html (tables, plots embedded as images,
no scripts and nothing fetched, so it opens anywhere and can be mailed as one file). Prints the
paths of the two files.
"""

REPORT_EPILOG = """\
example:
  misentry report runs/results
  misentry report runs/results --out runs/report
"""


def add_report(verbs: Verbs, make_verb: MakeVerb) -> argparse.ArgumentParser:
    """Add ``misentry report`` to ``verbs``; returns its parser."""
    report = make_verb(
        verbs,
        "report",
        "rebuild the benchmark report (markdown and HTML) from a results folder",
        _report,
        description=REPORT_DESCRIPTION,
    )
    report.epilog = REPORT_EPILOG
    report.add_argument(
        "results", type=Path, metavar="DIR", help="folder holding results.json (or the file)"
    )
    report.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write to (default: the results DIR)"
    )
    return report


def _report(args: argparse.Namespace) -> int:
    from misentry.bench.report import build_report

    results: Path = args.results
    if not results.exists():
        raise FileNotFoundError(f"report: {results} does not exist; give a run's results folder")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"report: --out {args.out} is a file; give a folder")
    md, page = build_report(results, args.out)
    print(md)
    print(page)
    return 0
