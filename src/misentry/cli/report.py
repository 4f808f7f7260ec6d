"""The ``misentry report`` verb: rebuild a run's benchmark report from its ``results.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from misentry.cli.common import CliError, Verbs, add_verb, console

REPORT_DESCRIPTION = """\
Rebuild the benchmark report of a run from its results.json (written by `misentry bench` to
--out/results): report.md and a self-contained report.html (tables, plots embedded as images,
no scripts and nothing fetched, so it opens anywhere and can be mailed as one file). Prints the
paths of the two files.
"""

REPORT_EPILOG = """\
example:
  misentry report runs/results
  misentry report runs/results --out runs/report
"""


def add(verbs: Verbs) -> None:
    """Register ``misentry report``."""
    report = add_verb(
        verbs,
        "report",
        "rebuild the benchmark report (markdown and HTML) from a results folder",
        run,
        description=REPORT_DESCRIPTION,
        epilog=REPORT_EPILOG,
    )
    report.add_argument(
        "results", type=Path, metavar="DIR", help="folder holding results.json (or the file)"
    )
    report.add_argument(
        "--out", type=Path, metavar="DIR", help="folder to write to (default: the results DIR)"
    )


def run(args: argparse.Namespace) -> int:
    """Build the report; print the paths of report.md and report.html."""
    from misentry.bench.report import build_report

    results: Path = args.results
    if not results.exists():
        raise CliError(f"report: {results} does not exist; give a run's results folder")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise CliError(f"report: --out {args.out} is a file; give a folder")
    md, page = build_report(results, args.out)
    console.print(str(md), markup=False, highlight=False, soft_wrap=True)
    console.print(str(page), markup=False, highlight=False, soft_wrap=True)
    return 0
