"""The benchmark report, rebuilt from a run's ``results.json``.

:func:`build_report` reads the rows (:mod:`misentry.bench.results`) and writes ``report.md`` and
a self-contained ``report.html`` (inline CSS, plots as base64 PNG data URIs, no script, nothing
fetched). Both come from one list of sections, so they always say the same thing. After a header
(the results file, its sha256 and time, datasets, methods, instance counts) comes one section per
experiment and dataset, in the order of :data:`misentry.bench.experiments.EXPERIMENTS`, each
opening with what was measured (the experiment's ``about``) and written by the experiment
(its ``section``):

- detection: variants x methods, ``DR@1 / DR@5`` in %, best in bold, the identity control last;
  the 95 % intervals; detection rate vs N_S per family of variants;
- leakage (the paper's Fig. 4): per adaptive attack, DR@5 on the unleaked fingerprints vs the
  number leaked, one line per method;
- covertness (Fig. 5): the detectors' AUC, output statistics and distances per method; the
  confidence histograms from ``covertness.json`` and the example grid ``examples.png`` of the
  results folder when the run wrote them;
- sensitivity (Fig. 6): per variant, DR@5 vs training steps of the tampering;
- ablation (Table 2): one line per configuration, mean DR@1 / DR@5 and DR@5 per family;
- cost (Table 3): seconds per fingerprint per method, seconds per tampered instance per variant;
- frontier: DR@5 on the subtle variants vs the confidence detector's AUC, MiSentry's covertness
  sweep as a line;
- the experiments not in this run.

Experiments it does not know get a table of their rows.

This package holds what the sections share: the vocabulary, the document model and its
rendering, the section context, and the plotting, formatting and point helpers.
"""

from __future__ import annotations

from pathlib import Path

from misentry.atomic import write_text_atomic
from misentry.bench.report.document import Block, Cell, Plot, Section, Table
from misentry.bench.report.points import RATE_COLUMNS, Column
from misentry.bench.report.render import STYLE, html_page, markdown
from misentry.bench.report.sections import sections
from misentry.bench.report.vocabulary import (
    AUC_COLUMNS,
    AUC_KEYS,
    EXAMPLES_NAME,
    FAMILIES,
    PLOT_NS,
    PLOT_NS_MAX,
    TABLE_NS,
    variant_family,
)
from misentry.bench.results import read_results

__all__ = [
    "AUC_COLUMNS",
    "AUC_KEYS",
    "EXAMPLES_NAME",
    "FAMILIES",
    "PLOT_NS",
    "PLOT_NS_MAX",
    "RATE_COLUMNS",
    "STYLE",
    "TABLE_NS",
    "Block",
    "Cell",
    "Column",
    "Plot",
    "Section",
    "Table",
    "build_report",
    "variant_family",
]


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
            f"build_report: no results file at {path}; run a benchmark first (misentry bench "
            "--out DIR writes DIR/results), or give the folder that holds its results.json"
        )
    rows = read_results(path)
    if not rows:
        raise ValueError(f"build_report: {path} holds no rows; the run wrote nothing to report")
    out = Path(out_dir) if out_dir is not None else path.parent
    found = sections(rows, path, out)
    title = "misentry benchmark report"
    md = write_text_atomic(out / "report.md", markdown(title, found))
    page = write_text_atomic(out / "report.html", html_page(title, found))
    return md, page
